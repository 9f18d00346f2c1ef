"""Candidate-ranking cost: one pass per prompt (packed, prefix) vs one full sequence per candidate (SmolLM2, CPU).

    HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE python bench/ranking.py [--users 6] [--threads 2]

Scores the hard-task prompts of the first ``--users`` test users of the synthetic shop (10 frozen
uniform candidates, histories of up to ``--max-history`` items) with the embedded SmolLM2-135M-Instruct,
LoRA and the TMF adaptors at random init (random LoRA B, so the adapter changes the scores; the weights'
values do not change the cost), with each of ``method="packed"`` (default: prompt and its answers in one
masked row), ``"prefix"`` (answers over a repeated KV cache) and ``"full"`` (``llmrec.generation.ranking``).
One warm-up prompt per method is not timed. Reports seconds, seconds per prompt, each method's speed-up
over ``full`` and the largest score difference from ``full``.

Writes bench/out/ranking.json and bench/out/ranking.md. Timings are only trustworthy on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from random_tables import random_tables  # bench/ is on sys.path when a script there runs

from llmrec.data.candidates import load_candidates

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-history", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=40, help="(prompt, candidate) rows per forward pass")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch

    from llmrec.data import load_data_config, prepare
    from llmrec.generation.ranking import RANKING_METHODS, candidate_log_likelihoods
    from llmrec.tmf.collator import TMFCollator
    from llmrec.tmf.model import ModelConfig, TMFModel
    from llmrec.tmf.prompts.render import PromptConfig, PromptRenderer, render_sample

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dataset = prepare(load_data_config(REPO / "configs/data/shop.yaml", [f"max_history={args.max_history}"]))
    model = TMFModel(ModelConfig(), random_tables(dataset.n_items, dataset.n_behaviors)).eval()
    with torch.no_grad():
        for name, param in model.peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.02)
    renderer = PromptRenderer(PromptConfig(sample_paraphrases=False), dataset)
    candidates = load_candidates(dataset, "test", size=10)
    prompts = [render_sample(renderer, dataset, "test", r, candidates, "hard") for r in range(args.users + 1)]
    collator = TMFCollator(model.tokenizer, renderer, 512, padding_side="right", with_answer=True)
    prompt_tokens = [len(collator.encode(p).input_ids) for p in prompts[1:]]
    results, scores = {}, {}
    for method in RANKING_METHODS:
        candidate_log_likelihoods(model, collator, renderer, prompts[:1], args.batch_size, False, method)  # warm-up
        start = time.perf_counter()
        scores[method] = candidate_log_likelihoods(model, collator, renderer, prompts[1:], args.batch_size,
                                                   False, method)
        seconds = time.perf_counter() - start
        results[method] = {"seconds": seconds, "seconds_per_prompt": seconds / args.users}
        print(f"{method}: {seconds:.2f} s ({seconds / args.users:.3f} s per prompt)", flush=True)
    report = {
        "settings": vars(args) | {"candidates": 10, "task": "hard", "lm": "SmolLM2-135M-Instruct (embedded)",
                                  "median_prompt_tokens": float(np.median(prompt_tokens))},
        "results": results,
        "speedup_over_full": {m: results["full"]["seconds"] / r["seconds"] for m, r in results.items()},
        "max_abs_score_difference_from_full": {m: float(np.abs(scores[m] - scores["full"]).max()) for m in scores},
        "same_argmax_as_full": {m: bool((scores[m].argmax(1) == scores["full"].argmax(1)).all()) for m in scores},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ranking.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    lines = ["| method | seconds | s / prompt | speed-up over full | max abs score diff from full | same arg-max |",
             "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {m} | {r['seconds']:.2f} | {r['seconds_per_prompt']:.3f} | {report['speedup_over_full'][m]:.2f}x | "
              f"{report['max_abs_score_difference_from_full'][m]:.1e} | {report['same_argmax_as_full'][m]} |"
              for m, r in results.items()]
    lines += ["", f"median prompt tokens {report['settings']['median_prompt_tokens']:.0f}, "
              f"{args.users} prompts, 10 candidates, batch {args.batch_size} rows"]
    (OUT / "ranking.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
