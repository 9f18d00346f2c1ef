"""What do a model's candidate rankings follow? Position, popularity and title length of its picks (issue 11).

    python bench/prediction_bias.py --data configs/data/ml100k.yaml --override max_history=10 \\
        --predictions NAME=PATH [NAME=PATH ...] [--out docs/results/ml100k/prediction_bias]

Each PATH is a rank-mode predictions file (``llmrec infer mode=rank`` or fit-graph's ``predictions-*.jsonl``) on
the dataset's frozen candidates. Per file, over its users:

* HR@1, and how often the pick is at each prompt position against how often the target is (position bias);
* popularity (interactions before the validation target, ``llmrec.eval.rules.training_popularity``): the share of
  picks that are the most popular candidate, the same share for targets, and the median per-user Spearman
  correlation between the model's scores and the candidates' popularity (1: ranks by popularity alone);
* title length (characters): the share of picks that are the shortest title (chance: 1 in C).

Writes ``prediction_bias.json`` and ``prediction_bias.md`` into ``--out``; prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from llmrec.data import load_data_config, prepare
from llmrec.eval.report import read_predictions
from llmrec.eval.rules import training_popularity

ROOT = Path(__file__).resolve().parents[1]


def bias_of(path: Path, popularity: np.ndarray, index: dict[str, int]) -> dict:
    records = read_predictions(path).records
    scores = [np.asarray(r["scores"], dtype=np.float64) for r in records]
    n_candidates = len(scores[0])
    picks = np.array([int(np.argmax(s)) for s in scores])
    targets = np.array([r["target_index"] for r in records])
    pop = np.array([[popularity[index[c["item_id"]]] for c in r["candidates"]] for r in records], dtype=np.float64)
    lengths = np.array([[len(c["title"]) for c in r["candidates"]] for r in records])
    rows = np.arange(len(records))
    most_popular = pop == pop.max(axis=1, keepdims=True)
    rho = [spearmanr(s, p).statistic for s, p in zip(scores, pop, strict=True) if np.ptp(p) > 0 and np.ptp(s) > 0]
    return {
        "n_users": len(records), "n_candidates": n_candidates, "HR@1": float((picks == targets).mean()),
        "pick_position": np.bincount(picks, minlength=n_candidates).tolist(),
        "target_position": np.bincount(targets, minlength=n_candidates).tolist(),
        "pick_is_most_popular": float(most_popular[rows, picks].mean()),
        "target_is_most_popular": float(most_popular[rows, targets].mean()),
        "median_spearman_score_popularity": float(np.median(rho)) if rho else float("nan"),
        "pick_is_shortest_title": float((lengths[rows, picks] == lengths.min(axis=1)).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the data config the predictions were made on")
    parser.add_argument("--override", nargs="*", default=[], help="dotted overrides of the data config")
    parser.add_argument("--predictions", nargs="+", required=True, metavar="NAME=PATH")
    parser.add_argument("--out", default="bench/out/prediction_bias")
    args = parser.parse_args(argv)
    named = dict(item.split("=", 1) for item in args.predictions)
    dataset = prepare(load_data_config(args.data, args.override))
    popularity = training_popularity(dataset)
    index = {item_id: k for k, item_id in enumerate(dataset.item_ids)}
    results = {"data": args.data, "overrides": args.override, "fingerprint": dataset.fingerprint,
               "rows": {name: {"predictions": path, **bias_of(Path(path), popularity, index)}
                        for name, path in named.items()}}
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "prediction_bias.json").write_text(json.dumps(results, indent=1).replace(str(ROOT) + "/", "") + "\n")
    chance = 1 / next(iter(results["rows"].values()))["n_candidates"]
    lines = [(f"Rank-mode predictions on `{args.data}` {' '.join(args.override)} (chance share of any one candidate: "
             f"{chance:.2f})."), "",
             ("| row | users | HR@1 | pick = most popular | target = most popular | "
             "median Spearman(score, popularity) | "
             "pick = shortest title | picks at positions 1..C |"), "|---|---|---|---|---|---|---|---|"]
    for name, row in results["rows"].items():
        lines.append(f"| {name} | {row['n_users']} | {row['HR@1']:.3f} | {row['pick_is_most_popular']:.3f} | "
                     f"{row['target_is_most_popular']:.3f} | {row['median_spearman_score_popularity']:+.2f} | "
                     f"{row['pick_is_shortest_title']:.3f} | {' '.join(map(str, row['pick_position']))} |")
    table = "\n".join(lines) + "\n"
    (out / "prediction_bias.md").write_text(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
