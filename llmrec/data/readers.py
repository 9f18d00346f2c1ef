"""Reading tabular files (CSV / TSV, Parquet, JSON lines) with errors that name the file.

Every reader returns a ``pandas.DataFrame`` of *strings* for text formats (ids keep
their exact spelling; numbers are converted later with row-level errors). Text
files are decoded strictly: UTF-8 unless an ``encoding`` is given, and a file in
another encoding is an error that points at the first bad line and suggests the
``encoding:`` key instead of producing mojibake. Before decoding, the first bytes are
checked: a workbook, archive or Parquet file under a text name (``review.csv`` that is
really an xlsx) is an error saying what the file is, not a decoding error.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from llmrec.data.errors import DataError

log = logging.getLogger(__name__)

FORMATS = ("csv", "parquet", "jsonl")

_EXPORT_SHEET = ("export the sheet as CSV (a spreadsheet program's Save As > CSV UTF-8, or "
                 "pandas.read_excel(path).to_csv(...), which needs openpyxl) and point the config at that file")
# Signatures of binary formats that turn up under text names, and what to do about each.
_SIGNATURES = (
    (b"PK\x03\x04", "a zip archive", "unzip it and point the config at the file inside"),
    (b"\x1f\x8b", "a gzip-compressed file", "decompress it first (gunzip -k FILE) and point the config at the result"),
    (b"PAR1", "a Parquet file", "use `source: parquet` (an `items_path:` is read as Parquet when it ends in .parquet)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an Excel 97-2003 workbook (xls) or another OLE2 document", _EXPORT_SHEET),
)


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


def binary_kind(path: Path) -> tuple[str, str] | None:
    """``(what the file is, what to do)`` when its first bytes are a known binary signature, else None."""
    with path.open("rb") as handle:
        head = handle.read(8)
    for magic, kind, advice in _SIGNATURES:
        if head.startswith(magic):
            return _zip_kind(path) if kind == "a zip archive" else (kind, advice)
    return None


def _zip_kind(path: Path) -> tuple[str, str]:
    """Tell an xlsx workbook (or another Office file) from a plain zip archive by its members."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "a zip archive (unreadable)", "check how the file was produced"
    if any(name.startswith("xl/") for name in names):
        return "an Excel workbook (xlsx)", _EXPORT_SHEET
    if "mimetype" in names and "content.xml" in names:
        return "an OpenDocument file (ods)", _EXPORT_SHEET
    if any(name.startswith("word/") for name in names):
        return "a Word document (docx)", "tables must be CSV, TSV, JSON lines or Parquet files"
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"a zip archive (holding {shown})", "unzip it and point the config at the file inside"


def check_text_file(path: Path, what: str) -> None:
    """Fail, saying what the file really is, when a text reader is handed a binary file."""
    found = binary_kind(path)
    if found is not None:
        kind, advice = found
        raise DataError(f"{path} is {kind}, not {what} text; {advice}")


def _text_encoding(path: Path, encoding: str | None) -> str:
    """``encoding`` (default UTF-8); a UTF-8 byte-order mark is skipped, a UTF-16 one needs `encoding:`."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if encoding is None and head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path}: the file starts with a UTF-16 byte-order mark; set `encoding: utf-16` in the "
                        f"data config")
    if head.startswith(codecs.BOM_UTF8) and _is_utf8(encoding):
        return "utf-8-sig"
    return encoding or "utf-8"


def _is_utf8(encoding: str | None) -> bool:
    try:
        return encoding is None or codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False  # the reader reports the unknown encoding with its config key


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
    quoting: int = csv.QUOTE_MINIMAL,
) -> pd.DataFrame:
    """Read a delimited text file as strings; ``names`` for header-less files; ``quoting`` as in :mod:`csv`."""
    _check_file(path)
    check_text_file(path, {",": "CSV", "\t": "tab-separated"}.get(delimiter, f"{delimiter!r}-delimited"))
    encoding = _text_encoding(path, encoding)
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
            quoting=quoting,
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


def jsonl_objects(path: Path, *, encoding: str | None = None) -> list[tuple[int, dict]]:
    """``(line number, object)`` of every non-blank JSON line, values as parsed; a bad line is an error naming it."""
    _check_file(path)
    check_text_file(path, "JSON lines")
    encoding = _text_encoding(path, encoding)
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as err:
        raise _encoding_error(path, encoding, err) from None
    except LookupError:
        raise DataError(f"{path}: unknown encoding {encoding!r} (config key `encoding`)") from None
    objects = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {number} is a JSON {type(row).__name__}, expected an object")
        objects.append((number, row))
    return objects


def read_jsonl(path: Path, *, encoding: str | None = None) -> pd.DataFrame:
    """Read JSON lines (one object per line) as a table of strings; a bad line is an error naming it."""
    rows = [row for _, row in jsonl_objects(path, encoding=encoding)]
    if not rows:
        raise DataError(f"{path}: the file has no data rows")
    return _as_strings(pd.DataFrame.from_records(rows))


def read_parquet(path: Path) -> pd.DataFrame:
    """Read a Parquet file; values become strings like the text readers'."""
    _check_file(path)
    found = binary_kind(path)
    if found is not None and found[0] != "a Parquet file":
        raise DataError(f"{path} is {found[0]}, not a Parquet file; {found[1]}")
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
