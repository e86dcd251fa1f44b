"""Detectors and the masking engine shared by every protocol (text, JSON, streams)."""

from sealgate.masking._body import MAX_DECODED, bodyKind, decodeContent, encodeContent
from sealgate.masking._detectors import (
    DETECTORS,
    MAX_HOLD,
    Detector,
    ibanValid,
    issuerOk,
    luhnValid,
)
from sealgate.masking._engine import REDACTED, Masker, MaskingFailed
from sealgate.masking._stream import StreamMasker

__all__ = [
    "DETECTORS", "MAX_DECODED", "MAX_HOLD", "REDACTED", "Detector", "Masker", "MaskingFailed",
    "StreamMasker", "bodyKind", "buildMasker", "decodeContent", "encodeContent", "ibanValid",
    "issuerOk",
    "knownDetectors", "luhnValid",
]


def knownDetectors() -> set[str]:
    """Names accepted in C{[masking] detectors}."""
    return set(DETECTORS)


def buildMasker(config) -> Masker | None:
    """
    The gateway's L{Masker} from a L{sealgate.config.MaskingConfig}, or None
    when it names no detector, column or field (nothing to mask).
    """
    if not (config.detectors or config.columns or config.json_fields):
        return None
    return Masker.fromConfig(config)
