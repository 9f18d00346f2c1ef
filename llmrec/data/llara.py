"""LLaRA's benchmark files (``source: llara``): MovieLens, Steam and LastFM as LLaRA ships them.

A folder (``path``) holds ``train_data.df``, ``Val_data.df``, ``Test_data.df`` (pandas
DataFrames saved with ``pickle``) and the item names: ``u.item`` (MovieLens, latin-1,
``|``-separated, line ``k`` is LLaRA id ``k - 1``) or ``id2name.txt`` (Steam, LastFM:
``id::name`` per line, UTF-8). Each pickle has exactly the columns

* ``seq``: 10 entries, the last <= 10 interactions oldest first, right-padded with the
  padding id (MovieLens 1682, Steam 3581, LastFM 4606);
* ``len_seq``: the number of real entries (int64);
* ``next``: the target.

MovieLens entries are ``(item_id, rating)`` tuples; the rating is not a prompt input in
LLaRA and is dropped here (the target ratings are counted in the loader statistics).

Rules, following LLaRA's own loader: only rows with ``len_seq >= 3`` are kept (the
others are counted per split as ``<split>_rows_len_seq_below_3``); the catalog is every
named item (the negatives' universe); the pickles carry no candidates, so with
``candidates: [{size: 20, sampler: uniform}]`` 20 candidates are sampled uniformly
outside the row's history and target and frozen (LLaRA draws them afresh with
``random.sample`` for each run). The rows then go through :mod:`llmrec.data.presplit`.

Safety: a pickle can run code when loaded. Files are read only from the local folder the
config names (nothing is downloaded) by an unpickler that resolves only the dozen pandas
and numpy classes a DataFrame of this layout needs (anything else is refused before it
is built), and the columns, dtypes and every row are checked before use. Files whose
official sha256 is known (``OFFICIAL_SHA256``, from ``data/llara-ref/SOURCE.md``) must
match it unless ``verify_sha256: false``; MovieLens and Steam train files are not in
that copy, so a user-supplied one is checked against the LFS pointer's sha256.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmrec.data.cache import file_sha256
from llmrec.data.config import DataConfig
from llmrec.data.errors import DataError
from llmrec.data.presplit import PresplitRows
from llmrec.data.schema import build_catalog

log = logging.getLogger(__name__)

SPLIT_FILES = {"train": "train_data.df", "valid": "Val_data.df", "test": "Test_data.df"}
SEQ_SLOTS = 10  # entries of every `seq`
MIN_LEN_SEQ = 3  # LLaRA's loader keeps rows with len_seq >= 3


@dataclass(frozen=True)
class LlaraLayout:
    padding: int  # padding id in `seq` (= number of items: ids are 0..padding-1)
    names_file: str  # u.item or id2name.txt
    rated: bool  # entries are (item_id, rating) tuples (MovieLens)


LAYOUTS = {
    "movielens": LlaraLayout(1682, "u.item", True),
    "steam": LlaraLayout(3581, "id2name.txt", False),
    "lastfm": LlaraLayout(4606, "id2name.txt", False),
}
# Official sha256 (data/llara-ref/SOURCE.md; the MovieLens / Steam train files from the LFS pointers).
OFFICIAL_SHA256 = {
    ("movielens", "train_data.df"): "a73b119dfc232ed9bd01c3aa35c27bcd1b34dfb241878e1530e1ace6bcc18aad",
    ("movielens", "Val_data.df"): "9a950900d0055649e2983ef403d189d5fdc5bd4f84d229a377806d371b32e460",
    ("movielens", "Test_data.df"): "d38308a0078d4518dc9eeb619c8d1afb53d830712cc7d36ac51cc47eaafc97d6",
    ("movielens", "u.item"): "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    ("steam", "train_data.df"): "90f8e2ec827427d271cf0b03db45ed5ac3231840fbd022ac57cfae6061ed5b63",
    ("steam", "Val_data.df"): "84cd6a73ffea7e64e88e0c01357e01ffc7492fac3870dcccb417939c82fc764b",
    ("steam", "Test_data.df"): "2766b9faf90e3531a35207c01fbef2f655af97c21a6ba7d18581bbef2bc6ad59",
    ("steam", "id2name.txt"): "dada06a1306c36c91fb1ee3f980df7bee894024b3f52d20832ec2340524d7b7b",
    ("lastfm", "train_data.df"): "7db71a60d3da4c449091fbc254efc9602f81eec6eb9a60534811ccd61974dbc1",
    ("lastfm", "Val_data.df"): "92a1ddb65ebdeff999f910b65660eb3d8c7cd85e6a19308d80c429481839f8b3",
    ("lastfm", "Test_data.df"): "cac058a2842b2a3ed4d39ed1fa0a742f5034a23c9851a2ffc157b4845d703570",
    ("lastfm", "id2name.txt"): "b608bcf14300b1608ccd88f4fe240e6345125201ecdb55157395c19787fe4eaf",
}
# The only globals a pickled DataFrame of LLaRA's layout refers to: LLaRA's files (numpy 1.x module names) and the
# same frame pickled by pandas 3 (string column labels as Arrow arrays); all are data constructors.
PICKLE_GLOBALS = {
    ("builtins", "slice"), ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("pandas._libs.internals", "_unpickle_block"), ("pandas.core.frame", "DataFrame"),
    ("pandas.core.indexes.base", "_new_Index"), ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.range", "RangeIndex"), ("pandas.core.internals.managers", "BlockManager"),
    ("pandas", "DataFrame"), ("pandas", "Index"), ("pandas", "RangeIndex"), ("pandas", "StringDtype"),
    ("pandas.arrays", "ArrowStringArray"), ("pyarrow.lib", "_restore_array"), ("pyarrow.lib", "py_buffer"),
    ("pyarrow.lib", "type_for_alias"),
}


class _DataFrameUnpickler(pickle.Unpickler):
    """Resolves only :data:`PICKLE_GLOBALS`; anything else is refused before it is built."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refers to {module}.{name}")
        if module.startswith("numpy.core."):  # numpy 2 moved numpy.core to numpy._core
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def _layout(cfg: DataConfig) -> LlaraLayout:
    return LAYOUTS[cfg.llara_dataset]


