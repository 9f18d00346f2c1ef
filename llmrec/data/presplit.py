"""Pre-split samples (``source: samples``): rows that already are train / valid / test predictions.

Input: a JSON-lines or Parquet file (by suffix), one row per prediction, with the columns

* ``split`` (``train`` / ``valid`` / ``test``), ``user`` (optional),
* ``history``: item ids, oldest first (non-empty), with optional ``history_behaviors``
  (behavior names) and ``history_timestamps`` (integers) of the same length beside it,
* ``target`` (+ optional ``target_behavior``, default the config's target behavior),
* ``candidates`` (optional): a frozen candidate list per row, the target included;

plus the item catalog ``items_path`` (+ ``item_columns``) as the generic sources have
(without one, the catalog is the ids seen, titled ``item <id>``). The catalog is the
item universe: every catalog item is an internal item and a possible negative.

The splits are used as given: no k-core, no leave-one-out, no deduplication; only
``max_history`` applies (the newest entries of a longer history are kept, counted).

**Sequences.** The rows of one user need not be prefixes of one another (a file may hold
sliding windows, or histories cut differently), so ``SequenceDataset.sequences`` holds
one *pseudo-sequence per row*: ``history + [target]``. Samples of every split point at
their own pseudo-sequence (``user`` = its index, ``position`` = the history length), so
``SequenceBatcher.evaluation_rows`` / ``history_batch`` / ``seen_items`` see exactly
the row's history, and candidate negatives (sampled, when the file brings none) are
items outside the row's history and target, with or without a ``user`` column.
``user_ids[k]`` is the row's ``user`` value (repeated for every row of that user) or,
without a user column, ``<split>-<row>`` (the row's index in ``samples[split]``).
``valid_pos`` marks the end of the training part: the target position for train rows,
0 (no training part) for valid / test rows; ``test_pos`` is the row's target.
Sequence models train on the ``(history, target)`` rows of ``samples["train"]``
(``train.windows: rows`` in :mod:`graph_encoders.batching`).

**Candidates.** When the file has a ``candidates`` column, every row of a split that has
any must have a list of one size, holding the target exactly once and no repeats; those
lists (in the file's order) are saved under every key ``candidates:`` lists for that
split (the size must match) and under ``(uniform, <size>, seed 0)`` when it lists none.
Other keys are sampled by :mod:`llmrec.data.candidates` as for every source.

**Bad input** fails with a :class:`DataError` naming the file and the row (line for
JSONL): unknown split, empty history, misaligned behaviors / timestamps, unknown
behavior, ids missing from the catalog (the first five and the total count: a row
cannot be repaired by dropping an id without changing what it asks), candidate lists
without the target, with repeats or of unequal sizes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmrec.config import ConfigError, to_dict
from llmrec.data.cache import save_prepared
from llmrec.data.candidates import candidate_path, save_candidates
from llmrec.data.config import DataConfig
from llmrec.data.errors import DataError
from llmrec.data.loaders import _mapped_catalog  # the one reader of a catalog through `item_columns`
from llmrec.data.ordering import sorted_ids
from llmrec.data.readers import format_of, jsonl_objects, read_table, require_columns
from llmrec.data.splits import FlatSequences, sample_table
from llmrec.data.stats import interaction_counts, length_summary
from llmrec.data.types import SPLITS, CandidateSet, SequenceDataset
from llmrec.io import atomic_write

log = logging.getLogger(__name__)

PRESPLIT_SOURCES = ("samples", "llara")
ROW_COLUMNS = ("split", "user", "history", "history_behaviors", "history_timestamps", "target", "target_behavior",
               "candidates")
GIVEN_CANDIDATES_FILE = "given_candidates.npz"  # the file's frozen candidates, kept beside the prepared samples
SHOWN = 5  # offending rows named in an error


@dataclass
class PresplitRows:
    """Pre-split rows as read, raw ids as strings, plus where each row came from."""

    frame: pd.DataFrame  # ROW_COLUMNS (optional ones may be absent); list cells are Python lists
    where: list[str]  # per row: "<file>: line N" / "<file>: row N"
    catalog: pd.DataFrame | None  # canonical catalog (llmrec.data.schema), None = ids seen
    counts: dict[str, Any]  # loader counts (reported under stats["loader"])
    dropped_rows: int = 0  # rows the loader left out by its own rule (LLaRA: len_seq < 3), detailed in counts


# ---- reading -------------------------------------------------------------------------
def read_rows(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """A JSONL or Parquet file of rows, list cells kept as lists; where-strings per row."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (config key `path`)")
    fmt = format_of(path)
    if fmt == "jsonl":
        objects = jsonl_objects(path, encoding="utf-8")
        where = [f"{path}: line {number}" for number, _ in objects]
        frame = pd.DataFrame.from_records([record for _, record in objects])
    elif fmt == "parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for corrupt files
            raise DataError(f"{path}: not a readable Parquet file ({err})") from None
        where = [f"{path}: row {r + 1}" for r in range(len(frame))]
    else:
        raise DataError(f"{path}: pre-split samples must be JSON lines (.jsonl) or Parquet (.parquet), "
                        f"not {path.suffix!r}")
    if frame.empty:
        raise DataError(f"{path}: the file has no rows")
    require_columns(frame, path, {"samples column split": "split", "samples column history": "history",
                                  "samples column target": "target"})
    unknown = sorted(set(frame.columns) - set(ROW_COLUMNS))
    if unknown:
        raise DataError(f"{path}: unknown columns {unknown}; pre-split rows have {list(ROW_COLUMNS)}")
    return frame.reset_index(drop=True), where


