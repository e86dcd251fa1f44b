"""The exception masking raises for data it cannot vet (its one home, below every other module)."""


class MaskingFailed(Exception):
    """
    Data where masking applies could not be decoded or parsed, so it cannot
    be vetted.  The protocol must refuse to send it (fail closed); the
    message names what failed and never contains the data.
    """
