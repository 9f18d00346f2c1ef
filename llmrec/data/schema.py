"""Turn raw string tables into the canonical interaction and catalog frames.

Canonical interactions (one row per event, in file order):

* ``user_id``, ``item_id``: raw ids as strings (exact spelling of the file)
* ``behavior``: int8 index into the ordered behavior list (weakest first)
* ``timestamp``: int64 (Unix seconds for the built-in sources; fractional values are truncated)
* ``row``: int64, 0-based position of the row in its file (the tie-break for equal timestamps)

Canonical catalog: ``item_id, title, text, image, category`` (+ source extras), one
row per item id. Every check fails with the file, the 1-based row (and line for
text files) and the offending value; nothing is dropped here except exact
duplicates and items missing from the catalog, both counted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec.data.errors import DataError

log = logging.getLogger(__name__)

INTERACTION_COLUMNS = ("user_id", "item_id", "behavior", "timestamp", "row")
CATALOG_COLUMNS = ("item_id", "title", "text", "image", "category")


def where(path: Path, row: int, header_lines: int | None) -> str:
    """``file: row N (line M)`` for 0-based ``row``; parquet files have no lines."""
    text = f"{path}: row {row + 1}"
    return text if header_lines is None else f"{text} (line {row + 1 + header_lines})"


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _require_nonempty(values: pd.Series, path: Path, header_lines: int | None, what: str) -> None:
    empty = (values.str.strip() == "").to_numpy()
    if empty.any():
        row = _first_bad(empty)
        raise DataError(f"{where(path, row, header_lines)}: empty {what} ({int(empty.sum())} rows have none)")


def parse_timestamps(values: pd.Series, path: Path, header_lines: int | None, fmt: str | None = None) -> np.ndarray:
    """Numeric timestamps (or text in strftime ``fmt``, read as UTC) to int64 seconds."""
    if fmt is None:
        numbers = pd.to_numeric(values, errors="coerce")
        bad = numbers.isna().to_numpy() | ~np.isfinite(numbers.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            row = _first_bad(bad)
            raise DataError(
                f"{where(path, row, header_lines)}: timestamp {values.iloc[row]!r} is not a number "
                f"({int(bad.sum())} rows); set `timestamp_format:` for text dates"
            )
        return (np.floor(numbers.to_numpy(dtype=float)).astype(np.int64) if numbers.dtype.kind == "f"
                else numbers.to_numpy(np.int64))
    parsed = pd.to_datetime(values, format=fmt, errors="coerce", utc=True)
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = _first_bad(bad)
        raise DataError(f"{where(path, row, header_lines)}: timestamp {values.iloc[row]!r} "
                        f"does not match format {fmt!r}")
    return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def behavior_codes(
    values: pd.Series,
    path: Path,
    header_lines: int | None,
    behaviors: Sequence[str],
    behavior_map: Mapping[str, str],
) -> np.ndarray:
    """Raw behavior strings to indices into ``behaviors`` (after ``behavior_map``)."""
    lookup = {name: i for i, name in enumerate(behaviors)}
    lookup.update({raw: behaviors.index(name) for raw, name in behavior_map.items()})
    return _mapped_codes(values, values.str.strip().map(lookup), path, header_lines, "unknown behavior {value}",
                         f"allowed values: {sorted(lookup)} (set `behaviors:` or `behavior_map:` in the data config)")


def rating_codes(
    values: pd.Series,
    path: Path,
    header_lines: int | None,
    behaviors: Sequence[str],
    rating_behaviors: Mapping[int, str],
) -> np.ndarray:
    """Integer ratings to behavior indices through ``rating_behaviors``."""
    numbers = pd.to_numeric(values, errors="coerce")
    lookup = {int(r): behaviors.index(name) for r, name in rating_behaviors.items()}
    return _mapped_codes(values, numbers.map(lookup), path, header_lines, "rating {value} has no behavior",
                         f"allowed ratings: {sorted(lookup)} (config key `rating_behaviors`)")


def _mapped_codes(values: pd.Series, codes: pd.Series, path: Path, header_lines: int | None, problem: str,
                  allowed: str) -> np.ndarray:
    """``codes`` as int8, or a DataError naming the first unmapped row of ``values`` and how many there are."""
    bad = codes.isna().to_numpy()
    if bad.any():
        row = _first_bad(bad)
        raise DataError(f"{where(path, row, header_lines)}: {problem.format(value=repr(values.iloc[row]))} "
                        f"({int(bad.sum())} rows); {allowed}")
    return codes.to_numpy(np.int8)


def build_interactions(
    users: pd.Series,
    items: pd.Series,
    codes: np.ndarray,
    timestamps: np.ndarray,
    path: Path,
    header_lines: int | None,
) -> pd.DataFrame:
    """Assemble the canonical frame; ids must be non-empty."""
    users = users.astype(str).str.strip()
    items = items.astype(str).str.strip()
    _require_nonempty(users, path, header_lines, "user id")
    _require_nonempty(items, path, header_lines, "item id")
    return pd.DataFrame(
        {
            "user_id": users.to_numpy(),
            "item_id": items.to_numpy(),
            "behavior": codes,
            "timestamp": timestamps,
            "row": np.arange(len(users), dtype=np.int64),
        }
    )


def drop_duplicates(interactions: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop exact repeats of (user, item, behavior, timestamp), keeping the first; return the count."""
    dup = interactions.duplicated(subset=["user_id", "item_id", "behavior", "timestamp"], keep="first").to_numpy()
    n = int(dup.sum())
    if n:
        log.info("dropped %d duplicate interaction rows", n)
        interactions = interactions[~dup].reset_index(drop=True)
    return interactions, n


