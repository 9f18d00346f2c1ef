"""Training throughput of our TMF loop vs. a plain transformers + PEFT loop (SmolLM2, CPU, 2 threads).

Runs, each in its own process (so peak RSS is per configuration):

* ``ours``: :class:`llmrec.train.loop.Trainer` steps (render + collate + forward + backward + AdamW) on
  the easy task and the hard task, with length-grouped batches, logits only at label positions, the fused
  LoRA forward (llmrec.tmf.fused_lora), grouped-query attention without repeated heads (llmrec.tmf.attention), and
  with ``--ours-compile`` the compiled RMSNorm / SiLU gate (``lm.compile_elementwise``, opt-in; compiled during
  the untimed warm-up step, whose seconds are kept as ``warmup_s``), and
  the CPU recipes' LoRA dropout (``--ours-lora-dropout``, default 0: PEFT's dropout draws a mask per
  target module from torch's serial CPU generator and is the largest single cost left; docs/training.md);
* ``ours, plain's LoRA``: the same with the plain loop's LoRA dropout, to separate the two gains;
* ``plain``: what a practitioner writes: the same easy-task (text-only) token ids and labels of
  exactly the rows our easy run trained (it writes them), each step's rows in random order without
  length grouping, ``model(input_ids, attention_mask, labels).loss`` (full ``[B, T, vocab]``
  logits), transformers' ``sdpa`` attention, PEFT's LoRA forward with LLaRA's LoRA (r 8, alpha 32, dropout
  ``--plain-lora-dropout`` = 0.1) and AdamW;

each in every ``--precisions`` (fp32 and bf16 autocast), ``--repeats`` times interleaved. Reported
(medians): samples/s, real (non-padding) tokens/s, seconds per sample, peak RSS; the first step of each
run is warm-up and not timed. The machine is named in the output (CPU model, torch's CPU capability,
native bf16). The prompts are ML-100k's (``$LLMREC_DATA_DIR`` set) or the synthetic shop's; embedding
tables are random (their values do not change the cost). Targets (issue #12): ours >= 2x plain samples/s
at the same precision; hard <= 1.15x easy per sample; our peak RSS <= plain's.

    python bench/train_throughput.py --repeats 2           # full size, on an idle machine
    python bench/train_throughput.py --precisions fp32     # an AVX2 CPU (or the stand-in below)
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/train_throughput.py --precisions fp32
    python bench/train_throughput.py --steps 2 --batch-size 2 --max-history 4   # tiny check
    python bench/train_throughput.py --profile easy --steps 4 --precision fp32     # where the time goes
    python bench/train_throughput.py --task-ratio --steps 12 --precision bf16     # hard vs easy, same rows, one process
    python bench/train_throughput.py --slot-cost --steps 6 --precision fp32       # LM length cost vs TMF machinery

Writes bench/out/train_throughput.json and .md (--task-ratio / --slot-cost: train_task_ratio_<precision> /
train_slot_cost_<precision> .json and .md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from random_tables import random_tables  # bench/ is on sys.path when a script there runs

from llmrec.data.candidates import load_candidates

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
logger = logging.getLogger("bench.train_throughput")


def build_dataset(args):
    from llmrec.data import load_data_config, prepare

    if os.environ.get("LLMREC_DATA_DIR"):
        cfg = load_data_config(REPO / "configs/data/ml100k.yaml", [f"max_history={args.max_history}"])
    else:
        cfg = load_data_config(REPO / "configs/data/shop.yaml", [f"max_history={args.max_history}"])
    return prepare(cfg)


def tables(dataset):
    """Random tables of the real widths; no image modality (ML-100k has none)."""
    return random_tables(dataset.n_items, dataset.n_behaviors, with_image=False)


def train_overrides(args, task: str, precision: str) -> list[str]:
    """The benchmark's training configuration as ``key=value`` overrides of the defaults."""
    size = 10  # the recipes' frozen uniform-10 candidate sets (configs/tmf_smollm2_*.yaml)
    return [
        f"output_dir={OUT / 'train_throughput_run'}", f"batch_size={args.batch_size}",
        f"gradient_accumulation_steps={args.grad_accum}", f"max_steps={args.steps + 1}", "eval.every=-1",
        f"curriculum.fixed_task={task}", f"precision={precision}", f"max_length={args.max_length}",
        f"train_candidates.size={size}", f"eval.candidates.size={size}", "num_threads=2", "log_every=1000",
        f"model.lora.dropout={args.lora_dropout}", f"model.lm.compile_elementwise={args.ours_compile}"]


