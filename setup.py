"""fairseq-lslo: language-specific LoRA subspaces for multilingual NMT, as a fairseq plugin."""
import os

from setuptools import find_packages, setup

# fairseq 0.12.2 (the last official release) does not import on Python >= 3.11;
# the fairseq-fixed fork of the same code base does.  Users may override the torch
# requirement (e.g. a CUDA build) with LSLO_TORCH_REQUIREMENT or via `make install TORCH_SPEC=...`.
TORCH_REQUIREMENT = os.environ.get("LSLO_TORCH_REQUIREMENT", "torch>=1.13")

setup(
    name="fairseq-lslo",
    version="0.1.0",
    description="Language-specific LoRA (LSLo) fine-tuning of multilingual NMT models in fairseq",
    long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",  # the default torch (TORCH_SPEC, torch 2.13) needs 3.10+
    # bench/ and tests/ stay in the repository; lslo_common is the torch-free bottom both packages share
    packages=find_packages(include=["fairseq_lslo", "fairseq_lslo.*", "lslo_common", "lslo_common.*",
                                    "lslo_data_prep", "lslo_data_prep.*"]),
    package_data={"lslo_data_prep": ["archives.json", "langs/*.tsv"]},
    install_requires=[
        TORCH_REQUIREMENT,
        "fairseq==0.12.2; python_version < '3.11'",
        "fairseq-fixed==0.12.3.1; python_version >= '3.11'",
        "numpy",
        "sentencepiece",
        "sacrebleu>=2.0",
        "safetensors",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest"],
        # deployment interop (lslo-export-hf, the CTranslate2 tests); the plugin never imports these
        "deploy": ["ctranslate2>=4.0", "transformers>=4.40", "safetensors", "sentencepiece"],
        # lslo-serve (fairseq_lslo.serve): aiohttp is both the server and the client the tests use
        "serve": ["aiohttp>=3.9"],
    },
    entry_points={
        "console_scripts": [
            "lslo-stats=fairseq_lslo.cli.stats:main",
            "lslo-merge=fairseq_lslo.cli.merge:main",
            "lslo-export=fairseq_lslo.cli.export:main",
            "lslo-arch=fairseq_lslo.cli.arch:main",
            "lslo-export-hf=fairseq_lslo.cli.export_hf:main",
            "lslo-evaluate=fairseq_lslo.cli.evaluate:main",
            "lslo-serve=fairseq_lslo.serve.cli:main",
        ]
    },
)
