"""The one exception type the data layer shows to users."""

from __future__ import annotations


class DataError(RuntimeError):
    """A data problem the user can act on (missing/corrupt files, bad config); the message says what to do."""
