"""Translating with a trained model: the :class:`Translator` API and fairseq's own tools."""
from .translator import Hypothesis, Translator  # noqa: F401
