"""SSH protocol: Conch on both legs, with key-bound identities, approvals, masking, asciicast."""
