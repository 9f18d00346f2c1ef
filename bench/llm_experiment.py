"""The LLM experiment (issue 11): TMF Table 3's rows, LLaRA, the conventional models and rule rows, every row
scored on the same test users and the same frozen candidate sets, on the synthetic shop (brand-first titles, the
default, or category-first ones: ``--dataset shop_category_first``) or ML-100k.

    python bench/llm_experiment.py [--dataset shop|shop_category_first|ml100k] [--train] [--rows NAME ...]
        [--generate-users 100]
        [--out bench/out/<dataset>_experiment] [--carry docs/results/<dataset>/<dataset>_experiment.json]
    make experiment                    # the shop with --train: trains the missing rows first (hours on a CPU)
    make experiment-category-first     # the same on category-first titles

Rows (configs, one per row; each differs from full TMF only in its own keys, tests/test_every_config.py):

* LLM rows: ``configs/ablations/*_<dataset>.yaml`` and ``configs/baselines/llara_<dataset>.yaml`` (ML-100k has no
  images, so its '+ item tokens (AMSA)' row is its full TMF and there is no separate CMA row). A row counts once its
  run reached ``max_steps`` (the shop also has full TMF trained without the image, text or graph modality,
  ``configs/ablations/{image,text,graph}_off_shop.yaml``; ``--train`` runs ``train.py --config ... [--resume auto]``
  for the others, one after
  the other). Each finished row is scored with its last checkpoint on every test user: candidate ranking by
  answer log-likelihood (HR@1, HR@3, NDCG@3), free greedy generation and constrained generation on a seeded
  subset of ``--generate-users`` (HitRate@1 as correct/total and correct/valid, ValidRatio);
* conventional rows: MBHT and SASRec (ML-100k: also GRU4Rec and BERT4Rec) trained on the recipes' own split
  (``llmrec.pipeline.stages.ensure_graph_run``,
  the very runs that give the LLM rows their graph tables), their per-row predictions on the same candidates;
* rule rows (``bench/rule_rows.py``): most popular, seen in history, session category (where the catalog has
  categories), and the planted-truth diagnostics of the synthetic shop.

Noise: 95% percentile-bootstrap intervals over users for HR@1 (2,000 resamples, seed 0) and paired comparisons
(difference, paired-bootstrap interval, sign-flip p-value) between neighbouring ablation rows and between full
TMF and the other rows, on the same users. Learning curves (validation HR@1 against steps and wall time) of the
LLM rows come from their ``metrics.jsonl``.

Writes ``<dataset>_experiment.json`` (with every row's per-user target ranks), ``<dataset>_experiment.md``,
``<dataset>_experiment.png`` (HR@1 with intervals) and ``learning_curves.png`` into ``--out``; prints the markdown.
Rows whose checkpoint is gone (``runs/`` does not outlive a session) are carried from ``--carry``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from learning_curves import read_curve  # bench/ is on sys.path when a script there runs
from matplotlib.figure import Figure
from rule_rows import rule_rows

from graph_encoders.predictions import predictions_path
from llmrec.config import load_config
from llmrec.data.candidates import load_candidates
from llmrec.eval.infer import InferConfig, run_inference
from llmrec.eval.report import evaluate_predictions, read_predictions
from llmrec.metrics import PAIRED_COLUMNS, bootstrap_interval, paired_cells, paired_comparison, target_ranks
from llmrec.pipeline.stages import ensure_graph_run, ensure_inputs
from llmrec.train.checkpoint import latest_checkpoint, load_trainer_state
from llmrec.train.config import load_train_config

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.llm_experiment")

EXPERIMENTS = {
    "shop": {
        "llm_rows": {  # name -> recipe; the first four are TMF Table 3 in order
            "text-only LLM": "configs/ablations/text_only_shop.yaml",
            "+ behavior tokens": "configs/ablations/behavior_tokens_shop.yaml",
            "+ item tokens (AMSA)": "configs/ablations/item_tokens_amsa_shop.yaml",
            "full TMF (AMSA + CMA)": "configs/ablations/tmf_full_shop.yaml",
            "full TMF, no curriculum": "configs/ablations/no_curriculum_shop.yaml",
            "LLaRA": "configs/baselines/llara_shop.yaml",
            "full TMF, trained without image": "configs/ablations/image_off_shop.yaml",
            "full TMF, trained without text": "configs/ablations/text_off_shop.yaml",
            "full TMF, trained without graph": "configs/ablations/graph_off_shop.yaml",
        },
        "table3": ["text-only LLM", "+ behavior tokens", "+ item tokens (AMSA)", "full TMF (AMSA + CMA)"],
        "full": "full TMF (AMSA + CMA)",
        "conventional": {"MBHT": "configs/graph/mbht_shop.yaml", "SASRec": "configs/graph/sasrec_shop.yaml"},
        "title": "Synthetic shop (`configs/data/shop.yaml`, `max_history=20`: the recipes' split",
    },
    "ml100k": {
        "llm_rows": {
            "text-only LLM": "configs/ablations/text_only_ml100k.yaml",
            "+ behavior tokens": "configs/ablations/behavior_tokens_ml100k.yaml",
            "full TMF (AMSA; no images)": "configs/ablations/tmf_full_ml100k.yaml",
            "full TMF, no curriculum": "configs/ablations/no_curriculum_ml100k.yaml",
            "LLaRA": "configs/baselines/llara_ml100k.yaml",
        },
        "table3": ["text-only LLM", "+ behavior tokens", "full TMF (AMSA; no images)"],
        "full": "full TMF (AMSA; no images)",
        "conventional": {"SASRec": "configs/graph/sasrec_ml100k.yaml", "GRU4Rec": "configs/graph/gru4rec_ml100k.yaml",
                         "BERT4Rec": "configs/graph/bert4rec_ml100k.yaml", "MBHT": "configs/graph/mbht_ml100k.yaml"},
        "title": "ML-100k (`configs/data/ml100k.yaml`, `max_history=10`: the recipes' split",
    },
}
# The same shop table with category-first titles ("shorts: Acme Coro (M)"; synthetic.title_order, issue 11): every
# LLM row's recipe has a ..._category_first twin; users, interactions and frozen candidate items are the brand-first
# shop's, so the conventional and rule rows score as there (they read no titles).
EXPERIMENTS["shop_category_first"] = {
    **EXPERIMENTS["shop"],
    "llm_rows": {name: recipe.replace("_shop.yaml", "_shop_category_first.yaml")
                 for name, recipe in EXPERIMENTS["shop"]["llm_rows"].items()},
    "title": "Synthetic shop with category-first titles (`configs/data/shop.yaml`, `max_history=20`, "
             "`synthetic.title_order=category_first`: the recipes' split",
}
SPLIT, PROTOCOL, N_BOOT = "test", "uni10", 2000
RULES_COMPARED = ("popular", "seen in history", "session category")  # rules a model must beat (where they apply)


def finished_checkpoint(recipe: str) -> Path | None:
    """The run's last checkpoint if it reached ``max_steps``, else None."""
    cfg = load_train_config(ROOT / recipe)
    last = latest_checkpoint(ROOT / cfg.output_dir)
    if last is None or cfg.max_steps is None or load_trainer_state(last)["step"] < cfg.max_steps:
        return None
    return last


