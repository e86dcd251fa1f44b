"""The Merkle-sealed recording store: per-session frame trees, one signed log per node."""

import attrs


@attrs.frozen
class Frame:
    """
    One recorded frame as replay sees it.

    @ivar data: the payload, or None when the frame was redacted.
    """

    seq: int
    time: float
    channel: int
    direction: int
    offset: int
    data: bytes | None


__all__ = ["Frame"]
