"""Do two ranking prediction files agree? The reproducibility check of issue 11 (a row's command run twice).

    python bench/compare_predictions.py A.jsonl B.jsonl [--common-users] [--out bench/out/compare.json]
    python bench/compare_predictions.py A.jsonl --against-row EXPERIMENT.json "ROW NAME" [--out ...]

Both files are ``llmrec infer mode=rank`` outputs (one JSON line per user with ``scores``). Users are matched on
``(split, row, user)``; both files must hold the same users (or, with ``--common-users``, the users they share:
e.g. a seeded subset rescored against a full run) with the same candidates, else the script stops and names the
first mismatch. Prints HR@1 of each, how many users get the same arg-max, how many have bit-identical
score vectors, and the largest absolute score difference; ``--out`` also saves them as JSON.

``--against-row`` pairs A with a row of ``bench/llm_experiment.py``'s results JSON whose prediction files are gone
but whose per-user target ranks were kept (``target_ranks``, in split-row order): HR@1 of both (ties pessimistic,
as the experiment counts them), the paired difference A - row with its bootstrap interval and sign-flip p.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def read(path: Path) -> dict[tuple, dict]:
    records = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        record = json.loads(line)
        if "scores" not in record:
            raise SystemExit(f"{path}:{number}: no 'scores' (not a mode=rank prediction file)")
        records[(record["split"], record["row"], record["user"])] = record
    return records


def compare(a: dict[tuple, dict], b: dict[tuple, dict], names: tuple[str, str], common: bool = False) -> dict:
    if common:
        shared = a.keys() & b.keys()
        if not shared:
            raise SystemExit(f"{names[0]} and {names[1]} share no (split, row, user)")
        a, b = {k: a[k] for k in shared}, {k: b[k] for k in shared}
    if a.keys() != b.keys():
        only = min(a.keys() ^ b.keys())
        raise SystemExit(f"{names[0]} and {names[1]} hold different users: e.g. (split, row, user) {only}")
    keys = sorted(a)
    for key in keys:
        if [c["item_id"] for c in a[key]["candidates"]] != [c["item_id"] for c in b[key]["candidates"]]:
            raise SystemExit(f"(split, row, user) {key}: the candidates differ between {names[0]} and {names[1]}")
    sa = np.array([a[k]["scores"] for k in keys])
    sb = np.array([b[k]["scores"] for k in keys])
    target = np.array([a[k]["target_index"] for k in keys])
    return {"a": names[0], "b": names[1], "n_users": len(keys),
            "HR@1_a": float((sa.argmax(1) == target).mean()), "HR@1_b": float((sb.argmax(1) == target).mean()),
            "same_argmax": int((sa.argmax(1) == sb.argmax(1)).sum()),
            "identical_scores": int((sa == sb).all(axis=1).sum()),
            "max_abs_score_diff": float(np.abs(sa - sb).max())}


def against_row(a: dict[tuple, dict], name: str, experiment: Path, row: str) -> dict:
    """A's per-user hits at 1 paired with the committed target ranks of ``row`` in ``experiment``."""
    from llmrec.metrics import paired_comparison, target_ranks

    results = json.loads(experiment.read_text(encoding="utf-8"))
    if row not in results.get("rows", {}) or "target_ranks" not in results["rows"][row]:
        raise SystemExit(f"{experiment}: no row {row!r} with per-user target_ranks "
                         f"(rows: {sorted(results.get('rows', {}))})")
    reference = np.asarray(results["rows"][row]["target_ranks"])
    keys = sorted(a, key=lambda k: k[1])  # split-row order, the order of the experiment's target_ranks
    if [k[1] for k in keys] != list(range(reference.size)):
        raise SystemExit(f"{name} holds rows {keys[0][1]}..{keys[-1][1]} ({len(keys)} users); {row!r} has "
                         f"{reference.size} users in split-row order 0..{reference.size - 1}")
    ranks = target_ranks(np.array([a[k]["scores"] for k in keys], dtype=np.float64),
                         np.array([a[k]["target_index"] for k in keys]))
    hits_a, hits_row = (ranks == 1).astype(float), (reference == 1).astype(float)
    paired = paired_comparison(hits_row, hits_a)  # difference = mean(a) - mean(row)
    paired["a_better"], paired["b_better"] = paired.pop("b_better"), paired.pop("a_better")  # named as here
    return {"a": name, "b": f"{experiment}:{row}", "n_users": len(keys), "HR@1_a": float(hits_a.mean()),
            "HR@1_b": float(hits_row.mean()), "same_hit": int((hits_a == hits_row).sum()),
            "a_minus_b": paired}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path, nargs="?")
    parser.add_argument("--against-row", nargs=2, metavar=("EXPERIMENT_JSON", "ROW"), default=None)
    parser.add_argument("--common-users", action="store_true", help="compare on the users both files hold")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if (args.b is None) == (args.against_row is None):
        parser.error("give either a second predictions file B or --against-row EXPERIMENT_JSON ROW")
    if args.against_row is not None:
        result = against_row(read(args.a), str(args.a), Path(args.against_row[0]), args.against_row[1])
    else:
        result = compare(read(args.a), read(args.b), (str(args.a), str(args.b)), args.common_users)
    print(json.dumps(result, indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