def train_row(recipe: str) -> None:
    """Train (or continue) one row in a child process, exactly as its header comment launches it."""
    cfg = load_train_config(ROOT / recipe)
    resume = ["--resume", "auto"] if latest_checkpoint(ROOT / cfg.output_dir) is not None else []
    command = [sys.executable, "train.py", "--config", recipe, *resume]
    log.info("training %s: %s", recipe, " ".join(command))
    subprocess.run(command, cwd=ROOT, check=True)


def llm_predictions(name: str, recipe: str, checkpoint: Path, out: Path, generate_users: int) -> dict[str, Path]:
    """Rank every test user; free and constrained generation for a seeded subset (cached by checkpoint)."""
    dataset, tables = ensure_inputs(load_train_config(ROOT / recipe))
    slug = Path(recipe).stem
    runs = {"rank": ["mode=rank", "n_users=null"],
            "generate": ["mode=generate", f"n_users={generate_users}"],
            "constrained": ["mode=generate", f"n_users={generate_users}", "generation.constrained=true"]}
    files = {}
    for kind, overrides in runs.items():
        path = out / "predictions" / f"{slug}-{kind}.jsonl"
        meta = path.with_name(path.name + ".meta.json")
        if not (meta.is_file() and json.loads(meta.read_text())["checkpoint"] == str(checkpoint)):
            log.info("%s: %s predictions with %s", name, kind, checkpoint)
            cfg = load_config(InferConfig, None, [f"checkpoint={checkpoint}", f"split={SPLIT}", "precision=auto",
                                                  f"output={path}", *overrides])
            run_inference(cfg, dataset, tables)
        files[kind] = path
    return files


