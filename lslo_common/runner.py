"""One shape for every command-line tool: ``prog: error: message`` on stderr and exit status 2.

The plugin's tools (``lslo-*``, imported from ``fairseq_lslo.cli.runner``) and data preparation's
(``python -m lslo_data_prep.*``) alike.  Every tool's ``main`` parses its arguments (argparse itself exits 2 on a bad command line) and
hands the rest to :func:`run_tool`.  Caught: our own errors (:class:`LSLoError`), ``OSError``
(a file that cannot be read or written) and ``ValueError`` (a value the library cannot use,
e.g. a state-dict entry that does not parse).  Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional

from .errors import LSLoError

USAGE_ERROR = 2  # argparse's own status for a bad command line; ours for bad input of any kind
INPUT_ERRORS = (LSLoError, OSError, ValueError)


def run_tool(prog: str, body: Callable[[], Optional[int]]) -> int:
    """Run ``body``; an error of :data:`INPUT_ERRORS` becomes one error line and exit status 2."""
    try:
        return body() or 0
    except INPUT_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return USAGE_ERROR
