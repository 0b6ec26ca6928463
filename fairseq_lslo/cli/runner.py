"""The plugin's import point for the command-line runner (:mod:`lslo_common.runner`, shared with
``lslo_data_prep``): ``prog: error: message`` on stderr and exit status 2 for bad input."""
from __future__ import annotations

from lslo_common.runner import INPUT_ERRORS, USAGE_ERROR, run_tool

__all__ = ["INPUT_ERRORS", "USAGE_ERROR", "run_tool"]
