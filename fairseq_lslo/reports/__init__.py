"""Reports on a checkpoint read from its state dict, no model built: parameter counts (lslo-stats) and
the routing a search learned (lslo-arch)."""