def ranks_of(path: Path, rows: np.ndarray) -> np.ndarray:
    """Per-user 1-based target rank (ties pessimistic) of a ranking predictions file, in the order of split ``rows``."""
    records = {r["row"]: r for r in read_predictions(path).records}
    scores = np.array([records[r]["scores"] for r in rows], dtype=np.float64)
    return target_ranks(scores, np.array([records[r]["target_index"] for r in rows]))


def carried_rows(path: Path, names: list[str], fingerprint: str, candidate_file: str,
                 rule_ranks: dict[str, np.ndarray]) -> dict[str, dict]:
    """Rows of an earlier run's ``shop_experiment.json`` (same split, same frozen candidates) among ``names``.

    Checkpoints live in the ignored ``runs/`` and do not outlive a session; the committed results file does.
    A carried row keeps its recorded numbers; with ``target_ranks`` it also joins the paired comparisons.

    Same split and candidates means the same dataset fingerprint, or, for a file written before a fingerprint
    format change (the shop's moved from 6ffd34f0a179 to 5e31167af55b when image paths became relative), rule
    rows whose per-user target ranks today (``rule_ranks``, deterministic functions of split and candidates)
    equal the recorded ones for every user: at least two such rules, all equal, or nothing is carried.
    """
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    if Path(earlier["candidate_file"]).name != Path(candidate_file).name:
        log.warning("%s: other candidates (%s): nothing carried", path, earlier["candidate_file"])
        return {}
    if earlier["fingerprint"] != fingerprint:
        recorded = {name: np.asarray(row["target_ranks"]) for name, row in earlier["rows"].items()
                    if name in rule_ranks and "target_ranks" in row}
        same = [name for name, ranks in recorded.items() if np.array_equal(ranks, rule_ranks[name])]
        if len(recorded) < 2 or len(same) != len(recorded):
            log.warning("%s: other data or candidates (fingerprint %s; rule rows with equal per-user ranks: %s of %d):"
                        " nothing carried", path, earlier["fingerprint"][:12], same, len(recorded))
            return {}
        log.warning("%s: fingerprint %s differs from today's %s, but the per-user ranks of every recorded rule row "
                    "(%s) are equal on all %d users: same split and candidates, rows carried", path,
                    earlier["fingerprint"][:12], fingerprint[:12], ", ".join(same), len(rule_ranks[same[0]]))
    return {name: {**earlier["rows"][name],
                   "carried_from": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)}
            for name in names if name in earlier["rows"]}


def learning_curve(recipe: str) -> list[dict]:
    """Validation points (step, training seconds, HR@1) of a row's run; empty before it has any."""
    path = ROOT / load_train_config(ROOT / recipe).output_dir / "metrics.jsonl"
    return read_curve(path)["validation"] if path.is_file() else []


def training_time(metrics: Path) -> dict:
    """A run's ``train_minutes`` (the raw sum of its step times), ``paused_steps`` and ``validation_curve``."""
    curve = read_curve(metrics)
    return {"train_minutes": curve["train_seconds"] / 60, "paused_steps": curve["paused_steps"],
            "validation_curve": curve["validation"]}


