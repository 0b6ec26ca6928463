"""The root of every error fairseq-lslo raises on purpose (the plugin and data preparation alike).

Each error of ours derives from :class:`LSLoError` and, where one fits, from the matching
built-in (``ValueError`` for a bad value, ``FileNotFoundError`` for a missing file), so
``except ValueError`` keeps working for callers that know nothing of this module.  The
command-line tools print any ``LSLoError`` as ``prog: error: message`` and exit with 2
(``fairseq_lslo.cli.runner``).  The plugin imports these names from ``fairseq_lslo.errors``.
"""
from __future__ import annotations


class LSLoError(Exception):
    """Base class of the errors fairseq-lslo raises for bad input or state it can name."""


class LSLoConfigError(LSLoError, ValueError):
    """A command-line flag or a configuration file has a value LSLo cannot use."""


class LSLoFileError(LSLoError, FileNotFoundError):
    """A file or directory the user must supply is missing; the message names the flag that supplies it."""
