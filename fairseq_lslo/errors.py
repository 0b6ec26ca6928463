"""The plugin's import point for the error root (:mod:`lslo_common.errors`).

Every error fairseq-lslo raises on purpose derives from :class:`LSLoError` and, where one
fits, from the matching built-in.  The classes live in ``lslo_common`` (no torch) so that
``lslo_data_prep`` derives its errors from the same root; the plugin imports them from here.
"""
from __future__ import annotations

from lslo_common.errors import LSLoConfigError, LSLoError, LSLoFileError

__all__ = ["LSLoConfigError", "LSLoError", "LSLoFileError"]
