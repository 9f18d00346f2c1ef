"""Answer-format probe (issue 11): does the LLM learn the shop once the answer's first token is the category?

    python bench/title_order.py [--generate-users 50] [--out bench/out/title_order]

With brand-first titles ("Acme Coro shorts (M)", the shop's default) the LLM's answer starts with the brand: to
put probability on the right first token it must find the candidate of the session's category and copy that
candidate's brand, two steps in one token. With ``synthetic.title_order=category_first`` ("shorts: Acme Coro (M)")
the first answer token is the category itself. Same users, items, interactions and frozen candidate items; only
the titles (in the prompt and in the answer) differ.

Rows: the four TMF Table 3 rows (text-only LLM, + behavior tokens, + item tokens with AMSA, full TMF), each trained
with brand-first titles (``configs/ablations/{text_only,behavior_tokens,item_tokens_amsa,tmf_full}_shop.yaml``) and
with category-first titles (``..._category_first.yaml``), scored on the same 300 test
users (ranking by answer log-likelihood; free and constrained generation on a seeded subset, as
``bench/llm_experiment.py`` does; predictions are reused from its ``bench/out/shop_experiment`` and
``bench/out/shop_category_first_experiment`` when they were made with the same checkpoint, else made there). The
script stops if the two title orders do not give the same users, targets and candidate items. A row without a
finished run (``max_steps`` reached) is listed as not run.

Reported per row: ranking HR@1 (95% bootstrap interval over users, 2,000 resamples, seed 0), HR@3, the share of
users whose top-ranked candidate is of the target's category and of the session's category (the rule that scores
0.787), generation HR@1 and ValidRatio; HR@1 where two or more candidates share the session's category (there the
category alone does not decide), in all and by the planted user type, beside the session rule, the session +
planted-preference diagnostic and a uniform pick among those candidates; paired differences (same users,
:func:`comparisons`): category-first minus brand-first per model, neighbouring Table 3 rows and full TMF minus
text-only per title order. Writes ``title_order.{json,md,png}`` (HR@1 with intervals and the validation curves)
into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from llm_experiment import finished_checkpoint, learning_curve, llm_predictions, ranks_of  # bench/ is on sys.path
from matplotlib.figure import Figure
from rule_rows import rule_rows

from llmrec.data.candidates import load_candidates
from llmrec.eval.report import evaluate_predictions, read_predictions
from llmrec.eval.rules import session_category
from llmrec.metrics import PAIRED_COLUMNS, bootstrap_interval, paired_cells, paired_comparison, target_ranks
from llmrec.pipeline.stages import ensure_inputs
from llmrec.train.checkpoint import load_trainer_state
from llmrec.train.config import load_train_config

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.title_order")
MODELS = {  # TMF Table 3 order; each row's brand-first recipe and its category-first twin
    model: {"brand_first": f"configs/ablations/{stem}_shop.yaml",
            "category_first": f"configs/ablations/{stem}_shop_category_first.yaml"}
    for model, stem in [("text-only LLM", "text_only"), ("+ behavior tokens", "behavior_tokens"),
                        ("+ item tokens (AMSA)", "item_tokens_amsa"), ("full TMF (AMSA + CMA)", "tmf_full")]
}
ORDERS = ("brand_first", "category_first")
SPLIT, N_BOOT = "test", 2000


def comparisons() -> list[tuple[str, str]]:
    """Row pairs (a, b) compared on the same users: category-first against brand-first per model; neighbouring
    Table 3 rows within each title order; full TMF against text-only within each title order."""
    models = list(MODELS)
    pairs = [(f"{m} (brand-first)", f"{m} (category-first)") for m in models]
    for order in ("brand-first", "category-first"):
        pairs += [(f"{a} ({order})", f"{b} ({order})") for a, b in pairwise(models)]
        pairs.append((f"{models[0]} ({order})", f"{models[-1]} ({order})"))
    return pairs


def aligned_key(path: Path) -> list[tuple]:
    """Per user in split-row order: ``(row, user, target item, candidate items)``, what both orders must share."""
    records = sorted(read_predictions(path).records, key=lambda r: r["row"])
    return [(r["row"], r["user"], r["target"]["item_id"], tuple(c["item_id"] for c in r["candidates"]))
            for r in records]


def check_aligned(keys: dict[str, list[tuple]]) -> list[tuple] | None:
    """The rows' shared :func:`aligned_key` (None without rows); stops naming the row and test row that differ."""
    if not keys:
        return None
    first_name, reference = next(iter(keys.items()))
    for name, key in keys.items():
        if key != reference:
            where = next((i for i, (a, b) in enumerate(zip(key, reference, strict=False)) if a != b),
                         min(len(key), len(reference)))
            raise SystemExit(f"{name}: users, targets or candidate items differ from {first_name}'s at test row "
                             f"{where} ({len(key)} vs {len(reference)} users); the two title orders must share them")
    return reference


