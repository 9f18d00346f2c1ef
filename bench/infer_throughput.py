"""Inference throughput (issue #16): users per second of free generation, constrained generation and candidate
ranking, HF backend vs vLLM backend, on one checkpoint and the same test users, in one run.

Modes, each through the functions ``llmrec infer`` uses (``llmrec.eval.infer``: ``make_generator``,
``rank_prompts``), on the same prompts (same users, paraphrases and frozen candidates):

* ``free``: greedy generation (HF ``generate``; vLLM in its worker process, ``.venv-vllm``);
* ``constrained``: generation restricted to the candidates' answers (HF: the candidate trie; vLLM:
  ``StructuredOutputsParams(choice=...)``);
* ``rank``: candidate ranking by summed answer log-likelihood. HF: packed ranking (``rank_prompts``); vLLM:
  ``VLLMGenerator.rank`` (one mixed prompt-embeddings + answer-ids request per candidate, scored from
  ``prompt_logprobs``; docs/inference.md "vLLM backend"), compared with the HF rank row: max |vLLM - HF| score
  and how many arg-maxes agree.

Timing: ``timed s`` is the generation or ranking alone, users/s = users / timed s. For vLLM that is the prompt
embeddings (``prompt_embeds_requests``, timed on its own beforehand; for ranking, of the prompts HF ranking fits)
plus the engine's generation or scoring (``VLLMGenerator.last_timings``, as the worker measured it); the engine
start (one per vLLM mode, 1-4 min on a 2-core CPU) and the other fixed costs (HF:
building the generator; vLLM: merging the LoRA adapter on first use, starting the worker, importing vllm, the
job files) are columns of their own. Loading the inputs and the model is timed once. Before the HF modes one
untimed warm-up user is generated and ranked. HitRate@1, ValidRatio and how many vLLM answers (first lines;
ranking: arg-maxes) equal the HF backend's show that speed is not bought with wrong answers.

Also printed: the floor, one HF forward pass over every prompt and nothing else (both generation and ranking
must run the prompt once), and what free generation and ranking cost against it.

Targets (issue #16), printed as ratio rows: vLLM free >= HF free users/s; ranking >= 2x free users/s (HF rank
vs HF free, HF rank vs vLLM free, vLLM rank vs vLLM free); constrained <= 1.2x free seconds per user, per
backend.

    python bench/infer_throughput.py                                        # 30 users, fp32, 2 torch threads
    python bench/infer_throughput.py --checkpoint runs/tmf_smollm2_shop --n-users 100
    python bench/infer_throughput.py --n-users 3                            # tiny check (still 2 engine starts)
    python bench/infer_throughput.py --no-vllm                              # the HF rows only
    python bench/infer_throughput.py batch_size=16 rank_batch_size=80       # any llmrec infer key=value

Defaults: the newest checkpoint of runs/ablations/no_curriculum_shop, configs/infer/shop.yaml with
``precision=fp32 vllm.dtype=float32``. Run from the repository root (the recipe's paths are relative to it);
without ``.venv-vllm`` (``make vllm-venv``) the vLLM rows say "not run". vLLM's engine threads follow its own
CPU binding (``VLLM_CPU_OMP_THREADS_BIND``, default auto: one thread per allowed physical core, one core kept
for its scheduler when there are two or more), not ``--threads``. The inputs are built as ``llmrec infer``
builds them (a graph encoder is trained on first use for a new dataset version).
Writes bench/out/infer_throughput.json (with every user's answers) and .md (--out DIR).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmrec.cli_common import setup_logging
from llmrec.config import ConfigError, to_dict
from llmrec.data.candidates import load_candidates
from llmrec.devices import autocast_dtype, batch_to_device, describe_machine, machine_description
from llmrec.eval.infer import (
    InferConfig,
    build_prompts,
    load_infer_config,
    load_model,
    make_generator,
    rank_prompts,
    resolve_device,
    resolve_run,
    select_rows,
)
from llmrec.eval.report import markdown_table
from llmrec.generation.ranking import shared_prompt_answers
from llmrec.generation.vllm import prompt_embeds_requests, worker_python
from llmrec.io import write_json, write_text
from llmrec.metrics import candidate_ranking_metrics, first_line, generative_metrics
from llmrec.pipeline.commands import inference_inputs
from llmrec.tmf.collator import TMFCollator
from llmrec.tmf.prompts.render import PromptRenderer

OUT = Path("bench/out")
DEFAULT_RUN = Path("runs/ablations/no_curriculum_shop")  # relative: run from the repository root
DEFAULT_CONFIG = Path("configs/infer/shop.yaml")
NO_VENV = "not run (no .venv-vllm: make vllm-venv)"
MODES = ("free", "constrained", "rank")
log = logging.getLogger("bench.infer_throughput")


@dataclasses.dataclass
class Inputs:
    """What ``run_inference`` builds before it predicts, built by the same functions."""

    cfg: InferConfig
    checkpoint: Path | None
    task: str
    model: Any
    renderer: Any
    prompts: list[Any]
    prompt_collator: TMFCollator
    answer_collator: TMFCollator
    autocast: torch.dtype | None
    load_s: dict[str, float]

    @property
    def titles(self) -> list[list[str]]:
        return [[self.renderer.item_name(c) for c in p.candidates] for p in self.prompts]

    @property
    def targets(self) -> list[int]:
        return [int(p.target_index) for p in self.prompts]


def mode_config(cfg: InferConfig, backend: str, constrained: bool) -> InferConfig:
    return dataclasses.replace(cfg, backend=backend,
                               generation=dataclasses.replace(cfg.generation, constrained=constrained))


def prepare(cfg: InferConfig) -> Inputs:
    """Data and tables, the model, the prompts of the seeded user subset and both collators (as run_inference)."""
    start = time.perf_counter()
    dataset, tables = inference_inputs(cfg)
    inputs_s = time.perf_counter() - start
    checkpoint, train_cfg, task = resolve_run(cfg)
    device = resolve_device(cfg)
    start = time.perf_counter()
    model = load_model(cfg, checkpoint, train_cfg, tables).to(device).eval()
    model_s = time.perf_counter() - start
    renderer = PromptRenderer(train_cfg.prompts, dataset)
    cands = train_cfg.eval.candidates
    candidate_set = load_candidates(dataset, cfg.split, sampler=cands.sampler, size=cands.size, seed=cands.seed)
    rows = select_rows(len(dataset.samples[cfg.split]), cfg.n_users, cfg.seed, cfg.split)
    prompts = build_prompts(cfg, renderer, dataset, candidate_set, task, rows)
    max_length = train_cfg.max_length
    return Inputs(cfg, checkpoint, task, model, renderer, prompts,
                  TMFCollator(model.tokenizer, renderer, max_length, padding_side="left", with_answer=False),
                  TMFCollator(model.tokenizer, renderer, max_length, padding_side="right", with_answer=True),
                  autocast_dtype(cfg.precision, device), {"inputs_s": inputs_s, "model_load_s": model_s})


def generation_quality(b: Inputs, texts: list[str]) -> dict[str, Any]:
    counts = generative_metrics(texts, b.titles, b.targets)
    return {"HitRate@1": counts["HitRate@1"], "ValidRatio": counts["ValidRatio"], "answers": texts}


def warm_up(b: Inputs) -> float:
    """One untimed HF generation and ranking of the first user (first-call costs stay out of the HF rows)."""
    start = time.perf_counter()
    cfg = mode_config(b.cfg, "hf", False)
    make_generator(cfg, b.model, b.prompt_collator, b.answer_collator, b.checkpoint, b.autocast).generate(
        b.prompts[:1], cfg.batch_size, progress=False)
    rank_prompts(cfg, b.model, b.answer_collator, b.renderer, b.prompts[:1], b.autocast, progress=False)
    return time.perf_counter() - start


def run_hf_generation(b: Inputs, constrained: bool) -> dict[str, Any]:
    cfg = mode_config(b.cfg, "hf", constrained)
    start = time.perf_counter()
    generator = make_generator(cfg, b.model, b.prompt_collator, b.answer_collator, b.checkpoint, b.autocast)
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    texts = generator.generate(b.prompts, cfg.batch_size, progress=False)
    return {"timed_s": time.perf_counter() - start, "fixed_s": setup_s, "engine_start_s": None,
            **generation_quality(b, texts)}


def run_vllm_generation(b: Inputs, constrained: bool) -> dict[str, Any]:
    cfg = mode_config(b.cfg, "vllm", constrained)
    start = time.perf_counter()
    generator = make_generator(cfg, b.model, b.prompt_collator, b.answer_collator, b.checkpoint, b.autocast)
    setup_s = time.perf_counter() - start  # the LoRA merge on first use (cached afterwards)
    start = time.perf_counter()
    prompt_embeds_requests(b.model, b.prompt_collator, b.prompts, cfg.batch_size, generator.embed_dtype)
    embed_s = time.perf_counter() - start
    log.info("vLLM %s: %s", "constrained" if constrained else "free", generator.where())
    start = time.perf_counter()
    texts = generator.generate(b.prompts, cfg.batch_size, progress=False)
    call_s = time.perf_counter() - start
    engine_s, generate_s = generator.last_timings["engine_start_s"], generator.last_timings["generate_s"]
    return {"timed_s": embed_s + generate_s, "fixed_s": setup_s + call_s - embed_s - engine_s - generate_s,
            "engine_start_s": engine_s, "embed_s": embed_s, "engine_generate_s": generate_s,
            "lora_merge_s": setup_s, "generate_call_s": call_s, **generation_quality(b, texts)}


def ranking_quality(b: Inputs, scores: np.ndarray) -> dict[str, Any]:
    hit = candidate_ranking_metrics(scores, b.targets, ks=(1,))["HR@1"]
    answers = [titles[int(np.argmax(s))] for titles, s in zip(b.titles, scores, strict=True)]
    return {"HitRate@1": hit, "ValidRatio": 1.0, "answers": answers, "scores": scores}


def run_ranking(b: Inputs) -> dict[str, Any]:
    start = time.perf_counter()
    scores = rank_prompts(b.cfg, b.model, b.answer_collator, b.renderer, b.prompts, b.autocast, progress=False)
    seconds = time.perf_counter() - start
    return {"timed_s": seconds, "fixed_s": 0.0, "engine_start_s": None, **ranking_quality(b, scores)}


def run_vllm_ranking(b: Inputs) -> dict[str, Any]:
    """``VLLMGenerator.rank`` with the timing conventions of :func:`run_vllm_generation` (engine start apart)."""
    cfg = mode_config(b.cfg, "vllm", False)
    start = time.perf_counter()
    generator = make_generator(cfg, b.model, b.prompt_collator, b.answer_collator, b.checkpoint, b.autocast)
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    fitted = [shared_prompt_answers(p, b.answer_collator, b.renderer)[0] for p in b.prompts]
    prompt_embeds_requests(b.model, b.prompt_collator, fitted, cfg.batch_size, generator.embed_dtype)
    embed_s = time.perf_counter() - start
    log.info("vLLM rank: %s", generator.where())
    start = time.perf_counter()
    scores = generator.rank(b.prompts, cfg.batch_size, progress=False)
    call_s = time.perf_counter() - start
    engine_s, rank_s = generator.last_timings["engine_start_s"], generator.last_timings["rank_s"]
    return {"timed_s": embed_s + rank_s, "fixed_s": setup_s + call_s - embed_s - engine_s - rank_s,
            "engine_start_s": engine_s, "embed_s": embed_s, "engine_rank_s": rank_s, "lora_merge_s": setup_s,
            "rank_call_s": call_s, **ranking_quality(b, scores)}


def run_prompt_forward(b: Inputs) -> float:
    """Seconds of one HF forward pass over every prompt (batches of ``batch_size``, logits at the last position
    only): the work both generation (its prefill) and ranking (the shared prompt) cannot skip."""
    device = next(b.model.parameters()).device
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=b.autocast, enabled=b.autocast is not None):
        for first in range(0, len(b.prompts), b.cfg.batch_size):
            batch = batch_to_device(b.prompt_collator(list(b.prompts[first:first + b.cfg.batch_size])), device)
            b.model.causal_lm(inputs_embeds=b.model.embed_inputs(batch), attention_mask=batch["attention_mask"],
                              use_cache=False, logits_to_keep=1)
    return time.perf_counter() - start


def vllm_unavailable(cfg: InferConfig, skip: bool) -> str | None:
    """Why the vLLM rows cannot run (None: they can): --no-vllm, or no vllm here and no .venv-vllm."""
    if skip:
        return "not run (--no-vllm)"
    try:
        worker_python(cfg.vllm)
    except ImportError:
        return NO_VENV
    except FileNotFoundError as err:
        return f"not run ({err})"
    return None


def run_all(b: Inputs, skip_vllm: bool) -> dict[str, dict[str, Any]]:
    """Every (backend, mode) row: a measurement, or ``{"status": why not}``."""
    results: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        log.info("HF %s on %d users ...", mode, len(b.prompts))
        results[f"hf/{mode}"] = run_ranking(b) if mode == "rank" else run_hf_generation(b, mode == "constrained")
    unavailable = vllm_unavailable(b.cfg, skip_vllm)
    for mode in MODES:
        if unavailable:
            results[f"vllm/{mode}"] = {"status": unavailable}
            continue
        log.info("vLLM %s on %d users (engine start: minutes on a CPU) ...", mode, len(b.prompts))
        try:
            results[f"vllm/{mode}"] = (run_vllm_ranking(b) if mode == "rank"
                                       else run_vllm_generation(b, mode == "constrained"))
        except (RuntimeError, ValueError, ConfigError, ImportError, FileNotFoundError) as err:
            log.exception("vLLM %s failed", mode)
            results[f"vllm/{mode}"] = {"status": f"failed: {str(err).splitlines()[0]}"}
    for r in results.values():
        if "timed_s" in r:
            r["status"] = "measured"
            r["users_per_s"] = len(b.prompts) / r["timed_s"]
            r["s_per_user"] = r["timed_s"] / len(b.prompts)
    for mode in ("free", "constrained"):
        hf, vl = results[f"hf/{mode}"], results[f"vllm/{mode}"]
        if "answers" in vl:
            vl["same_as_hf"] = sum(first_line(a).strip() == first_line(h).strip()
                                   for a, h in zip(vl["answers"], hf["answers"], strict=True))
    hf, vl = results["hf/rank"], results["vllm/rank"]
    if "scores" in vl:
        vl["max_abs_score_diff_vs_hf"] = float(np.abs(vl["scores"] - hf["scores"]).max())
        vl["same_as_hf"] = int((vl["scores"].argmax(1) == hf["scores"].argmax(1)).sum())  # same arg-max
    return results


RATIOS = (  # (row name, numerator row, denominator row, "users/s" or "s/user", target, ">=" or "<=")
    ("vLLM free / HF free users/s (target >= 1.0)", "vllm/free", "hf/free", "users/s", 1.0, ">="),
    ("HF rank / HF free users/s (target >= 2.0)", "hf/rank", "hf/free", "users/s", 2.0, ">="),
    ("HF rank / vLLM free users/s (target >= 2.0)", "hf/rank", "vllm/free", "users/s", 2.0, ">="),
    ("vLLM rank / vLLM free users/s (target >= 2.0)", "vllm/rank", "vllm/free", "users/s", 2.0, ">="),
    ("HF constrained / HF free s/user (target <= 1.2)", "hf/constrained", "hf/free", "s/user", 1.2, "<="),
    ("vLLM constrained / vLLM free s/user (target <= 1.2)", "vllm/constrained", "vllm/free", "s/user", 1.2, "<="),
)


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, a, b, unit, target, sense in RATIOS:
        missing = [k for k in (a, b) if results[k]["status"] != "measured"]
        if missing:
            out[name] = {"value": None, "met": None, "status": f"not measured ({', '.join(missing)})"}
            continue
        key = "users_per_s" if unit == "users/s" else "s_per_user"
        value = results[a][key] / results[b][key]
        out[name] = {"value": value, "met": value >= target if sense == ">=" else value <= target,
                     "status": "measured"}
    return out


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def report_lines(b: Inputs, results: dict[str, dict[str, Any]], checks: dict[str, dict[str, Any]],
                 machine: dict[str, Any], warmup_s: float, threads: int) -> list[str]:
    n = len(b.prompts)
    cfg = b.cfg
    rows: dict[str, dict[str, str]] = {}
    for key, r in results.items():
        backend, mode = key.split("/")
        name = f"{mode}, {'HF' if backend == 'hf' else 'vLLM'}"
        if r["status"] != "measured":
            rows[name] = {"users/s": r["status"]}
            continue
        same = "reference" if backend == "hf" else "—"
        if "same_as_hf" in r:
            same = f"{r['same_as_hf']}/{n}"
        if "max_abs_score_diff_vs_hf" in r:
            same += f", max abs score diff {r['max_abs_score_diff_vs_hf']:.2g}"
        rows[name] = {"users/s": f"{r['users_per_s']:.3f}", "s/user": f"{r['s_per_user']:.2f}",
                      "timed s": seconds(r["timed_s"]), "engine start s": seconds(r["engine_start_s"]),
                      "other fixed s": seconds(r["fixed_s"]), "HitRate@1": f"{r['HitRate@1']:.3f}",
                      "ValidRatio": f"{r['ValidRatio']:.3f}", "same as HF": same}
    order = [f"{m}, {k}" for m in MODES for k in ("HF", "vLLM")]
    columns = ["users/s", "s/user", "timed s", "engine start s", "other fixed s", "HitRate@1", "ValidRatio",
               "same as HF"]
    table = markdown_table({name: rows[name] for name in order}, columns, first="mode, backend")
    ratio_rows = {name: {"value": c["status"] if c["value"] is None else f"{c['value']:.3f}",
                         "met": "—" if c["met"] is None else ("yes" if c["met"] else "no")}
                  for name, c in checks.items()}
    machine_line = (f"Machine: {describe_machine(machine)}; {threads} torch threads (HF); vLLM threads: its own "
                    f"binding (VLLM_CPU_OMP_THREADS_BIND={os.environ.get('VLLM_CPU_OMP_THREADS_BIND', 'auto')}); "
                    f"CPUs allowed {sorted(os.sched_getaffinity(0))}; load average after {os.getloadavg()[0]:.1f}.")
    run_line = (f"Checkpoint {b.checkpoint}, task {b.task}, {n} {cfg.split} users (seed {cfg.seed}), "
                f"{len(b.prompts[0].candidates)} candidates, precision {cfg.precision}, vllm.dtype {cfg.vllm.dtype}, "
                f"batch_size {cfg.batch_size}, rank_batch_size {cfg.rank_batch_size} ({cfg.rank_method}), "
                f"max_new_tokens {cfg.generation.max_new_tokens}.")
    timing_line = (f"Loading: inputs {b.load_s['inputs_s']:.1f} s, model {b.load_s['model_load_s']:.1f} s; HF "
                   f"warm-up (1 user, untimed) {warmup_s:.1f} s. timed s: generation or ranking only (vLLM: prompt "
                   "embeddings + the engine's generate or scoring); other fixed s: HF generator setup, or vLLM LoRA "
                   "merge + worker launch + vllm import + job files. same as HF: generation, the first line; "
                   "ranking, the arg-max (and the largest |vLLM - HF| summed answer log-likelihood).")
    ratio_table = markdown_table(ratio_rows, ["value", "met"], first="ratio")
    return [machine_line, run_line, timing_line, "", table, ratio_table]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="llmrec infer overrides, applied last")
    parser.add_argument("--checkpoint", default=str(DEFAULT_RUN),
                        help="a checkpoint folder, or a run folder (its newest checkpoint)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="a configs/infer/*.yaml file")
    parser.add_argument("--n-users", type=int, default=30, help="seeded random subset of test users")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of this process (HF, embeddings)")
    parser.add_argument("--no-vllm", action="store_true", help="run the HF rows only")
    parser.add_argument("--out", default=str(OUT), help="folder for infer_throughput.json and .md")
    args = parser.parse_args()
    setup_logging()
    torch.set_num_threads(args.threads)
    overrides = [f"checkpoint={args.checkpoint}", f"n_users={args.n_users}", "precision=fp32",
                 "vllm.dtype=float32", *args.overrides]
    try:
        cfg = load_infer_config(args.config, overrides)
    except ConfigError as err:
        parser.error(str(err))
    machine = machine_description()
    print(f"machine: {describe_machine(machine)}", flush=True)
    start = time.perf_counter()
    b = prepare(cfg)
    warmup_s = warm_up(b)
    log.info("HF prompt forward only on %d users ...", len(b.prompts))
    prompt_forward_s = run_prompt_forward(b)
    results = run_all(b, args.no_vllm)
    checks = ratios(results)
    lines = report_lines(b, results, checks, machine, warmup_s, args.threads)
    lines += ["", (f"Floor: one HF forward pass over every prompt (prefill only: no generation, no answers) took "
              f"{prompt_forward_s:.1f} s = {prompt_forward_s / len(b.prompts):.2f} s/user; HF free generation costs "
              f"{results['hf/free']['timed_s'] / prompt_forward_s:.2f}x that and HF ranking "
              f"{results['hf/rank']['timed_s'] / prompt_forward_s:.2f}x (ranking cannot cost less than the floor).")]
    out = Path(args.out)
    answers = [{"row": k, "target": titles[target], **{key: r["answers"][k] for key, r in results.items()
                                                      if "answers" in r},
                **{f"{key}/scores": [float(v) for v in r["scores"][k]] for key, r in results.items() if "scores" in r}}
               for k, (titles, target) in enumerate(zip(b.titles, b.targets, strict=True))]
    report = {"machine": machine, "settings": vars(args) | {"config": to_dict(cfg), "checkpoint": str(b.checkpoint),
                                                           "task": b.task, "n_users": len(b.prompts),
                                                           "cpus_allowed": sorted(os.sched_getaffinity(0))},
              "load_s": b.load_s, "warmup_s": warmup_s, "prompt_forward_s": prompt_forward_s,
              "results": {k: {f: v for f, v in r.items() if f not in ("answers", "scores")}
                          for k, r in results.items()},
              "ratios": checks, "answers": answers, "wall_s": time.perf_counter() - start,
              "load_average_after": os.getloadavg()}
    write_json(out / "infer_throughput.json", report)
    write_text(out / "infer_throughput.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
