"""``python -m fairseq_lslo.serve`` is ``lslo-serve``."""
import sys

from .cli import main

sys.exit(main())
