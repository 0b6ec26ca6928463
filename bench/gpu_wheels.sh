#!/usr/bin/env bash
# `make gpu-wheels`: wheels that `make gpu-check` installs on a GPU machine without network.
#   bash bench/gpu_wheels.sh [DEST]     (default .whl; needs network and a Python GPU_PY_VERSION here)
# The GPU machine (see docs/gpu-check.md) has Python 3.12 with torch, numpy, sacrebleu,
# sentencepiece, safetensors, pytest, ...; it lacks fairseq-fixed and what only fairseq needs.
set -euo pipefail
DEST=${1:-.whl}
PYV=${GPU_PY_VERSION:-3.12}
FAIRSEQ=fairseq-fixed==0.12.3.1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# a Python with torch, only to download fairseq's sdist (pip reads its metadata by running its
# setup.py, which imports torch): the project's venv
SDIST_PYTHON=${SDIST_PYTHON:-.venv/bin/python}
is_pyv() { [ -n "$1" ] && "$1" -c "import sys; assert sys.version.startswith('$PYV.')" 2>/dev/null; }
PY=
for candidate in "${GPU_BUILD_PYTHON:-}" "$(command -v "python$PYV" 2>/dev/null)" \
                 $(ls -d "$HOME"/.pyenv/versions/"$PYV".*/bin/"python$PYV" 2>/dev/null); do
  if is_pyv "$candidate"; then PY=$candidate; break; fi
done
if [ -z "$PY" ]; then
  echo "gpu_wheels: need a Python $PYV interpreter here to build fairseq-fixed for the GPU machine" \
       "(set GPU_BUILD_PYTHON=/path/to/python$PYV)" >&2
  exit 2
fi
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
rm -f "$DEST"/*.whl
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
"$PY" -m venv "$BUILD/venv"
B="$BUILD/venv/bin/python"
# numpy 2.0.x headers: extensions built against them load with any numpy 2.x at run time
"$B" -m pip install -q --upgrade pip setuptools wheel cython "numpy==2.0.2"
# fairseq's sdist; its own setup.py is not used for the build (it imports torch)
"$SDIST_PYTHON" -m pip download -q --no-deps --no-binary :all: --no-build-isolation "$FAIRSEQ" -d "$BUILD/sdist"
tar -xzf "$BUILD"/sdist/fairseq_fixed-*.tar.gz -C "$BUILD"
(cd "$BUILD"/fairseq_fixed-*/ && cp "$HERE/fairseq_wheel_setup.py" . \
  && "$B" fairseq_wheel_setup.py -q bdist_wheel -d "$DEST" >/dev/null)
# antlr4-python3-runtime 4.9.3 (hydra-core's pin) is published as an sdist only: a pure-Python wheel
"$B" -m pip wheel -q --no-deps -w "$DEST" antlr4-python3-runtime==4.9.3
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)
"$B" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" hydra-core==1.3.2 omegaconf==2.3.0 bitarray cffi pycparser
ls -la "$DEST"
du -sh "$DEST"
