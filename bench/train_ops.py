"""Where a training step's time goes, by torch operator (issue #12): matrix products against the rest.

Runs our loop (:class:`llmrec.train.loop.Trainer`, the settings of ``bench/train_throughput.py``) for one
warm-up step and one step timed without the profiler, then ``--steps`` steps under ``torch.profiler``, and sums
each operator's *self* CPU time
(time inside the operator, not in the operators it calls). Operators are grouped:

* ``matmul``: the dense products (``aten::mm``, ``addmm``, ``bmm``, ...), the work FLOP counts measure;
* ``attention``: scaled-dot-product attention forward and backward kernels;
* ``optimizer``: AdamW's foreach kernels, gradient clipping's norms;
* ``elementwise / other``: everything else (norms, activations, RoPE, residual adds, casts, copies).

The shares answer "how much of a step is not matrix products", the question behind the 2x target
(``bench/train_flops.py``: 2x needs the whole step at ~0.76 of the matmul rate). Self times from the
profiler carry its own overhead (a few microseconds per operator), so the absolute seconds run above an
unprofiled step's; the shares are what to read. Threads: ``--threads`` (the throughput benchmark uses 2;
with one core free, 1 gives the shares of a one-thread step, which weigh the small operators less).

    python bench/train_ops.py --task easy --steps 3 --threads 2       # on an idle machine
    taskset -c 0 python bench/train_ops.py --task easy --steps 3 --threads 1

Writes bench/out/train_ops_<task>_<threads>t.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import train_throughput as throughput  # bench/ is on sys.path when a script there runs

OUT = Path(__file__).resolve().parents[1] / "bench" / "out"
MATMUL = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::mv",
          "aten::dot", "aten::_mkldnn_matmul", "mkldnn::_linear_pointwise"}


def group_of(name: str) -> str:
    """The group an operator's self time is counted in (module docstring)."""
    lowered = name.lower()
    if name in MATMUL:
        return "matmul"
    if "scaled_dot_product" in lowered or "flash_attention" in lowered or "attention" in lowered:
        return "attention"
    if "foreach" in lowered or "adam" in lowered:
        return "optimizer"
    return "elementwise / other"


def is_thin(shapes: str, rank: int) -> bool:
    """Whether a product's operands (the profiler's ``input_shapes`` text) have a dimension equal to the LoRA rank."""
    return f", {rank}]" in shapes or f"[{rank}," in shapes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="easy", choices=["easy", "medium", "hard"])
    parser.add_argument("--steps", type=int, default=3, help="profiled optimizer steps (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--max-history", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lora-dropout", type=float, default=0.0, help="our loop's LoRA dropout (the CPU recipes')")
    parser.add_argument("--top", type=int, default=25, help="operators listed")
    parser.add_argument("--top-shapes", type=int, default=15, help="matrix-product input shapes listed")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.threads < 1:
        parser.error("--steps and --threads must be >= 1")
    args.ours_compile = False
    return args


def main(argv: list[str] | None = None) -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from llmrec.devices import describe_machine, machine_description
    from llmrec.train.loop import Trainer

    args = parse_args(argv)
    dataset = throughput.build_dataset(args)
    # the schedule covers every step run here: the warm-up, the unprofiled one and the profiled ones
    config = throughput.train_config(argparse.Namespace(**{**vars(args), "steps": args.steps + 1}), args.task,
                                     args.precision)
    trainer = Trainer(config, dataset, throughput.tables(dataset))
    rank = config.model.lora.r
    torch.set_num_threads(args.threads)  # after the Trainer, which sets the config's 2
    trainer.train_step()  # warm-up, not profiled
    unprofiled = trainer.train_step()  # one plain step: the profiler's overhead is read against it
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        started = time.perf_counter()
        records = [trainer.train_step() for _ in range(args.steps)]
        wall = time.perf_counter() - started
    samples = sum(sum(r["tasks"].values()) for r in records)
    per_op = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()]
    total = sum(seconds for _, seconds, _ in per_op)
    groups: dict[str, float] = defaultdict(float)
    for name, seconds, _ in per_op:
        groups[group_of(name)] += seconds
    top = sorted(per_op, key=lambda row: -row[1])[: args.top]
    shapes = [(e.key, str(e.input_shapes), e.self_cpu_time_total / 1e6, e.count)
              for e in prof.key_averages(group_by_input_shape=True) if e.key in MATMUL]
    mm_total = sum(row[2] for row in shapes)
    thin = sum(row[2] for row in shapes if is_thin(row[1], rank))
    top_shapes = sorted(shapes, key=lambda row: -row[2])[: args.top_shapes]
    machine = machine_description()
    report = {
        "machine": machine, "settings": vars(args), "profiled_steps": args.steps, "samples": samples,
        "wall_s": wall, "unprofiled_step_s": unprofiled["seconds"],
        "profiled_step_s": wall / args.steps, "self_cpu_s": total,
        "groups": {g: {"s": s, "share": s / total} for g, s in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top": [{"op": n, "s": s, "share": s / total, "calls": c, "group": group_of(n)} for n, s, c in top],
        "matmul_thin_s": thin, "matmul_thin_share_of_matmul": thin / mm_total if mm_total else None,
        "matmul_shapes": [{"op": n, "shapes": sh, "s": s, "share_of_matmul": s / mm_total, "calls": c}
                          for n, sh, s, c in top_shapes],
        "load_average_after": os.getloadavg(),
    }
    header = (f"Machine: {describe_machine(machine)}; {args.threads} torch thread(s); task {args.task}, "
              f"{args.precision}, {args.steps} profiled steps ({samples} samples) after a warm-up step and one timed "
              "without the profiler.")
    timing = (f"Profiled step {wall / args.steps:.2f} s against {unprofiled['seconds']:.2f} s unprofiled; "
              f"self CPU time summed over operators {total:.2f} s (shares below are of this sum).")
    lines = [header, timing, "", "| group | self s | share |", "|---|---:|---:|"]
    lines += [f"| {g} | {v['s']:.2f} | {v['share']:.3f} |" for g, v in report["groups"].items()]
    lines += ["", "| operator | group | calls | self s | share |", "|---|---|---:|---:|---:|"]
    lines += [f"| `{r['op']}` | {r['group']} | {r['calls']} | {r['s']:.3f} | {r['share']:.3f} |" for r in report["top"]]
    thin_line = (f"Matrix products with a dimension equal to the LoRA rank {rank} (the thin LoRA products): "
                 f"{thin:.2f} s = {thin / mm_total:.3f} of the matmul time.")
    lines += ["", thin_line, "",
              "| operator | input shapes | calls | self s | share of matmul |", "|---|---|---:|---:|---:|"]
    lines += [f"| `{n}` | {sh} | {c} | {s:.3f} | {s / mm_total:.3f} |" for n, sh, s, c in top_shapes]
    name = f"train_ops_{args.task}_{args.threads}t"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(report, indent=2))
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
