"""Tiny hand-built multi-behavior datasets for the graph-encoder tests.

Sequences follow a planted rule (the next item is usually ``(item + 1) % n_items``), so
a model that learns anything beats chance, and behaviors cycle so every behavior occurs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset

from llmrec.data.types import SequenceDataset, UserSequence

BEHAVIORS = ["view", "cart", "buy"]


def make_tiny_dataset(n_users: int = 24, n_items: int = 30, length: int = 18, seed: int = 0) -> SequenceDataset:
    rng = np.random.default_rng(seed)
    sequences, rows = [], {"valid": [], "test": []}
    target = BEHAVIORS.index("buy")
    for u in range(n_users):
        start = int(rng.integers(n_items))
        steps = np.where(rng.random(length) < 0.85, 1, rng.integers(2, n_items, size=length))
        items = (start + np.cumsum(steps)) % n_items
        behaviors = rng.integers(0, len(BEHAVIORS), size=length)
        behaviors[-1] = behaviors[-3] = target
        seq = UserSequence(
            user=u, items=items.astype(np.int64), behaviors=behaviors.astype(np.int64),
            timestamps=np.arange(length, dtype=np.int64), valid_pos=length - 3, test_pos=length - 1,
        )
        sequences.append(seq)
        for split, pos in (("valid", seq.valid_pos), ("test", seq.test_pos)):
            rows[split].append({
                "user": u, "history_items": items[:pos].tolist(), "history_behaviors": behaviors[:pos].tolist(),
                "target": int(items[pos]), "target_behavior": target, "position": pos,
            })
    samples = {split: Dataset.from_list(r) for split, r in rows.items()}
    catalog = pd.DataFrame({"item_id": [str(i) for i in range(n_items)],
                            "title": [f"item {i}" for i in range(n_items)]})
    return SequenceDataset(
        name="tiny", item_ids=[str(i) for i in range(n_items)], user_ids=[str(u) for u in range(n_users)],
        behaviors=list(BEHAVIORS), target_behavior="buy", catalog=catalog, sequences=sequences,
        samples=samples, fingerprint=f"tiny-{seed}",
    )


@pytest.fixture
def tiny_dataset() -> SequenceDataset:
    return make_tiny_dataset()


@pytest.fixture
def make_tiny():
    """The :func:`make_tiny_dataset` factory (for tests that need several or custom ones)."""
    return make_tiny_dataset


def fixed_mask_loss(model, batch, seed: int = 123) -> float:
    """A Cloze model's loss with dropout off and the same masks every call (MBHT, DreamRec)."""
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        value = model.loss(batch).item()
    model.train(was_training)
    return value


def train_steps(model, batch, steps: int, lr: float = 1e-2) -> list[float]:
    """``steps`` Adam steps on one batch; the loss before each step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def random_modality_spec(dataset, text: bool = True, image: bool = True, seed: int = 0):
    """The dataset's DatasetSpec with seeded random text (12-d) / image (20-d) tables for multimodal models."""
    from graph_encoders.base import DatasetSpec

    g = torch.Generator().manual_seed(seed)
    tables = {"text_table": torch.randn(dataset.n_items, 12, generator=g) if text else None,
              "image_table": torch.randn(dataset.n_items, 20, generator=g) if image else None}
    return DatasetSpec.from_dataset(dataset, **tables)


def all_training_windows(dataset, max_len: int):
    """One batch of every training window of the dataset."""
    from graph_encoders.batching import SequenceBatcher

    batcher = SequenceBatcher(dataset, max_len)
    return batcher.training_batch(batcher.training_windows().rows)


def evaluation_histories(dataset, max_len: int, split: str = "test"):
    """One batch of every evaluation row of ``split``."""
    from graph_encoders.batching import SequenceBatcher

    batcher = SequenceBatcher(dataset, max_len)
    return batcher.history_batch(*batcher.evaluation_rows(split))


def fit_and_full_hr5(model, dataset, max_len: int, epochs: int) -> float:
    """Train ``model`` with the project's trainer (full-ranking HR@5 monitored), then its test full HR@5."""
    from graph_encoders.batching import SequenceBatcher
    from graph_encoders.evaluation import EvalConfig, evaluate
    from graph_encoders.trainer import TrainConfig, Trainer

    batcher = SequenceBatcher(dataset, max_len)
    config = TrainConfig(epochs=epochs, batch_size=16, learning_rate=1e-2, monitor="full/HR@5", patience=epochs,
                         checkpoint=False, num_threads=1)
    eval_config = EvalConfig(protocols=[], full_ks=[5])
    Trainer(model, batcher, config, eval_config, progress=False).fit()
    return evaluate(model, batcher, "test", eval_config, progress=False)["full/HR@5"]
