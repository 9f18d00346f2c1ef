"""Deterministic internal indices and the chronological order of events.

* Internal ids: raw ids sorted numerically when every id is an integer
  (``"2" < "10"``), else as strings; index ``i`` is the ``i``-th id in that order.
* Chronological order: events sorted by (user, timestamp, row), where ``row`` is the
  event's position in its input file. Equal timestamps (common in ML-100k: 75,772
  rows share their user and second) therefore keep the file order, a stable,
  documented tie-break that does not depend on the item ids.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def sorted_ids(ids: pd.Series | np.ndarray) -> np.ndarray:
    """Unique raw ids (strings) in index order: numeric if all are integers, else lexicographic."""
    unique = pd.unique(pd.Series(ids, dtype=str))
    as_int = pd.to_numeric(pd.Series(unique), errors="coerce")
    integral = bool(len(unique)) and not as_int.isna().any() and pd.Series(unique).str.fullmatch(r"[+-]?\d+").all()
    if integral:
        order = np.argsort(as_int.to_numpy(dtype=np.int64), kind="stable")
    else:
        order = np.argsort(unique.astype(str), kind="stable")
    return np.asarray(unique, dtype=object)[order]


def codes_of(ids: pd.Series, index: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` in ``index`` (every id must be present)."""
    lookup = pd.Index(index)
    codes = lookup.get_indexer(pd.Series(ids, dtype=str))
    if (codes < 0).any():
        missing = pd.Series(ids)[codes < 0].iloc[0]
        raise KeyError(f"id {missing!r} is not in the index")
    return codes.astype(np.int64)


def chronological_order(user: np.ndarray, timestamp: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Permutation sorting events by (user, timestamp, file row)."""
    return np.lexsort((row, timestamp, user))
