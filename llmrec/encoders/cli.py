"""``llmrec encode``: prepare a dataset, encode its catalog, print a report (and neighbours).

    llmrec encode --config configs/encode/ml100k_text.yaml --show-neighbors "Toy Story (1995)" [key=value ...]

Overrides are dotted keys of :class:`~llmrec.encoders.config.EncodeConfig`
(``batch_size=128``, ``text.template=['{title}']``); when ``data`` is a path to
a data config, ``data.<key>=value`` overrides go to that data config.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from llmrec.cli_common import EXIT_BAD_INPUT, fail, setup_logging
from llmrec.config import ConfigError, from_dict, load_config, read_yaml
from llmrec.data import DataConfig, load_data_config, prepare
from llmrec.encoders.config import EncodeConfig
from llmrec.encoders.factory import build_encoders
from llmrec.encoders.neighbors import find_item, nearest_neighbors
from llmrec.encoders.pipeline import EncodeRun, run_encoding
from llmrec.encoders.weights import WeightsNotFoundError

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmrec encode", description="text / image embedding tables for a catalog")
    p.add_argument("--config", required=True, help="encode config (YAML), e.g. configs/encode/ml100k_text.yaml")
    p.add_argument("--show-neighbors", action="append", default=[], metavar="TITLE",
                   help="print the nearest neighbours of the item with this title (repeatable)")
    p.add_argument("--k", type=int, default=None, help="number of neighbours (default: neighbors_k of the config)")
    p.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    setup_logging()
    try:
        return _run(args)
    except ConfigError as err:
        if args.traceback:
            raise
        return fail("llmrec encode", f"config error: {err}", EXIT_BAD_INPUT)
    except (WeightsNotFoundError, ValueError, KeyError, FileNotFoundError) as err:
        if args.traceback:
            raise
        return fail("llmrec encode", err)


def _run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    config_path = Path(args.config)
    cfg, data_overrides = load_encode_cli_config(config_path, args.overrides)
    encoders = build_encoders(cfg)  # first: missing weights fail before the data is prepared
    dataset = prepare_dataset(cfg, config_path, data_overrides)
    run = run_encoding(cfg, dataset, encoders)
    print(format_report(dataset, run, time.perf_counter() - start))
    k = args.k if args.k is not None else cfg.neighbors_k
    for title in args.show_neighbors:
        print(format_neighbors(dataset, run, title, k))
    return 0


def load_encode_cli_config(path: Path, overrides: list[str]) -> tuple[EncodeConfig, list[str]]:
    """The encode config plus the ``data.*`` overrides meant for a referenced data config."""
    raw = read_yaml(path)
    data_is_path = isinstance(raw.get("data"), str)
    data_overrides = [o for o in overrides if data_is_path and o.split("=", 1)[0].startswith("data.")]
    own = [o for o in overrides if o not in data_overrides]
    cfg = load_config(EncodeConfig, path, own)
    return cfg, [o.split(".", 1)[1] for o in data_overrides]


def prepare_dataset(cfg: EncodeConfig, config_path: Path, data_overrides: list[str]):
    """``llmrec.data.prepare`` on the config's data section (a path or an inline mapping)."""
    if cfg.data is None:
        raise ConfigError(f"{config_path}: 'data' is required (a data config path or an inline data section)")
    if isinstance(cfg.data, str):
        data_path = Path(cfg.data)
        if not data_path.is_file() and (config_path.parent / data_path).is_file():
            data_path = config_path.parent / data_path
        data_cfg = load_data_config(data_path, data_overrides)
    else:
        try:
            data_cfg = from_dict(DataConfig, dict(cfg.data), prefix="data")
        except ConfigError as err:
            raise ConfigError(f"{config_path}: {err}") from None
    return prepare(data_cfg)


def format_report(dataset, run: EncodeRun, wall_s: float) -> str:
    lines = [f"dataset {dataset.name}: {dataset.n_items} items, fingerprint {dataset.fingerprint[:12] or '-'}",
             f"{'modality':<9}{'encoder':<44}{'dim':>5}  {'with embedding':>15}  {'cache':<6}{'seconds':>8}  table"]
    for name, r in run.results.items():
        t = r.table
        valid = f"{int(t.item_mask.sum())}/{t.n_items}"
        lines.append(f"{name:<9}{t.metadata.get('model', '?'):<44}{t.dim:>5}  {valid:>15}  "
                     f"{'hit' if r.cache_hit else 'miss':<6}{r.seconds:>8.2f}  {r.path}")
        counts = {k: v for k, v in r.counts.items() if k != "items"}
        lines.append(f"{'':<9}counts: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        if t.metadata.get("random_init"):
            lines.append(f"{'':<9}WARNING: random-init weights, embeddings are meaningless")
    for name, reason in run.absent.items():
        lines.append(f"{name:<9}absent: {reason}")
    lines.append(f"wall time {wall_s:.1f}s")
    return "\n".join(lines)


def format_neighbors(dataset, run: EncodeRun, title: str, k: int) -> str:
    titles = dataset.item_titles()
    index = find_item(titles, title)
    duplicates = sum(1 for t in titles if t == titles[index]) - 1
    lines = [f"nearest neighbours of {titles[index]!r} (item {dataset.item_ids[index]})"
             + (f" [{duplicates} other item(s) share this title; using the first]" if duplicates else "")]
    for name, result in run.results.items():
        if not bool(result.table.item_mask[index]):
            lines.append(f"  {name}: this item has no {name} embedding")
            continue
        lines.append(f"  {name} ({result.table.metadata.get('model', '?')}):")
        for rank, (j, score) in enumerate(nearest_neighbors(result.table, index, k), 1):
            lines.append(f"    {rank:>2}. {score:.3f}  {titles[j]}")
    return "\n".join(lines)
