"""Paired A/B of training-step settings: one ``Trainer`` per variant, stepped alternately on the same rows.

Every variant is the throughput benchmark's easy-task configuration (``bench/train_throughput.py``: ML-100k
prompts with ``$LLMREC_DATA_DIR`` set, else the synthetic shop; batch 4 x accumulation 2; random tables) plus
its own ``key=value`` overrides. Step k of every variant trains the same rows, so per-step times pair up; the
first ``--warmup`` steps are not counted (compilation, allocator warm-up). Reported: median seconds per step,
each variant's speed relative to the first, and each step's loss (equal losses = the same function).

    python bench/train_ab.py --precision bf16 \\
        "model.lora.fused=false model.lm.attn_implementation=sdpa" \\
        "model.lm.compile_elementwise=true"

Writes bench/out/train_ab_<precision>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import train_throughput as tt  # bench/ is on sys.path when a script there runs

from llmrec.devices import describe_machine, machine_description


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="one quoted string of space-separated overrides per variant "
                                                    "('' = the benchmark's configuration as is)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--steps", type=int, default=7, help="steps per variant, warm-up included")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--task", default="easy", choices=["easy", "medium", "hard"])
    args = parser.parse_args()
    if args.steps <= args.warmup:
        sys.exit(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")

    import torch

    from llmrec.train.config import load_train_config
    from llmrec.train.loop import Trainer

    shape = argparse.Namespace(max_history=10, batch_size=4, grad_accum=2, steps=args.steps, max_length=512,
                               lora_dropout=0.0, ours_compile=False)
    dataset = tt.build_dataset(shape)
    common = tt.train_overrides(shape, args.task, args.precision) + [f"num_threads={args.threads}"]
    trainers = [Trainer(load_train_config(None, common + variant.split()), dataset, tt.tables(dataset))
                for variant in args.variants]
    torch.set_num_threads(args.threads)
    steps: list[list[dict]] = [[] for _ in trainers]
    for _ in range(args.steps):
        for records, trainer in zip(steps, trainers, strict=True):
            r = trainer.train_step()
            records.append({"seconds": r["seconds"], "loss": r["loss"], "tokens": r["tokens"]})
    medians = [statistics.median(r["seconds"] for r in records[args.warmup:]) for records in steps]
    machine = machine_description()
    report = {"machine": machine, "settings": vars(args), "threads": args.threads,
              "variants": [{"overrides": v, "median_s_per_step": m, "speed_vs_first": medians[0] / m, "steps": recs}
                           for v, m, recs in zip(args.variants, medians, steps, strict=True)],
              "load_average_after": os.getloadavg()}
    header = (f"Machine: {describe_machine(machine)}; {args.threads} torch thread(s); {args.precision}; {args.task} "
              f"task; {args.steps} steps per variant, first {args.warmup} not counted; variants stepped alternately "
              "on the same rows.")
    lines = [header, "",
             "| variant | median s/step | speed vs first | losses (first steps) |", "|---|---|---|---|"]
    for item in report["variants"]:
        losses = ", ".join(f"{r['loss']:.5f}" for r in item["steps"][:3])
        lines.append(f"| {item['overrides'] or '(as is)'} | {item['median_s_per_step']:.2f} | "
                     f"{item['speed_vs_first']:.3f} | {losses} |")
    out = tt.OUT
    out.mkdir(parents=True, exist_ok=True)
    Path(out / f"train_ab_{args.precision}.json").write_text(json.dumps(report, indent=2))
    Path(out / f"train_ab_{args.precision}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