def load_samples_source(cfg: DataConfig) -> PresplitRows:
    """``source: samples``: the rows file (``path``) and the optional catalog (``items_path``)."""
    path = cfg.resolve_path("path")
    frame, where = read_rows(path)
    catalog, counts = None, {}
    if cfg.items_path:  # read as the generic sources read theirs (null strings, extras, image URLs counted)
        items_path = cfg.resolve_path("items_path")
        items = read_table(items_path, format_of(items_path), delimiter=cfg.delimiter, encoding=cfg.encoding)
        header = 1 if format_of(items_path) == "csv" else None
        catalog = _mapped_catalog(cfg.item_columns, items, items_path, header, counts)
    return PresplitRows(frame, where, catalog, counts)


def samples_input_files(cfg: DataConfig) -> list[Path]:
    """Files of ``source: samples`` (their bytes feed the fingerprint)."""
    files = [cfg.resolve_path("path")] + ([cfg.resolve_path("items_path")] if cfg.items_path else [])
    for path in files:
        if not path.is_file():
            raise DataError(f"{path}: file not found (data config {cfg.name!r}, source {cfg.source!r})")
    return files


# ---- checks --------------------------------------------------------------------------
def _fail(rows: PresplitRows, bad: np.ndarray, problem: str | Callable[[int], str], hint: str = "") -> None:
    """Raise naming the first offending rows and how many there are (``bad``: bool per row)."""
    index = np.flatnonzero(bad)
    if index.size == 0:
        return
    first = "; ".join(f"{rows.where[i]}" for i in index[:SHOWN])
    raise DataError(f"{rows.where[index[0]]}: {problem(index[0]) if callable(problem) else problem} "
                    f"({index.size} rows; first: {first}){hint}")


