"""Rule rows: simple heuristics scored on the frozen candidate sets every model is compared on.

    python bench/rule_rows.py [--data-config configs/data/shop.yaml] [--split test]
        [--candidates uniform:10:0] [--out bench/out/rule_rows] [--bootstrap 2000]
        [--predictions NAME=runs/graph/.../predictions.jsonl ...] [data overrides key=value ...]

Rows (each ranks the C candidates of every row of the prepared split; HitRate@1 with a 95%
percentile-bootstrap interval over users, HR@3 and NDCG@3):

* ``popular``: the candidate with the most training interactions (every behavior counted, in each
  user's sequence before the validation target, i.e. what the models train on);
* ``seen in history``: a candidate that appears in the row's history (the ``max_history`` newest
  interactions a model sees), strongest behavior first (carted before viewed), then the most
  recent; candidates not in the history follow by popularity. Negatives are items the user never
  interacted with, so a candidate in the history is always the target: this rule's HitRate@1 is
  (share of targets in the history) + (popularity's hits on the rest);
* ``session category`` (datasets whose catalog has a ``category``): a candidate of the current
  session's category first (the most frequent category among the history's interactions after
  its last target-behavior interaction), then by popularity. On the shop this is the planted
  shopping intent: a purchase ends a session of browsing its category;
* diagnostics that read the planted truth of the synthetic shop (``ground_truth.json`` beside the
  generated images; skipped for other datasets), so no model is expected to reach them from data
  of this size, but a model that learns the planted structure moves toward them:
  ``planted preference`` (most of the user's preferred attributes matched, then popularity) and
  ``session category + preference`` (session category, then preferred attributes, then popularity);
* ``--predictions NAME=FILE``: a model's per-row predictions JSONL (``user``, ``candidates``,
  ``target``, ``scores``; what ``llmrec fit-graph`` and ``infer.py mode=rank`` write), checked to hold
  the same users, candidates and targets, scored the same way.

The generic rules are ``llmrec.eval.rules`` (the ``llmrec pipeline`` report shows them too); this script
adds the planted-truth diagnostics, bootstrap intervals and model rows. Writes ``rule_rows.json``
and ``rule_rows.md`` into ``--out`` and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from llmrec.config import ConfigError
from llmrec.data import load_candidates, load_data_config, prepare
from llmrec.eval.rules import (
    has_categories,
    history_features,
    lexicographic_scores,
    rule_scores,
    session_category,
    training_popularity,
)
from llmrec.metrics import bootstrap_interval, candidate_ranking_metrics, target_ranks

KS = (1, 3)


def planted_truth(dataset) -> dict | None:
    """The synthetic shop's ``ground_truth.json`` (beside its images folder), or None for other data."""
    if "image" not in dataset.catalog.columns or len(dataset.catalog) == 0:
        return None
    path = Path(str(dataset.catalog["image"].iloc[0])).parent.parent / "ground_truth.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def planted_features(dataset, samples, items: np.ndarray, truth: dict) -> tuple[np.ndarray, list[str]]:
    """Per candidate: the user's preferred attributes it has; per row: the user's planted type."""
    catalog = dataset.catalog
    matches = np.zeros(items.shape)
    kinds = []
    for row in range(items.shape[0]):
        user = truth["users"][dataset.user_ids[samples[row]["user"]]]
        kinds.append(user["type"])
        for key, value in user["preferred"].items():
            matches[row] += catalog[key].astype(str).to_numpy()[items[row]] == value
    return matches, kinds


def _item_id(entry) -> str:
    """A predictions file names an item by id or as ``{"item_id": ..., "title": ...}``."""
    return str(entry["item_id"]) if isinstance(entry, dict) else str(entry)


def read_predictions(path: Path, dataset, samples, items: np.ndarray, target_index: np.ndarray) -> np.ndarray:
    """Scores [n, C] from a predictions JSONL, aligned with ``items``; checks users, candidates and targets."""
    by_user = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            by_user[str(record["user"])] = record
    item_ids = dataset.item_ids
    scores = np.zeros(items.shape)
    for row in range(items.shape[0]):
        user = dataset.user_ids[samples[row]["user"]]
        record = by_user.get(str(user))
        if record is None:
            raise SystemExit(f"{path}: no prediction for user {user!r}")
        expected = [item_ids[i] for i in items[row]]
        got = [_item_id(x) for x in record["candidates"]]
        if got != expected:
            raise SystemExit(f"{path}: user {user!r} has candidates {got}, expected {expected} "
                             "(another candidate file?)")
        if _item_id(record["target"]) != expected[target_index[row]]:
            raise SystemExit(f"{path}: user {user!r} has target {record['target']!r}, expected "
                             f"{expected[target_index[row]]!r}")
        if record.get("scores") is None:
            raise SystemExit(f"{path}: user {user!r} has no scores (a ranking run is needed)")
        scores[row] = record["scores"]
    return scores


