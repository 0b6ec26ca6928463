"""One shape for every command-line tool: ``prog: error: message`` on stderr and exit status 2."""
from __future__ import annotations

import sys
from typing import Callable, Optional

from ..errors import LSLoError

USAGE_ERROR = 2  # argparse's own status for a bad command line; ours for bad input of any kind


def run_tool(prog: str, body: Callable[[], Optional[int]]) -> int:
    """Run ``body``; an ``LSLoError`` or ``OSError`` becomes one error line and exit status 2."""
    try:
        return body() or 0
    except (LSLoError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return USAGE_ERROR
