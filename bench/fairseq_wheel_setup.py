"""setup script for a fairseq-fixed wheel built without torch (used by `make gpu-wheels`).

Run inside the unpacked fairseq-fixed sdist:  python fairseq_wheel_setup.py bdist_wheel

fairseq's own setup.py imports torch, to build C++ extensions (libbase, libnat, the alignment
ops) that neither fairseq-train/-generate nor this plugin import.  Building for the GPU
machine's Python would then need that Python's torch here (a CUDA wheel of several GB, the
CPU index being out of reach).  This script packages the same sources with the extensions
fairseq does import at run time: the Cython batching and token-block helpers and libbleu.
"""
import os

import numpy
from setuptools import Extension, find_packages, setup

CXX_FLAGS = ["-std=c++11", "-O3"]


def cython_extension(name: str, pyx: str) -> Extension:
    return Extension(name, sources=[pyx], language="c++", include_dirs=[numpy.get_include()],
                     extra_compile_args=CXX_FLAGS)


def config_files():
    """fairseq/config/** (hydra's configuration tree), relative to the fairseq package."""
    found = []
    for root, _dirs, files in os.walk(os.path.join("fairseq", "config")):
        found += [os.path.relpath(os.path.join(root, f), "fairseq") for f in files if not f.endswith(".pyc")]
    return found


setup(
    name="fairseq-fixed",
    version=open(os.path.join("fairseq", "version.txt")).read().strip(),
    description="fairseq-fixed (Python 3.11+ fork of fairseq 0.12), built without its torch C++ extensions",
    packages=find_packages(include=["fairseq", "fairseq.*", "fairseq_cli", "fairseq_cli.*"]),
    package_data={"fairseq": config_files() + ["version.txt"]},
    ext_modules=[
        Extension("fairseq.libbleu", sources=["fairseq/clib/libbleu/libbleu.cpp", "fairseq/clib/libbleu/module.cpp"],
                  extra_compile_args=CXX_FLAGS),
        cython_extension("fairseq.data.data_utils_fast", "fairseq/data/data_utils_fast.pyx"),
        cython_extension("fairseq.data.token_block_utils_fast", "fairseq/data/token_block_utils_fast.pyx"),
    ],
    install_requires=["cffi", "cython", "hydra-core==1.3.2", "omegaconf==2.3.0", "numpy>=1.21.3", "regex",
                      "sacrebleu>=1.4.12", "torch>=1.13", "tqdm", "bitarray", "torchaudio>=0.8.0", "scikit-learn",
                      "packaging"],
    entry_points={"console_scripts": [f"fairseq-{n} = fairseq_cli.{m}:cli_main" for n, m in (
        ("train", "train"), ("generate", "generate"), ("interactive", "interactive"),
        ("preprocess", "preprocess"), ("score", "score"), ("validate", "validate"))]},
    zip_safe=False,
)
