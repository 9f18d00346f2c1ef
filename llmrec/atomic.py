"""Atomic file writes: a temporary file in the target folder, then a rename (readers never see half a file)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path``; the temp file never survives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """``data`` as JSON (numpy/torch scalars through ``float``), atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=indent, default=float)

    return atomic_write(path, write)


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """One JSON object per line (UTF-8, non-ASCII kept), atomically; e.g. predictions files."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    return atomic_write(path, write)
