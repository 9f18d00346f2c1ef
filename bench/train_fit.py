"""Does a trained LLM row fit the prompts it trained on? Train-set against held-out ranking (issue 11).

    python bench/train_fit.py --recipe configs/ablations/tmf_full_ml100k.yaml [--n-users 200]
        [--out docs/results/train_fit]

Every LLM row of issue 11 ranks the held-out users' 10 frozen candidates near 0.2 HitRate@1. Two readings:
the model *cannot fit* the choice at this budget (then it also ranks its own training prompts near 0.2), or it
*fits without generalizing* (then its training prompts rank far better than held-out ones). This script tells
them apart. The run's last checkpoint ranks, with its evaluation task and the fixed paraphrase (as the
training loop's validation does), four seeded groups of ``--n-users`` prompts:

* ``train (seen)``: training rows the run's optimizer steps consumed (the loop's own seeded, length-grouped
  epoch plans, replayed by :func:`llmrec.train.schedule.rows_seen`), with the training candidates it saw;
* ``train (unseen)``: training rows of the same split it never reached (none when the run covered an epoch);
* ``valid`` and ``test``: held-out users with the frozen evaluation candidates.

Per group: HitRate@1 with a 95% bootstrap interval, the mean probability the model gives the target among
the candidates (softmax of the summed answer log-likelihoods; chance 1 / C), a smoother measure than HR@1, and
the rule rows' HR@1 on the same prompts (``llmrec.eval.rules``: how easy each group is for a popularity count).
``--rules-only`` recomputes the rule columns of an existing report without ranking again. Writes
``train_fit-<recipe>.json`` (per-user target ranks) and ``.md`` into ``--out``; prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch
from llm_experiment import finished_checkpoint  # bench/ is on sys.path when a script there runs

from llmrec.data.candidates import load_candidates
from llmrec.devices import autocast_dtype
from llmrec.eval.rules import rule_scores
from llmrec.generation.ranking import candidate_log_likelihoods
from llmrec.io import write_json
from llmrec.metrics import bootstrap_interval
from llmrec.pipeline.stages import ensure_inputs
from llmrec.tmf.collator import TMFCollator
from llmrec.tmf.model import TMFModel
from llmrec.tmf.prompts.render import PromptRenderer, render_sample
from llmrec.train.checkpoint import load_trainer_state
from llmrec.train.config import evaluation_task, load_train_config
from llmrec.train.schedule import estimate_prompt_lengths, rows_seen, title_token_counts

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.train_fit")
N_BOOT = 2000


def seen_counts(cfg, dataset, candidates, tokenizer, renderer, steps: int) -> np.ndarray:
    """How often each training row entered the run's first ``steps`` optimizer steps (one process)."""
    train = dataset.samples["train"]
    samples = {k: list(train[k]) for k in ("history_items", "history_behaviors")}
    lengths = estimate_prompt_lengths(samples, candidates.items, title_token_counts(tokenizer, renderer.item_names))
    group = cfg.length_group_size if cfg.length_grouping else None
    return rows_seen(lengths, cfg.batch_size, cfg.gradient_accumulation_steps, cfg.seed, group, steps)


def choose(pool: np.ndarray, n: int, seed: int, salt: int) -> np.ndarray:
    if pool.size == 0:
        return pool
    return np.sort(np.random.default_rng([seed, salt]).choice(pool, min(n, pool.size), replace=False))


def group_metrics(scores: np.ndarray, targets: np.ndarray) -> dict:
    target_scores = scores[np.arange(len(targets)), targets]
    ranks = 1 + (scores > target_scores[:, None]).sum(axis=1)
    z = scores - scores.max(axis=1, keepdims=True)
    p_target = np.exp(z[np.arange(len(targets)), targets]) / np.exp(z).sum(axis=1)
    hits = (ranks == 1).astype(float)
    return {"n": len(targets), "HR@1": float(hits.mean()), "HR@1_ci95": list(bootstrap_interval(hits, N_BOOT)),
            "HR@3": float((ranks <= 3).mean()), "p_target": float(p_target.mean()),
            "p_target_ci95": list(bootstrap_interval(p_target, N_BOOT)), "target_ranks": ranks.tolist()}


def rule_hit_rates(dataset, split: str, cands, rows: np.ndarray) -> dict[str, float]:
    """HR@1 of every rule row on the given rows of ``split`` with their candidate rows."""
    items, targets = cands.items[rows], cands.target_index[rows]
    return {name: float((scores.argmax(axis=1) == targets).mean())
            for name, scores in rule_scores(dataset, split, items, rows).items()}


def candidate_set(dataset, cfg, split: str):
    """The candidates a group's prompts use: the training candidates for ``train``, the evaluation's otherwise."""
    c = cfg.train_candidates if split == "train" else cfg.eval.candidates
    return load_candidates(dataset, split, sampler=c.sampler, size=c.size, seed=c.seed)


def rules_only(recipe: str, out: Path) -> int:
    """Recompute the rule columns of an existing report (same rows), keep the model's numbers."""
    path = out / f"train_fit-{Path(recipe).stem}.json"
    report = json.loads(path.read_text(encoding="utf-8"))
    cfg = load_train_config(ROOT / recipe)
    dataset, _ = ensure_inputs(cfg)
    for group in report["groups"].values():
        split = group["split"]
        group["rules_HR@1"] = rule_hit_rates(dataset, split, candidate_set(dataset, cfg, split),
                                             np.array(group["rows"]))
    write_report(report, path)
    return 0


