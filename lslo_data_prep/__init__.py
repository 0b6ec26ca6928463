"""FLORES-101 data preparation: download, split, SentencePiece-encode and binarize.

Stands apart from ``fairseq_lslo``: nothing here imports the plugin.  fairseq itself is
used only through ``fairseq-preprocess`` (``fairseq_cli.preprocess``).
"""
