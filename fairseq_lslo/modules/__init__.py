"""LSLo building blocks: the adapter layer, routing state and placement parsing."""
from .keys import is_lslo_key  # noqa: F401
from .lslo_linear import LowRankBank, LSLoLinear  # noqa: F401
from .routing import BatchLanguages, LanguageResolver, LanguageRouter  # noqa: F401
from .spec import LSLoSpec  # noqa: F401
