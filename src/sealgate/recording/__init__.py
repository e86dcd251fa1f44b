"""sealgate.recording."""
