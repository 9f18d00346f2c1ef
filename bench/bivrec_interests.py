"""How a trained BivRec run's interests score the validation targets (a diagnosis, not a timing).

    LLMREC_DATA_DIR=../shared/data python bench/bivrec_interests.py runs/seed_models/bivrec_s42 \
        [--split valid] [--protocol popularity:101] [--out bench/out/bivrec_interests]

For the score view's final interests ``V`` (``[K, d]`` per user, the newest position) on the frozen
candidates of one protocol (default pop100: 100 popularity negatives), reports:

* per interest ``k``: mean norm, mean number of tokens assigned to it (last clustering stage), HR@10 when
  ``k`` alone scores, how often it is the target's best interest and how often it wins a candidate;
* HR@10 / NDCG@10 under the model's scoring (``max_k v_k · x_i``, BivRec's), under the *oracle* interest
  (the one nearest the target: what the training loss, Eq. 19, selects; it peeks at the target, so it is an
  upper bound, not a method), and under the plain mean of the interests;
* the cross-entropy over all items of the oracle interest at the target (Eq. 19-21 on the split's rows).

Writes ``<out>/<run name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graph_encoders.batching import SequenceBatcher
from graph_encoders.bivrec import nearest_interest_loss
from graph_encoders.cli import load_run
from llmrec.data.candidates import load_candidates
from llmrec.io import write_json
from llmrec.metrics import candidate_ranking_metrics


def ranking(scores: torch.Tensor, target_index: torch.Tensor) -> dict[str, float]:
    """HR@10 and NDCG@10 of ``scores`` ``[B, C]`` (the project's candidate metrics, as fit-graph reports them)."""
    metrics = candidate_ranking_metrics(scores, target_index, ks=(10,))
    return {"HR@10": metrics["HR@10"], "NDCG@10": metrics["NDCG@10"]}


@torch.no_grad()
def diagnose(run_dir: Path, split: str, sampler: str, size: int) -> dict:
    model, dataset, config = load_run(run_dir)
    batcher = SequenceBatcher(dataset, model.config.max_len, config.sequence)
    users, positions = batcher.evaluation_rows(split)
    candidates = load_candidates(dataset, split, sampler=sampler, size=size, seed=0)
    batch = batcher.history_batch(users, positions)
    out = model.view_output(model.config.score_view, batch, newest_only=True)
    interests, table = out.interests[:, -1], out.table  # [B, K, d], [n_items, d]
    items = torch.as_tensor(candidates.items)
    target_index = torch.as_tensor(candidates.target_index)
    scores = torch.einsum("bkd,bcd->bkc", interests, table[items])  # [B, K, C]
    rows = torch.arange(len(items))
    best_for_target = scores[rows, :, target_index].argmax(1)  # the oracle interest (Eq. 19)
    winner = scores.argmax(1)  # [B, C]: the interest that scores each candidate
    tokens = out.allocations[-1].sum(1)  # [B, K]: tokens assigned per interest, last stage
    first_stage = out.allocations[0].sum(1)  # [B, K_1]: tokens per first-stage interest
    windows = batcher.training_batch(batcher.training_windows("all", "all").rows[:512], "all")
    train_out = model.view_output(model.config.score_view, windows)
    loss_mask = windows.loss_mask & (windows.labels > 0)
    per_interest = [{
        "interest": k,
        "mean_norm": interests[:, k].norm(dim=-1).mean().item(),
        "mean_tokens": tokens[:, k].mean().item(),
        "HR@10_alone": ranking(scores[:, k], target_index)["HR@10"],
        "target_best": (best_for_target == k).float().mean().item(),
        "wins_candidates": (winner == k).float().mean().item(),
    } for k in range(interests.shape[1])]
    return {
        "run": str(run_dir), "model": config.model_name, "split": split, "protocol": f"{sampler}:{size}",
        "interests": list(model.config.interests), "score_view": model.config.score_view, "rows": len(items),
        "scoring": {
            "max over interests (BivRec)": ranking(scores.amax(1), target_index),
            "oracle interest (peeks at the target)": ranking(scores[rows, best_for_target], target_index),
            "mean of interests": ranking(torch.einsum("bd,bcd->bc", interests.mean(1), table[items]), target_index),
        },
        "oracle_cross_entropy_all_items": nearest_interest_loss(interests, batch.targets, table).item(),
        "oracle_cross_entropy_training_windows": nearest_interest_loss(  # first 512 windows, eval mode
            train_out.interests[loss_mask], windows.labels[loss_mask] - 1, train_out.table).item(),
        "first_stage_nonempty_per_user": (first_stage > 0).sum(1).float().mean().item(),
        "first_stage_mean_tokens_top2": first_stage.mean(0).sort(descending=True).values[:2].tolist(),
        "per_interest": per_interest,
    }


def markdown(report: dict) -> str:
    lines = [(f"# BivRec interests: {report['run']} ({report['split']}, {report['protocol']}, "
              f"{report['rows']} rows)"), "",
             (f"interests {report['interests']}, score view {report['score_view']}; oracle cross-entropy over all "
             f"items {report['oracle_cross_entropy_all_items']:.3f} (training windows, eval mode: "
             f"{report['oracle_cross_entropy_training_windows']:.3f}); first stage: "
             f"{report['first_stage_nonempty_per_user']:.1f} non-empty interests per user, the two largest take "
             f"{report['first_stage_mean_tokens_top2'][0]:.1f} and {report['first_stage_mean_tokens_top2'][1]:.1f} "
             "tokens on average"), "",
             "| scoring | HR@10 | NDCG@10 |", "|---|---|---|"]
    lines += [f"| {name} | {m['HR@10']:.4f} | {m['NDCG@10']:.4f} |" for name, m in report["scoring"].items()]
    lines += ["", "| interest | mean norm | mean tokens | HR@10 alone | target's best | wins candidates |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {p['interest']} | {p['mean_norm']:.2f} | {p['mean_tokens']:.2f} | {p['HR@10_alone']:.4f} | "
              f"{p['target_best']:.2f} | {p['wins_candidates']:.2f} |" for p in report["per_interest"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="fit-graph run folders of BivRec")
    parser.add_argument("--split", default="valid", choices=["valid", "test"])
    parser.add_argument("--protocol", default="popularity:101", help="SAMPLER:SIZE of the frozen candidates")
    parser.add_argument("--out", type=Path, default=Path("bench/out/bivrec_interests"))
    args = parser.parse_args()
    sampler, size = args.protocol.split(":")
    torch.set_num_threads(1)
    for run in args.runs:
        report = diagnose(run, args.split, sampler, int(size))
        text = markdown(report)
        print(text)
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / f"{run.name}.json", report)
        (args.out / f"{run.name}.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
