"""Ranking diagnostics of one checkpoint (or the zero-shot LM) on 64 fixed users of a split, easy prompts:
HR@1, the position of the picked candidate, picked vs target title length, length-normalized HR@1.

    python bench/ranking_bias.py [CHECKPOINT] [valid|train]     # recipe: configs/ablations/text_only_shop.yaml
"""
import sys

import numpy as np
import torch

torch.set_num_threads(1)
from llmrec.data.candidates import load_candidates
from llmrec.generation.ranking import candidate_log_likelihoods
from llmrec.pipeline.stages import ensure_dataset, ensure_inputs
from llmrec.tmf.collator import TMFCollator
from llmrec.tmf.model import TMFModel
from llmrec.tmf.prompts.render import PromptRenderer, render_sample
from llmrec.train.config import load_train_config

cfg = load_train_config("configs/ablations/text_only_shop.yaml")
ds = ensure_dataset(cfg.data_config, cfg.data_overrides)
SPLIT = sys.argv[2] if len(sys.argv) > 2 else "valid"
cands = load_candidates(ds, SPLIT, size=10)
renderer = PromptRenderer(cfg.prompts, ds)
rows = np.sort(np.random.default_rng([0, 0x657661]).choice(len(ds.samples[SPLIT]), 64, replace=False))
prompts = [render_sample(renderer, ds, SPLIT, int(r), cands, "easy") for r in rows]
ckpt = sys.argv[1] if len(sys.argv) > 1 else None
_, tables = ensure_inputs(cfg)
model = TMFModel.from_pretrained(ckpt, tables) if ckpt else TMFModel(cfg.model, tables)
model.eval()
col = TMFCollator(model.tokenizer, renderer, cfg.max_length, padding_side="right", with_answer=True)
with torch.autocast("cpu", dtype=torch.bfloat16):
    scores = candidate_log_likelihoods(model, col, renderer, prompts, 10, False)
scores = np.asarray(scores)
pick = scores.argmax(1)
tgt = np.array([p.target_index for p in prompts])
lens = np.array([[len(model.tokenizer(renderer.item_name(c), add_special_tokens=False)["input_ids"])
                  for c in p.candidates] for p in prompts])
print("HR@1", (pick == tgt).mean())
print("pick position hist", np.bincount(pick, minlength=10), "target pos hist", np.bincount(tgt, minlength=10))
print("mean len picked", lens[np.arange(64), pick].mean(), "target", lens[np.arange(64), tgt].mean(),
      "all", lens.mean())
print("picked len == min len in row", (lens[np.arange(64), pick] == lens.min(1)).mean())
# per-token normalized
norm = scores / lens
print("HR@1 length-normalized", (norm.argmax(1) == tgt).mean())
