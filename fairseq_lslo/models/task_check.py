"""The task's languages and language tokens, checked against the LSLo configuration before the model is built."""
from __future__ import annotations

from ..errors import LSLoConfigError
from ..langtok import LanguageTokens, task_directions
from ..modules.routing import LanguageResolver
from ..modules.spec import LSLoSpec


def build_resolver(spec: LSLoSpec, task) -> LanguageResolver:
    """Check the task's languages against the spec; read tokens where fairseq puts them (langtok.py)."""
    inventory = spec.inventory
    targs = getattr(task, "args", None)
    for flag, attr in (("--source-lang", "source_lang"), ("--target-lang", "target_lang")):
        code = getattr(targs, attr, None)
        if code is not None and code not in inventory:
            raise LSLoConfigError(f"language {code!r} of {flag} is not in --lslo-langs ({inventory.to_spec()})")
    for pair in task_directions(task):
        for code in pair.split("-"):
            if code not in inventory:
                raise LSLoConfigError(
                    f"language {code!r} of --lang-pairs is not in --lslo-langs ({inventory.to_spec()}); "
                    f"add it as {code}:GROUP"
                )
    tokens = LanguageTokens.from_task(task, inventory.codes)
    return LanguageResolver(tokens, needs_src=spec.needs_src, needs_tgt=spec.needs_tgt)
