"""Seed models against the conventional baselines, several training seeds, paired on the same users.

    LLMREC_DATA_DIR=../shared/data OMP_WAIT_POLICY=PASSIVE python bench/seed_models.py \
        [--models sasrec mbht dreamrec mdsrec] [--seeds 42 1 2] [--dataset ml100k] [--threads 1] \
        [--variant LABEL MODEL KEY=VALUE ...] [--runs runs/seed_models] [--out bench/out/seed_models] \
        [--report-only] [key=value ...]

Each (model, seed) is ``llmrec fit-graph --config configs/graph/<model>_<dataset>.yaml train.seed=<seed>
train.num_threads=<threads> output_dir=<runs>/<model>_s<seed>`` in its own process (its wall time and
peak RSS are its own); a run folder that already holds ``metrics.json`` is read, not retrained, so an
interrupted benchmark continues where it stopped. Every run is scored on the same frozen test
candidates; its ``target_ranks-test.npz`` (written by fit-graph) holds each test user's target rank.
``--variant dreamrec_text dreamrec model.modalities=[text]`` adds a row ``dreamrec_text``: the model's
config with those overrides (a modality ablation), in ``<runs>/dreamrec_text_s<seed>``.

Reported, per protocol the runs scored (``pop100``: 100 negatives drawn per user in proportion to
popularity, our reading of DreamRec Sec. 4.1.3; ``toppop100``: one fixed top-100 popular list with the
user's own items swapped for random unseen ones, the MBHT reference code's reading; ``uni10``: TMF's 10
frozen uniform candidates, HitRate@1 as TMF reports it):

* per model: HR@10 and NDCG@10 (uni10: HR@1 and NDCG@5) of every seed and their mean, training time
  and the fit-graph process's peak RSS;
* per pair (each model against each baseline, ``--baselines``): the difference of the seed-mean
  per-user metric, its 95% paired-bootstrap interval and sign-flip p-value (same users, same candidates);
* DreamRec's Table 2 row beside ours where the report has one;
* the validation values (pop100 HR@10 / NDCG@10, uni10 HR@1 at the best epoch, seed means): the numbers a
  configuration is chosen on; beside them each run's time to quality (``bench/seqrec.py``'s definition: training +
  validation wall time until the first epoch whose validation pop100 HR@10 reaches the best epoch's), read from
  the run's history: runs made side by side, so a ratio of two models is only fair between runs made alike.

Writes ``<out>/seed_models.json``, ``seed_models.md`` and ``seed_models.png`` (HR@10 / NDCG@10 per model,
seed means with their per-seed points).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graph_encoders.trainer import epoch_reaching
from llmrec.devices import describe_machine
from llmrec.metrics import paired_comparison

# protocol -> the metrics reported for it (uni10 is TMF's protocol: HitRate@1 over 10 frozen candidates)
PROTOCOL_METRICS = {"pop100": ("HR@10", "NDCG@10"), "toppop100": ("HR@10", "NDCG@10"), "uni10": ("HR@1", "NDCG@5")}
PROTOCOLS = tuple(PROTOCOL_METRICS)
# validation metrics shown beside the test tables: a configuration is chosen on these, never on test
VALIDATION_METRICS = ("pop100/HR@10", "pop100/NDCG@10", "uni10/HR@1")
QUALITY_METRIC = "pop100/HR@10"  # time to quality: the first epoch reaching the best epoch's value (bench/seqrec.py)
# DreamRec report (../shared/papers/dreamrec.txt), Table 2, ML-100k, 100 popularity negatives.
PUBLISHED = {
    "dreamrec": {"HR@10": 0.6210, "NDCG@10": 0.3532},
    "sasrec": {"HR@10": 0.5959, "NDCG@10": 0.3351},
    "mbht": {"HR@10": 0.5740, "NDCG@10": 0.3453},  # MB-STR, MBHT's predecessor
}


def per_user(ranks: np.ndarray, metric: str) -> np.ndarray:
    """``HR@k`` or ``NDCG@k`` of each row from its 1-based target rank (llmrec.metrics' definitions)."""
    name, k = metric.split("@")
    hit = ranks <= int(k)
    if name == "HR":
        return hit.astype(np.float64)
    if name == "NDCG":
        return np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)
    raise ValueError(f"unknown metric {metric!r}: expected HR@k or NDCG@k")