def train_config(args, task: str, precision: str):
    from llmrec.train.config import load_train_config

    return load_train_config(None, train_overrides(args, task, precision))


def run_ours(args) -> dict:
    from llmrec.train.loop import Trainer

    dataset = build_dataset(args)
    trainer = Trainer(train_config(args, args.task, args.precision), dataset, tables(dataset))
    records = [trainer.train_step() for _ in range(args.steps + 1)]
    timed = records[1:] or records  # the first step is warm-up
    if args.rows_file:  # the rows of every step (warm-up first), so the plain loop trains the same samples
        per_step = trainer.micro_per_step
        steps = [[int(r) for m in trainer.plan[s * per_step:(s + 1) * per_step] for r in m]
                 for s in range(args.steps + 1)]
        Path(args.rows_file).write_text(json.dumps(steps))
    return {"samples": sum(sum(r["tasks"].values()) for r in timed), "seconds": sum(r["seconds"] for r in timed),
            "tokens": sum(r["tokens"] for r in timed), "warmup_s": records[0]["seconds"]}


def run_plain(args) -> dict:
    """The baseline loop on the same easy-task prompts (token ids + labels from our collator)."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model

    from llmrec.tmf.collator import TMFCollator
    from llmrec.tmf.lm import load_lm
    from llmrec.tmf.model import LoRASettings, ModelConfig
    from llmrec.tmf.prompts.render import PromptRenderer

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = train_config(args, "easy", args.precision)
    dataset = build_dataset(args)
    model_cfg: ModelConfig = cfg.model
    model_cfg.lm.attn_implementation = "sdpa"  # transformers' own (ours: sdpa_gqa, llmrec.tmf.attention)
    model_cfg.lm.compile_elementwise = False  # transformers' own layers
    lm, tokenizer = load_lm(model_cfg.lm)
    lora: LoRASettings = model_cfg.lora
    model = get_peft_model(lm, LoraConfig(task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha,
                                          lora_dropout=lora.dropout, target_modules=list(lora.target_modules)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    renderer = PromptRenderer(cfg.prompts, dataset)
    collator = TMFCollator(tokenizer, renderer, cfg.max_length)
    cands = load_candidates(dataset, "train", size=cfg.train_candidates.size)
    train = dataset.samples["train"]
    # the samples our loop trained, step by step, each step's rows in random order (no length grouping)
    steps = json.loads(Path(args.rows_file).read_text())
    rng = np.random.default_rng(0)
    order = np.concatenate([rng.permutation(rows) for rows in steps])
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    samples = tokens = 0
    seconds = 0.0
    cursor = 0
    for step in range(args.steps + 1):
        start = time.perf_counter()
        step_samples = step_tokens = 0
        for _ in range(args.grad_accum):
            rows = order[cursor:cursor + args.batch_size]
            cursor += args.batch_size
            prompts = [renderer.render(train[int(r)]["history_items"], train[int(r)]["history_behaviors"],
                                       cands.items[r], int(cands.target_index[r]), "easy",
                                       np.random.default_rng([0, 0, int(r)])) for r in rows]  # our paraphrase draw
            batch = collator(prompts)
            with autocast:
                loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"]).loss
            (loss / args.grad_accum).backward()
            step_samples += len(rows)
            step_tokens += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step > 0:  # the first step is warm-up
            seconds += time.perf_counter() - start
            samples += step_samples
            tokens += step_tokens
    return {"samples": samples, "seconds": seconds, "tokens": tokens}


def build_trainers(args, tasks) -> dict:
    """Our Trainer per task (2 threads, same dataset, seed and rows; random tables of the real widths)."""
    import torch

    from llmrec.train.loop import Trainer

    torch.set_num_threads(2)
    dataset = build_dataset(args)
    return {task: Trainer(train_config(args, task, args.precision), dataset, tables(dataset)) for task in tasks}


def save_report(name: str, args, report: dict, lines: list[str], title: str) -> None:
    """Write bench/out/<name>_<precision>.json (with the settings) and .md, and print the table."""
    report = {"settings": vars(args) | {"threads": 2,
                                        "data": "ml100k" if os.environ.get("LLMREC_DATA_DIR") else "shop"},
              **report, "load_average_after": os.getloadavg()}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}_{args.precision}.json").write_text(json.dumps(report, indent=2))
    (OUT / f"{name}_{args.precision}.md").write_text("\n".join(lines) + "\n")
    print(f"{title}:\n" + "\n".join(lines))


def profile(args) -> None:
    """Where our loop's time goes: cProfile over ``--steps`` steps (after one warm-up step), by own time."""
    import cProfile
    import pstats

    trainer = build_trainers(args, [args.profile])[args.profile]
    trainer.train_step()  # warm-up
    profiler = cProfile.Profile()
    profiler.enable()
    records = [trainer.train_step() for _ in range(args.steps)]
    profiler.disable()
    seconds = sum(r["seconds"] for r in records)
    print(f"{args.profile} / {args.precision}: {args.steps} steps, {seconds:.1f} s, "
          f"{sum(r['tokens'] for r in records)} real tokens")
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(12)
    # the TMF-only forward work: base embedding lookup + fusion + adaptors + masked_scatter
    embed = [v for (path, _, name), v in stats.stats.items() if name == "embed_inputs" and path.endswith("model.py")]
    if embed:
        cumulative = sum(v[3] for v in embed)
        print(f"TMFModel.embed_inputs forward (token embeddings + slot vectors): {cumulative:.2f} s "
              f"({100 * cumulative / seconds:.1f}% of the steps)")