def plot(results: dict, curves: dict, out: Path) -> None:
    experiment = EXPERIMENTS[results["experiment"]]
    names = list(results["rows"])
    fig = Figure(figsize=(max(7.0, 0.7 * len(names) + 2), 4.2))
    ax = fig.subplots()
    values = [results["rows"][n]["HR@1"] for n in names]
    errors = np.array([[v - results["rows"][n]["HR@1_ci95"][0], results["rows"][n]["HR@1_ci95"][1] - v]
                       for n, v in zip(names, values, strict=True)]).T
    colors = ["#fc8d62" if n in experiment["llm_rows"] else "#8da0cb" if n in experiment["conventional"] else "#cccccc"
              for n in names]
    ax.bar(range(len(names)), values, yerr=errors, capsize=3, color=colors)
    ax.axhline(1 / results["n_candidates"], color="black", linestyle=":", linewidth=1, label="chance")
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("HitRate@1 (ranking), 95% CI")
    ax.set_ylim(0, 1)
    ax.set_title(f"{results['experiment'].replace('_', ' ')}, {results['n_users']} test users, same frozen candidates")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{results['experiment']}_experiment.png", dpi=120)

    fig = Figure(figsize=(10, 3.8))
    by_step, by_time = fig.subplots(1, 2)
    for name, curve in curves.items():
        if curve:
            by_step.plot([c["step"] for c in curve], [c["HR@1"] for c in curve], marker="o", label=name)
            by_time.plot([c["train_seconds"] / 60 for c in curve], [c["HR@1"] for c in curve], marker="o", label=name)
    for ax, label in ((by_step, "optimizer step"), (by_time, "training minutes (validation excluded)")):
        ax.set_xlabel(label)
        ax.set_ylabel("validation HR@1 (64 users)")
        ax.set_ylim(0, 1)
    if any(curves.values()):
        by_step.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=120)


