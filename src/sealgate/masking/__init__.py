"""Detectors and the masking engine shared by every protocol (text, JSON, streams)."""

from sealgate.masking._audit import maskEvent
from sealgate.masking._body import UNKNOWN_CONTENT, BodyStream, maskPlain, notText, unknownPolicy
from sealgate.masking._content import (
    CODINGS,
    MAX_DECODED,
    TEXT_TYPES,
    ContentDecoder,
    ContentTooLarge,
    MediaType,
    canDecode,
    decodeContent,
    encodeContent,
    isTextType,
    mediaType,
    sniffText,
    textCodec,
)
from sealgate.masking._detectors import (
    DETECTORS,
    MAX_HOLD,
    Detector,
    ibanValid,
    issuerOk,
    luhnValid,
)
from sealgate.masking._engine import RECORD_INPUT, REDACTED, Masker
from sealgate.masking._errors import MaskingFailed
from sealgate.masking._http import (
    STRUCTURAL_HEADERS,
    maskHead,
    maskHeaders,
    maskReason,
    maskWebSocket,
)
from sealgate.masking._stream import StreamMasker

__all__ = [
    "CODINGS", "DETECTORS", "MAX_DECODED", "MAX_HOLD", "RECORD_INPUT", "REDACTED", "STRUCTURAL_HEADERS",
    "TEXT_TYPES", "UNKNOWN_CONTENT", "BodyStream", "ContentDecoder", "ContentTooLarge", "Detector",
    "Masker", "MaskingFailed", "MediaType", "StreamMasker", "buildMasker", "canDecode",
    "decodeContent", "encodeContent", "ibanValid", "isTextType", "issuerOk", "knownDetectors",
    "luhnValid", "maskEvent", "maskHead", "maskHeaders", "maskPlain", "maskReason", "maskWebSocket",
    "mediaType", "notText", "sniffText", "textCodec", "unknownPolicy",
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
