# fairseq-lslo.  `make test` and `make demo` set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# The torch requirement installed before anything else.  On a CPU machine with the
# pinned wheel on disk this takes it (no CUDA packages); on a GPU cluster override it,
# e.g. make install TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu121"
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lslo-installed
PYTEST_ARGS ?=
# make demo DEMO=tiny: the 3-minute variant (the test suite runs it); DEMO_ARGS="--force" redoes every stage
DEMO ?= default
DEMO_ARGS ?=

.PHONY: install test demo bench soak clean help flores12 flores30 gpu-wheels gpu-check gpu-site

help:
	@echo "make demo     the whole method on the embedded synthetic benchmark, on a CPU (DEMO=tiny|default; docs/demo.md)"
	@echo "make test     the test suite (installs first if needed)"
	@echo "make install  create $(VENV) with torch, fairseq and this package (editable)"
	@echo "make bench    every speed/memory benchmark of bench/ -> results/bench/*.json (docs/benchmarks.md)"
	@echo "make soak     2,000-update CPU run with pruning: NaN and memory check -> results/bench/soak.json"
	@echo "make gpu-wheels  (here, with network) wheels for make gpu-check -> .whl/"
	@echo "make gpu-check   (on a CUDA machine, no network needed) the GPU checks, one summary table (docs/gpu-check.md)"
	@echo "make flores12 FLORES-101 download -> prepare -> train -> evaluate (METHOD=, PRESET=ours|paper, DRY_RUN=1, SLURM=1; docs/flores-and-slurm.md)"

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test,deploy,serve]"
	$(PY) -c "import torch, fairseq, fairseq_lslo; print('torch', torch.__version__, '| fairseq', fairseq.__version__)"
	touch $@

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

demo: install
	OMP_NUM_THREADS=1 $(PY) -m fairseq_lslo.demo --demo $(DEMO) $(DEMO_ARGS)

# every bench/ module (python -m bench --list); BENCH_ARGS go to bench.speed, e.g. "--device cuda" on a GPU
# (-> results/bench/bench-gpu.json); BENCH_ARGS="--only speed" runs some
BENCH_ARGS ?=
bench: install
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m bench $(BENCH_ARGS)

SOAK_ARGS ?=
soak: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m bench.soak $(SOAK_ARGS)

# GPU check (docs/gpu-check.md).  gpu-wheels runs here (network, a Python $(GPU_PY_VERSION)):
# fairseq-fixed built for the GPU machine's Python plus what only fairseq needs, into .whl/.
# gpu-check runs on the GPU machine with its own python3 (torch with CUDA): it installs .whl/
# into .gpu-site/ (no index, no network) if fairseq is not importable, then runs the driver.
GPU_PY_VERSION ?= 3.12
GPU_PYTHON ?= python3
GPU_CHECK_ARGS ?=
GPU_SITE := $(CURDIR)/.gpu-site
GPU_ENV = PYTHONPATH="$(CURDIR):$(GPU_SITE)$${PYTHONPATH:+:$$PYTHONPATH}" PYTHONUNBUFFERED=1
gpu-wheels: install
	GPU_PY_VERSION=$(GPU_PY_VERSION) SDIST_PYTHON=$(PY) bash bench/gpu_wheels.sh .whl

gpu-check:
	@$(GPU_ENV) $(GPU_PYTHON) -c "import fairseq, hydra, bitarray" 2>/dev/null || $(MAKE) --no-print-directory gpu-site
	$(GPU_ENV) $(GPU_PYTHON) bench/gpu_check.py --device cuda $(GPU_CHECK_ARGS)

gpu-site:
	@ls .whl/*.whl >/dev/null 2>&1 || { echo "gpu-check: fairseq is not importable and .whl/ holds no wheels: run 'make gpu-wheels' on a machine with network first" >&2; exit 2; }
	$(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $(GPU_SITE) .whl/*.whl

# FLORES-101 chains: all logic lives in recipes/flores_chain.sh (variables: docs/flores-and-slurm.md).
# PRESET=paper runs the authors' reference recipe instead of ours (recipes/train.sh).
LSLO_PYTHON ?= $(if $(wildcard $(PY)),$(abspath $(PY)),$(PYTHON))
PRESET ?= ours
flores12 flores30:
	LANGSET=$(subst flores,lang,$@) PRESET="$(PRESET)" LSLO_PYTHON="$(LSLO_PYTHON)" bash recipes/flores_chain.sh

clean:
	rm -rf $(VENV) results build *.egg-info
