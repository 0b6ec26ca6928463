"""fairseq-lslo: language-specific LoRA subspaces, as a fairseq ``--user-dir`` plugin.

Importing the package fills fairseq's registries (model ``lslo_transformer`` and its
architectures, criterion, optimizer) and lets torch >= 2.6 load fairseq checkpoints.
"""
from . import checkpoint_io  # noqa: F401  (first: allow-lists fairseq checkpoint classes)
from . import models  # noqa: F401
from . import optim  # noqa: F401

__version__ = "0.1.0"
