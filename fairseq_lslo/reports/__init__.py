"""Reports on a checkpoint read from its state dict (no model built): the routing a search learned."""
