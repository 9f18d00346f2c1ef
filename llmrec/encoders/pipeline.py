"""Encode a prepared dataset's catalog into one embedding table per modality, cached.

:func:`encode_items` is the library entry point (TMF's ``v_text`` / ``v_image``,
Eq. 1-2, for every item). A table is cached under
``<cache_dir or dataset folder/embeddings>/<modality>-<encoder>-<key>.safetensors``
where the key hashes the encoder's name and settings, its weights fingerprint,
the catalog content it reads (rendered texts, or image references with file
size and mtime) and, for text, the template. A second run with the same inputs
loads the table without touching the model (and logs the cache hit).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from llmrec.data.types import SequenceDataset
from llmrec.devices import kernel_settings
from llmrec.encoders.base import ItemEncoder
from llmrec.encoders.config import EncodeConfig
from llmrec.encoders.factory import build_encoders
from llmrec.encoders.images import IMAGE_STATUSES, ImageSource, image_reference
from llmrec.encoders.item_text import ItemTextTemplate, render_item_texts
from llmrec.tables import EmbeddingTable, load_table, save_table

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when the table layout or key recipe changes (2: the kernel settings joined the key)


@dataclass
class ModalityResult:
    """One modality's table and how it was obtained."""

    modality: str
    table: EmbeddingTable
    path: Path
    cache_hit: bool
    seconds: float

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.table.metadata.get("counts", {}))


@dataclass
class EncodeRun:
    """Everything :func:`run_encoding` produced."""

    results: dict[str, ModalityResult] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)  # modality -> why no table was made

    @property
    def tables(self) -> dict[str, EmbeddingTable]:
        return {name: r.table for name, r in self.results.items()}


def encode_items(cfg: EncodeConfig, dataset: SequenceDataset,
                 encoders: dict[str, ItemEncoder] | None = None) -> dict[str, EmbeddingTable]:
    """``{"text": table, "image": table}`` (only the configured, available modalities), cached."""
    return run_encoding(cfg, dataset, encoders).tables


def run_encoding(cfg: EncodeConfig, dataset: SequenceDataset,
                 encoders: dict[str, ItemEncoder] | None = None) -> EncodeRun:
    """Like :func:`encode_items` but also reports cache hits, timings and absent modalities."""
    _check_catalog(dataset)
    encoders = build_encoders(cfg) if encoders is None else encoders
    cache = cache_folder(cfg, dataset)
    run = EncodeRun()
    if "text" in cfg.modalities:
        run.results["text"] = _encode_text(cfg, dataset, encoders["text"], cache)
    if "image" in cfg.modalities:
        column = cfg.image.column
        if column not in dataset.catalog.columns:
            reason = (f"the catalog of {dataset.name!r} has no {column!r} column "
                      f"(columns: {list(dataset.catalog.columns)})")
            logger.warning("image modality absent: %s", reason)
            run.absent["image"] = reason
        else:
            run.results["image"] = _encode_images(cfg, dataset, encoders["image"], cache)
    if cfg.output_dir is not None:
        for name, result in run.results.items():
            out = save_table(Path(cfg.output_dir) / f"{name}.safetensors", result.table)
            logger.info("wrote %s table to %s", name, out)
    return run


def cache_folder(cfg: EncodeConfig, dataset: SequenceDataset) -> Path:
    """``cfg.cache_dir`` or ``<prepared dataset folder>/embeddings``."""
    if cfg.cache_dir is not None:
        return Path(cfg.cache_dir)
    if dataset.root is None:
        raise ValueError(f"dataset {dataset.name!r} has no cache folder (root is None); "
                         "set cache_dir in the encode config")
    return Path(dataset.root) / "embeddings"


# -- text ----------------------------------------------------------------------------------------------
def _encode_text(cfg: EncodeConfig, dataset: SequenceDataset, encoder: ItemEncoder, cache: Path) -> ModalityResult:
    template = ItemTextTemplate(tuple(cfg.text.template), cfg.text.separator)
    try:
        texts = render_item_texts(dataset.catalog, template)
    except ValueError as err:
        raise ValueError(f"dataset {dataset.name!r}: {err}") from None
    inputs = {"item_ids": dataset.item_ids, "texts": texts}
    extra = {"text_template": template.describe()}
    return _cached("text", cfg, dataset, encoder, cache, inputs, extra,
                   lambda: _run_text(cfg, encoder, texts))


def _run_text(cfg: EncodeConfig, encoder: ItemEncoder, texts: list[str | None]):
    valid = [i for i, t in enumerate(texts) if t]
    counts = {"items": len(texts), "encoded": len(valid), "empty_text": len(texts) - len(valid)}
    chunks = []
    with _progress(cfg, len(valid), f"text ({encoder.name})") as bar:
        for batch in _batches(valid, cfg.batch_size):
            chunks.append((batch, encoder.encode_texts([texts[i] for i in batch])))
            bar.update(len(batch))
    return chunks, counts


