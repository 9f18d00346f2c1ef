"""Benchmark: items/s of each item encoder on CPU, cold (model load + encode), warm, and cached.

    python bench/encode.py [--items 512] [--batch-size 64] [--clip-model ViT-B-32] [--clip-batch-size 16]

Encoders: the bundled all-MiniLM-L6-v2 (text), HandcraftedImageFeatures (image),
and open_clip ``--clip-model`` with RANDOM weights (image tower and text tower;
random weights cost the same compute as trained ones). The catalog is drawn
with the synthetic shop's product drawer (64x64 PNGs) into a temporary folder.

Per encoder, through :func:`llmrec.encoders.run_encoding`:

* ``cold``: fresh cache, model not loaded yet (includes loading the weights and, for the first
  encoder of a library, importing it);
* ``warm``: fresh cache, model already in memory (pure encoding + image decoding);
* ``cached``: the same inputs again (table loaded from the cache, model not run).

Writes ``bench/out/encode.json`` and ``bench/out/encode.md``. Timings taken while other
jobs share the machine are not trustworthy; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _catalog(n_items: int, folder: Path):
    """A shop-like catalog: titles, descriptions and drawn product images."""
    import numpy as np
    import pandas as pd

    from llmrec.data import synthetic as shop

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_items):
        pick = {name: values[rng.integers(len(values))] for name, values in (
            ("category", shop.CATEGORIES), ("brand", shop.BRANDS), ("color", list(shop.COLORS)),
            ("pattern", shop.PATTERNS), ("size", shop.SIZES), ("material", shop.MATERIALS))}
        path = folder / f"i{i:05d}.png"
        shop.draw_item_image(pick["category"], pick["color"], pick["pattern"], pick["size"], 64).save(path)
        rows.append({"item_id": f"i{i:05d}", "title": f"{pick['brand']} {pick['category']} ({pick['size']})",
                     "text": (f"A size {pick['size']} {pick['category']} by {pick['brand']}, "
                              f"made of {pick['material']}."),
                     "image": str(path)})
    return pd.DataFrame(rows)


def _dataset(catalog, root: Path):
    from llmrec.data.types import SequenceDataset

    ids = catalog["item_id"].tolist()
    return SequenceDataset(name="bench", item_ids=ids, user_ids=[], behaviors=["view", "purchase"],
                           target_behavior="purchase", catalog=catalog, sequences=[], samples={},
                           fingerprint="bench", root=root)


def _measure(label: str, cfg_dict: dict, dataset, tmp: Path) -> dict:
    from llmrec.config import from_dict
    from llmrec.encoders import EncodeConfig, build_encoders, run_encoding

    modality = "text" if cfg_dict["text"]["kind"] != "none" else "image"
    timings = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # random-init CLIP warns loudly by design
        start = time.perf_counter()
        cfg = from_dict(EncodeConfig, {**cfg_dict, "cache_dir": str(tmp / f"{label}-cold"), "progress": False})
        encoders = build_encoders(cfg)
        run_encoding(cfg, dataset, encoders)
        timings["cold"] = time.perf_counter() - start
        warm_cfg = from_dict(EncodeConfig, {**cfg_dict, "cache_dir": str(tmp / f"{label}-warm"), "progress": False})
        start = time.perf_counter()
        result = run_encoding(warm_cfg, dataset, encoders).results[modality]
        timings["warm"] = time.perf_counter() - start
        start = time.perf_counter()
        cached = run_encoding(warm_cfg, dataset, build_encoders(warm_cfg)).results[modality]
        timings["cached"] = time.perf_counter() - start
    assert cached.cache_hit and not result.cache_hit
    n = dataset.n_items
    return {"encoder": label, "modality": modality, "model": result.table.metadata["model"],
            "dim": result.table.dim, "batch_size": cfg.batch_size, "random_init": result.table.metadata["random_init"],
            "seconds": {k: round(v, 3) for k, v in timings.items()},
            "items_per_s": {k: round(n / v, 1) for k, v in timings.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64, help="MiniLM and handcrafted batch size")
    parser.add_argument("--clip-model", default="ViT-B-32", help="open_clip architecture (random weights)")
    parser.add_argument("--clip-batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    clip = {"model": args.clip_model, "allow_random_init": True, "seed": 0}
    encoders = {
        "minilm_text": {"text": {"kind": "sentence_transformer", "template": ["{title}", "{text}"]},
                        "image": {"kind": "none"}, "batch_size": args.batch_size},
        "handcrafted_image": {"text": {"kind": "none"}, "image": {"kind": "handcrafted"},
                              "batch_size": args.batch_size},
        "open_clip_image": {"text": {"kind": "none"}, "image": {"kind": "open_clip"}, "clip": clip,
                            "batch_size": args.clip_batch_size},
        "open_clip_text": {"text": {"kind": "open_clip", "template": ["{title}", "{text}"]},
                           "image": {"kind": "none"}, "clip": clip, "batch_size": args.clip_batch_size},
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmrec-bench-encode-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "images").mkdir()
        dataset = _dataset(_catalog(args.items, tmp_path / "images"), tmp_path)
        for label, cfg in encoders.items():
            rows.append(_measure(label, cfg, dataset, tmp_path))
            print(f"{label}: {rows[-1]['items_per_s']}")

    report = {"items": args.items, "torch_threads": torch.get_num_threads(),
              "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count()},
              "results": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "encode.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    lines = [f"# Item encoders on CPU: {args.items} items, {torch.get_num_threads()} torch threads", "",
             "cold = model load + encode, warm = encode with the model in memory, cached = table from the cache.", "",
             ("| encoder | model | dim | batch | cold items/s | warm items/s | cached items/s | "
              "cold s | warm s | cached s |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        model = r["model"] + (" (random init)" if r["random_init"] else "")
        ips, sec = r["items_per_s"], r["seconds"]
        lines.append(f"| {r['encoder']} | {model} | {r['dim']} | {r['batch_size']} | {ips['cold']} | {ips['warm']} | "
                     f"{ips['cached']} | {sec['cold']} | {sec['warm']} | {sec['cached']} |")
    (args.out / "encode.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
