"""Which of DreamRec's extra inputs a trained run uses at test time: ablate them in evaluation only.

    LLMREC_DATA_DIR=../shared/data python bench/dreamrec_inputs_probe.py runs/seed_models_shop/dreamrec_s42 \
        runs/seed_models_shop/dreamrec_nomod_s42 [--split test] [--out bench/out/dreamrec_inputs_probe]

For each finished DreamRec run (``llmrec fit-graph``), scores the split under every protocol of the run's
eval config with its weights as trained, then with one input of Eq. 21 changed at evaluation only (no
retraining):

* the pooled modality vector ``A_cross`` (Eq. 12-20) replaced by its mean over the split's users (one
  constant vector), or by zero (runs with modality branches);
* the pooled vector computed without the newest history item;
* the history cut to its newest 29 or 20 items (is it history length?);
* the user embedding ``E_u`` (Eq. 7) replaced by the mean user embedding, or by zero.

If a score barely moves, the trained model does not use that input at test time. Also reports the mean
norms of the user embeddings, item embeddings and pooled vectors, and how Eq. 22's ReLU fires (units that
never fire, the share of zero outputs) on the split's histories. Writes ``<out>/<run name>.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graph_encoders.batching import SequenceBatcher
from graph_encoders.cli import load_run
from graph_encoders.evaluation import evaluate_split
from llmrec.io import write_json

SHOWN = ("uni10/HR@1", "uni10/NDCG@5", "pop100/HR@10", "pop100/NDCG@10")


@torch.no_grad()
def probe(run_dir: Path, split: str) -> dict:
    model, dataset, config = load_run(run_dir)
    if not hasattr(model, "modality_vector"):
        raise SystemExit(f"{run_dir}: a {config.model_name} run, not DreamRec")
    batcher = SequenceBatcher(dataset, model.config.max_len, config.sequence)

    def score() -> dict[str, float]:
        metrics = evaluate_split(model, batcher, split, config.eval, progress=False).metrics
        return {k: v for k, v in metrics.items() if k in SHOWN}

    rows = {"as trained": score()}
    projection = projection_units(model, batcher, split) if model.projection is not None else None
    norms = {"item embedding": model.item_embeddings().norm(dim=-1).mean().item()}
    if model.cross_attention is not None:
        pooled = model.modality_vector
        history = batcher.history_batch(*batcher.evaluation_rows(split))
        vectors = pooled(model.window(*model.prediction_inputs(history))[0])
        norms["pooled modality vector"] = vectors.norm(dim=-1).mean().item()
        mean_vector = vectors.mean(0, keepdim=True)
        model.modality_vector = lambda items: mean_vector.expand(items.shape[0], -1)
        rows["pooled vector -> its mean over users"] = score()
        model.modality_vector = lambda items: torch.zeros_like(mean_vector).expand(items.shape[0], -1)
        rows["pooled vector -> zero"] = score()
        def without_newest(items):  # the newest history item (the last column is the dream token) hidden
            items = items.clone()
            items[:, -2] = 0
            return pooled(items)

        model.modality_vector = without_newest
        rows["pooled vector without the newest history item"] = score()
        del model.modality_vector  # the class's method again
    history_batch = batcher.history_batch
    for keep in (29, 20):
        def cut(users, positions, keep=keep):  # only the newest `keep` history items (left padding)
            batch = history_batch(users, positions)
            items, behaviors = batch.items.clone(), batch.behaviors.clone()
            items[:, :-keep], behaviors[:, :-keep] = 0, 0
            return dataclasses.replace(batch, items=items, behaviors=behaviors, lengths=batch.lengths.clamp(max=keep))

        batcher.history_batch = cut
        rows[f"history cut to the newest {keep} items"] = score()
    batcher.history_batch = history_batch
    if model.users is not None:  # absent when trained with user_embedding: false
        users = model.users.weight
        trained_users = users.detach().clone()
        norms["user embedding"] = trained_users.norm(dim=-1).mean().item()
        users.data.copy_(trained_users.mean(0, keepdim=True).expand_as(trained_users))
        rows["user embedding -> mean user"] = score()
        users.data.zero_()
        rows["user embedding -> zero"] = score()
        users.data.copy_(trained_users)
    return {"run": str(run_dir), "split": split, "modalities": list(model.branches), "rows": rows, "mean_norms": norms,
            "projection_units": projection}


def projection_units(model, batcher: SequenceBatcher, split: str) -> dict:
    """How Eq. 22's ``ReLU(S W_proj + b_proj)`` fires on the split's histories (real positions: history and dream
    token)."""
    history = batcher.history_batch(*batcher.evaluation_rows(split))
    items, behaviors = model.window(*model.prediction_inputs(history))
    captured = {}
    hook = model.projection.register_forward_hook(lambda module, inputs, output: captured.update(pre=output))
    try:
        model.dream_inputs(items, behaviors, history.users)
    finally:
        hook.remove()
    real = items > 0
    fired = captured["pre"][real] > 0  # [positions, d]
    share = fired.float().mean(0)  # per unit: the share of positions where it is non-zero
    return {"positions": int(real.sum()), "units": int(fired.shape[1]), "never_firing": int((share == 0).sum()),
            "firing_under_1pct": int((share < 0.01).sum()), "zero_output_share": 1 - fired.float().mean().item(),
            "mean_norm_projected": torch.relu(captured["pre"][real]).norm(dim=-1).mean().item(),
            "mean_norm_behavior": model.embedding.behaviors(behaviors)[real].norm(dim=-1).mean().item()}


def markdown(report: dict) -> str:
    shown = [k for k in SHOWN if k in report["rows"]["as trained"]]
    lines = [f"# {report['run']} ({report['split']}; branches: {', '.join(report['modalities']) or 'none'})", "",
             "| evaluation | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
    lines += [f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in shown) + " |" for name, m in report["rows"].items()]
    lines += ["", "Mean norms: " + ", ".join(f"{k} {v:.2f}" for k, v in report["mean_norms"].items())]
    units = report["projection_units"]
    if units:
        lines += ["", (f"Eq. 22 ReLU over {units['positions']} positions (history and dream token): "
                  f"{units['never_firing']} of "
                  f"{units['units']} units never fire, {units['firing_under_1pct']} fire at under 1 % of positions; "
                  f"{units['zero_output_share']:.3f} of all outputs are zero; mean norm of ReLU(S W + b) "
                  f"{units['mean_norm_projected']:.2f} against the behavior embedding added after it "
                  f"{units['mean_norm_behavior']:.2f}")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="fit-graph run folders of DreamRec")
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    parser.add_argument("--out", type=Path, default=Path("bench/out/dreamrec_inputs_probe"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    for run in args.runs:
        report = probe(run, args.split)
        text = markdown(report)
        print(text)
        write_json(args.out / f"{run.name}.json", report)
        (args.out / f"{run.name}.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
