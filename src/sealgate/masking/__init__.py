"""Detectors and the masking engine shared by every protocol (text, JSON, streams)."""


def knownDetectors() -> set[str]:
    """Names accepted in C{[masking] detectors}."""
    return {"credit_card", "email", "us_ssn", "iban", "phone", "aws_key", "jwt", "private_key"}