def rule_rows(dataset, split: str, items: np.ndarray, target_index: np.ndarray) -> tuple[dict[str, np.ndarray], float,
                                                                                  dict | None, list[str] | None]:
    """``(scores [n, C] per rule row, share of targets in the history, planted truth, planted user type per row)``;
    the diagnostic rows and types only where the dataset is the synthetic shop with its ground truth."""
    samples = dataset.samples[split]
    rows = rule_scores(dataset, split, items)
    popularity = training_popularity(dataset)[items].astype(float)
    seen, _, _ = history_features(samples, items)
    truth = planted_truth(dataset) if has_categories(dataset) else None
    kinds = None
    if truth is not None:
        matches, kinds = planted_features(dataset, samples, items, truth)
        same_session = session_category(dataset, samples, items)
        rows["planted preference (diagnostic)"] = lexicographic_scores(matches, popularity)
        rows["session category + preference (diagnostic)"] = lexicographic_scores(same_session, matches, popularity)
    target_in_history = float(seen[np.arange(items.shape[0]), target_index].mean())
    return rows, target_in_history, truth, kinds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-config", default="configs/data/shop.yaml")
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    parser.add_argument("--candidates", default="uniform:10:0", help="sampler:size:seed of the frozen set")
    parser.add_argument("--out", default="bench/out/rule_rows")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (seed 0)")
    parser.add_argument("--predictions", nargs="*", default=[], metavar="NAME=FILE",
                        help="model rows from per-row predictions JSONL files")
    parser.add_argument("overrides", nargs="*", help="data config overrides key=value (e.g. synthetic.n_users=1000)")
    args = parser.parse_args(argv)

    try:
        cfg = load_data_config(args.data_config, args.overrides)
    except ConfigError as exc:
        parser.error(str(exc))
    dataset = prepare(cfg)
    sampler, size, seed = args.candidates.split(":")
    cands = load_candidates(dataset, args.split, sampler=sampler, size=int(size), seed=int(seed))
    samples = dataset.samples[args.split]
    items, target_index = np.asarray(cands.items), np.asarray(cands.target_index)
    n, c = items.shape

    rows, target_in_history, truth, kinds = rule_rows(dataset, args.split, items, target_index)
    for spec in args.predictions:
        name, _, file = spec.partition("=")
        if not file:
            parser.error(f"--predictions: expected NAME=FILE, got {spec!r}")
        rows[name] = read_predictions(Path(file), dataset, samples, items, target_index)

    results = {}
    for name, scores in rows.items():
        hits = (target_ranks(scores, target_index) == 1).astype(float)
        metrics = candidate_ranking_metrics(scores, target_index, KS)
        low, high = bootstrap_interval(hits, args.bootstrap)
        entry = {"HR@1": metrics["HR@1"], "HR@1_ci95": [low, high], "HR@3": metrics["HR@3"],
                 "NDCG@3": metrics["NDCG@3"]}
        if kinds is not None:
            entry["HR@1_by_user_type"] = {kind: float(hits[[k == kind for k in kinds]].mean())
                                          for kind in sorted(set(kinds))}
        results[name] = entry

    report = {
        "data_config": args.data_config, "overrides": args.overrides, "dataset": dataset.name,
        "fingerprint": dataset.fingerprint, "split": args.split, "candidates": args.candidates,
        "candidate_file": str(cands.path) if cands.path else None, "n_rows": n, "n_candidates": c,
        "bootstrap": args.bootstrap, "targets_in_history": target_in_history,
        "synthetic": (truth or {}).get("config"), "rows": results,
    }
    types = sorted(set(kinds)) if kinds is not None else []
    lines = [f"Rule rows on `{args.data_config}` {' '.join(args.overrides)} ({dataset.name}, fingerprint "
             f"{dataset.fingerprint[:12]}), {args.split} split, {n} users x {c} candidates ({args.candidates}); "
             f"targets in the history: {target_in_history:.3f}. HitRate@1 with a 95% bootstrap interval "
             f"({args.bootstrap} resamples).", "",
             "| row | HR@1 | 95% CI | HR@3 | NDCG@3 |" + "".join(f" HR@1 {t} |" for t in types),
             "|---|---|---|---|---|" + "---|" * len(types)]
    for name, entry in results.items():
        low, high = entry["HR@1_ci95"]
        by_type = "".join(f" {entry['HR@1_by_user_type'][t]:.3f} |" for t in types)
        lines.append(f"| {name} | {entry['HR@1']:.3f} | [{low:.3f}, {high:.3f}] | {entry['HR@3']:.3f} | "
                     f"{entry['NDCG@3']:.3f} |{by_type}")
    markdown = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rule_rows.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "rule_rows.md").write_text(markdown, encoding="utf-8")
    print(markdown, end="")
    print(f"written: {out / 'rule_rows.json'}, {out / 'rule_rows.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
