"""Reading tabular files (CSV / TSV, Parquet, JSON lines) with errors that name the file.

Every reader returns a ``pandas.DataFrame`` of *strings* for text formats (ids keep
their exact spelling; numbers are converted later with row-level errors). Text
files are decoded strictly: UTF-8 unless an ``encoding`` is given, and a file in
another encoding is an error that points at the first bad line and suggests the
``encoding:`` key instead of producing mojibake.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import pandas as pd

from llmrec.data.errors import DataError

log = logging.getLogger(__name__)

FORMATS = ("csv", "parquet", "jsonl")


def format_of(path: Path) -> str:
    """Guess a file's format from its suffix (``.csv``/``.tsv``/``.txt``, ``.parquet``, ``.jsonl``/``.json``)."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    return "csv"


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")


def _encoding_error(path: Path, encoding: str, err: UnicodeDecodeError) -> DataError:
    """Locate the first undecodable line of ``path`` and suggest the ``encoding:`` key."""
    data = path.read_bytes()
    try:
        data.decode(encoding)
        where = ""
    except UnicodeDecodeError as exact:
        line = data[: exact.start].count(b"\n") + 1
        where = f" at line {line} (byte 0x{data[exact.start]:02x})"
    return DataError(
        f"{path}: cannot decode the file as {encoding}{where}. If the file uses another encoding, "
        f"set it in the data config, e.g. `encoding: latin-1` (or cp1252, gb18030, ...)"
    )


def read_text_table(
    path: Path,
    *,
    delimiter: str = ",",
    encoding: str | None = None,
    names: Sequence[str] | None = None,
    header: bool = True,
) -> pd.DataFrame:
    """Read a delimited text file as strings; ``names`` for header-less files."""
    _check_file(path)
    encoding = encoding or "utf-8"
    try:
        frame = pd.read_csv(
            path,
            sep=delimiter,
            header=0 if header else None,
            names=list(names) if names is not None else None,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            encoding=encoding,
            encoding_errors="strict",
            engine="c" if len(delimiter) == 1 else "python",
        )
    except UnicodeDecodeError as err:
        raise _encoding_error(path, encoding, err) from None
    except LookupError:
        raise DataError(f"{path}: unknown encoding {encoding!r} (config key `encoding`)") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: not a valid {delimiter!r}-delimited file: {err}") from None
    if frame.empty:
        raise DataError(f"{path}: the file has no data rows" + (" (only a header)" if header else ""))
    return frame


def read_jsonl(path: Path, *, encoding: str | None = None) -> pd.DataFrame:
    """Read JSON lines (one object per line); a bad line is an error naming it."""
    _check_file(path)
    encoding = encoding or "utf-8"
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as err:
        raise _encoding_error(path, encoding, err) from None
    except LookupError:
        raise DataError(f"{path}: unknown encoding {encoding!r} (config key `encoding`)") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {number} is a JSON {type(row).__name__}, expected an object")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: the file has no data rows")
    return _as_strings(pd.DataFrame.from_records(rows))


def read_parquet(path: Path) -> pd.DataFrame:
    """Read a Parquet file; values become strings like the text readers'."""
    _check_file(path)
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    if frame.empty:
        raise DataError(f"{path}: the file has no data rows")
    return _as_strings(frame)


def _as_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """Convert every column to str, missing values to ''; integral floats lose their '.0'."""
    out = {}
    for name in frame.columns:
        col = frame[name]
        missing = col.isna()
        if pd.api.types.is_float_dtype(col) and (col[~missing] % 1 == 0).all():
            col = col.astype("Int64")
        out[str(name)] = col.astype(str).where(~missing, "")
    return pd.DataFrame(out)


def read_table(path: Path, fmt: str, *, delimiter: str = ",", encoding: str | None = None) -> pd.DataFrame:
    """Read ``path`` in format ``fmt`` (one of :data:`FORMATS`) with a header row."""
    if fmt == "csv":
        return read_text_table(path, delimiter=delimiter, encoding=encoding)
    if fmt == "jsonl":
        return read_jsonl(path, encoding=encoding)
    if fmt == "parquet":
        return read_parquet(path)
    raise DataError(f"{path}: unknown format {fmt!r}; expected one of {list(FORMATS)}")


def require_columns(frame: pd.DataFrame, path: Path, required: dict[str, str | None]) -> None:
    """Fail naming the file, the missing column, its config key and the columns found."""
    for key, column in required.items():
        if column is not None and column not in frame.columns:
            raise DataError(
                f"{path}: missing column {column!r} (config key {key}); columns found: {list(frame.columns)}"
            )
