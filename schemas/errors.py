"""The one exception type the CLI turns into a single clear line instead of a traceback."""


class PebrError(Exception):
    """A user-facing error: bad input, a locked store, a missing file. The message says what to do."""
