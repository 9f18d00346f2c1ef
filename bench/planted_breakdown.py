"""Which planted preference each row uses: a shop table's rows broken down by the users' planted type (issue 11).

    python bench/planted_breakdown.py [--results docs/results/shop_category_first/shop_category_first_experiment.json]
                                      [--out docs/results/shop_category_first/planted_breakdown]

The synthetic shop plants three kinds of users (``ground_truth.json``): *popularity* users buy what is popular,
*textual* users prefer a brand (named in every title), *visual* users a colour and pattern (only in the item
images, hence only in TMF's item tokens). Every model row of the table picks the session's category almost
always, so the planted preference shows only where two or more candidates share that category; there HR@1 is
broken down by user type, beside a uniform pick among those candidates and the rules.

Read against the modality ablations: a modality a row uses should cost that row its users when it is switched
off (image off -> visual users, text off -> textual users, graph off -> popularity users, whose signal lives in
the graph embeddings' co-purchase structure). The script pairs the full TMF row with each "trained without"
row on the same users, per user type (paired bootstrap, sign-flip test).

It reads only the committed results file (per-user target ranks of every row, in split-row order, from
``bench/llm_experiment.py``) and the prepared dataset: no model runs, seconds on a CPU. It stops if the file's
fingerprint or candidate file is not the dataset's. Writes ``planted_breakdown.{json,md,png}`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from rule_rows import rule_rows  # bench/ is on sys.path
from title_order import by_user_type, random_in_session_category, several_in_session_category

from llmrec.data.candidates import load_candidates
from llmrec.eval.rules import session_category
from llmrec.metrics import PAIRED_COLUMNS, paired_cells, paired_comparison
from llmrec.pipeline.stages import ensure_dataset
from llmrec.train.config import load_train_config

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.planted_breakdown")
FULL = "full TMF (AMSA + CMA)"
N_BOOT = 2000


def subgroups(kinds: np.ndarray, several: np.ndarray) -> dict[str, np.ndarray]:
    """User masks: those with several candidates of the session's category, in all and per planted type."""
    groups = {"all": several}
    groups.update({str(kind): several & (kinds == kind) for kind in sorted(set(kinds[several]))})
    return groups


def ablation_pairs(names: list[str]) -> list[tuple[str, str]]:
    """(full TMF, full TMF trained without X) for every such row present."""
    return [(FULL, name) for name in names if name.startswith("full TMF, trained without")] if FULL in names else []


def planted_breakdown(table: dict, dataset) -> dict:
    """HR@1 of every row of ``table`` (a ``bench/llm_experiment.py`` results dict with per-user ``target_ranks``)
    by planted user type, where several candidates share the session's category, and the paired ablation tests."""
    candidates = load_candidates(dataset, table["split"], sampler="uniform", size=table["n_candidates"], seed=0)
    if Path(candidates.path).name != Path(table["candidate_file"]).name:
        raise SystemExit(f"candidates {table['candidate_file']} in the results, the dataset's are {candidates.path}")
    items, target_index = np.asarray(candidates.items), np.asarray(candidates.target_index)
    _, _, truth, kinds = rule_rows(dataset, table["split"], items, target_index)
    if truth is None:
        raise SystemExit("the dataset has no planted ground truth (only the synthetic shop has one)")
    kinds = np.asarray(kinds)
    session = session_category(dataset, dataset.samples[table["split"]], items)
    several = several_in_session_category(session)
    groups = subgroups(kinds, several)
    hits = {name: (np.asarray(row["target_ranks"]) == 1).astype(float)
            for name, row in table["rows"].items() if "target_ranks" in row}
    skipped = [name for name, row in table["rows"].items() if "target_ranks" not in row]
    if skipped:
        log.warning("rows without per-user ranks, left out: %s", ", ".join(skipped))
    wrong = [name for name, h in hits.items() if len(h) != len(items)]
    if wrong:
        raise SystemExit(f"rows {wrong} have per-user ranks for another number of users than the split's {len(items)}")
    hits["uniform pick among the session's category"] = random_in_session_category(session, target_index)
    paired = [{"a": a, "b": b, "group": group,
               "comparison": paired_comparison(hits[a][mask], hits[b][mask], n_boot=N_BOOT)}
              for a, b in ablation_pairs(list(hits)) for group, mask in groups.items()]
    return {"n_users": len(items), "group_sizes": {g: int(m.sum()) for g, m in groups.items()},
            "rows": {name: by_user_type(h, several, kinds) for name, h in hits.items()}, "paired": paired,
            "left_out": skipped}


def markdown(results: dict) -> str:
    groups = list(results["group_sizes"])
    lines = [f"{results['experiment']}: {results['n_users']} test users x 10 frozen candidates; HR@1 where two or more "
             f"candidates are of the session's category ({results['group_sizes']['all']} users), in all and by "
             "planted user type (users: " + ", ".join(f"{g} {results['group_sizes'][g]}" for g in groups[1:]) + ").",
             (f"From `{results['results_file']}` (per-user target ranks); the dataset prepared from "
             f"`{results['data_config']}` {' '.join(results['data_overrides'])}."), "",
             "| row | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for name, shares in results["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{shares[g]:.3f}" for g in groups) + " |")
    if results["paired"]:
        lines += ["", "Paired on the same users (b - a, paired bootstrap):", "",
                  f"| a | b | users | {PAIRED_COLUMNS} |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {p['a']} | {p['b']} | {p['group']} | {paired_cells(p['comparison'])} |"
                  for p in results["paired"]]
    return "\n".join(lines) + "\n"


def plot(results: dict, out: Path) -> None:
    groups = list(results["group_sizes"])
    names = list(results["rows"])
    figure = Figure(figsize=(10, 0.45 * len(names) + 1.5))
    axes = figure.subplots()
    height = 0.8 / len(groups)
    for i, group in enumerate(groups):
        axes.barh(np.arange(len(names)) + i * height, [results["rows"][n][group] for n in names], height=height,
                  label=f"{group} ({results['group_sizes'][group]} users)")
    axes.set_yticks(np.arange(len(names)) + 0.4 - height / 2, names, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("test HR@1 where several candidates share the session's category")
    axes.legend(fontsize=7, loc="lower right")
    axes.set_title("Which planted preference each row uses (synthetic shop)")
    figure.tight_layout()
    figure.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="docs/results/shop_category_first/shop_category_first_experiment.json")
    parser.add_argument("--out", default="docs/results/shop_category_first/planted_breakdown")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results_file = ROOT / args.results
    table = json.loads(results_file.read_text(encoding="utf-8"))
    recipe = table["rows"][FULL]["recipe"] if FULL in table["rows"] else None
    if recipe is None:
        raise SystemExit(f"{results_file}: no '{FULL}' row to take the dataset from")
    cfg = load_train_config(ROOT / recipe)
    dataset = ensure_dataset(ROOT / cfg.data_config, list(cfg.data_overrides))
    if dataset.fingerprint != table["fingerprint"]:
        raise SystemExit(f"{results_file}: fingerprint {table['fingerprint']} is not the dataset's "
                         f"{dataset.fingerprint} ({cfg.data_config} {' '.join(cfg.data_overrides)})")
    results = {"experiment": table["experiment"], "results_file": args.results, "data_config": str(cfg.data_config),
               "data_overrides": list(cfg.data_overrides), **planted_breakdown(table, dataset)}
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "planted_breakdown.json").write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
    text = markdown(results)
    (out / "planted_breakdown.md").write_text(text, encoding="utf-8")
    plot(results, out / "planted_breakdown.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
