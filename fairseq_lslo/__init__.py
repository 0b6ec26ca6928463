"""fairseq-lslo: language-specific LoRA subspaces, as a fairseq ``--user-dir`` plugin.

Importing the package fills fairseq's registries (model ``lslo_transformer`` and its
architectures, criterion, optimizer) and lets torch >= 2.6 load fairseq checkpoints.
"""
from . import checkpoint_io, criterions, models, optim  # noqa: F401  (importing fills fairseq's registries)

checkpoint_io.allow_fairseq_checkpoints()
checkpoint_io.name_unreadable_checkpoints_in_fairseq()
checkpoint_io.make_fairseq_checkpoint_copies_atomic()

from .inference import Hypothesis, Translator, fairseq_fixes  # noqa: E402,F401  (the Python API: fairseq_lslo.Translator)

fairseq_fixes.install()  # decoding with fairseq's own tools: see inference/fairseq_fixes.py

__version__ = "0.1.0"