def build_catalog(
    frame: pd.DataFrame,
    path: Path,
    header_lines: int | None,
    columns: Mapping[str, str | None],
    image_root: Path | None = None,
) -> tuple[pd.DataFrame, int]:
    """Canonical catalog from ``frame`` (``columns`` maps canonical name -> file column).

    Returns the catalog and the number of empty titles replaced by ``item <id>``.
    Relative image paths are made absolute against ``image_root`` (URLs are kept).
    """
    ids = frame[columns["item_id"]].astype(str).str.strip()
    _require_nonempty(ids, path, header_lines, "item id")
    dup = ids.duplicated(keep=False).to_numpy()
    if dup.any():
        rows = np.flatnonzero(dup)[:5]
        raise DataError(
            f"{path}: item id {ids.iloc[rows[0]]!r} appears more than once in the catalog "
            f"(rows {[int(r) + 1 for r in rows]}; {int(dup.sum())} rows share an id)"
        )
    out = pd.DataFrame({"item_id": ids.to_numpy()})
    for name in CATALOG_COLUMNS[1:]:
        column = columns.get(name)
        out[name] = frame[column].astype(str).to_numpy() if column is not None else ""
    empty_title = (out["title"].str.strip() == "").to_numpy()
    out.loc[empty_title, "title"] = "item " + out.loc[empty_title, "item_id"]
    if image_root is not None:
        out["image"] = [_absolute_image(p, image_root) for p in out["image"]]
    out["image"] = out["image"].where(out["image"] != "", None)
    return out, int(empty_title.sum())


def _absolute_image(value: str, root: Path) -> str:
    if not value or "://" in value or Path(value).is_absolute():
        return value
    return str((root / value).resolve())


def restrict_to_catalog(interactions: pd.DataFrame, catalog: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop interactions whose item is not in the catalog; count what went (rows and items)."""
    known = pd.Index(catalog["item_id"]).get_indexer(interactions["item_id"]) >= 0  # hash lookup, fast on arrow strings
    counts = {
        "interactions_not_in_catalog": int((~known).sum()),
        "items_not_in_catalog": int(interactions.loc[~known, "item_id"].nunique()),
    }
    if counts["interactions_not_in_catalog"]:
        log.warning(
            "dropped %d interactions on %d items that are not in the item catalog",
            counts["interactions_not_in_catalog"], counts["items_not_in_catalog"],
        )
        interactions = interactions[known].reset_index(drop=True)
    return interactions, counts
