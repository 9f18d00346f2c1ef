"""Retrieve-then-rerank (issue 20): a conventional retriever's top K of the whole catalog, re-ranked by the LLM.

    python bench/rerank.py [--rows NAME ...] [--k 20] [--n-users N] [--out docs/results/rerank]

Each row pairs a finished LLM run (its last checkpoint; ``bench/llm_experiment.py``'s rows) with a retriever
config; ``llmrec infer protocol=rerank`` (``llmrec/eval/rerank.py``) scores it. For every row the table shows the
retriever alone and retriever + LLM on the same users, over the whole catalog: HR@1/5/10, NDCG@10, the recall@K
ceiling, 95% bootstrap intervals over users (2,000 resamples, seed 0) and the paired difference (LLM order minus
retriever order) of HR@1 and NDCG@10 with its paired-bootstrap interval and sign-flip p-value.

Writes ``rerank.json`` (with per-user ranks), ``rerank.md`` and ``rerank.png`` into ``--out``; prints the markdown.
Rows whose LLM run is not finished are listed as not run.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from llm_experiment import finished_checkpoint  # bench/ is on sys.path when a script there runs
from matplotlib.figure import Figure

from llmrec.eval.infer import load_infer_config
from llmrec.metrics import bootstrap_interval, paired_cells, paired_comparison
from llmrec.pipeline.commands import run_predictions

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.rerank")

ROWS = {  # name -> (LLM recipe, retriever graph config)
    "ML-100k: SASRec -> full TMF": ("configs/ablations/tmf_full_ml100k.yaml", "configs/graph/sasrec_ml100k.yaml"),
    "ML-100k: SASRec -> text-only LLM": ("configs/ablations/text_only_ml100k.yaml", "configs/graph/sasrec_ml100k.yaml"),
    "shop: SASRec -> full TMF, no curriculum": ("configs/ablations/no_curriculum_shop.yaml",
                                                "configs/graph/sasrec_shop.yaml"),
    "shop: SASRec -> LLaRA": ("configs/baselines/llara_shop.yaml", "configs/graph/sasrec_shop.yaml"),
}
KS, N_BOOT = (1, 5, 10), 2000
MAX_LENGTH = 900  # K=20 candidates make prompts longer than the recipes' 480 tokens; the meta files count truncation


def per_user(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-user HR@K and NDCG@10 values from 1-based capped ranks."""
    values = {f"HR@{k}": (ranks <= k).astype(float) for k in KS}
    values["NDCG@10"] = np.where(ranks <= 10, 1.0 / np.log2(ranks + 1.0), 0.0)
    return values


def score_row(name: str, recipe: str, retriever: str, k: int, n_users: int | None, out: Path) -> dict | None:
    checkpoint = finished_checkpoint(recipe)
    if checkpoint is None:
        log.info("%s: %s has no finished run; not run", name, recipe)
        return None
    path = out / "predictions" / f"{Path(recipe).stem}-rerank{k}-{Path(retriever).stem}.jsonl"
    overrides = [f"checkpoint={checkpoint}", "protocol=rerank", "mode=rank", f"rerank.k={k}",
                 f"rerank.retriever={ROOT / retriever}", "rerank.ks=[1,5,10]", "precision=auto",
                 f"train_overrides=[max_length={MAX_LENGTH}]", f"output={path}",
                 f"n_users={'null' if n_users is None else n_users}"]
    meta_path = path.with_name(path.name + ".meta.json")
    if not (meta_path.is_file() and json.loads(meta_path.read_text())["checkpoint"] == str(checkpoint)):
        run_predictions(load_infer_config(None, overrides))
    meta = json.loads(meta_path.read_text())
    records = [json.loads(line) for line in path.read_text().splitlines()]
    ranks = {"retriever": np.array([r["retriever_rank"] for r in records]),
             "rerank": np.array([r["rerank_rank"] for r in records])}
    row = {"recipe": recipe, "retriever": retriever, "checkpoint": str(checkpoint), "k": k,
           "n_users": len(records), "n_scored": meta["n_scored"], f"recall@{k}": meta["metrics"][f"recall@{k}"],
           "truncated_prompts": meta["truncated_prompts"], "rank_minutes": meta["rank_s"] / 60}
    values = {order: per_user(r) for order, r in ranks.items()}
    for order, order_ranks in ranks.items():
        row[order] = {m: {"mean": float(v.mean()), "ci95": list(bootstrap_interval(v, N_BOOT))}
                      for m, v in values[order].items()}
        row[order]["ranks"] = order_ranks.tolist()
    row["paired"] = {m: paired_comparison(values["retriever"][m], values["rerank"][m], N_BOOT)
                     for m in ("HR@1", "NDCG@10")}
    return row


