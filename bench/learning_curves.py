"""Learning curves of TMF training runs side by side: validation HitRate@1 and training loss per step.

    python bench/learning_curves.py runs/dropout/text_only_d0.1 runs/dropout/text_only_d0 \
        --labels "LoRA dropout 0.1" "LoRA dropout 0" --out bench/out/lora_dropout_curve

Reads each run's ``metrics.jsonl`` (written by ``llmrec.train.loop``: one line per optimizer step, with
``eval`` at validation steps). Reports, per run: validation HR@1 at every validation step, the mean
training loss over each stretch between validations, training minutes (validation excluded) and mean
seconds per step; runs that share their validation steps get a column of differences against the first
run. Writes ``<out>.json``, ``<out>.md`` and ``<out>.png`` (HR@1 against steps and against training
minutes; loss against steps) and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

PAUSED_FACTOR = 20.0  # a step over this many times the run's median step had the process stopped inside it


def read_curve(metrics: Path) -> dict:
    """Steps, losses, seconds and the validation points of one run's ``metrics.jsonl``.

    ``train_seconds`` is the raw sum of step times; ``paused_steps`` lists the steps over ``PAUSED_FACTOR`` times
    the run's median step (a stopped process or a suspended machine inside the step), so a report can say what the
    sum includes instead of silently keeping or dropping it."""
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics}: no metrics.jsonl (has the run started?)")
    records = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{metrics}: empty")
    wall, points, since = 0.0, [], []
    for record in records:
        wall += record["seconds"]
        since.append(record["loss"])
        if record.get("eval"):
            points.append({"step": record["step"], "train_seconds": wall, "HR@1": record["eval"]["HR@1"],
                           "mean_train_loss": float(np.mean(since))})
            since = []
    median = float(np.median([r["seconds"] for r in records]))
    paused = [{"step": r["step"], "seconds": r["seconds"], "median_seconds": median}
              for r in records if r["seconds"] > PAUSED_FACTOR * median]
    return {"steps": [r["step"] for r in records], "loss": [r["loss"] for r in records],
            "seconds_per_step": float(np.mean([r["seconds"] for r in records])), "train_seconds": wall,
            "validation": points, "paused_steps": paused}


def markdown(curves: dict[str, dict]) -> str:
    names = list(curves)
    first = curves[names[0]]["validation"]
    lines = ["| run | steps | mean s/step | training min | validation HR@1 by step | mean training loss by stretch |",
             "|---|---:|---:|---:|---|---|"]
    for name, curve in curves.items():
        hr = ", ".join(f"{p['step']}: {p['HR@1']:.3f}" for p in curve["validation"])
        loss = ", ".join(f"{p['mean_train_loss']:.3f}" for p in curve["validation"])
        lines.append(f"| {name} | {curve['steps'][-1]} | {curve['seconds_per_step']:.1f} | "
                     f"{curve['train_seconds'] / 60:.1f} | {hr} | {loss} |")
    steps = [p["step"] for p in first]
    for name in names[1:]:
        other = curves[name]["validation"]
        if [p["step"] for p in other] == steps:
            diff = ", ".join(f"{a['step']}: {b['HR@1'] - a['HR@1']:+.3f}" for a, b in zip(first, other, strict=True))
            lines.append(f"\nHR@1 of {name} minus {names[0]} at the same steps: {diff}; training time ratio "
                         f"{names[0]} / {name}: "
                         f"{curves[names[0]]['train_seconds'] / curves[name]['train_seconds']:.2f}")
    return "\n".join(lines)


def plot(curves: dict[str, dict], out: Path, n_users: str) -> None:
    fig = Figure(figsize=(13, 3.8))
    by_step, by_time, loss = fig.subplots(1, 3)
    for name, curve in curves.items():
        points = curve["validation"]
        by_step.plot([p["step"] for p in points], [p["HR@1"] for p in points], marker="o", label=name)
        by_time.plot([p["train_seconds"] / 60 for p in points], [p["HR@1"] for p in points], marker="o", label=name)
        window = max(1, len(curve["loss"]) // 12)
        smooth = np.convolve(curve["loss"], np.ones(window) / window, mode="valid")
        loss.plot(curve["steps"][window - 1:], smooth, label=name)
    for ax, label in ((by_step, "optimizer step"), (by_time, "training minutes (validation excluded)")):
        ax.set_xlabel(label)
        ax.set_ylabel(f"validation HR@1 ({n_users})")
        ax.set_ylim(0, 1)
    loss.set_xlabel("optimizer step")
    loss.set_ylabel("training loss (moving mean)")
    by_step.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+",
                        help="training output folders (each with metrics.jsonl), or metrics .jsonl files")
    parser.add_argument("--labels", nargs="+", help="one label per run (default: the folder names)")
    parser.add_argument("--validation-users", default="64 users", help="how the y axis names the validation set")
    parser.add_argument("--out", default="bench/out/learning_curves", help="output path without suffix")
    args = parser.parse_args(argv)
    labels = args.labels or [Path(r).name for r in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"{len(args.runs)} runs but {len(labels)} labels")
    curves = {label: read_curve(Path(run) if run.endswith(".jsonl") else Path(run) / "metrics.jsonl")
              for label, run in zip(labels, args.runs, strict=True)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"runs": dict(zip(labels, args.runs, strict=True)),
                                                    "curves": curves}, indent=1))
    text = markdown(curves)
    out.with_suffix(".md").write_text(text + "\n")
    plot(curves, out, args.validation_users)
    print(text)
    print(f"written: {out}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
