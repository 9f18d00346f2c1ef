"""Median seconds per training step of one graph encoder, for one or more checkouts, runs interleaved (A/B).

    LLMREC_DATA_DIR=../shared/data OMP_WAIT_POLICY=PASSIVE python bench/step_time.py \
        [--checkouts OLD_CHECKOUT .] [--config configs/graph/bivrec_ml100k.yaml] [--threads 2] [--rounds 3] \
        [--steps 8] [--out bench/out/step_time] [key=value overrides]

Each round runs every checkout once, in turn, in its own subprocess with that checkout's code: the model of
``--config`` built with seed 0 (``train.seed`` does not matter here), Adam, ``--steps`` + 1 training steps on the
first training batches (the first one, warm-up, is not timed), full forward + backward + update per step. An old
commit to compare with: ``git worktree add /tmp/old <commit>``, then ``--checkouts /tmp/old .``. Reported per
checkout: the median over rounds of each round's median step time, and each checkout's ratio to the first one
taken round by round (paired: the rounds share the machine's state). Writes ``<out>/step_time.json`` and
``step_time.md``. Timings are only trustworthy on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def time_steps(config: str, threads: int, steps: int, overrides: list[str]) -> dict:
    """Run in the checkout's own interpreter path: median seconds per training step of ``config``'s model."""
    import torch

    from graph_encoders.base import build_model
    from graph_encoders.batching import SequenceBatcher
    from graph_encoders.cli import FitGraphConfig, dataset_spec
    from graph_encoders.trainer import seed_everything
    from llmrec.config import load_config
    from llmrec.data import load_data_config, prepare

    torch.set_num_threads(threads)
    cfg = load_config(FitGraphConfig, config, overrides)
    dataset = prepare(load_data_config(cfg.data, cfg.data_overrides))
    spec = dataset_spec(cfg, dataset)
    seed_everything(0)
    model = build_model(cfg.model_name, cfg.model_params, spec)
    batcher = SequenceBatcher(dataset, model.config.max_len, cfg.sequence)
    windows = batcher.training_windows(cfg.train.windows, cfg.train.loss_on)
    size = cfg.train.batch_size
    if len(windows.rows) < (steps + 1) * size:
        raise SystemExit(f"{config}: {len(windows.rows)} training windows, fewer than {steps + 1} batches of {size}")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.learning_rate)
    model.train()
    seconds = []
    for step in range(steps + 1):
        batch = batcher.training_batch(windows.rows[step * size : (step + 1) * size], cfg.train.loss_on,
                                       windows.from_rows)
        started = time.perf_counter()
        loss = model.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
        if step:  # the first step warms up allocators and kernels
            seconds.append(time.perf_counter() - started)
    return {"median_step_seconds": statistics.median(seconds), "steps": len(seconds), "batch_size": size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkouts", nargs="+", type=Path, default=[ROOT])
    parser.add_argument("--config", default="configs/graph/bivrec_ml100k.yaml", help="relative to each checkout")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "step_time")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: time this checkout
    parser.add_argument("overrides", nargs="*", help="dotted fit-graph overrides")
    args = parser.parse_args()
    if args.one:
        print("STEP_RECORD " + json.dumps(time_steps(args.config, args.threads, args.steps, args.overrides)))
        return 0
    if not os.environ.get("LLMREC_DATA_DIR"):
        parser.error("set LLMREC_DATA_DIR to the folder holding the datasets")
    checkouts = [c.resolve() for c in args.checkouts]
    for checkout in checkouts:
        if not (checkout / args.config).is_file():
            parser.error(f"{checkout / args.config} does not exist")
    rounds: list[list[float]] = []
    for round_index in range(args.rounds):
        row = []
        for checkout in checkouts:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--one", "--config", args.config,
                   "--threads", str(args.threads), "--steps", str(args.steps), *args.overrides]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(checkout)}
            proc = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, text=True, env=env, cwd=checkout)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("STEP_RECORD ")]
            if proc.returncode != 0 or not lines:
                raise SystemExit(f"bench/step_time.py: {checkout} failed (exit {proc.returncode})")
            seconds = json.loads(lines[-1].removeprefix("STEP_RECORD "))["median_step_seconds"]
            row.append(seconds)
            print(f"round {round_index + 1}: {checkout}: {seconds:.3f} s/step", flush=True)
        rounds.append(row)
    sys.path.insert(0, str(ROOT))
    from llmrec.devices import describe_machine

    records = []
    for i, checkout in enumerate(checkouts):
        # "-dirty" marks a checkout timed with uncommitted changes: its commit alone does not name the code
        commit = subprocess.run(["git", "-C", str(checkout), "describe", "--always", "--dirty", "--abbrev=7"],
                                check=False, capture_output=True, text=True).stdout.strip()
        records.append({
            "checkout": str(checkout), "commit": commit,
            "median_step_seconds": statistics.median(r[i] for r in rounds),
            "per_round": [r[i] for r in rounds],
            "ratio_to_first": statistics.median(r[i] / r[0] for r in rounds),
        })
    summary = {"records": records, "config": args.config, "threads": args.threads, "rounds": args.rounds,
               "steps": args.steps, "overrides": args.overrides, "cpu": describe_machine(),
               "load_average": os.getloadavg(), "command": " ".join(sys.argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step_time.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    lines = [f"{describe_machine()}; {args.threads} torch threads; `{summary['command']}`", "",
             "| checkout | commit | median s/step | per round | ratio to the first (median of paired rounds) |",
             "|---|---|---:|---|---:|"]
    for r in records:
        per_round = ", ".join(f"{s:.3f}" for s in r["per_round"])
        lines.append(f"| {r['checkout']} | {r['commit']} | {r['median_step_seconds']:.3f} | {per_round} | "
                     f"{r['ratio_to_first']:.3f} |")
    table = "\n".join(lines) + "\n"
    (args.out / "step_time.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
