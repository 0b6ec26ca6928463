"""``lslo-serve``: an HTTP server over one :class:`fairseq_lslo.Translator`, every direction in one model.

Needs the ``serve`` extra (aiohttp).  Nothing in the plugin imports this subpackage; only the
``lslo-serve`` console script (:mod:`fairseq_lslo.serve.cli`) does.  :mod:`.batcher` and
:mod:`.validation` use no web framework; :mod:`.app` is the aiohttp application.
"""
