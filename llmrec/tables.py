"""Embedding tables: the on-disk contract between encoders, graph encoders and TMF.

A table is a safetensors file with tensors

* ``item``       float32 ``[n_items, d]``; row ``i`` is internal item ``i``
* ``item_mask``  bool ``[n_items]``; False where the modality is missing (that row is zeros)
* ``behavior``   float32 ``[n_behaviors, d_b]`` (optional; graph encoders only)

plus a JSON sidecar ``<name>.json`` with metadata: ``model``, ``dataset``,
``dataset_fingerprint``, ``item_ids`` (internal index -> raw id), ``behaviors``,
and anything else the producer wants to record (encoder settings, timings).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from llmrec.io import atomic_write


@dataclass
class EmbeddingTable:
    item: torch.Tensor
    item_mask: torch.Tensor
    behavior: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.item.shape[1])

    @property
    def n_items(self) -> int:
        return int(self.item.shape[0])


def save_table(path: str | Path, table: EmbeddingTable) -> Path:
    """Write ``table`` to ``path`` (.safetensors) and its metadata to ``path`` with .json; atomic."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: embedding tables are .safetensors files")
    item = table.item.detach().to(torch.float32).contiguous().cpu()
    mask = table.item_mask.detach().to(torch.bool).contiguous().cpu()
    if item.ndim != 2 or mask.shape != (item.shape[0],):
        raise ValueError(f"{path}: expected item [n, d] and item_mask [n], "
                         f"got {tuple(item.shape)} and {tuple(mask.shape)}")
    tensors = {"item": item, "item_mask": mask}
    if table.behavior is not None:
        tensors["behavior"] = table.behavior.detach().to(torch.float32).contiguous().cpu()
    atomic_write(path, lambda tmp: save_file(tensors, tmp))
    meta = json.dumps(table.metadata, indent=2, sort_keys=True, default=str)
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(meta, encoding="utf-8"))
    return path


def load_table(path: str | Path) -> EmbeddingTable:
    """Read a table written by :func:`save_table`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding table not found: {path}")
    tensors = load_file(str(path))
    if "item" not in tensors:
        raise ValueError(f"{path}: no 'item' tensor (found {sorted(tensors)})")
    item = tensors["item"]
    mask = tensors.get("item_mask", torch.ones(item.shape[0], dtype=torch.bool))
    meta_path = path.with_suffix(".json")
    metadata = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    return EmbeddingTable(item=item, item_mask=mask, behavior=tensors.get("behavior"), metadata=metadata)