def task_ratio(args) -> None:
    """Hard vs easy cost per sample, measured step by step in one process (``--task-ratio``).

    Two trainers (easy, hard) with the same seed train the same rows in the same order; their steps
    alternate (easy, hard, then hard, easy, ...), so a slow spell of the machine hits both tasks
    alike. Reports the median over steps of hard's / easy's seconds per sample on the same rows, and
    the real-token ratio (the floor set by the slot placeholders).
    """
    import numpy as np

    trainers = build_trainers(args, ("easy", "hard"))
    for trainer in trainers.values():
        trainer.train_step()  # warm-up
    records: dict[str, list[dict]] = {"easy": [], "hard": []}
    for step in range(args.steps):
        for task in ("easy", "hard") if step % 2 == 0 else ("hard", "easy"):
            records[task].append(trainers[task].train_step())
    per_sample = {t: np.array([r["seconds"] / sum(r["tasks"].values()) for r in rs]) for t, rs in records.items()}
    tokens = {t: sum(r["tokens"] for r in rs) for t, rs in records.items()}
    paired = per_sample["hard"] / per_sample["easy"]
    report = {"seconds_per_sample": {t: v.tolist() for t, v in per_sample.items()},
              "real_tokens": tokens, "token_ratio_hard_over_easy": tokens["hard"] / tokens["easy"],
              "median_paired_ratio_hard_over_easy": float(np.median(paired)),
              "ratio_of_medians_hard_over_easy": float(np.median(per_sample["hard"]) / np.median(per_sample["easy"]))}
    lines = ["| quantity | value |", "|---|---|",
             f"| steps per task (alternating, same rows) | {args.steps} |",
             f"| easy s/sample (median) | {np.median(per_sample['easy']):.3f} |",
             f"| hard s/sample (median) | {np.median(per_sample['hard']):.3f} |",
             ("| hard/easy s/sample, median of paired steps (target <= 1.15) | "
              f"{report['median_paired_ratio_hard_over_easy']:.3f} |"),
             f"| hard/easy real tokens | {report['token_ratio_hard_over_easy']:.3f} |",
             f"| paired ratios min / max | {paired.min():.3f} / {paired.max():.3f} |"]
    save_report("train_task_ratio", args, report, lines, args.precision)


