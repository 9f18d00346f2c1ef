"""Benchmark the sequential recommenders: cost per epoch, time to quality, evaluation time, memory.

    LLMREC_DATA_DIR=/path/to/data python bench/seqrec.py [--models sasrec gru4rec bert4rec] [--threads 2]
        [--epochs 200] [--out bench/out] [key=value overrides applied to every model]
        [model:key=value overrides applied to that model only, e.g. mdsrec:model.center_positions=10]

Each model runs in its own subprocess (so peak memory is its own) with its
``configs/graph/<model>_ml100k.yaml`` at hidden size 64 and max length 50, ``--threads``
torch threads, no checkpoints. Reported per model:

* ``seconds_per_epoch``: mean training seconds per epoch (validation excluded);
* ``time_to_quality_seconds``: training + validation wall time until the first epoch whose
  validation pop100/HR@10 reaches the final one (the restored best epoch's);
* ``eval_seconds``: evaluating the test split (popularity-100, uniform-10 and full ranking);
* ``peak_rss_mib``: the subprocess's peak resident memory (``ru_maxrss``);
* the final validation / test pop100 HR@10 and NDCG@10.

The reference is RecBole's SASRec on this machine, which trains every prefix as its own
sample: ~137 s per epoch (``--recbole-seconds-per-epoch``) for tens of epochs
(``--recbole-epochs``); the aim is a time to quality at most a fifth of RecBole's.
Results go to ``<out>/seqrec.json`` and ``<out>/seqrec.md``. Timings are only trustworthy
on an otherwise idle machine.

Report mode compares finished ``llmrec fit-graph`` runs with DreamRec's Table 2 and draws
the bar chart of docs/RESULTS_graph.md:

    python bench/seqrec.py --report runs/graph/sasrec_ml100k runs/graph/gru4rec_ml100k ... \
        --chart docs/img/graph_ml100k_vs_dreamrec.png
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MONITOR = "pop100/HR@10"
# DreamRec report (dreamrec.txt), Table 2, ML-100k, 100 popularity-sampled negatives.
PUBLISHED = {
    "sasrec": {"HR@5": 0.4243, "HR@10": 0.5959, "HR@30": 0.8454, "NDCG@5": 0.2790, "NDCG@10": 0.3351,
               "NDCG@30": 0.3954, "MRR@5": 0.2314, "MRR@10": 0.2548, "MRR@30": 0.2701},
    "gru4rec": {"HR@5": 0.4009, "HR@10": 0.5842, "HR@30": 0.8433, "NDCG@5": 0.2594, "NDCG@10": 0.3188,
                "NDCG@30": 0.3813, "MRR@5": 0.2131, "MRR@10": 0.2377, "MRR@30": 0.2535},
    "bert4rec": {"HR@5": 0.4179, "HR@10": 0.5768, "HR@30": 0.8422, "NDCG@5": 0.2713, "NDCG@10": 0.3231,
                 "NDCG@30": 0.3866, "MRR@5": 0.2234, "MRR@10": 0.2450, "MRR@30": 0.2608},
    "mbht": {"HR@5": 0.4291, "HR@10": 0.5740, "HR@30": 0.8315, "NDCG@5": 0.2988, "NDCG@10": 0.3453,  # MB-STR row
             "NDCG@30": 0.4072, "MRR@5": 0.2558, "MRR@10": 0.2748, "MRR@30": 0.2904},
}
REPORT_METRICS = ["HR@5", "HR@10", "HR@30", "NDCG@5", "NDCG@10", "NDCG@30", "MRR@5", "MRR@10", "MRR@30"]


def own_overrides(model: str, overrides: list[str]) -> list[str]:
    """``model``'s own overrides: each ``<model>:key=value`` without its prefix."""
    return [o.split(":", 1)[1] for o in overrides if o.split("=", 1)[0].startswith(f"{model}:")]


def overrides_for(model: str, overrides: list[str]) -> list[str]:
    """The overrides that apply to ``model``: every plain ``key=value``, then its own (another model's prefixed
    overrides are left out)."""
    return [o for o in overrides if ":" not in o.split("=", 1)[0]] + own_overrides(model, overrides)


def model_label(record: dict) -> str:
    """The table's name for a record: the model, with its own overrides when it had some."""
    own = record.get("model_overrides") or []
    return f"{record['model']} ({', '.join(own)})" if own else record["model"]