def markdown(results: dict) -> str:
    k = results["k"]
    lines = [(f"Retrieve-then-rerank over the whole catalog: the retriever's top {k} of the items each user has not "
              f"interacted with, re-ranked by the LLM's answer log-likelihood (prompt order shuffled per user). "
              f"Test users; 95% bootstrap intervals over users."), "",
             f"| row | order | users | recall@{k} | HR@1 | 95% CI | HR@5 | HR@10 | NDCG@10 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in results["rows"].items():
        for order, label in (("retriever", "retriever alone"), ("rerank", "retriever + LLM")):
            m = row[order]
            lines.append(f"| {name} | {label} | {row['n_users']} | {row[f'recall@{k}']:.3f} | "
                         f"{m['HR@1']['mean']:.3f} | "
                         f"[{m['HR@1']['ci95'][0]:.3f}, {m['HR@1']['ci95'][1]:.3f}] | {m['HR@5']['mean']:.3f} | "
                         f"{m['HR@10']['mean']:.3f} | {m['NDCG@10']['mean']:.3f} |")
    lines += ["", "Paired (retriever + LLM minus retriever alone, same users):", "",
              "| row | metric | difference | 95% CI | p (sign-flip) | users LLM better / retriever better |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {metric} | {paired_cells(p)} |"
              for name, row in results["rows"].items() for metric, p in row["paired"].items()]
    if results["not_run"]:
        lines += ["", f"Not run (no finished LLM run): {', '.join(results['not_run'])}."]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    rows = list(results["rows"])
    fig = Figure(figsize=(max(6, 2.2 * len(rows)), 4))
    ax = fig.subplots()
    width = 0.38
    for j, (order, label) in enumerate((("retriever", "retriever alone"), ("rerank", "retriever + LLM"))):
        means = [results["rows"][r][order]["HR@1"]["mean"] for r in rows]
        lows = [m - results["rows"][r][order]["HR@1"]["ci95"][0] for m, r in zip(means, rows, strict=True)]
        highs = [results["rows"][r][order]["HR@1"]["ci95"][1] - m for m, r in zip(means, rows, strict=True)]
        ax.bar(np.arange(len(rows)) + (j - 0.5) * width, means, width, yerr=[lows, highs], capsize=3, label=label)
    ceilings = [results["rows"][r][f"recall@{results['k']}"] for r in rows]
    ax.scatter(np.arange(len(rows)), ceilings, marker="_", s=800, color="black",
               label=f"recall@{results['k']} (ceiling)")
    ax.set_xticks(np.arange(len(rows)), [r.replace(": ", ":\n") for r in rows], fontsize=7)
    ax.set_ylabel("HR@1 over the whole catalog")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), metavar="NAME", help=f"choose from {list(ROWS)}")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--n-users", type=int, default=None, help="a seeded subset of test users (default: all)")
    parser.add_argument("--out", default="bench/out/rerank")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.rows) - set(ROWS))
    if unknown:
        parser.error(f"--rows: {unknown} are not rows; choose from {list(ROWS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows, not_run = {}, []
    for name in args.rows:
        row = score_row(name, *ROWS[name], args.k, args.n_users, out)
        if row is None:
            not_run.append(name)
        else:
            rows[name] = row
    results = {"k": args.k, "n_users_option": args.n_users, "rows": rows, "not_run": not_run,
               "cpu": platform.processor() or platform.machine(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "seconds": time.perf_counter() - started}
    text = json.dumps(results, indent=1).replace(str(ROOT) + "/", "")
    (out / "rerank.json").write_text(text + "\n", encoding="utf-8")
    table = markdown(results)
    (out / "rerank.md").write_text(table, encoding="utf-8")
    if rows:
        plot(results, out / "rerank.png")
    print(table, end="")
    print(f"written: {out}/rerank.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
