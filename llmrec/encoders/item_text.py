"""Item text ``text_i`` of TMF Eq. 2, rendered from catalog columns.

TMF §3.2 concatenates "title, brand, categories, and description" into
``text_i``. Catalogs differ in which of these they have, so the text is a
*template*: a list of segments, each a Python format string over catalog
columns (``"Brand: {brand}"``), joined by a separator. Choices made here (the
paper gives no format):

* a column the template names but the catalog lacks is an error naming the
  column and listing the catalog's columns;
* a segment is left out for an item when every column it names is missing
  there (NaN, None, empty string), so "Brand: nan" never reaches the encoder;
  a missing value inside a segment that also names present columns renders as
  an empty string;
* list-like values (e.g. several categories) are joined with ", ";
* an item whose segments are all left out has no text: its row is zeros with
  mask False, counted as ``empty_text``.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

_FORMATTER = string.Formatter()


@dataclass(frozen=True)
class ItemTextTemplate:
    """Segments of format strings over catalog columns, joined by ``separator``."""

    segments: tuple[str, ...]
    separator: str = ". "

    def __post_init__(self) -> None:
        for segment in self.segments:
            _segment_fields(segment)  # raises on malformed segments

    @property
    def columns(self) -> list[str]:
        """Catalog columns the template reads, in order of first use."""
        seen: dict[str, None] = {}
        for segment in self.segments:
            for name in _segment_fields(segment):
                seen.setdefault(name, None)
        return list(seen)

    def describe(self) -> dict[str, Any]:
        return {"segments": list(self.segments), "separator": self.separator}

    def check_columns(self, available: Sequence[str], where: str = "catalog") -> None:
        """Raise ``ValueError`` naming the template columns missing from ``available``."""
        missing = [c for c in self.columns if c not in set(available)]
        if missing:
            raise ValueError(
                f"text template {list(self.segments)!r} names column(s) {missing} that the {where} does not have; "
                f"available columns: {list(available)}"
            )

    def render(self, row: dict[str, Any]) -> str | None:
        """The text of one item (``None`` if every segment is empty)."""
        parts = []
        for segment in self.segments:
            names = _segment_fields(segment)
            values = {name: _as_text(row[name]) for name in names}
            if names and all(v == "" for v in values.values()):
                continue
            text = segment.format(**values).strip()
            if text:
                parts.append(text)
        return self.separator.join(parts) if parts else None


def render_item_texts(catalog: Any, template: ItemTextTemplate) -> list[str | None]:
    """``text_i`` for every catalog row (``None`` where the item has no text)."""
    template.check_columns([str(c) for c in catalog.columns])
    columns = {name: catalog[name].tolist() for name in template.columns}
    rows = ({name: values[i] for name, values in columns.items()} for i in range(len(catalog)))
    return [template.render(row) for row in rows]


def _segment_fields(segment: str) -> list[str]:
    try:
        parsed = list(_FORMATTER.parse(segment))
    except ValueError as err:
        raise ValueError(f"text template segment {segment!r} is not a valid format string: {err}") from None
    names = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name or name.isdigit() or "." in name or "[" in name:
            raise ValueError(
                f"text template segment {segment!r}: field {{{name}}} must be a plain column name "
                "(no positional fields, attribute or index access)"
            )
        names.append(name)
    return names


def _as_text(value: Any) -> str:
    """A catalog cell as text; missing values (None, NaN, NA, empty) become ''."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(t for t in (_as_text(v) for v in value) if t)
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    return str(value).strip()
