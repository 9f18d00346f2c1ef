"""Atomic writes, the one place that renames into place: readers never see half a file or half a folder.

* files: :func:`atomic_write` (and :func:`write_text`, :func:`write_json`, :func:`write_jsonl` over it) writes a
  temporary file beside the target, then renames it onto the target;
* folders: :func:`temp_folder_beside` gives a temporary sibling folder to fill, :func:`commit_folder` renames it
  into place (replacing or refusing an existing one), :func:`move_files_into` moves a filled temporary folder's
  files into an existing folder one rename at a time, named marker files last;
* growing JSONL files (resumable outputs): :func:`append_jsonl` appends whole lines, :func:`complete_jsonl` reads
  them back and cuts off a line torn by a crash.

Everything published gets the permissions of a normally created file or folder (``tempfile`` makes them
0600 / 0700).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_permissions(path: str | Path) -> None:
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path``; the temp file never survives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        _usual_permissions(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``text`` as UTF-8, atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


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


def temp_folder_beside(final: str | Path) -> Path:
    """A new empty folder next to ``final`` (same file system, so :func:`commit_folder` can rename it)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))


def commit_folder(tmp: str | Path, final: str | Path, *, replace: bool = True) -> Path:
    """Rename the filled folder ``tmp`` to ``final``.

    An existing ``final`` is replaced (``replace=True``: it is first renamed aside, so a crash leaves either
    the old or the new folder whole, then removed) or kept (``replace=False``: ``FileExistsError``, ``tmp``
    untouched, the caller decides).
    """
    tmp, final = Path(tmp), Path(final)
    _usual_permissions(tmp)
    if final.exists():
        if not replace:
            raise FileExistsError(f"{final} exists")
        aside = final.with_name(f"{final.name}.old")  # graph_encoders.trainer looks there after a crash
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
        os.replace(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def move_files_into(tmp: str | Path, folder: str | Path, last: Iterable[str] = ()) -> None:
    """Move every file of ``tmp`` into ``folder`` by atomic renames, the names in ``last`` (markers) at the end."""
    folder, last = Path(folder), set(last)
    folder.mkdir(parents=True, exist_ok=True)
    for item in sorted(Path(tmp).iterdir(), key=lambda f: f.name in last):
        _usual_permissions(item)
        os.replace(item, folder / item.name)


def append_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Append one JSON line per record, each by one ``write`` then ``fsync``: a crash leaves every earlier line
    whole and at most the last one torn (:func:`complete_jsonl` cuts that one off)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        for record in records:
            os.write(fd, (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
            os.fsync(fd)
    finally:
        os.close(fd)


def complete_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL file written by :func:`append_jsonl` ([] when it does not exist); a last line without
    its newline (a write cut short) is removed from the file, so appending continues on a line boundary."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        os.truncate(path, end)
    return [json.loads(line) for line in data[:end].decode("utf-8").splitlines() if line.strip()]