def slot_cost(args) -> None:
    """Where hard's extra cost per sample comes from (``--slot-cost``): forward + backward only, one model.

    The same micro-batches (rows) in three forms, timed alternately on the hard trainer's model:
    ``easy`` (text-only prompts), ``hard`` (slot vectors from fusion + adaptors, gradients into them)
    and ``hard, slots as text`` (the hard token ids with the slot masks cleared: the LM sees the hard
    lengths, the placeholder token's own embedding sits at the slots, no TMF work). hard / easy then
    splits into the LM's cost of the longer prompts (``hard as text`` / easy) and the TMF machinery
    (hard / ``hard as text``).
    """
    import numpy as np
    import torch

    trainers = build_trainers(args, ("easy", "hard"))
    model, accelerator = trainers["hard"].model, trainers["hard"].accelerator
    n_micro = args.steps * args.grad_accum
    batches = {task: [trainers[task].micro_batch(i // args.grad_accum, i % args.grad_accum) for i in range(n_micro)]
               for task in trainers}
    batches["hard, slots as text"] = [{**b, "item_slot_mask": torch.zeros_like(b["item_slot_mask"]),
                                       "behavior_slot_mask": torch.zeros_like(b["behavior_slot_mask"])}
                                      for b in batches["hard"]]

    def timed(batch) -> float:
        start = time.perf_counter()
        with accelerator.autocast():
            loss = model(batch).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    forms = list(batches)
    for form in forms:
        timed(batches[form][0])  # warm-up
    seconds: dict[str, list[float]] = {form: [] for form in forms}
    for i in range(n_micro):
        for form in forms if i % 2 == 0 else forms[::-1]:
            seconds[form].append(timed(batches[form][i]) / len(batches[form][i]["tasks"]))
    per_sample = {form: float(np.median(v)) for form, v in seconds.items()}
    tokens = {form: sum(int(b["attention_mask"].sum()) for b in bs) for form, bs in batches.items()}
    ratios = {"hard / easy": per_sample["hard"] / per_sample["easy"],
              "hard as text / easy (the LM on longer prompts)": per_sample["hard, slots as text"] / per_sample["easy"],
              "hard / hard as text (fusion, adaptors, gradients into the slots)":
                  per_sample["hard"] / per_sample["hard, slots as text"],
              "hard / easy real tokens": tokens["hard"] / tokens["easy"]}
    report = {"seconds_per_sample": seconds, "median_seconds_per_sample": per_sample, "real_tokens": tokens,
              "ratios": ratios}
    lines = [f"| form | s/sample (median of {n_micro} micro-batches) | real tokens |", "|---|---|---|"]
    lines += [f"| {form} | {per_sample[form]:.3f} | {tokens[form]} |" for form in forms]
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in ratios.items()]
    save_report("train_slot_cost", args, report, lines, f"{args.precision} (forward + backward only)")


def worker(args) -> None:
    logging.basicConfig(level=logging.WARNING)
    result = run_ours(args) if args.loop == "ours" else run_plain(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run (after 1 warm-up)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--max-history", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration, interleaved; medians reported")
    parser.add_argument("--profile", choices=["easy", "medium", "hard"],
                        help="instead: cProfile --steps steps of our loop on this task (--precision) and print the "
                             "functions with the most own time")
    parser.add_argument("--task-ratio", action="store_true",
                        help="instead: hard vs easy per sample, easy and hard steps alternating in one process on "
                             "the same rows (--precision, --steps per task)")
    parser.add_argument("--slot-cost", action="store_true",
                        help="instead: forward + backward of the same rows as easy, hard, and hard with the slots "
                             "left as plain placeholder tokens, alternating on one model (--precision)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rows-file", help=argparse.SUPPRESS)
    parser.add_argument("--loop", choices=["ours", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--task", default="easy", help=argparse.SUPPRESS)
    parser.add_argument("--lora-dropout", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="for --profile and --task-ratio")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated precisions of the main comparison")
    parser.add_argument("--ours-lora-dropout", type=float, default=0.0,
                        help="our loop's LoRA dropout (the CPU recipes' setting)")
    parser.add_argument("--plain-lora-dropout", type=float, default=0.1, help="the plain loop's (LLaRA's) LoRA dropout")
    parser.add_argument("--ours-compile", action="store_true",
                        help="our loop with lm.compile_elementwise (opt-in; the CPU recipes leave it off)")
    args = parser.parse_args()
    args.lora_dropout = args.lora_dropout if args.worker else args.ours_lora_dropout
    if args.profile:
        profile(args)
        return
    if args.task_ratio:
        task_ratio(args)
        return
    if args.slot_cost:
        slot_cost(args)
        return
    if args.worker:
        worker(args)
        return
    compare(args)


def compare(args) -> None:
    """The main comparison: every run of the module docstring, interleaved, medians, ratio table."""
    import numpy as np

    from llmrec.devices import describe_machine, machine_description

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    ours, plain = args.ours_lora_dropout, args.plain_lora_dropout
    # (name, loop, task, LoRA dropout); ours/easy first: it writes the rows it trained, which the others train too
    kinds = [("ours/easy", "ours", "easy", ours), ("plain/easy", "plain", "easy", plain),
             ("ours/hard", "ours", "hard", ours)]
    if ours != plain:
        kinds.insert(1, (f"ours/easy, plain's LoRA dropout {plain}", "ours", "easy", plain))
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    OUT.mkdir(parents=True, exist_ok=True)
    rows_file = OUT / "train_throughput_rows.json"
    machine = machine_description()
    print(f"machine: {describe_machine(machine)}", flush=True)
    measured: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for precision in precisions:
            for name, loop, task, dropout in kinds:
                writes_rows = name == "ours/easy"
                command = [sys.executable, __file__, "--worker", "--loop", loop, "--task", task, "--precision",
                           precision, "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--grad-accum",
                           str(args.grad_accum), "--max-history", str(args.max_history), "--max-length",
                           str(args.max_length), "--lora-dropout", str(dropout),
                           *(["--ours-compile"] * args.ours_compile),
                           "--rows-file", str(rows_file) if writes_rows or loop == "plain" else ""]
                key = f"{name}/{precision}"
                print(f"[{repeat + 1}/{args.repeats}] running {key} ...", flush=True)
                done = subprocess.run(command, check=False, env=env, cwd=REPO, capture_output=True, text=True)
                line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
                if done.returncode or line is None:
                    sys.exit(f"{key} failed:\n{done.stderr[-4000:]}")
                r = json.loads(line[len("RESULT "):])
                r.update(samples_per_s=r["samples"] / r["seconds"], tokens_per_s=r["tokens"] / r["seconds"],
                         seconds_per_sample=r["seconds"] / r["samples"])
                measured.setdefault(key, []).append(r)
    results = {key: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} | {"repeats": len(rs)}
               for key, rs in measured.items()}

    def ratio(a: str, b: str, key: str = "samples_per_s") -> float:
        return results[a][key] / results[b][key]

    checks: dict[str, float] = {}
    for p in precisions:
        checks[f"ours/plain samples/s, {p} (target >= 2.0)"] = ratio(f"ours/easy/{p}", f"plain/easy/{p}")
        if ours != plain:
            checks[f"ours with plain's LoRA dropout / plain samples/s, {p}"] = ratio(
                f"ours/easy, plain's LoRA dropout {plain}/{p}", f"plain/easy/{p}")
        checks[f"hard/easy seconds per sample, {p} (target <= 1.15)"] = ratio(f"ours/hard/{p}", f"ours/easy/{p}",
                                                                              "seconds_per_sample")
        checks[f"ours/plain peak RSS, {p} (target <= 1.0)"] = ratio(f"ours/easy/{p}", f"plain/easy/{p}", "peak_rss_mb")
    report = {"machine": machine, "settings": vars(args) | {"threads": 2,
                                                           "data": ("ml100k" if os.environ.get("LLMREC_DATA_DIR")
                                                                    else "shop")},
              "results": results, "runs": measured, "ratios": checks, "load_average_after": os.getloadavg()}
    (OUT / "train_throughput.json").write_text(json.dumps(report, indent=2))
    header = (f"Machine: {describe_machine(machine)}; 2 torch threads. Medians of {args.repeats} run(s) per "
              f"configuration; every loop trains exactly the rows ours/easy trained. LoRA dropout: ours {ours}, "
              f"plain {plain}. Ours: fused LoRA forward, sdpa_gqa attention, compile_elementwise "
              f"{'on (compiled in the untimed warm-up step)' if args.ours_compile else 'off'}.")
    lines = [header, "",
             "| run | samples/s | real tokens/s | s/sample | peak RSS (MB) |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {r['samples_per_s']:.3f} | {r['tokens_per_s']:.1f} | {r['seconds_per_sample']:.3f} | "
              f"{r['peak_rss_mb']:.0f} |" for k, r in results.items()]
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in checks.items()]
    (OUT / "train_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