def llara_input_files(cfg: DataConfig) -> list[Path]:
    """The pickles of ``llara_splits`` and the names file; all must exist."""
    folder = cfg.resolve_path("path")
    if not folder.is_dir():
        raise DataError(f"{folder}: expected LLaRA's {cfg.llara_dataset} folder (config key `path`)")
    files = [folder / SPLIT_FILES[s] for s in ("train", "valid", "test") if s in cfg.llara_splits]
    files.append(folder / _layout(cfg).names_file)
    for path in files:
        if not path.is_file():
            hint = ""
            if path.name == "train_data.df":
                hint = (f"; the shared llara-ref copy has no {cfg.llara_dataset} train file: "
                        "put the official one there "
                        f"(it is checked against its sha256) or set llara_splits: [valid, test] to evaluate only")
            raise DataError(f"{path}: file not found (data config {cfg.name!r}, source llara){hint}")
    return files


def _verify(cfg: DataConfig, path: Path) -> None:
    expected = OFFICIAL_SHA256.get((cfg.llara_dataset, path.name))
    if not cfg.verify_sha256 or expected is None:
        return
    actual = file_sha256(path)
    if actual != expected:
        raise DataError(f"{path}: sha256 {actual} differs from the official {cfg.llara_dataset} {path.name} "
                        f"({expected}, data/llara-ref/SOURCE.md); this is another version of the file. "
                        f"Set verify_sha256: false to use it anyway")


def read_llara_pickle(path: Path) -> pd.DataFrame:
    """Unpickle ``path`` with the restricted unpickler; must give a DataFrame."""
    try:
        with path.open("rb") as handle:
            frame = _DataFrameUnpickler(handle).load()
    except pickle.UnpicklingError as err:
        raise DataError(f"{path}: not a pickled pandas DataFrame of LLaRA's layout ({err}); "
                        "refusing to load it") from None
    except Exception as err:  # truncated or corrupt pickles raise many types
        raise DataError(f"{path}: cannot unpickle ({type(err).__name__}: {err})") from None
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"{path}: holds a {type(frame).__name__}, expected a pandas DataFrame")
    return frame


