"""First stage of retrieve-then-rerank: a sequential recommender's top K over the whole catalog.

Every row of ``dataset.samples[split]`` gets the ``k`` items with the highest ``score_all``
score, best first. Items the user interacted with before the target do not compete (the
exclusion of full ranking, :meth:`SequenceBatcher.seen_items`); the target itself always
competes. The target's rank is the pessimistic 1-based rank :func:`llmrec.metrics.target_ranks`
gives (ties put the target last), i.e. exactly the rank behind ``full/HR@K`` in fit-graph's
metrics, and the target is in the retrieved list if and only if that rank is <= ``k``: every
item scoring at least the target's score is then among the top ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from graph_encoders.base import SequentialRecommender
from graph_encoders.batching import SequenceBatcher
from llmrec.metrics import exclusion_mask, target_ranks


@dataclass
class Retrieval:
    """The top ``k`` of every row of one split (rows = ``dataset.samples[split]``)."""

    split: str
    k: int
    items: np.ndarray  # int64 [n_rows, k]: internal item indices, best first
    scores: np.ndarray  # float32 [n_rows, k]: the retriever's scores of ``items``
    targets: np.ndarray  # int64 [n_rows]: the target item of each row
    target_rank: np.ndarray  # int64 [n_rows]: the target's 1-based rank in the whole (filtered) catalog
    model: str  # the retriever's registered name

    @property
    def hit(self) -> np.ndarray:
        """``[n_rows]`` bool: the target is among the retrieved ``k`` (recall@k per row)."""
        return self.target_rank <= self.k


@torch.no_grad()
def retrieve(model: SequentialRecommender, batcher: SequenceBatcher, split: str, k: int,
             batch_size: int = 1024, progress: bool = True) -> Retrieval:
    """The top ``k`` catalog items of ``model`` for every row of ``split`` (see the module docstring)."""
    n_items = batcher.dataset.n_items
    if not 1 <= k < n_items:
        raise ValueError(f"retrieve: k must be between 1 and the catalog size - 1 ({n_items - 1}), got {k}")
    users, positions = batcher.evaluation_rows(split)
    n = len(users)
    items = np.empty((n, k), dtype=np.int64)
    scores = np.empty((n, k), dtype=np.float32)
    targets = np.empty(n, dtype=np.int64)
    ranks = np.empty(n, dtype=np.int64)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for start in tqdm(range(0, n, batch_size), desc=f"retrieve {split}", leave=False, disable=not progress):
        stop = min(start + batch_size, n)
        batch = batcher.history_batch(users[start:stop], positions[start:stop]).to(device)
        all_scores = model.score_all(batch).float().cpu()
        batch_targets = batch.targets.cpu()
        mask = exclusion_mask(batcher.seen_items(users[start:stop], positions[start:stop]), tuple(all_scores.shape))
        mask[torch.arange(stop - start), batch_targets] = False  # the target always competes
        ranks[start:stop] = target_ranks(all_scores, batch_targets, mask)
        top = all_scores.masked_fill(mask, float("-inf")).topk(k, dim=1)
        if torch.isinf(top.values).any():
            row = start + int(torch.isinf(top.values).any(dim=1).nonzero()[0, 0])
            raise ValueError(f"retrieve {split} row {row}: fewer than {k} items are left after excluding the "
                             f"user's history; use a smaller k")
        items[start:stop] = top.indices.numpy()
        scores[start:stop] = top.values.numpy()
        targets[start:stop] = batch_targets.numpy()
    model.train(was_training)
    return Retrieval(split, k, items, scores, targets, ranks, model.name or type(model).__name__)
