"""Command-line tools (lslo-stats, ...); each module has a main(argv=None)."""
