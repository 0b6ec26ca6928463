"""Command-line tools (lslo-merge, lslo-export, ...): each module has a main()."""
