"""sealgate.protocols.postgres."""