def _check_layout(path: Path, frame: pd.DataFrame, layout: LlaraLayout) -> None:
    """Columns and dtypes before any value is used."""
    columns = sorted(map(str, frame.columns))
    if columns != ["len_seq", "next", "seq"]:
        raise DataError(f"{path}: columns {columns}; LLaRA's files have exactly ['len_seq', 'next', 'seq']")
    if frame["len_seq"].dtype.kind not in "iu":
        raise DataError(f"{path}: column len_seq has dtype {frame['len_seq'].dtype}, expected integers")
    expected_next = "object ((item_id, rating) tuples)" if layout.rated else "integers"
    if (frame["next"].dtype.kind == "O") != layout.rated or (not layout.rated and frame["next"].dtype.kind not in "iu"):
        raise DataError(f"{path}: column next has dtype {frame['next'].dtype}, expected {expected_next}")
    if frame["seq"].dtype.kind != "O":
        raise DataError(f"{path}: column seq has dtype {frame['seq'].dtype}, expected lists of {SEQ_SLOTS} entries")


def _entry(value: Any, layout: LlaraLayout, where: str, column: str) -> tuple[int, int | None]:
    """``(item id, rating or None)`` of one seq / next entry, checked."""
    if layout.rated:
        if not isinstance(value, tuple) or len(value) != 2:
            raise DataError(f"{where}: `{column}` entry {value!r} is not an (item_id, rating) tuple")
        item, rating = value
    else:
        item, rating = value, None
    if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)):
        raise DataError(f"{where}: `{column}` entry {value!r} is not an integer item id")
    if not 0 <= int(item) <= layout.padding:
        raise DataError(f"{where}: `{column}` item {int(item)} is outside 0..{layout.padding} "
                        f"(padding {layout.padding})")
    return int(item), None if rating is None else int(rating)


def _check_row(here: str, seq: Any, len_seq: Any, target: Any, layout: LlaraLayout) -> None:
    """Every check of one row, raising the first problem (the slow path that names what is wrong)."""
    if not isinstance(seq, (list, tuple, np.ndarray)) or len(seq) != SEQ_SLOTS:
        raise DataError(f"{here}: `seq` is {seq!r}, expected a list of {SEQ_SLOTS} entries")
    if not 1 <= int(len_seq) <= SEQ_SLOTS:
        raise DataError(f"{here}: len_seq {int(len_seq)} is outside 1..{SEQ_SLOTS}")
    entries = [_entry(v, layout, here, "seq") for v in seq]
    if int(len_seq) < MIN_LEN_SEQ:
        return  # dropped: only its shape matters
    real, padding = entries[: int(len_seq)], entries[int(len_seq):]
    if any(item == layout.padding for item, _ in real) or any(item != layout.padding for item, _ in padding):
        raise DataError(f"{here}: `seq` {[i for i, _ in entries]} does not hold len_seq={int(len_seq)} items "
                        f"followed by padding {layout.padding}")
    if _entry(target, layout, here, "next")[0] == layout.padding:
        raise DataError(f"{here}: `next` is the padding id {layout.padding}")


def _int_matrix(values: list, shape: tuple[int, ...]) -> np.ndarray | None:
    """``values`` as an int64 array of ``shape`` when they are regular integers (no bools), else None."""
    try:
        array = np.array(values)
    except (ValueError, TypeError):  # ragged
        return None
    if array.shape != shape or array.dtype.kind not in "iu":
        return None
    return array.astype(np.int64)


