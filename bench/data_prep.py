"""Benchmark: wall time of ``llmrec.data.prepare`` cold (fresh cache folder) and cached.

    LLMREC_DATA_DIR=/path/to/data python bench/data_prep.py [--config configs/data/ml100k.yaml] [--repeats 5]

Measures, each as the median of ``--repeats`` runs:

* ``import``: importing ``llmrec.data`` and ``datasets`` (once, in this process);
* ``cold_no_candidates``: a fresh cache folder, candidates disabled (load, filter, split, save);
* ``cold``: a fresh cache folder with the config's candidate sets;
* ``cached``: the same config again (loads the folder, candidate files included).

Writes ``bench/out/data_prep.json`` and ``bench/out/data_prep.md``. Timings taken while
other jobs share the machine are not trustworthy; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "data" / "ml100k.yaml"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("overrides", nargs="*", help="extra dotted config overrides")
    args = parser.parse_args()

    start = time.perf_counter()
    import datasets  # noqa: F401  (timed: the cached path needs it)

    from llmrec.data import load_data_config, prepare

    import_s = time.perf_counter() - start
    results: dict[str, list[float]] = {"cold_no_candidates": [], "cold": [], "cached": []}
    with tempfile.TemporaryDirectory(prefix="llmrec-bench-") as tmp:
        for run in range(args.repeats):
            cfg = load_data_config(args.config, [*args.overrides, f"cache_dir={tmp}/nc{run}", "candidates=[]"])
            results["cold_no_candidates"].append(_timed(lambda cfg=cfg: prepare(cfg)))
            cfg = load_data_config(args.config, [*args.overrides, f"cache_dir={tmp}/c{run}"])
            results["cold"].append(_timed(lambda cfg=cfg: prepare(cfg)))
        for _ in range(args.repeats):
            results["cached"].append(_timed(lambda: prepare(cfg)))
        stats = prepare(cfg).stats

    report = {
        "config": args.config,
        "overrides": args.overrides,
        "repeats": args.repeats,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "dataset": {"users": stats["filtered"]["users"], "items": stats["filtered"]["items"],
                    "interactions": stats["filtered"]["interactions"], "samples": stats["samples"]},
        "import_s": round(import_s, 3),
        "median_s": {k: round(statistics.median(v), 3) for k, v in results.items()},
        "runs_s": {k: [round(x, 3) for x in v] for k, v in results.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_prep.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    lines = [
        f"# Data preparation time: {Path(args.config).name}",
        "",
        f"{stats['filtered']['users']:,} users, {stats['filtered']['items']:,} items, "
        f"{stats['filtered']['interactions']:,} interactions after filtering; median of {args.repeats} runs.",
        "",
        "| step | median (s) | runs (s) |",
        "|---|---:|---|",
        f"| import llmrec.data + datasets | {report['import_s']} | |",
    ]
    lines += [f"| {k} | {report['median_s'][k]} | {', '.join(map(str, report['runs_s'][k]))} |" for k in results]
    markdown = "\n".join(lines) + "\n"
    (args.out / "data_prep.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    print(f"written: {args.out / 'data_prep.json'}, {args.out / 'data_prep.md'}")


if __name__ == "__main__":
    main()
