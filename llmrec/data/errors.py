"""The one exception type of the data pipeline."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data: the message names the file, the row or key, and what was expected."""
