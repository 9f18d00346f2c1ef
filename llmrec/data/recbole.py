"""RecBole atomic files: finding a dataset's ``.inter`` / ``.item`` files and reading their typed headers.

A RecBole dataset folder ``<name>/`` holds ``<name>.inter`` (required) and optionally
``<name>.item`` (``.user`` and the rest are not read). Each file is tab-separated; its
first line names every field with its type, ``user_id:token\\titem_id:token\\trating:float``:

* ``token``: one value (ids, single labels), kept as written;
* ``token_seq``: space-separated tokens (a title ``Toy Story``, genres ``Animation Comedy``);
* ``float`` / ``float_seq``: a number / space-separated numbers.

Fields are addressed without their type (``columns.rating: rating``). Quotes have no
special meaning (RecBole writes titles such as ``"Great Day in Harlem, A"`` as they are).
:func:`llmrec.data.loaders.load_recbole` turns the tables into interactions and a catalog.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from llmrec.data.errors import DataError
from llmrec.data.readers import read_text_table

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")


def atomic_files(path: Path) -> tuple[Path, Path | None]:
    """``(<name>.inter, <name>.item or None)`` for a dataset folder or an ``.inter`` file."""
    if path.is_dir():
        inter = path / f"{path.name}.inter"
        if not inter.is_file():
            found = sorted(p.name for p in path.glob("*.inter"))
            if len(found) != 1:
                raise DataError(
                    f"{path}: expected the RecBole file {inter.name} (config key `path`: the dataset folder or its "
                    f".inter file); .inter files found: {found}"
                )
            inter = path / found[0]
    else:
        inter = path
        if inter.suffix != ".inter":
            raise DataError(f"{path}: not a RecBole .inter file (config key `path`: the dataset folder or its "
                            f".inter file)")
    item = inter.with_suffix(".item")
    return inter, item if item.is_file() else None


def read_atomic(path: Path, encoding: str | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """The file's rows as strings, columns named without their types, and ``{field: type}``."""
    frame = read_text_table(path, delimiter="\t", encoding=encoding, quoting=csv.QUOTE_NONE)
    types: dict[str, str] = {}
    for number, column in enumerate(frame.columns, start=1):
        name, sep, kind = str(column).rpartition(":")
        if not sep or not name:
            raise DataError(
                f"{path}: header column {number} {column!r} has no type; RecBole atomic files name every field as "
                f"name:type with a type from {list(FIELD_TYPES)} (e.g. user_id:token)"
            )
        base, dot, copy = kind.partition(".")
        if base in FIELD_TYPES and dot and copy.isdigit():  # pandas renames a repeated header "x:token" to "x:token.1"
            raise DataError(f"{path}: header column {number} {name}:{base}: the field appears twice")
        if kind not in FIELD_TYPES:
            raise DataError(
                f"{path}: header column {number} {column!r} has the unknown type {kind!r}; "
                f"expected one of {list(FIELD_TYPES)}"
            )
        if name in types:
            raise DataError(f"{path}: header column {number} {column!r}: the field {name!r} appears twice")
        types[name] = kind
    frame.columns = list(types)
    return frame, types