def run_one(model: str, threads: int, epochs: int, out: Path, overrides: list[str]) -> dict:
    """Train and evaluate one model in this process; returns the benchmark record."""
    sys.path.insert(0, str(ROOT))
    import torch

    from graph_encoders.cli import FitGraphConfig, fit_graph
    from graph_encoders.trainer import epoch_reaching
    from llmrec.config import load_config

    torch.set_num_threads(threads)
    # one log line per epoch (loss, validation metric) on stderr, which the parent passes through: progress
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {model} %(message)s", datefmt="%H:%M:%S")
    config_path = ROOT / "configs" / "graph" / f"{model}_ml100k.yaml"
    cfg = load_config(FitGraphConfig, config_path, [
        "model.hidden_size=64", "model.max_len=50", f"train.num_threads={threads}", f"train.epochs={epochs}",
        "train.checkpoint=false", "train.resume=false", f"output_dir={out / 'runs' / model}",
        *overrides_for(model, overrides),
    ])
    cfg.data = str(ROOT / cfg.data) if not Path(cfg.data).is_absolute() else cfg.data
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = fit_graph(cfg, progress=False)
    m = result.metrics
    evaluated = [h for h in m["history"] if "valid" in h]
    final = m["valid"][MONITOR]
    reached = epoch_reaching(m["history"], MONITOR, final)
    train_seconds = [h["train_seconds"] for h in m["history"]]
    return {
        "model": model,
        "model_overrides": own_overrides(model, overrides),
        "threads": threads,
        "epochs_trained": m["epochs_trained"],
        "best_epoch": m["best_epoch"],
        "seconds_per_epoch": sum(train_seconds) / len(train_seconds),
        "validation_seconds_per_epoch": sum(h["eval_seconds"] for h in evaluated) / len(evaluated),
        "time_to_quality_seconds": reached["elapsed_seconds"],
        "epochs_to_quality": reached["epoch"],
        "total_train_seconds": m["train_seconds"],
        "eval_seconds": m["eval_seconds"]["test"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_fit_mib": rss_before,
        "n_parameters": m["n_parameters"],
        "n_training_windows": m["n_training_windows"],
        "valid_hr@10": final,
        "test_hr@10": m["test"][MONITOR],
        "test_ndcg@10": m["test"]["pop100/NDCG@10"],
    }


def markdown(records: list[dict], recbole_seconds: float, recbole_epochs: int) -> str:
    """The speed table; with an ``mbht`` record, also each model's time to quality over MBHT's (same run)."""
    recbole_total = recbole_seconds * recbole_epochs
    mbht = next((r["time_to_quality_seconds"] for r in records if r["model"] == "mbht"), None)
    lines = [
        f"| model | s/epoch | epochs to quality | time to quality (s) | vs RecBole SASRec ({recbole_total:.0f} s) | "
        + ("vs MBHT | " if mbht else "")
        + "test eval (s) | peak RSS (MiB) | valid HR@10 | test HR@10 | test NDCG@10 |",
        "|---|---:|---:|---:|---:|" + ("---:|" if mbht else "") + "---:|---:|---:|---:|---:|",
    ]
    for r in records:
        versus_mbht = f"{r['time_to_quality_seconds'] / mbht:.2f}x | " if mbht else ""
        lines.append(
            f"| {model_label(r)} | {r['seconds_per_epoch']:.2f} | {r['epochs_to_quality']} | "
            f"{r['time_to_quality_seconds']:.1f} | "
            f"{r['time_to_quality_seconds'] / recbole_total:.3f}x | {versus_mbht}{r['eval_seconds']:.2f} | "
            f"{r['peak_rss_mib']:.0f} | {r['valid_hr@10']:.4f} | {r['test_hr@10']:.4f} | {r['test_ndcg@10']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def candidate_seed_spread(run_dirs: list[Path], seeds: list[int], protocol: str = "pop100") -> str:
    """Re-evaluate each run's best weights on the test split with other draws of the same
    candidate protocol (``seed`` varies): how much of a difference is candidate-sampling noise."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from graph_encoders.batching import SequenceBatcher
    from graph_encoders.cli import load_run
    from graph_encoders.evaluation import CandidateProtocol, EvalConfig, evaluate

    lines = [f"| run | {protocol} seeds | HR@10 mean ± std | NDCG@10 mean ± std | HR@10 per seed |",
             "|---|---|---|---|---|"]
    for run_dir in run_dirs:
        model, dataset, config = load_run(run_dir)
        base = next(p for p in config.eval.protocols if p.name == protocol)
        batcher = SequenceBatcher(dataset, model.config.max_len, config.sequence)
        hr, ndcg = [], []
        for seed in seeds:
            proto = CandidateProtocol(protocol, base.sampler, base.size, seed, [10])
            metrics = evaluate(model, batcher, "test", EvalConfig([proto], full_ranking=False), progress=False)
            hr.append(metrics[f"{protocol}/HR@10"])
            ndcg.append(metrics[f"{protocol}/NDCG@10"])
        lines.append(f"| {Path(run_dir).name} | {seeds[0]}..{seeds[-1]} | {np.mean(hr):.4f} ± {np.std(hr):.4f} | "
                     f"{np.mean(ndcg):.4f} ± {np.std(ndcg):.4f} | {', '.join(f'{v:.3f}' for v in hr)} |")
    return "\n".join(lines) + "\n"


def report(run_dirs: list[Path], chart: Path | None) -> str:
    """Markdown table (ours vs DreamRec Table 2) of finished runs, and optionally the bar chart."""
    runs = [json.loads((Path(d) / "metrics.json").read_text(encoding="utf-8")) for d in run_dirs]
    head = "| run | model | seed | best epoch | wall (s) | " + " | ".join(REPORT_METRICS) + " |"
    lines = [head, "|" + "---|" * (5 + len(REPORT_METRICS))]
    for d, m in zip(run_dirs, runs, strict=True):
        ours = [m["test"][f"pop100/{k}"] for k in REPORT_METRICS]
        lines.append(f"| {Path(d).name} | {m['model']} | {m['seed']} | {m['best_epoch']} | {m['wall_seconds']:.0f} | "
                     + " | ".join(f"{v:.4f}" for v in ours) + " |")
        if m["model"] in PUBLISHED:
            pub = PUBLISHED[m["model"]]
            lines.append(f"| published | {m['model']} | | | | "
                         + " | ".join(f"{pub[k]:.4f}" for k in REPORT_METRICS) + " |")
    if chart is not None:
        models = [m["model"] for m in runs]
        unique = len(set(models)) == len(models)
        _bar_chart(runs, models if unique else [Path(d).name for d in run_dirs], chart)
    return "\n".join(lines) + "\n"


def _bar_chart(runs: list[dict], labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    x = range(len(runs))
    for ax, metric in zip(axes, ("HR@10", "NDCG@10"), strict=True):
        ours = [m["test"][f"pop100/{metric}"] for m in runs]
        pub = [PUBLISHED.get(m["model"], {}).get(metric, float("nan")) for m in runs]
        ax.bar([i - 0.2 for i in x], ours, width=0.4, label="ours (test)")
        ax.bar([i + 0.2 for i in x], pub, width=0.4, label="DreamRec Table 2")
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.set_title(f"ML-100k, {metric}, 100 popularity negatives")
        ax.set_ylim(0, max(ours + [p for p in pub if not math.isnan(p)]) * 1.2)
        for i, (o, p) in enumerate(zip(ours, pub, strict=True)):
            ax.text(i - 0.2, o, f"{o:.3f}", ha="center", va="bottom", fontsize=7)
            if not math.isnan(p):
                ax.text(i + 0.2, p, f"{p:.3f}", ha="center", va="bottom", fontsize=7)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["sasrec", "gru4rec", "bert4rec"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=200, help="upper bound; early stopping applies")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--recbole-seconds-per-epoch", type=float, default=137.0)
    parser.add_argument("--recbole-epochs", type=int, default=20)
    parser.add_argument("--report", nargs="+", type=Path, help="finished fit-graph run folders to compare")
    parser.add_argument("--chart", type=Path, help="with --report: write the bar chart PNG here")
    parser.add_argument("--candidate-seeds", nargs="+", type=int,
                        help="with --report: re-evaluate test pop100 on these candidate seeds (mean ± std)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one model, print its record
    parser.add_argument("overrides", nargs="*", help="dotted fit-graph overrides applied to every model; "
                        "<model>:key=value applies to that model only")
    args = parser.parse_args()
    if args.report:
        print(report(args.report, args.chart))
        if args.candidate_seeds:
            print(candidate_seed_spread(args.report, args.candidate_seeds))
        return 0
    if not os.environ.get("LLMREC_DATA_DIR"):
        parser.error("set LLMREC_DATA_DIR to the folder holding ml-100k/")
    unknown = {o.split(":", 1)[0] for o in args.overrides if ":" in o.split("=", 1)[0]} - set(args.models)
    if unknown and not args.one:
        parser.error(f"overrides name models not in --models: {sorted(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.one:
        print("BENCH_RECORD " + json.dumps(run_one(args.one, args.threads, args.epochs, args.out, args.overrides)))
        return 0
    records = []
    for model in args.models:
        started = time.perf_counter()
        cmd = [sys.executable, __file__, "--one", model, "--threads", str(args.threads), "--epochs", str(args.epochs),
               "--out", str(args.out), *args.overrides]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        # stdout carries the record; stderr (the child's per-epoch log and any error) shows as it comes
        proc = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_RECORD ")]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"bench/seqrec.py: {model} failed (exit {proc.returncode})")
        record = json.loads(lines[-1].removeprefix("BENCH_RECORD "))
        record["process_seconds"] = time.perf_counter() - started
        records.append(record)
        print(f"{model}: {record['seconds_per_epoch']:.2f} s/epoch, "
              f"quality after {record['time_to_quality_seconds']:.1f} s")
    sys.path.insert(0, str(ROOT))
    from llmrec.devices import describe_machine

    summary = {
        "records": records,
        "recbole_reference": {"seconds_per_epoch": args.recbole_seconds_per_epoch, "epochs": args.recbole_epochs},
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "cpu": describe_machine()},
        "command": " ".join(sys.argv),
    }
    (args.out / "seqrec.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    table = markdown(records, args.recbole_seconds_per_epoch, args.recbole_epochs)
    table = f"{describe_machine()}; {args.threads} torch threads; `{summary['command']}`\n\n{table}"
    (args.out / "seqrec.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
