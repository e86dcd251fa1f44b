"""sealgate.cli."""
