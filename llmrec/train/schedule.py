"""Pure pieces of the training loop: learning-rate schedule, length-grouped batch plans, precision and DeepSpeed
setup."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import DeepSpeedPlugin

from llmrec.config import ConfigError
from llmrec.devices import resolve_precision
from llmrec.train.config import OptimizerSettings, TrainConfig


def learning_rate(step: int, total: int, cfg: OptimizerSettings) -> float:
    """Linear warm-up from ``warmup_start_lr`` to ``lr``, then cosine decay to ``min_lr`` at ``total``."""
    warmup = int(cfg.warmup_ratio * total)
    if step < warmup:
        return cfg.warmup_start_lr + (cfg.lr - cfg.warmup_start_lr) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def plan_epoch(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_size: int | None) -> list[np.ndarray]:
    """Seeded micro-batches of row indices for one epoch, length-grouped when ``group_size`` is set."""
    rng = np.random.default_rng([seed, epoch, 0x6C656E])
    order = rng.permutation(len(lengths))
    if group_size:
        span = batch_size * group_size
        groups = [order[s:s + span] for s in range(0, len(order), span)]
        order = np.concatenate([g[np.argsort(-lengths[g], kind="stable")] for g in groups]) if groups else order
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if group_size:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def steps_per_epoch(n_rows: int, batch_size: int, micro_per_step: int) -> int:
    """Whole optimizer steps in one epoch: the micro-batches that do not fill a last step are skipped."""
    return math.ceil(n_rows / batch_size) // micro_per_step


def rows_seen(lengths: np.ndarray, batch_size: int, micro_per_step: int, seed: int, group_size: int | None,
              steps: int) -> np.ndarray:
    """How often each row entered the first ``steps`` optimizer steps: the loop's epoch plans replayed (each step
    takes the next ``micro_per_step`` micro-batches of its epoch's plan, an epoch ends after its whole steps)."""
    per_epoch = steps_per_epoch(len(lengths), batch_size, micro_per_step)
    counts = np.zeros(len(lengths), dtype=np.int64)
    epoch, left = 0, steps
    while left > 0 and per_epoch > 0:
        taken = min(left, per_epoch)
        for rows in plan_epoch(lengths, batch_size, seed, epoch, group_size)[:taken * micro_per_step]:
            counts[rows] += 1
        left, epoch = left - taken, epoch + 1
    return counts


def mixed_precision(precision: str) -> str:
    """accelerate's ``mixed_precision`` value for ``precision`` on this machine (GPU if present, else CPU)."""
    resolved = resolve_precision(precision, "cuda" if torch.cuda.is_available() else "cpu")
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[resolved]


def title_token_counts(tokenizer: Any, names: list[str]) -> np.ndarray:
    """Tokens of each item name (no special tokens), the unit of :func:`estimate_prompt_lengths`."""
    return np.array([len(ids) for ids in tokenizer(names, add_special_tokens=False)["input_ids"]], dtype=np.int64)


def estimate_prompt_lengths(samples: dict[str, list], candidates: np.ndarray, title_tokens: np.ndarray) -> np.ndarray:
    """Token-length estimate per row: title tokens of history and candidates + ~3 per history entry."""
    history = samples["history_items"]
    return np.array([title_tokens[h].sum() + 3 * len(h) + title_tokens[c].sum() + 2 * len(c)
                     for h, c in zip(history, candidates, strict=True)], dtype=np.int64)


def configure_deepspeed(accelerator_kwargs: dict[str, Any], cfg: TrainConfig) -> None:
    """A DeepSpeedPlugin from ``cfg.deepspeed_config`` (when not already set by ``accelerate launch``)."""
    if cfg.deepspeed_config is None:
        return

    path = Path(cfg.deepspeed_config)
    if not path.is_file():
        raise ConfigError(f"deepspeed_config: file not found: {path}")
    accelerator_kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=json.loads(path.read_text()))


def fill_deepspeed_auto(accelerator: Any, cfg: TrainConfig) -> None:
    """Replace DeepSpeed ``"auto"`` values that accelerate cannot infer (we prepare no dataloader)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    values = {"train_micro_batch_size_per_gpu": cfg.batch_size,
              "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
              "train_batch_size": cfg.batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes,
              "gradient_clipping": cfg.optimizer.max_grad_norm or 0.0}
    for key, value in values.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
    plugin.gradient_accumulation_steps = cfg.gradient_accumulation_steps
