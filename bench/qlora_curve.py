"""QLoRA (4-bit nf4, 8-bit int8) against LoRA on one short learning curve of the shop recipe (issue 17).

    python bench/qlora_curve.py [--steps 10] [--eval-every 5] [--out bench/out/qlora_curve]

Each quantization trains ``configs/tmf_smollm2_shop.yaml`` from scratch in its own child process (the same seed,
data, prompts and schedule; only ``model.lm.quantization`` differs), ``--steps`` optimizer steps of
``--batch`` prompts, validation HR@1 by candidate ranking on ``--eval-users`` fixed users every ``--eval-every``
steps. Per row: the validation curve, median seconds per step, and the child's peak RSS (``/usr/bin/time``).
A short curve: it compares the three on equal terms, it does not say where they would end.

Writes ``qlora_curve.json``, ``.md`` and ``.png`` into ``--out``; prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "configs/tmf_smollm2_shop.yaml"


def train_row(quantization: str, args: argparse.Namespace, out: Path) -> dict:
    run = out / quantization
    command = ["/usr/bin/time", "-f", "peak_rss_kb=%M", sys.executable, "train.py", "--config", RECIPE,
               f"model.lm.quantization={quantization}", f"output_dir={run}", f"max_steps={args.steps}",
               f"batch_size={args.batch}", "gradient_accumulation_steps=1", f"eval.every={args.eval_every}",
               f"eval.n_samples={args.eval_users}", "save_every=0", "trackers=[]", "curriculum.fixed_task=hard"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{quantization}: train.py failed:\n{done.stderr[-3000:]}")
    peak = int(done.stderr.strip().splitlines()[-1].split("=")[1])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"quantization": quantization, "command": " ".join(command[3:]), "wall_s": time.perf_counter() - started,
            "peak_rss_gib": peak / 2**20, "median_step_s": statistics.median(r["seconds"] for r in records),
            "loss": [r["loss"] for r in records],
            "validation": [{"step": r["step"], "HR@1": r["eval"]["HR@1"]} for r in records if "eval" in r]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quantizations", nargs="+", default=["none", "nf4", "int8"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--eval-users", type=int, default=32)
    parser.add_argument("--out", default="bench/out/qlora_curve")
    args = parser.parse_args(argv)
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    rows = [train_row(q, args, out) for q in args.quantizations]
    results = {"recipe": RECIPE, "task": "hard (fixed)", "steps": args.steps, "batch": args.batch,
               "eval_users": args.eval_users, "rows": rows, "cpu": platform.processor() or platform.machine(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    (out / "qlora_curve.json").write_text(json.dumps(results, indent=1).replace(str(ROOT) + "/", "") + "\n")
    steps = [p["step"] for p in rows[0]["validation"]]
    lines = [(f"`{RECIPE}`, hard task, {args.steps} steps of {args.batch} prompts, validation HR@1 on "
              f"{args.eval_users} users (chance 0.10); CPU capability {results['cpu_capability']}."), "",
             "| quantization | " + " | ".join(f"val HR@1 step {s}" for s in steps)
             + " | first / last loss | median s/step | peak RSS GiB |",
             "|---|" + "---|" * (len(steps) + 3)]
    for row in rows:
        curve = " | ".join(f"{p['HR@1']:.3f}" for p in row["validation"])
        lines.append(f"| {row['quantization']} | {curve} | {row['loss'][0]:.2f} / {row['loss'][-1]:.2f} | "
                     f"{row['median_step_s']:.1f} | {row['peak_rss_gib']:.2f} |")
    table = "\n".join(lines) + "\n"
    (out / "qlora_curve.md").write_text(table)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for row in rows:
        ax.plot([p["step"] for p in row["validation"]], [p["HR@1"] for p in row["validation"]], marker="o",
                label=row["quantization"])
    ax.axhline(0.1, color="grey", linestyle=":", label="chance")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation HR@1")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "qlora_curve.png", dpi=120)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
