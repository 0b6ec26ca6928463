"""The demo: a synthetic multilingual benchmark and the whole LSLo pipeline on a CPU (``make demo``).

It sits beside ``cli/`` at the top of the package and drives fairseq through its command
lines only; the benchmark generator (:mod:`.benchmark`) uses nothing but the standard library.
"""