def pick_shares(path: Path, dataset, session: np.ndarray) -> dict[str, float]:
    """Share of users whose top-ranked candidate has the target's category / the session's category."""
    category = dict(zip(dataset.catalog["item_id"].astype(str), dataset.catalog["category"].astype(str), strict=True))
    records = sorted(read_predictions(path).records, key=lambda r: r["row"])
    same_target = same_session = 0
    for position, record in enumerate(records):
        pick = int(np.argmax(record["scores"]))
        same_target += category[record["candidates"][pick]["item_id"]] == category[record["target"]["item_id"]]
        same_session += bool(session[position, pick])
    return {"pick_in_target_category": same_target / len(records),
            "pick_in_session_category": same_session / len(records)}


def several_in_session_category(session: np.ndarray) -> np.ndarray:
    """Users with two or more candidates of the session's category: where the category alone does not decide."""
    return session.sum(axis=1) >= 2


def random_in_session_category(session: np.ndarray, target_index: np.ndarray) -> np.ndarray:
    """Per user, the expected HR@1 of a uniform pick among the candidates of the session's category (among all
    candidates when none is of it): the level of a model that knows the category and nothing else."""
    count = session.sum(axis=1)
    target_in = session[np.arange(len(target_index)), target_index]
    return np.where(count > 0, target_in / np.maximum(count, 1), 1.0 / session.shape[1])


