"""sealgate.admin."""