def fit(label: str, seed: int, args: argparse.Namespace, overrides: list[str]) -> dict:
    """Train one (row, seed) in a child process unless its run folder is finished; returns its record.

    ``label`` is a model name or a ``--variant`` label (its model and overrides come from ``args.variants``).
    """
    model, variant_overrides = args.variants.get(label, (label, []))
    run_dir = Path(args.runs) / f"{label}_s{seed}"
    metrics_path = run_dir / "metrics.json"
    record = {"model": label, "seed": seed, "run_dir": str(run_dir)}
    if not metrics_path.is_file():
        if args.report_only:
            return {**record, "missing": True}
        command = [str(Path(sys.executable).with_name("llmrec")), "fit-graph",
                   "--config", str(ROOT / "configs" / "graph" / f"{model}_{args.dataset}.yaml"),
                   f"train.seed={seed}", f"train.num_threads={args.threads}", f"output_dir={run_dir}", *overrides,
                   *variant_overrides]
        print("+", " ".join(command), flush=True)
        log_path = Path(args.runs) / f"{label}_s{seed}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(log_path, "w") as log:
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), check=False)
        if done.returncode != 0:
            raise SystemExit(f"{model} seed {seed}: fit-graph exited {done.returncode}; see {log_path}")
        record["bench_wall_seconds"] = time.perf_counter() - started
        # children's peak RSS so far: an upper bound for this run when runs go in rising order
        record["children_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    metrics = json.loads(metrics_path.read_text())
    record["valid"] = {key: metrics["valid"][key] for key in VALIDATION_METRICS if key in metrics.get("valid", {})}
    if metrics.get("history") and QUALITY_METRIC in metrics.get("valid", {}):
        reached = epoch_reaching(metrics["history"], QUALITY_METRIC, metrics["valid"][QUALITY_METRIC])
        record["quality"] = {"epoch": reached["epoch"], "seconds": reached["elapsed_seconds"]}
    with np.load(run_dir / "target_ranks-test.npz") as ranks:
        record["ranks"] = {name: ranks[name] for name in ranks.files if name in PROTOCOLS}
    record.update({
        "test": {f"{p}/{m}": metrics["test"][f"{p}/{m}"] for p in record["ranks"] for m in PROTOCOL_METRICS[p]},
        "peak_rss_mib": metrics.get("peak_rss_mib"),  # absent from runs made before fit-graph recorded it
        "best_epoch": metrics["best_epoch"], "train_seconds": metrics["train_seconds"],
        "wall_seconds": metrics["wall_seconds"], "torch_threads": metrics.get("torch_threads"),
        "dataset_fingerprint": metrics["dataset_fingerprint"],
    })
    return record


def summarize(records: list[dict], models: list[str], baselines: list[str]) -> dict:
    """Seed means per model and paired comparisons on the seed-mean per-user metric."""
    done = [r for r in records if not r.get("missing")]
    fingerprints = {r["dataset_fingerprint"] for r in done}
    if len(fingerprints) > 1:
        raise SystemExit(f"runs were trained on different data (fingerprints {sorted(fingerprints)}): not comparable")
    table: dict = {"models": {}, "pairs": []}
    user_means: dict[tuple[str, str, str], np.ndarray] = {}
    for model in models:
        runs = [r for r in done if r["model"] == model]
        if not runs:
            continue
        entry = {"seeds": [r["seed"] for r in runs], "train_seconds": [r["train_seconds"] for r in runs],
                 "best_epoch": [r["best_epoch"] for r in runs], "peak_rss_mib": [r["peak_rss_mib"] for r in runs]}
        for protocol, metrics in PROTOCOL_METRICS.items():
            for metric in metrics:
                if any(protocol not in r["ranks"] for r in runs):
                    continue
                values = [per_user(r["ranks"][protocol], metric) for r in runs]
                for r, v in zip(runs, values, strict=True):
                    stored = r["test"][f"{protocol}/{metric}"]
                    if not np.isclose(v.mean(), stored, atol=1e-6):
                        raise SystemExit(f"{r['run_dir']}: ranks give {protocol}/{metric} {v.mean():.6f}, "
                                         f"metrics.json says {stored:.6f}")
                user_means[(model, protocol, metric)] = np.mean(values, axis=0)
                entry[f"{protocol}/{metric}"] = {"per_seed": [float(v.mean()) for v in values],
                                                 "mean": float(np.mean([v.mean() for v in values]))}
        entry["valid"] = {key: {"per_seed": [r["valid"][key] for r in runs],
                                "mean": float(np.mean([r["valid"][key] for r in runs]))}
                          for key in VALIDATION_METRICS if all(key in r.get("valid", {}) for r in runs)}
        if all("quality" in r for r in runs):
            entry["time_to_quality"] = {"epochs": [r["quality"]["epoch"] for r in runs],
                                        "seconds": [r["quality"]["seconds"] for r in runs],
                                        "mean_seconds": float(np.mean([r["quality"]["seconds"] for r in runs]))}
        table["models"][model] = entry
    compared: set[frozenset[str]] = set()
    for model in models:
        for base in baselines:
            if model == base or frozenset((model, base)) in compared:
                continue
            compared.add(frozenset((model, base)))
            for protocol, metrics in PROTOCOL_METRICS.items():
                for metric in metrics:
                    a, b = user_means.get((base, protocol, metric)), user_means.get((model, protocol, metric))
                    if a is None or b is None:
                        continue
                    table["pairs"].append({"model": model, "baseline": base, "protocol": protocol, "metric": metric,
                                           **paired_comparison(a, b)})
    return table


def markdown(table: dict, machine: str, command: str) -> str:
    lines = [f"Command: `{command}`", "", f"Machine: {machine}", ""]
    for protocol, names in PROTOCOL_METRICS.items():
        if not any(f"{protocol}/{names[0]}" in e for e in table["models"].values()):
            continue
        published = table.get("dataset", "ml100k") == "ml100k" and protocol == "pop100"
        lines += [f"**{protocol}** (test split, seed means; per seed in brackets)", "",
                  (f"| model | seeds | {names[0]} | {names[1]} | {'published HR@10 / NDCG@10 | ' if published else ''}"
                  "train s (per seed) | peak RSS MiB | best epoch |"),
                  "|---|---|---|---|" + ("---|" if published else "") + "---|---|---|"]
        for model, e in table["models"].items():
            if f"{protocol}/{names[0]}" not in e:
                continue
            cells = []
            for metric in names:
                m = e[f"{protocol}/{metric}"]
                cells.append(f"{m['mean']:.4f} ({', '.join(f'{v:.4f}' for v in m['per_seed'])})")
            if published:
                pub = PUBLISHED.get(model)
                cells.append(f"{pub['HR@10']:.4f} / {pub['NDCG@10']:.4f}" if pub else "–")
            rss = ", ".join("–" if v is None else f"{v:.0f}" for v in e["peak_rss_mib"])
            lines.append(f"| {model} | {', '.join(map(str, e['seeds']))} | {' | '.join(cells)} | "
                         f"{', '.join(f'{s:.0f}' for s in e['train_seconds'])} | {rss} | "
                         f"{', '.join(map(str, e['best_epoch']))} |")
        lines.append("")
    shown = [key for key in VALIDATION_METRICS if any(key in e.get("valid", {}) for e in table["models"].values())]
    if shown:
        lines += [("**Validation** (the split configurations are chosen on and training stops on; the best epoch's "
                  "values, seed means; per seed in brackets)"), "",
                  f"| model | seeds | {' | '.join(shown)} | epochs to quality | time to quality s (per seed) |",
                  "|---|---|" + "---|" * len(shown) + "---|---|"]
        for model, e in table["models"].items():
            valid = e.get("valid", {})
            cells = [f"{valid[key]['mean']:.4f} ({', '.join(f'{v:.4f}' for v in valid[key]['per_seed'])})"
                     if key in valid else "–" for key in shown]
            quality = e.get("time_to_quality")
            cells += ([", ".join(map(str, quality["epochs"])),
                       f"{quality['mean_seconds']:.0f} ({', '.join(f'{v:.0f}' for v in quality['seconds'])})"]
                      if quality else ["–", "–"])
            lines.append(f"| {model} | {', '.join(map(str, e['seeds']))} | {' | '.join(cells)} |")
        lines.append("")
    lines += [("**Paired differences** (model − baseline, seed-mean per-user metric, same test users and candidates; "
               "95% paired bootstrap, sign-flip p)"), "",
              "| model | baseline | protocol | metric | difference | 95% interval | p |",
              "|---|---|---|---|---:|---|---:|"]
    for p in table["pairs"]:
        lines.append(f"| {p['model']} | {p['baseline']} | {p['protocol']} | {p['metric']} | {p['difference']:+.4f} | "
                     f"[{p['ci_low']:+.4f}, {p['ci_high']:+.4f}] | {p['p_value']:.3f} |")
    return "\n".join(lines) + "\n"


def chart(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(table["models"])
    panels = [(p, m) for p, names in PROTOCOL_METRICS.items() for m in names
              if any(f"{p}/{m}" in e for e in table["models"].values())]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.6), squeeze=False)
    for ax, (protocol, metric) in zip(axes[0], panels, strict=True):
        shown = [m for m in models if f"{protocol}/{metric}" in table["models"][m]]
        means = [table["models"][m][f"{protocol}/{metric}"]["mean"] for m in shown]
        ax.bar(range(len(shown)), means, color="#8fb3d9")
        for i, m in enumerate(shown):
            points = table["models"][m][f"{protocol}/{metric}"]["per_seed"]
            ax.plot([i] * len(points), points, "k.", markersize=5)
        ax.set_xticks(range(len(shown)), shown, rotation=30)
        ax.set_title(f"{protocol} {metric} (bars: seed mean)")
        if means:
            ax.set_ylim(min(means) * 0.85, max(max(means) * 1.05, 0.01))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["sasrec", "mbht", "dreamrec", "mdsrec"])
    parser.add_argument("--baselines", nargs="+", default=["sasrec", "mbht"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 1, 2])
    parser.add_argument("--dataset", default="ml100k")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", default="runs/seed_models")
    parser.add_argument("--out", default="bench/out/seed_models")
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar="LABEL MODEL KEY=VALUE",
                        help="an extra row: LABEL trained as MODEL's config with the overrides (repeatable)")
    parser.add_argument("--report-only", action="store_true", help="read finished runs, train nothing")
    parser.add_argument("overrides", nargs="*", help="key=value overrides passed to every fit-graph run")
    args = parser.parse_args(argv)
    args.variants = {}
    for spec in args.variant:
        if len(spec) < 2 or any("=" not in item for item in spec[2:]) or spec[0] in args.models:
            parser.error(f"--variant {' '.join(spec)}: expected a new LABEL, a MODEL and KEY=VALUE overrides")
        args.variants[spec[0]] = (spec[1], spec[2:])
    labels = [*args.models, *args.variants]
    records = [fit(label, seed, args, args.overrides) for label in labels for seed in args.seeds]
    missing = [f"{r['model']}_s{r['seed']}" for r in records if r.get("missing")]
    if missing:
        print(f"not trained yet (left out of the report): {', '.join(missing)}")
    table = {"dataset": args.dataset, **summarize(records, labels, args.baselines)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python bench/seed_models.py " + " ".join(sys.argv[1:] if argv is None else argv)
    machine = describe_machine()
    text = markdown(table, machine, command)
    print(text)
    (out / "seed_models.md").write_text(text)
    runs = [{k: v for k, v in r.items() if k != "ranks"} for r in records]
    (out / "seed_models.json").write_text(json.dumps({"command": command, "machine": machine, "runs": runs, **table},
                                                     indent=2))
    chart(table, out / "seed_models.png")
    print(f"wrote {out / 'seed_models.md'}, .json, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
