"""sealgate: an identity-aware access gateway with Merkle-sealed recordings."""

__version__ = "0.1.0"
