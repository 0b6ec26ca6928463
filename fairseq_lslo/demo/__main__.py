"""``python -m fairseq_lslo.demo``: see :mod:`fairseq_lslo.demo.run`."""
import sys

from .run import main

sys.exit(main())
