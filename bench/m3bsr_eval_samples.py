"""How many reverse chains an M³BSR evaluation should average: the same trained weights scored with 1..K chains.

    LLMREC_DATA_DIR=../shared/data python bench/m3bsr_eval_samples.py runs/seed_models/m3bsr_norm_tied_s42 \
        runs/seed_models/m3bsr_norm_tied_s1 [--samples 1 4 16] [--out bench/out/m3bsr_eval_samples]

For each finished M³BSR run (``llmrec fit-graph``, noise start), loads its best weights and scores the
validation and test splits under every protocol of the run's eval config with ``model.eval_samples`` set to
each value of ``--samples`` (the mean logits of that many chains, start noise seeded ``eval_noise_seed + k``;
1 is one chain). Only evaluation changes: the weights, and the epoch they were chosen at, stay the run's.
Writes ``<out>/eval_samples.json`` and ``.md`` (per run, and the mean over runs) and prints the markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graph_encoders.batching import SequenceBatcher
from graph_encoders.cli import load_run
from graph_encoders.evaluation import evaluate_split
from llmrec.io import write_json

SHOWN = ("pop100/HR@10", "pop100/NDCG@10", "uni10/HR@1")
SPLITS = ("valid", "test")


@torch.no_grad()
def score_model(model, batcher: SequenceBatcher, eval_config, samples: list[int]) -> tuple[dict, dict]:
    """``({K: {split: metrics}}, {K: seconds})``: ``model`` evaluated with ``eval_samples`` = each K in turn."""
    if not model.config.noisy_start:
        raise SystemExit(f"no chain starts from noise (eval_start {model.config.eval_start}, denoise "
                         f"{model.config.denoise}); eval_samples changes nothing there")
    trained = model.config
    rows, seconds = {}, {}
    try:
        for k in samples:
            model.config = dataclasses.replace(trained, eval_samples=k)
            started = time.perf_counter()
            rows[k] = {split: evaluate_split(model, batcher, split, eval_config, progress=False).metrics
                       for split in SPLITS}
            seconds[k] = time.perf_counter() - started
            shown = {split: {m: round(v, 4) for m, v in rows[k][split].items() if m in SHOWN} for split in SPLITS}
            print(f"eval_samples={k}: {shown} ({seconds[k]:.0f} s)", flush=True)
    finally:
        model.config = trained
    return rows, seconds


def score_run(run_dir: Path, samples: list[int], dataset=None) -> dict:
    """``{"run", "best_epoch", "validated_with_eval_samples", "rows", "seconds"}`` of one finished run.

    ``dataset`` (a prepared SequenceDataset) skips data preparation, as in :func:`load_run`.
    """
    model, dataset, config = load_run(run_dir, dataset)
    if config.model_name != "m3bsr":
        raise SystemExit(f"{run_dir}: a {config.model_name} run, not M3BSR")
    print(run_dir, flush=True)
    rows, seconds = score_model(model, SequenceBatcher(dataset, model.config.max_len, config.sequence), config.eval,
                                samples)
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    # the chains the run's own validation averaged (runs before the key existed scored one)
    chosen_with = metrics.get("config", {}).get("model", {}).get("eval_samples", 1) if metrics else None
    return {"run": str(run_dir), "best_epoch": metrics.get("best_epoch"), "validated_with_eval_samples": chosen_with,
            "rows": rows, "seconds": seconds}


def mean_rows(reports: list[dict], samples: list[int]) -> dict:
    metrics = reports[0]["rows"][samples[0]]["valid"]
    return {k: {split: {m: float(np.mean([r["rows"][k][split][m] for r in reports])) for m in metrics}
                for split in SPLITS} for k in samples}


def markdown(reports: list[dict], samples: list[int], threads: int) -> str:
    shown = [m for m in SHOWN if m in reports[0]["rows"][samples[0]]["valid"]]
    head = "| run | eval_samples | " + " | ".join(f"{s} {m}" for s in SPLITS for m in shown) + " | seconds |"
    lines = ["# M³BSR evaluation: mean logits of K reverse chains on the same weights", "",
             f"Torch threads: {threads}. Seconds: both splits, every protocol of the run's eval config.", "",
             head, "|---|---|" + "---|" * (len(SPLITS) * len(shown)) + "---|"]
    for report in reports:
        name = Path(report["run"]).name
        for k in samples:
            values = " | ".join(f"{report['rows'][k][s][m]:.4f}" for s in SPLITS for m in shown)
            chosen = f"best epoch {report['best_epoch']}, chosen with {report['validated_with_eval_samples']}"
            lines.append(f"| {name} ({chosen}) | {k} | {values} | {report['seconds'][k]:.0f} |")
    if len(reports) > 1:
        means = mean_rows(reports, samples)
        for k in samples:
            values = " | ".join(f"{means[k][s][m]:.4f}" for s in SPLITS for m in shown)
            lines.append(f"| **mean of {len(reports)} runs** | {k} | {values} | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="fit-graph run folders of M3BSR")
    parser.add_argument("--samples", nargs="+", type=int, default=[1, 4, 16], help="chains to average")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/out/m3bsr_eval_samples"))
    args = parser.parse_args()
    if min(args.samples) < 1:
        parser.error(f"--samples must be >= 1, got {args.samples}")
    torch.set_num_threads(args.threads)
    reports = [score_run(run, args.samples) for run in args.runs]
    text = markdown(reports, args.samples, args.threads)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "eval_samples.json", {"samples": args.samples, "threads": args.threads, "runs": reports,
                                                "mean": mean_rows(reports, args.samples)})
    (args.out / "eval_samples.md").write_text(text, encoding="utf-8")
    print(f"wrote {args.out / 'eval_samples.md'}")


if __name__ == "__main__":
    main()