def write_report(report: dict, path: Path) -> None:
    """``path`` (JSON) and its ``.md`` sibling; prints the markdown."""
    write_json(path, report, indent=1)
    markdown = render_markdown(report)
    path.with_suffix(".md").write_text(markdown, encoding="utf-8")
    print(markdown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--n-users", type=int, default=200, help="prompts per group (seeded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=20, help="(prompt, candidate) rows per forward pass")
    parser.add_argument("--out", default="bench/out/train_fit")
    parser.add_argument("--rules-only", action="store_true", help="recompute the rule columns of an existing report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.rules_only:
        return rules_only(args.recipe, ROOT / args.out)
    checkpoint = finished_checkpoint(args.recipe)
    if checkpoint is None:
        parser.error(f"{args.recipe}: no finished run (train it first: python train.py --config {args.recipe})")
    started = time.perf_counter()
    cfg = load_train_config(ROOT / args.recipe)
    steps = int(load_trainer_state(checkpoint)["step"])
    dataset, tables = ensure_inputs(cfg)
    model = TMFModel.from_pretrained(checkpoint, tables).eval()
    renderer = PromptRenderer(cfg.prompts, dataset)
    collator = TMFCollator(model.tokenizer, renderer, cfg.max_length, padding_side="right", with_answer=True)
    task = evaluation_task(cfg)
    train_cands = candidate_set(dataset, cfg, "train")
    counts = seen_counts(cfg, dataset, train_cands, model.tokenizer, renderer, steps)
    groups = {
        "train (seen)": ("train", train_cands, choose(np.flatnonzero(counts > 0), args.n_users, args.seed, 1)),
        "train (unseen)": ("train", train_cands, choose(np.flatnonzero(counts == 0), args.n_users, args.seed, 2)),
        "valid": ("valid", None, choose(np.arange(len(dataset.samples["valid"])), args.n_users, args.seed, 3)),
        "test": ("test", None, choose(np.arange(len(dataset.samples["test"])), args.n_users, args.seed, 4)),
    }
    autocast = autocast_dtype("auto", torch.device("cpu"))
    results = {}
    for name, (split, cands, rows) in groups.items():
        if rows.size == 0:
            log.info("%s: no rows (the run covered the whole training split)", name)
            continue
        cands = cands if cands is not None else candidate_set(dataset, cfg, split)
        prompts = [render_sample(renderer, dataset, split, int(r), cands, task) for r in rows]
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            scores = candidate_log_likelihoods(model, collator, renderer, prompts, args.batch_size, progress=True)
        targets = np.array([p.target_index for p in prompts])
        results[name] = {"split": split, "rows": rows.tolist(), "times_seen": counts[rows].tolist()
                         if split == "train" else None, **group_metrics(scores, targets),
                         "rules_HR@1": rule_hit_rates(dataset, split, cands, rows),
                         "seconds": time.perf_counter() - t0}
        log.info("%s: HR@1 %.3f, mean p(target) %.3f (%d prompts, %.0f s)", name, results[name]["HR@1"],
                 results[name]["p_target"], rows.size, results[name]["seconds"])
    report = {"recipe": args.recipe, "checkpoint": str(checkpoint.relative_to(ROOT)) if checkpoint.is_relative_to(ROOT)
              else str(checkpoint), "steps": steps, "task": task, "paraphrase": "fixed (the validation's)",
              "training_rows": len(counts), "training_rows_seen": int((counts > 0).sum()),
              "mean_times_seen": float(counts[counts > 0].mean()), "n_candidates": int(cfg.eval.candidates.size),
              "precision": "bf16 autocast" if autocast is not None else "fp32",
              "cpu": platform.processor() or platform.machine(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "torch_threads": torch.get_num_threads(), "groups": results, "seconds": time.perf_counter() - started}
    write_report(report, ROOT / args.out / f"train_fit-{Path(args.recipe).stem}.json")
    return 0


def render_markdown(report: dict) -> str:
    lines = [(f"Train-set fit of `{report['recipe']}` ({report['checkpoint']}, {report['steps']} steps; task "
             f"{report['task']}, {report['paraphrase']} paraphrase, {report['n_candidates']} candidates, "
             f"{report['precision']}). The run's steps reached {report['training_rows_seen']} of "
             f"{report['training_rows']} training rows, {report['mean_times_seen']:.2f} times each on average."), ""]
    rules = sorted({r for g in report["groups"].values() for r in g.get("rules_HR@1", {})})
    lines += ["| group | prompts | HR@1 | 95% CI | HR@3 | mean p(target) | 95% CI |"
              + "".join(f" rule: {r} HR@1 |" for r in rules), "|---|---|---|---|---|---|---|" + "---|" * len(rules)]
    for name, g in report["groups"].items():
        lo, hi = g["HR@1_ci95"]
        plo, phi = g["p_target_ci95"]
        cells = "".join(f" {g['rules_HR@1'][r]:.3f} |" if r in g.get("rules_HR@1", {}) else " – |" for r in rules)
        lines.append(f"| {name} | {g['n']} | {g['HR@1']:.3f} | [{lo:.3f}, {hi:.3f}] | {g['HR@3']:.3f} | "
                     f"{g['p_target']:.3f} | [{plo:.3f}, {phi:.3f}] |" + cells)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