def markdown(results: dict) -> str:
    intro = (f"{EXPERIMENTS[results['experiment']]['title']}, fingerprint "
             f"{results['fingerprint'][:12]}), {results['n_users']} test users x {results['n_candidates']} frozen "
             f"candidates; generation on a seeded subset of {results['generate_users']} users. "
             f"HR@1 with a 95% bootstrap interval over users ({N_BOOT} resamples).")
    header = ("| row | HR@1 (rank) | 95% CI | HR@3 | NDCG@3 | gen HR@1 | gen HR@1 (valid) | ValidRatio | "
              "constrained HR@1 | steps | train min |")
    lines = [intro, "", header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in results["rows"].items():
        low, high = row["HR@1_ci95"]
        gen = row.get("generate", {})
        con = row.get("constrained", {})
        cells = [f"{row['HR@1']:.3f}", f"[{low:.3f}, {high:.3f}]", f"{row['HR@3']:.3f}", f"{row['NDCG@3']:.3f}",
                 f"{gen['HitRate@1']:.3f}" if gen else "—", f"{gen['HitRate@1_valid']:.3f}" if gen else "—",
                 f"{gen['ValidRatio']:.3f}" if gen else "—", f"{con['HitRate@1']:.3f}" if con else "—",
                 str(row.get("steps", "—")),
                 (f"{row['train_minutes']:.0f}" + (" ‡" if row.get("paused_steps") else "")
                  if "train_minutes" in row else "—")]
        mark = " †" if "carried_from" in row else ""
        lines.append(f"| {name}{mark} | " + " | ".join(cells) + " |")
    carried = sorted({row["carried_from"] for row in results["rows"].values() if "carried_from" in row})
    if carried:
        unpaired = [n for n, row in results["rows"].items() if "carried_from" in row and "target_ranks" not in row]
        lines += ["", f"† scored by an earlier run of this benchmark on the same users and candidates, taken from "
                  f"{', '.join(carried)} (its checkpoint is gone)"
                  + (f"; without per-user ranks, so not in the paired comparisons: {', '.join(unpaired)}."
                     if unpaired else ".")]
    for name, row in results["rows"].items():
        if row.get("paused_steps"):
            steps = row["paused_steps"]
            extra = sum(p["seconds"] - p["median_seconds"] for p in steps) / 60
            lines += ["", f"‡ {name}: the sum of its step times includes "
                      + ", ".join(f"step {p['step']} ({p['seconds']:.0f} s, "
                                  f"{p['seconds'] / p['median_seconds']:.0f}x the "
                                  f"run's median step of {p['median_seconds']:.0f} s)" for p in steps)
                      + f": the process was stopped or the machine suspended inside it. At the median instead: "
                        f"{row['train_minutes'] - extra:.0f} min."]
    if results["not_run"]:
        lines += ["", "Not trained yet (no finished run): " + "; ".join(results["not_run"]) + "."]
    if results["paired"]:
        lines += ["", "Paired comparisons of ranking HR@1 on the same users (b - a):", "",
                  f"| a | b | {PAIRED_COLUMNS} |", "|---|---|---|---|---|---|"]
        lines += [f"| {p['a']} | {p['b']} | {paired_cells(p)} |" for p in results["paired"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="store_true", help="train the rows whose run has not reached max_steps")
    parser.add_argument("--dataset", default="shop", choices=list(EXPERIMENTS))
    parser.add_argument("--rows", nargs="*", default=None, metavar="NAME",
                        help="LLM rows to score (default: every row of the dataset's experiment)")
    parser.add_argument("--generate-users", type=int, default=100)
    parser.add_argument("--out", default=None, help="default: bench/out/<dataset>_experiment")
    parser.add_argument("--carry", default=None,
                        help="an earlier results file (default: docs/results/<dataset>/<dataset>_experiment.json): "
                             "LLM rows without a finished run here are taken from it; '' carries nothing")
    args = parser.parse_args(argv)
    experiment = EXPERIMENTS[args.dataset]
    llm_rows, table3, full, conventional = (experiment["llm_rows"], experiment["table3"], experiment["full"],
                                            experiment["conventional"])
    unknown = sorted(set(args.rows or []) - set(llm_rows))
    if unknown:
        parser.error(f"--rows: {unknown} are not rows of the {args.dataset} experiment; choose from {list(llm_rows)}")
    args.rows = list(llm_rows) if args.rows is None else args.rows
    args.out = args.out or f"bench/out/{args.dataset}_experiment"
    args.carry = f"docs/results/{args.dataset}/{args.dataset}_experiment.json" if args.carry is None else args.carry
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    reference_cfg = load_train_config(ROOT / llm_rows[full])
    dataset, _ = ensure_inputs(reference_cfg)
    cands = load_candidates(dataset, SPLIT, sampler="uniform", size=10, seed=0)
    items, target_index = np.asarray(cands.items), np.asarray(cands.target_index)
    rows_of_split = np.arange(items.shape[0])

    scores = {}  # name -> ranking predictions file or rule scores
    extra: dict[str, dict] = {}
    not_run = []
    for name in args.rows:
        recipe = llm_rows[name]
        checkpoint = finished_checkpoint(recipe)
        if checkpoint is None and args.train:
            train_row(recipe)
            checkpoint = finished_checkpoint(recipe)
        if checkpoint is None:
            not_run.append(name)
            continue
        files = llm_predictions(name, recipe, checkpoint, out, args.generate_users)
        state = load_trainer_state(checkpoint)
        extra[name] = {"recipe": recipe, "checkpoint": str(checkpoint), "steps": state["step"],
                       "epochs": state["step"] / state["steps_per_epoch"],
                       **training_time(checkpoint.parents[1] / "metrics.jsonl"),
                       "generate": evaluate_predictions(read_predictions(files["generate"])),
                       "constrained": evaluate_predictions(read_predictions(files["constrained"])),
                       "provenance": state.get("provenance")}  # code, versions, threads per run segment
        scores[name] = files["rank"]
    for name, config in conventional.items():
        run_dir = ensure_graph_run(ROOT / config, dataset, predictions=((SPLIT, PROTOCOL),))
        scores[name] = predictions_path(run_dir, SPLIT, PROTOCOL)
        extra[name] = {"config": config, "run": str(run_dir)}
    rules, in_history, _, _ = rule_rows(dataset, SPLIT, items, target_index)

    per_user: dict[str, np.ndarray] = {}
    results_rows: dict[str, dict] = {}
    rule_ranks = {name: target_ranks(source, target_index) for name, source in rules.items()}
    carried = (carried_rows(ROOT / args.carry, not_run, dataset.fingerprint, str(cands.path), rule_ranks)
               if args.carry else {})
    not_run = [name for name in not_run if name not in carried]
    for name, row in carried.items():
        log.info("%s: carried from %s (%s)", name, row["carried_from"], "with per-user ranks" if "target_ranks" in row
                 else "no per-user ranks: not in the paired comparisons")
        results_rows[name] = row
        if "target_ranks" in row:
            per_user[name] = (np.asarray(row["target_ranks"]) == 1).astype(float)
    for name, source in [*scores.items(), *rules.items()]:
        if isinstance(source, Path):
            ranks = ranks_of(source, rows_of_split)
            metrics = evaluate_predictions(read_predictions(source), ks=(1, 3))
        else:
            ranks = rule_ranks[name]
            metrics = {"HR@1": float((ranks <= 1).mean()), "HR@3": float((ranks <= 3).mean()),
                       "NDCG@3": float(np.where(ranks <= 3, 1 / np.log2(ranks + 1), 0).mean())}
        per_user[name] = (ranks == 1).astype(float)
        assert abs(per_user[name].mean() - metrics["HR@1"]) < 1e-9, name  # one set of users, one metric
        results_rows[name] = {"HR@1": metrics["HR@1"], "HR@1_ci95": list(bootstrap_interval(per_user[name], N_BOOT)),
                              "HR@3": metrics["HR@3"], "NDCG@3": metrics["NDCG@3"], **extra.get(name, {}),
                              "target_ranks": ranks.tolist()}  # per test user: later runs pair with this row
    results_rows = {name: results_rows[name] for name in [*llm_rows, *scores, *rules] if name in results_rows}
    pairs = list(itertools.pairwise([n for n in table3 if n in per_user]))  # neighbouring Table 3 rows that ran
    # the other rows against full TMF; without its per-user ranks (a carried row), against the first LLM row with them
    reference = full if full in per_user else next((n for n in llm_rows if n in per_user), full)
    # every LLM row outside Table 3 (no curriculum, LLaRA, the modalities switched off in training), then the others
    pairs += [(other, reference)
              for other in (*[n for n in llm_rows if n not in table3], *conventional, *RULES_COMPARED)
              if other != reference]
    pairs = [(a, b) for a, b in pairs if a in per_user and b in per_user]
    paired = [{"a": a, "b": b, **paired_comparison(per_user[a], per_user[b], N_BOOT)} for a, b in pairs]

    results = {"experiment": args.dataset, "dataset": dataset.name, "fingerprint": dataset.fingerprint, "split": SPLIT,
               "n_users": int(items.shape[0]), "n_candidates": int(items.shape[1]), "candidate_file": str(cands.path),
               "generate_users": args.generate_users, "targets_in_history": in_history, "rows": results_rows,
               "paired": paired, "not_run": not_run, "cpu": platform.processor() or platform.machine(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "seconds": time.perf_counter() - started}
    # paths relative to the repository, so the file means the same on another machine
    text = json.dumps(results, indent=1).replace(str(ROOT) + "/", "")
    (out / f"{args.dataset}_experiment.json").write_text(text + "\n", encoding="utf-8")
    table = markdown(results)
    (out / f"{args.dataset}_experiment.md").write_text(table, encoding="utf-8")
    plot(results, {n: row["validation_curve"] for n, row in results_rows.items() if row.get("validation_curve")}, out)
    print(table, end="")
    print(f"written: {out}/{args.dataset}_experiment.{{json,md,png}}, {out}/learning_curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