# -- images --------------------------------------------------------------------------------------------
def _encode_images(cfg: EncodeConfig, dataset: SequenceDataset, encoder: ItemEncoder, cache: Path) -> ModalityResult:
    root = cfg.image.image_root or dataset.root
    source = ImageSource(root=Path(root) if root is not None else None, allow_network=cfg.image.allow_network,
                         timeout_s=cfg.image.timeout_s,
                         max_download_bytes=int(cfg.image.max_download_mb * 1_000_000))
    refs = [image_reference(v) for v in dataset.catalog[cfg.image.column].tolist()]
    inputs = {"item_ids": dataset.item_ids, "images": [source.stat_token(r) for r in refs],
              "allow_network": cfg.image.allow_network}
    extra = {"image_column": cfg.image.column, "image_root": str(root) if root is not None else None,
             "allow_network": cfg.image.allow_network}
    return _cached("image", cfg, dataset, encoder, cache, inputs, extra,
                   lambda: _run_images(cfg, encoder, source, refs))


def _run_images(cfg: EncodeConfig, encoder: ItemEncoder, source: ImageSource, refs: list[str | None]):
    counts = {"items": len(refs), **{("encoded" if s == "ok" else s): 0 for s in IMAGE_STATUSES}}
    chunks = []
    with _progress(cfg, len(refs), f"image ({encoder.name})") as bar:
        for batch in _batches(list(range(len(refs))), cfg.batch_size):
            ok, images = [], []
            for i in batch:
                image, status = source.load(refs[i])
                counts["encoded" if status == "ok" else status] += 1
                if image is not None:
                    ok.append(i)
                    images.append(image)
            if ok:
                chunks.append((ok, encoder.encode_images(images)))
            bar.update(len(batch))
    problems = {k: v for k, v in counts.items() if k not in ("items", "encoded") and v}
    if problems:
        logger.warning("images without an embedding (zero rows, mask False): %s", problems)
    return chunks, counts


# -- shared --------------------------------------------------------------------------------------------
def _cached(modality: str, cfg: EncodeConfig, dataset: SequenceDataset, encoder: ItemEncoder, cache: Path,
            inputs: dict[str, Any], extra: dict[str, Any], compute) -> ModalityResult:
    start = time.perf_counter()
    input_fp = _hash(inputs)
    # the floats depend on the CPU kernels (AVX2 / AVX512, kernel-limiting variables): a table encoded under other
    # kernels is another table (docs/encoders.md "Tables and the cache"), so a run under ATEN_CPU_CAPABILITY=avx2
    # & co. re-encodes
    kernels = kernel_settings()
    key = _hash({"format": CACHE_FORMAT, "modality": modality, "encoder": encoder.name,
                 "settings": encoder.describe(), "weights": encoder.weights_fingerprint(),
                 "catalog": input_fp, "kernels": kernels, **extra})
    path = cache / f"{modality}-{_slug(encoder.name)}-{key[:16]}.safetensors"
    if path.is_file():
        table = load_table(path)
        if table.metadata.get("cache_key") == key and table.n_items == dataset.n_items:
            logger.info("cache hit: %s table of %s loaded from %s (model not run)", modality, dataset.name, path)
            return ModalityResult(modality, table, path, True, time.perf_counter() - start)
        logger.warning("cache file %s does not match (key or item count); re-encoding", path)
    logger.info("encoding %s of %d items of %s with %s", modality, dataset.n_items, dataset.name, encoder.name)
    chunks, counts = compute()
    dim = int(chunks[0][1].shape[1]) if chunks else encoder.dim
    item = torch.zeros(dataset.n_items, dim, dtype=torch.float32)
    mask = torch.zeros(dataset.n_items, dtype=torch.bool)
    for rows, vectors in chunks:
        index = torch.as_tensor(rows, dtype=torch.long)
        item[index] = vectors
        mask[index] = True
    seconds = time.perf_counter() - start
    metadata = {
        "model": encoder.name, "modality": modality, "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint, "item_ids": list(dataset.item_ids),
        "behaviors": list(dataset.behaviors), "encoder": encoder.describe(),
        "weights_fingerprint": encoder.weights_fingerprint(), "random_init": encoder.random_init,
        "catalog_fingerprint": input_fp, "cache_key": key, "kernels": kernels, "dim": dim, "counts": counts,
        "encode_seconds": round(seconds, 3), "cache_format": CACHE_FORMAT, **extra,
    }
    table = EmbeddingTable(item=item, item_mask=mask, metadata=metadata)
    save_table(path, table)
    logger.info("%s: %d/%d items encoded, dim %d, %.1fs -> %s", modality, int(mask.sum()), dataset.n_items, dim,
                seconds, path)
    return ModalityResult(modality, table, path, False, seconds)


def _check_catalog(dataset: SequenceDataset) -> None:
    catalog = dataset.catalog
    if catalog is None or len(catalog) != dataset.n_items:
        got = "no catalog" if catalog is None else f"{len(catalog)} catalog rows"
        raise ValueError(f"dataset {dataset.name!r}: {got} for {dataset.n_items} items; expected one row per item")
    if "item_id" in catalog.columns:
        ids = [str(v) for v in catalog["item_id"].tolist()]
        if ids != [str(v) for v in dataset.item_ids]:
            first = next(i for i, (a, b) in enumerate(zip(ids, dataset.item_ids, strict=True)) if a != str(b))
            raise ValueError(f"dataset {dataset.name!r}: catalog row {first} has item_id {ids[first]!r} but internal "
                             f"item {first} is {dataset.item_ids[first]!r}; the catalog must be in internal order")


def _batches(indices: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), size):
        yield list(indices[start:start + size])


def _progress(cfg: EncodeConfig, total: int, desc: str):
    return tqdm(total=total, desc=f"encode {desc}", unit="item", disable=not cfg.progress)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")
