"""The bottom layer shared by the plugin (``fairseq_lslo``) and data preparation (``lslo_data_prep``).

Plain Python, no torch and no fairseq: importing it costs nothing, so the shell-facing
data-preparation tools and ``make gpu-check`` (before fairseq is installed) can use it.
``errors`` is the root of every error both packages raise; ``atomic`` writes files
atomically; ``langset_file`` reads language-set TSV files.
"""
