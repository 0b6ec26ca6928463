"""Command-line tools (console scripts lslo-*); each module has ``main(argv=None)``."""