def _rows_of_split(cfg: DataConfig, split: str, path: Path, counts: dict[str, int]) -> tuple[list[dict], list[str]]:
    """Checked rows of one pickle with ``len_seq >= 3`` (vectorized; a bad row is re-checked to name its problem)."""
    layout = _layout(cfg)
    frame = read_llara_pickle(path)
    _check_layout(path, frame, layout)
    n = len(frame)
    counts[f"{split}_rows_in_file"] = n
    seqs, lens, nexts = frame["seq"].tolist(), frame["len_seq"].to_numpy(np.int64), frame["next"].tolist()
    pair = (2,) if layout.rated else ()
    seq, nxt = _int_matrix(seqs, (n, SEQ_SLOTS, *pair)), _int_matrix(nexts, (n, *pair))
    bad = np.ones(n, dtype=bool) if seq is None or nxt is None else (lens < 1) | (lens > SEQ_SLOTS)
    if not bad.any():
        items, target = (seq[..., 0], nxt[:, 0]) if layout.rated else (seq, nxt)
        real = np.arange(SEQ_SLOTS)[None, :] < lens[:, None]
        kept = lens >= MIN_LEN_SEQ
        bad = ((items < 0) | (items > layout.padding)).any(axis=1)
        bad |= kept & (((items == layout.padding) & real).any(axis=1) | ((items != layout.padding) & ~real).any(axis=1))
        bad |= kept & ((target < 0) | (target >= layout.padding))
    if bad.any():
        for r in np.flatnonzero(bad)[:1]:
            _check_row(f"{path}: row {r + 1}", seqs[r], lens[r], nexts[r], layout)
        raise DataError(f"{path}: row {int(np.flatnonzero(bad)[0]) + 1}: not LLaRA's row layout "
                        f"(seq of {SEQ_SLOTS} item ids, len_seq, next)")
    keep = np.flatnonzero(kept)
    spelled = np.array([str(i) for i in range(layout.padding + 1)], dtype=object)  # id -> its string, by lookup
    names, target_names = spelled[items], spelled[target]
    rows = [{"split": split, "history": names[r, : lens[r]].tolist(), "target": target_names[r]} for r in keep]
    where = [f"{path}: row {r + 1}" for r in keep]
    short = n - keep.size
    counts[f"{split}_rows_len_seq_below_{MIN_LEN_SEQ}"] = int(short)
    if layout.rated:
        ratings, freq = np.unique(nxt[keep, 1], return_counts=True)
        counts.update({f"{split}_target_rating_{int(r)}": int(c) for r, c in zip(ratings, freq, strict=True)})
    if short:
        log.info("%s: dropped %d of %d rows with len_seq < %d (as LLaRA's loader does)", path, short, n, MIN_LEN_SEQ)
    return rows, where


def _names(cfg: DataConfig, path: Path) -> pd.DataFrame:
    """The catalog frame (item_id = LLaRA id, title = name) of u.item or id2name.txt."""
    layout = _layout(cfg)
    encoding = "latin-1" if layout.rated else "utf-8"
    try:
        lines = path.read_bytes().decode(encoding).splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: cannot decode as {encoding} (byte offset {err.start})") from None
    ids, titles, extra = [], [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if layout.rated:  # u.item: "<movielens id>|<title>|..."; LLaRA id = movielens id - 1
            fields = line.split("|")
            if len(fields) < 2 or not fields[0].strip().isdigit():
                raise DataError(f"{path}: line {number} is not a u.item line (<id>|<title>|...)")
            ids.append(str(int(fields[0]) - 1))
            titles.append(fields[1].strip())
            extra.append(fields[0].strip())
        else:
            key, sep, name = line.partition("::")
            if not sep or not key.strip().isdigit():
                raise DataError(f"{path}: line {number} is not an id::name line")
            ids.append(key.strip())
            titles.append(name.strip())
    frame = pd.DataFrame({"item_id": ids, "title": titles, "text": titles})
    out_of_range = [i for i in ids if int(i) >= layout.padding]
    if out_of_range:
        raise DataError(f"{path}: item id {out_of_range[0]} is outside 0..{layout.padding - 1} "
                        f"({len(out_of_range)} such lines); is this the {cfg.llara_dataset} names file?")
    catalog, _ = build_catalog(frame, path, 0, {"item_id": "item_id", "title": "title", "text": "text"})
    if layout.rated:
        catalog["movielens_id"] = extra
    return catalog


def load_llara(cfg: DataConfig) -> PresplitRows:
    """Read, verify and check LLaRA's files into pre-split rows (see the module docstring)."""
    files = llara_input_files(cfg)
    for path in files:
        _verify(cfg, path)
    counts: dict[str, int] = {}
    records, where = [], []
    for path in files[:-1]:
        split = next(s for s, name in SPLIT_FILES.items() if name == path.name)
        rows, places = _rows_of_split(cfg, split, path, counts)
        records += rows
        where += places
    if not records:
        raise DataError(f"{cfg.resolve_path('path')}: no row with len_seq >= {MIN_LEN_SEQ} "
                        f"in {[f.name for f in files[:-1]]}")
    catalog = _names(cfg, files[-1])
    dropped = sum(counts[f"{split}_rows_len_seq_below_{MIN_LEN_SEQ}"] for split in cfg.llara_splits)
    return PresplitRows(pd.DataFrame.from_records(records), where, catalog, counts, dropped)