def by_user_type(hits: np.ndarray, several: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    """Mean of ``hits`` over the users with several candidates of the session's category, in all and per planted
    user type (popularity / textual / visual users of the synthetic shop's ground truth)."""
    shares = {"all": float(hits[several].mean())}
    shares.update({kind: float(hits[several & (kinds == kind)].mean()) for kind in sorted(set(kinds[several]))})
    return shares


def markdown(results: dict) -> str:
    intro = (f"Synthetic shop, {results['n_users']} test users x 10 frozen candidates (same users, targets and "
             "candidate items under both title orders); HR@1 with a 95% bootstrap interval over users; generation on "
             f"a seeded subset of {results['generate_users']} users. Session-category rule (then popularity): HR@1 "
             f"{results['session_rule_hr1']:.3f}.")
    lines = [intro, "",
             ("| model | titles | HR@1 (rank) | 95% CI | HR@3 | pick in target's category | pick in session's category "
              "| gen HR@1 | ValidRatio | constrained HR@1 | steps | train min | peak RSS GiB |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"].values():
        lines.append(f"| {row['model']} | {row['titles']} | {row['HR@1']:.3f} | [{row['HR@1_ci'][0]:.3f}, "
                     f"{row['HR@1_ci'][1]:.3f}] | {row['HR@3']:.3f} | {row['pick_in_target_category']:.3f} | "
                     f"{row['pick_in_session_category']:.3f} | {row['generate']['HitRate@1']:.3f} | "
                     f"{row['generate']['ValidRatio']:.3f} | {row['constrained']['HitRate@1']:.3f} | {row['steps']} | "
                     f"{row['train_minutes']:.0f} | {row['peak_rss_mib'] / 1024:.1f} |")
    if "several_users" in results:
        types = list(results["several_users_by_type"])
        lines += ["", (f"Where two or more candidates are of the session's category ({results['several_users']} users) "
                       "the category alone does not decide. HR@1 there, in all and by the user's planted type "
                       "(ground_truth.json; users: " + ", ".join(f"{t} {n}" for t, n in
                                                                  results["several_users_by_type"].items()) + "):"), "",
                  "| row | all | " + " | ".join(types) + " |", "|---" * (len(types) + 2) + "|"]
        table = {**{name: row["HR@1_several_by_user_type"] for name, row in results["rows"].items()},
                 **results["several_by_user_type"]}
        for name, shares in table.items():
            lines.append(f"| {name} | {shares['all']:.3f} | " + " | ".join(f"{shares[t]:.3f}" for t in types) + " |")
    if results["not_run"]:
        lines += ["", "Not run (no finished run): " + ", ".join(results["not_run"]) + "."]
    if results["paired"]:
        lines += ["", "Paired comparisons of ranking HR@1 on the same users (b - a):", "",
                  f"| a | b | {PAIRED_COLUMNS} |", "|---|---|---|---|---|---|"]
        lines += [f"| {pair['a']} | {pair['b']} | {paired_cells(pair['comparison'])} |" for pair in results["paired"]]
    return "\n".join(lines) + "\n"


def plot(results: dict, out: Path) -> None:
    figure = Figure(figsize=(11, 4))
    bars, curves = figure.subplots(1, 2)
    names = list(results["rows"])
    values = [results["rows"][n]["HR@1"] for n in names]
    low = [v - results["rows"][n]["HR@1_ci"][0] for n, v in zip(names, values, strict=True)]
    high = [results["rows"][n]["HR@1_ci"][1] - v for n, v in zip(names, values, strict=True)]
    bars.barh(range(len(names)), values, xerr=[low, high], color=["#88a" if "brand" in n else "#c84" for n in names])
    bars.axvline(results["session_rule_hr1"], color="k", linestyle="--", label="session-category rule")
    bars.axvline(0.1, color="grey", linestyle=":", label="chance (1 of 10)")
    bars.set_yticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=8)
    bars.set_xlabel("test HR@1 (ranking), 95% CI")
    bars.legend(fontsize=7, loc="lower right")
    for name, row in results["rows"].items():
        points = row["validation_curve"]
        if points:
            curves.plot([p["step"] for p in points], [p["HR@1"] for p in points], marker="o",
                        linestyle="-" if "category" in name else "--", label=name)
    curves.set_xlabel("optimizer step (16 prompts)")
    curves.set_ylabel("validation HR@1 (64 users)")
    curves.legend(fontsize=7)
    figure.suptitle("Answer-format probe on the synthetic shop: brand-first vs category-first titles")
    figure.tight_layout()
    figure.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generate-users", type=int, default=50)
    parser.add_argument("--out", default="bench/out/title_order")
    parser.add_argument("--brand-first-predictions", default="bench/out/shop_experiment",
                        help="where bench/llm_experiment.py keeps the brand-first rows' predictions (reused when made "
                             "with the same checkpoint, else made here)")
    parser.add_argument("--category-first-predictions", default="bench/out/shop_category_first_experiment",
                        help="the same for the category-first rows (bench/llm_experiment.py --dataset "
                             "shop_category_first)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    rows: dict[str, dict] = {}
    keys: dict[str, list[tuple]] = {}
    hits: dict[str, np.ndarray] = {}
    not_run = []
    session_rule = None
    for model, recipes in MODELS.items():
        for order in ORDERS:
            name = f"{model} ({order.replace('_', '-')})"
            recipe = recipes[order]
            checkpoint = finished_checkpoint(recipe)
            if checkpoint is None:
                not_run.append(name)
                continue
            dataset, _ = ensure_inputs(load_train_config(ROOT / recipe))
            target = ROOT / (args.brand_first_predictions if order == "brand_first"
                             else args.category_first_predictions)
            files = llm_predictions(name, recipe, checkpoint, target, args.generate_users)
            keys[name] = aligned_key(files["rank"])
            cands = load_candidates(dataset, SPLIT, sampler="uniform", size=10, seed=0)
            items, target_index = np.asarray(cands.items), np.asarray(cands.target_index)
            session = session_category(dataset, dataset.samples[SPLIT], items)
            if session_rule is None:  # rule rows of bench/rule_rows.py and the planted user types, once
                rules, _, _, kinds = rule_rows(dataset, SPLIT, items, target_index)
                kinds, several = np.asarray(kinds), several_in_session_category(session)
                references = {
                    "rule: session category, then popular": target_ranks(rules["session category"], target_index) == 1,
                    "diagnostic: session category + planted preference": target_ranks(
                        rules["session category + preference (diagnostic)"], target_index) == 1,
                    "uniform pick among the session's category": random_in_session_category(session, target_index)}
                session_rule = {"session_rule_hr1": float(references["rule: session category, then popular"].mean()),
                                "several_users": int(several.sum()),
                                "several_users_by_type": {k: int((several & (kinds == k)).sum())
                                                          for k in sorted(set(kinds[several]))},
                                "several_by_user_type": {name: by_user_type(h, several, kinds)
                                                         for name, h in references.items()}}
            ranks = ranks_of(files["rank"], np.arange(items.shape[0]))
            hits[name] = (ranks == 1).astype(float)
            steps = [json.loads(line) for line in (checkpoint.parents[1] / "metrics.jsonl").read_text().splitlines()]
            rows[name] = {"model": model, "titles": order.replace("_", "-"), "recipe": recipe,
                          "checkpoint": str(checkpoint), "HR@1": float(hits[name].mean()),
                          "HR@1_ci": list(bootstrap_interval(hits[name], n_boot=N_BOOT)),
                          "HR@3": float((ranks <= 3).mean()),
                          "HR@1_several_by_user_type": by_user_type(hits[name], several, kinds),
                          **pick_shares(files["rank"], dataset, session),
                          "generate": evaluate_predictions(read_predictions(files["generate"])),
                          "constrained": evaluate_predictions(read_predictions(files["constrained"])),
                          "steps": load_trainer_state(checkpoint)["step"],
                          "train_minutes": sum(step["seconds"] for step in steps) / 60,
                          "peak_rss_mib": max((step.get("peak_rss_mib", 0.0) for step in steps), default=0.0),
                          "validation_curve": learning_curve(recipe),
                          "fingerprint": dataset.fingerprint}
    reference = check_aligned(keys)
    paired = [{"a": a, "b": b, "comparison": paired_comparison(hits[a], hits[b], n_boot=N_BOOT)}
              for a, b in comparisons() if a in hits and b in hits]
    results = {"n_users": len(reference) if reference else 0, "generate_users": args.generate_users,
               **(session_rule or {"session_rule_hr1": float("nan")}),
               "rows": rows, "paired": paired, "not_run": not_run,
               "machine": {"cpu": platform.processor() or platform.machine(),
                           "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                           "torch": torch.__version__, "threads": torch.get_num_threads()},
               "wall_s": time.perf_counter() - started}
    text = json.dumps(results, indent=1, default=float).replace(str(ROOT) + "/", "")  # paths relative to the repo
    (out / "title_order.json").write_text(text, encoding="utf-8")
    text = markdown(results)
    (out / "title_order.md").write_text(text, encoding="utf-8")
    if rows:
        plot(results, out / "title_order.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
