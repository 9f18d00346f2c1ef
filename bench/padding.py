"""How much of a training batch is padding: length-grouped micro-batches (the loop's plan) vs random ones.

    python bench/padding.py --config configs/ablations/tmf_full_shop.yaml --task hard

Renders every training row of the recipe with its frozen train candidates (the paraphrase the loop draws in
epoch 0), tokenizes it with the recipe's collator, and reports for several micro-batch sizes the share of
padding tokens in epoch 0's batch plan with length grouping (``length_group_size``) and without it. This is
the work packing would save. Writes ``bench/out/padding.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from llmrec.data.candidates import load_candidates
from llmrec.pipeline.stages import ensure_dataset
from llmrec.tmf.collator import TMFCollator
from llmrec.tmf.lm import load_tokenizer
from llmrec.tmf.prompts.render import PromptRenderer
from llmrec.train.config import load_train_config
from llmrec.train.schedule import estimate_prompt_lengths, plan_epoch

OUT = Path(__file__).resolve().parents[1] / "bench" / "out"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/ablations/tmf_full_shop.yaml")
    parser.add_argument("--task", default="hard", choices=["easy", "medium", "hard"])
    parser.add_argument("--batch-sizes", default="2,4,8,16")
    args = parser.parse_args(argv)
    cfg = load_train_config(args.config)
    dataset = ensure_dataset(cfg.data_config, cfg.data_overrides)
    tokenizer = load_tokenizer(cfg.model.lm)
    renderer = PromptRenderer(cfg.prompts, dataset)
    collator = TMFCollator(tokenizer, renderer, cfg.max_length)
    train = dataset.samples["train"]
    history, behaviors = list(train["history_items"]), list(train["history_behaviors"])
    c = cfg.train_candidates
    candidates = load_candidates(dataset, "train", sampler=c.sampler, size=c.size, seed=c.seed)
    title_tokens = np.array([len(ids) for ids in tokenizer(renderer.item_names, add_special_tokens=False)["input_ids"]])
    estimated = estimate_prompt_lengths({"history_items": history}, candidates.items, title_tokens)

    def prompt_tokens(r: int) -> int:
        prompt = renderer.render(history[r], behaviors[r], candidates.items[r], int(candidates.target_index[r]),
                                 args.task, np.random.default_rng([cfg.seed, 0, r]))
        return int(collator([prompt])["attention_mask"].sum())

    lengths = np.array([prompt_tokens(r) for r in tqdm(range(len(history)), desc="tokenize")])
    rows = []
    for size in (int(s) for s in args.batch_sizes.split(",")):
        for group in (cfg.length_group_size, None):
            plan = plan_epoch(estimated, size, cfg.seed, 0, group)
            real = int(sum(lengths[b].sum() for b in plan))
            padded = int(sum(lengths[b].max() * len(b) for b in plan))
            rows.append({"batch_size": size, "length_group_size": group, "real_tokens": real,
                         "padded_tokens": padded, "padding_share": 1 - real / padded})
    report = {"config": args.config, "task": args.task, "rows": len(lengths), "mean_tokens": float(lengths.mean()),
              "estimate_correlation": float(np.corrcoef(estimated, lengths)[0, 1]), "plans": rows}
    intro = (f"`{args.config}`, {args.task} prompts: {len(lengths)} training rows, mean {lengths.mean():.0f} tokens; "
             f"length estimate vs tokens: r = {report['estimate_correlation']:.3f}")
    lines = [intro, "",
             "| micro-batch | length grouping | padding share |", "|---:|---|---:|"]
    lines += [f"| {r['batch_size']} | "
              f"{'groups of ' + str(r['length_group_size']) if r['length_group_size'] else 'none'} | "
              f"{r['padding_share']:.3f} |" for r in rows]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "padding.json").write_text(json.dumps(report, indent=2))
    (OUT / "padding.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