def _ids(value: Any, rows: PresplitRows, r: int, column: str) -> list[str]:
    """A cell holding a list of ids, as strings."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{rows.where[r]}: `{column}` is {value!r}, expected a list")
    if all(type(v) is str and v and not v[0].isspace() and not v[-1].isspace() for v in value):
        return list(value)  # the common case, checked cheaply
    return [_id(v, rows, r, column) for v in value]


def _id(value: Any, rows: PresplitRows, r: int, column: str) -> str:
    if isinstance(value, (bool, np.bool_)) or value is None:
        raise DataError(f"{rows.where[r]}: `{column}` holds {value!r}, expected an item id")
    if isinstance(value, (float, np.floating)):
        if not float(value).is_integer():
            raise DataError(f"{rows.where[r]}: `{column}` holds {value!r}, expected an item id")
        value = int(value)
    text = str(value).strip()
    if not text:
        raise DataError(f"{rows.where[r]}: `{column}` holds an empty item id")
    return text


def _present(frame: pd.DataFrame, column: str) -> bool:
    return column in frame.columns and not frame[column].isna().all()


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


# ---- building ------------------------------------------------------------------------
def build_presplit(cfg: DataConfig, rows: PresplitRows, fp: str, root: Path, start: float) -> None:
    """Check the rows, index them against the catalog and save the prepared dataset under ``root``."""
    frame, n = rows.frame, len(rows.frame)
    splits = frame["split"].astype(str).str.strip().to_numpy()
    _fail(rows, ~np.isin(splits, SPLITS), lambda r: f"unknown split {frame['split'].iloc[r]!r}",
          f"; expected one of {list(SPLITS)}")
    history = [_ids(v, rows, r, "history") for r, v in enumerate(frame["history"])]
    lengths = np.array([len(h) for h in history], dtype=np.int64)
    _fail(rows, lengths == 0, "empty history", "; every pre-split row needs at least one history item")
    targets = [_id(v, rows, r, "target") for r, v in enumerate(frame["target"])]
    behaviors = _behavior_codes(cfg, rows, history)
    stamps = _timestamps(rows, lengths)
    users = None
    if _present(frame, "user"):
        users = [None if _is_missing(u) else str(u).strip() for u in frame["user"]]
        _fail(rows, np.array([not u for u in users]), "empty user", "; give every row a user or drop the column")
    given = _given_candidates(rows, splits, targets)

    # items: the catalog is the universe (or the ids seen when there is none)
    seen = pd.unique(pd.Series([i for h in history for i in h] + targets
                               + [i for c in given.values() for row in c.values() for i in row], dtype=str))
    catalog, catalog_counts = _catalog(rows, seen)
    item_ids = [str(i) for i in sorted_ids(catalog["item_id"])]
    lookup = pd.Index(item_ids)
    _check_in_catalog(cfg, rows, history, targets, given, lookup)

    # one pseudo-sequence per row, rows ordered by split then file order
    order = np.concatenate([np.flatnonzero(splits == s) for s in SPLITS])
    seq_len = lengths[order] + 1
    offsets = np.concatenate([[0], np.cumsum(seq_len)]).astype(np.int64)
    flat_items = lookup.get_indexer([i for r in order for i in (*history[r], targets[r])]).astype(np.int64)
    flat_behaviors = np.concatenate([np.append(behaviors[0][r], behaviors[1][r]) for r in order]).astype(np.int64)
    flat_stamps = np.concatenate([stamps[r] for r in order]).astype(np.int64)
    is_train = splits[order] == "train"
    seqs = FlatSequences(offsets, flat_items, flat_behaviors, flat_stamps,
                         valid_pos=np.where(is_train, lengths[order], 0).astype(np.int64),
                         test_pos=lengths[order].astype(np.int64))
    target_pos = offsets[:-1] + lengths[order]
    bounds = np.concatenate([[0], np.cumsum([(splits == s).sum() for s in SPLITS])])
    samples = {s: sample_table(seqs, target_pos[bounds[k]:bounds[k + 1]], cfg.max_history)
               for k, s in enumerate(SPLITS)}
    in_split = np.empty(n, dtype=np.int64)
    for k, _s in enumerate(SPLITS):
        in_split[order[bounds[k]:bounds[k + 1]]] = np.arange(bounds[k + 1] - bounds[k])
    user_ids = [users[r] if users is not None else f"{splits[r]}-{in_split[r]}" for r in order]
    item_catalog = catalog.set_index("item_id").loc[item_ids].reset_index()

    stats = _stats(cfg, rows, fp, splits, lengths, users, seqs, samples, given, item_catalog, catalog_counts, start)
    index = {"user_ids": user_ids, "item_ids": item_ids, "behaviors": cfg.behaviors,
             "target_behavior": cfg.target_behavior}
    save_prepared(root, cfg, index, seqs, samples, item_catalog, stats)
    if given:  # written after the folder is committed; prepare() refuses a folder that lost it
        arrays = {}
        for split, lists in given.items():
            members = order[bounds[SPLITS.index(split)]:bounds[SPLITS.index(split) + 1]]
            items = lookup.get_indexer(pd.Series([i for r in members for i in lists[r]], dtype=str))
            arrays[f"{split}.items"] = items.reshape(len(members), -1).astype(np.int64)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:  # a file object: np.savez would add ".npz" to a temporary name
                np.savez(handle, **arrays)

        atomic_write(root / GIVEN_CANDIDATES_FILE, write)


def _behavior_codes(cfg: DataConfig, rows: PresplitRows,
                    history: list[list[str]]) -> tuple[list[np.ndarray], np.ndarray]:
    """Per row the history behavior codes, and the target behavior codes."""
    frame = rows.frame
    lookup = {name: i for i, name in enumerate(cfg.behaviors)}
    lookup.update({raw: cfg.behaviors.index(name) for raw, name in cfg.behavior_map.items()})
    allowed = f"; allowed values: {sorted(lookup)} (set `behaviors:` or `behavior_map:` in the data config)"

    def code(value: Any, r: int, column: str) -> int:
        key = str(value).strip()
        if key not in lookup:
            raise DataError(f"{rows.where[r]}: unknown behavior {value!r} in `{column}`{allowed}")
        return lookup[key]

    if _present(frame, "history_behaviors"):
        codes = []
        for r, value in enumerate(frame["history_behaviors"]):
            names = value.tolist() if isinstance(value, np.ndarray) else value
            if _is_missing(names):
                raise DataError(f"{rows.where[r]}: no `history_behaviors` although other rows have them")
            if not isinstance(names, (list, tuple)) or len(names) != len(history[r]):
                raise DataError(f"{rows.where[r]}: `history_behaviors` has "
                                f"{len(names) if isinstance(names, (list, tuple)) else names!r}"
                                f" entries but `history` has {len(history[r])}; they must be aligned")
            codes.append(np.array([code(v, r, "history_behaviors") for v in names], dtype=np.int64))
    else:
        codes = [np.full(len(h), cfg.target_index, dtype=np.int64) for h in history]
    if _present(frame, "target_behavior"):
        target = np.array([cfg.target_index if _is_missing(v) else code(v, r, "target_behavior")
                           for r, v in enumerate(frame["target_behavior"])], dtype=np.int64)
    else:
        target = np.full(len(history), cfg.target_index, dtype=np.int64)
    return codes, target


def _timestamps(rows: PresplitRows, lengths: np.ndarray) -> list[np.ndarray]:
    """Per row ``history_timestamps + [newest]`` (the target gets the newest history time; 0s without the column)."""
    frame = rows.frame
    if not _present(frame, "history_timestamps"):
        return [np.zeros(n + 1, dtype=np.int64) for n in lengths]
    out = []
    for r, value in enumerate(frame["history_timestamps"]):
        values = value.tolist() if isinstance(value, np.ndarray) else value
        if not isinstance(values, (list, tuple)) or len(values) != lengths[r]:
            raise DataError(f"{rows.where[r]}: `history_timestamps` must be a list aligned with `history` "
                            f"({lengths[r]} entries), got {values!r}")
        try:
            stamps = np.array([int(v) for v in values], dtype=np.int64)
        except (TypeError, ValueError):
            raise DataError(f"{rows.where[r]}: `history_timestamps` holds a non-integer value: {values!r}") from None
        out.append(np.append(stamps, stamps[-1]))
    return out


def _given_candidates(rows: PresplitRows, splits: np.ndarray, targets: list[str]) -> dict[str, dict[int, list[str]]]:
    """``{split: {row: candidate ids}}`` for the splits whose rows carry candidate lists."""
    frame = rows.frame
    if not _present(frame, "candidates"):
        return {}
    out: dict[str, dict[int, list[str]]] = {}
    for split in SPLITS:
        members = np.flatnonzero(splits == split)
        cells = [frame["candidates"].iloc[r] for r in members]
        has = np.array([not _is_missing(c) and not (hasattr(c, "__len__") and len(c) == 0) for c in cells], dtype=bool)
        if not has.any():
            continue
        missing = np.zeros(len(frame), dtype=bool)
        missing[members[~has]] = True
        _fail(rows, missing, f"no `candidates` although other {split} rows have them",
              "; give every row of a split a candidate list, or none")
        lists = {int(r): _ids(c, rows, int(r), "candidates") for r, c in zip(members, cells, strict=True)}
        size = len(lists[int(members[0])])
        for r, ids in lists.items():
            if len(ids) != size:
                raise DataError(f"{rows.where[r]}: {len(ids)} candidates, but {rows.where[members[0]]} has {size}; "
                                f"every {split} row needs the same number")
            if ids.count(targets[r]) != 1:
                raise DataError(f"{rows.where[r]}: the candidates {ids[:SHOWN]}{'...' if size > SHOWN else ''} "
                                f"hold the target {targets[r]!r} {ids.count(targets[r])} times; expected exactly once")
            if len(set(ids)) != size:
                raise DataError(f"{rows.where[r]}: the candidates repeat an item ({size - len(set(ids))} repeats)")
        out[split] = lists
    return out


def _catalog(rows: PresplitRows, seen: np.ndarray) -> tuple[pd.DataFrame, dict[str, int]]:
    if rows.catalog is not None:
        unused = int((pd.Index(seen).get_indexer(rows.catalog["item_id"]) < 0).sum())
        return rows.catalog, {"catalog_items_in_no_row": unused}
    ids = [str(i) for i in seen]
    catalog = pd.DataFrame({"item_id": ids, "title": ["item " + i for i in ids], "text": "", "image": None,
                            "category": ""})
    return catalog, {"catalog_items_in_no_row": 0}


def _check_in_catalog(cfg: DataConfig, rows: PresplitRows, history: list[list[str]], targets: list[str],
                      given: dict[str, dict[int, list[str]]], lookup: pd.Index) -> None:
    """Fail naming the first ids missing from the catalog, their rows and the totals."""
    found: list[tuple[int, str, str]] = []
    cells = [("history", r, h) for r, h in enumerate(history)] + [("target", r, [t]) for r, t in enumerate(targets)]
    cells += [("candidates", r, c) for lists in given.values() for r, c in lists.items()]
    flat = pd.Series([i for _, _, ids in cells for i in ids], dtype=str)
    missing = lookup.get_indexer(flat) < 0
    if not missing.any():
        return
    owner = np.repeat(np.arange(len(cells)), [len(ids) for _, _, ids in cells])
    for k in np.flatnonzero(missing)[:SHOWN]:
        column, r, _ = cells[owner[k]]
        found.append((r, column, flat.iloc[k]))
    first = "; ".join(f"{rows.where[r]} `{column}` {item!r}" for r, column, item in found)
    raise DataError(f"{rows.where[found[0][0]]}: item {found[0][2]!r} is not in the item catalog "
                    f"{cfg.items_path!r} ({int(missing.sum())} references to {flat[missing].nunique()} unknown ids; "
                    f"first: {first}). Pre-split rows are used as given, so every id must be in the catalog")


def _stats(cfg: DataConfig, rows: PresplitRows, fp: str, splits: np.ndarray, lengths: np.ndarray, users: list | None,
           seqs: FlatSequences, samples: dict[str, Any], given: dict[str, dict[int, list[str]]],
           catalog: pd.DataFrame, catalog_counts: dict[str, int], start: float) -> dict[str, Any]:
    """``stats.json`` in the layout of the other sources (no filter ran: raw = filtered)."""
    names = cfg.behaviors
    owner = np.repeat(np.arange(seqs.n_users), np.diff(seqs.offsets))
    counted = owner if users is None else np.asarray(_user_of_sequence(users, splits), dtype=object)[owner]
    counts = interaction_counts(counted, seqs.items, seqs.behaviors, names)
    truncated = {s: int((lengths[splits == s] > cfg.max_history).sum()) for s in SPLITS}
    catalog_stats = {
        "items": int(len(catalog)),
        "duplicate_titles": int(catalog.loc[catalog["title"].duplicated(keep=False), "title"].nunique()),
        "items_sharing_a_title": int(catalog["title"].duplicated(keep=False).sum()),
        "items_without_text": int((catalog["text"].fillna("").astype(str).str.strip() == "").sum()),
        "items_without_image": int(catalog["image"].isna().sum()),
        **catalog_counts,
    }
    return {
        "name": cfg.name, "source": cfg.source, "fingerprint": fp, "behaviors": names,
        "target_behavior": cfg.target_behavior,
        "presplit": {
            "rows": {s: int((splits == s).sum()) for s in SPLITS},
            "user_column": users is not None,
            "histories_truncated_to_max_history": truncated,
            "candidates_from_file": {s: len(next(iter(v.values()))) for s, v in given.items()},
        },
        "raw": counts,
        # pre-split rows are used as given: no filter runs; a loader's own drops (LLaRA's len_seq < 3) are totalled
        "removed": {"rows_dropped_by_loader": rows.dropped_rows, "filter_passes": []},
        "loader": rows.counts,
        "filtered": counts,
        "sequence_length": length_summary(np.diff(seqs.offsets)),
        "samples": {s: samples[s].num_rows for s in SPLITS},
        "history_length": {s: length_summary(np.diff(samples[s].column("history_items").combine_chunks()
                                                     .offsets.to_numpy()))
                           for s in SPLITS},
        "catalog": catalog_stats,
        "config": to_dict(cfg),
        "prepare_seconds": round(time.perf_counter() - start, 3),
    }


def _user_of_sequence(users: list[str], splits: np.ndarray) -> list[str]:
    """The raw user of every pseudo-sequence (rows ordered by split, then file order)."""
    return [users[r] for s in SPLITS for r in np.flatnonzero(splits == s)]


# ---- candidates from the file ----------------------------------------------------------
def save_given_candidates(dataset: SequenceDataset, cfg: DataConfig) -> None:
    """Write the file's frozen candidates under every configured key of their split (see the module docstring)."""
    given = dataset.stats.get("presplit", {}).get("candidates_from_file", {})
    if not given:
        return
    path = dataset.root / GIVEN_CANDIDATES_FILE
    if not path.is_file():
        raise DataError(f"{dataset.root}: {GIVEN_CANDIDATES_FILE} is missing from this prepared folder (interrupted "
                        f"preparation?); delete the folder and prepare again")
    with np.load(path) as arrays:
        matrices = {split: arrays[f"{split}.items"] for split in given}
    for split, size in given.items():
        keys = [(i, spec.sampler, spec.size, spec.seed) for i, spec in enumerate(cfg.candidates)
                if split in spec.splits]
        for i, _, spec_size, _ in keys:
            if spec_size != size:
                raise ConfigError(f"candidates[{i}]: size {spec_size} for split {split!r}, but the pre-split file "
                                  f"brings frozen candidate lists of {size} for that split; set size: {size}")
        items = matrices[split]
        targets = np.asarray(dataset.samples[split].data.column("target").to_numpy(), dtype=np.int64)
        target_index = np.argmax(items == targets[:, None], axis=1).astype(np.int64)
        for _, sampler, _, seed in keys or [(None, "uniform", size, 0)]:
            out = candidate_path(dataset.root, split, sampler, size, seed)
            if out.is_file():
                continue
            save_candidates(CandidateSet(split, sampler, size, seed, items, target_index), out, dataset.fingerprint)
            log.info("%s: the file's %s candidates (%d rows x %d) saved as %s",
                     dataset.name, split, len(items), size, out)


