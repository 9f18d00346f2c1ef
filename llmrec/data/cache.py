"""The on-disk prepared dataset: ``<cache_dir>/<name>-<fingerprint[:16]>/``.

Layout::

    samples/{train,valid,test}/   HF datasets (save_to_disk, Arrow), SAMPLE_COLUMNS
    sequences.npz                 offsets, items, behaviors, timestamps, valid_pos, test_pos
    catalog.parquet               one row per internal item (images stay paths)
    index.json                    user_ids, item_ids, behaviors, target_behavior
    stats.json, config.yaml       statistics and the resolved config
    candidates/*.arrow            frozen candidate sets (added on first use)

The fingerprint is the sha256 of a format version, every input file's bytes
(content, not path or mtime) and the config fields that change the result
(everything except ``name``, paths, ``cache_dir`` and ``candidates``, which have
their own files; ``synthetic`` only for the synthetic source). A folder is
written under a temporary name and renamed when complete, so an existing folder
is always a whole dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
from datasets.table import InMemoryTable

from llmrec.config import save_config, to_dict
from llmrec.data.config import DataConfig
from llmrec.data.splits import FlatSequences
from llmrec.data.types import SPLITS, SequenceDataset
from llmrec.io import commit_folder, temp_folder_beside

log = logging.getLogger(__name__)

FORMAT_VERSION = "llmrec-data-1"
NOT_IN_FINGERPRINT = ("name", "path", "items_path", "cache_dir", "candidates")
# Keys added after the first data format, left out of the fingerprint while they hold their default: adding
# them kept every earlier dataset version valid (its cache, frozen candidates, trained runs and the results
# that name its fingerprint). A key added later belongs here with its default (tests/data/test_cache.py pins
# the shop's fingerprint).
ADDED_AT_DEFAULT: dict[tuple[str, ...], Any] = {
    ("llara_dataset",): None, ("llara_splits",): list(SPLITS), ("verify_sha256",): True,
    ("columns", "id_map"): {}, ("item_columns", "extra"): [], ("synthetic", "title_order"): "brand_first",
}


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(cfg: DataConfig, files: list[Path]) -> str:
    """sha256 over the format version, the input files' bytes and the result-relevant config."""
    digest = hashlib.sha256(FORMAT_VERSION.encode())
    for path in files:
        digest.update(f"\n{Path(path).name}:{file_sha256(path)}".encode())
    relevant = {k: v for k, v in to_dict(cfg).items() if k not in NOT_IN_FINGERPRINT}
    for path, default in ADDED_AT_DEFAULT.items():
        *parents, key = path
        holder = relevant
        for parent in parents:
            holder = holder.get(parent) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and key in holder and holder[key] == default:
            del holder[key]
    if cfg.source != "synthetic":
        relevant.pop("synthetic")  # generator settings only matter to the synthetic source
    digest.update(json.dumps(relevant, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def dataset_root(cache_dir: Path, name: str, fp: str) -> Path:
    return Path(cache_dir) / f"{name}-{fp[:16]}"


def is_complete(root: Path) -> bool:
    return (root / "stats.json").is_file() and (root / "index.json").is_file()


def save_prepared(
    root: Path,
    cfg: DataConfig,
    index: dict[str, Any],
    seqs: FlatSequences,
    samples: dict[str, pa.Table],
    catalog: pd.DataFrame,
    stats: dict[str, Any],
) -> None:
    """Write everything into a temporary sibling folder, then rename it to ``root``."""
    tmp = temp_folder_beside(root)
    try:
        bars_were_on = not datasets.utils.are_progress_bars_disabled()
        datasets.utils.disable_progress_bars()  # three tiny bars per save; our own log line says it
        try:
            for split in SPLITS:
                table = InMemoryTable(samples[split])  # our fingerprint: skips datasets' slow pickle hashing
                dataset = datasets.Dataset(table, fingerprint=f"{root.name}-{split}")
                shards = None if len(dataset) else 1  # datasets writes no shard at all for 0 rows otherwise
                dataset.save_to_disk(str(tmp / "samples" / split), num_shards=shards)
        finally:
            if bars_were_on:
                datasets.utils.enable_progress_bars()
        np.savez(tmp / "sequences.npz", offsets=seqs.offsets, items=seqs.items, behaviors=seqs.behaviors,
                 timestamps=seqs.timestamps, valid_pos=seqs.valid_pos, test_pos=seqs.test_pos)
        catalog.to_parquet(tmp / "catalog.parquet", index=False)
        (tmp / "index.json").write_text(json.dumps(index), encoding="utf-8")
        save_config(cfg, tmp / "config.yaml")
        (tmp / "stats.json").write_text(json.dumps(stats, indent=1), encoding="utf-8")
        if is_complete(root):  # a concurrent run finished first: keep its folder
            log.info("another run already wrote %s; keeping it", root)
        else:  # absent, or something incomplete left by another run: ours replaces it
            commit_folder(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_prepared(root: Path) -> SequenceDataset:
    """Read a prepared dataset folder back (samples are memory-mapped Arrow)."""
    index = json.loads((root / "index.json").read_text(encoding="utf-8"))
    stats = json.loads((root / "stats.json").read_text(encoding="utf-8"))
    with np.load(root / "sequences.npz") as arrays:
        seqs = FlatSequences(**{key: arrays[key] for key in arrays.files})
    samples = {split: datasets.load_from_disk(str(root / "samples" / split)) for split in SPLITS}
    return SequenceDataset(
        name=stats["name"],
        item_ids=index["item_ids"],
        user_ids=index["user_ids"],
        behaviors=index["behaviors"],
        target_behavior=index["target_behavior"],
        catalog=_read_catalog(root / "catalog.parquet"),
        sequences=seqs.to_sequences(),
        samples=samples,
        stats=stats,
        fingerprint=stats["fingerprint"],
        root=root,
    )


def _read_catalog(path: Path) -> pd.DataFrame:
    """The catalog with missing images as ``None`` (not NaN), as the loaders produced it."""
    catalog = pd.read_parquet(path)
    image = catalog["image"].astype(object)
    catalog["image"] = image.where(image.notna(), None)
    return catalog
