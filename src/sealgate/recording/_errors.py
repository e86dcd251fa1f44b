"""The store's errors, shared by the engine, the redaction step and the readers."""


class StoreError(Exception):
    """The store cannot be opened or written; the message says what and where."""


class StoreLocked(StoreError):
    """Another process holds the state directory's lock."""
