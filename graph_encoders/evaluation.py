"""One evaluator for every model: frozen candidate sets and full ranking.

Rows are ``dataset.samples[split]``; each protocol scores the frozen candidate matrix
``load_candidates(dataset, split, sampler, size, seed)`` (the same sets the LLM is scored on)
and full ranking scores every item, excluding items the user interacted with before the
target (except the target itself, which may recur, e.g. Taobao's pv then buy).
Metric keys are ``"<protocol name>/<metric>@<k>"``, e.g. ``"pop100/NDCG@10"``,
``"uni10/HR@1"``, ``"full/HR@10"``; the values come from :mod:`llmrec.metrics`.
HR, NDCG and MRR are per-row means, so chunked evaluation averages exactly.

:func:`evaluate_split` also hands back the per-row candidate scores of chosen protocols
(the very arrays the metrics are computed from); :mod:`graph_encoders.predictions` turns
them into a predictions file.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from graph_encoders.base import SequentialRecommender
from graph_encoders.batching import SequenceBatcher
from llmrec.config import ConfigError
from llmrec.data.candidates import load_candidates
from llmrec.data.types import CandidateSet
from llmrec.metrics import candidate_ranking_metrics, full_ranking_metrics

log = logging.getLogger(__name__)


@dataclass
class CandidateProtocol:
    """Rank the target among a frozen candidate set (target + ``size - 1`` negatives)."""

    name: str  # prefix of the metric keys, e.g. "pop100"
    sampler: Literal["popularity", "uniform", "top_popular"] = "popularity"
    size: int = 101
    seed: int = 0
    ks: list[int] = field(default_factory=lambda: [5, 10, 30])

    def validate(self) -> None:
        if self.size < 2:
            raise ConfigError(f"size must be >= 2 (target + negatives), got {self.size}")
        if not self.ks or any(k < 1 or k > self.size for k in self.ks):
            raise ConfigError(f"ks {self.ks} must be non-empty and within 1..size ({self.size})")
        if not self.name or "/" in self.name:
            raise ConfigError(f"name {self.name!r} must be non-empty and contain no '/'")


def _default_protocols() -> list[CandidateProtocol]:
    return [
        CandidateProtocol("pop100", "popularity", 101, 0, [5, 10, 30]),  # DreamRec §4.1.3
        CandidateProtocol("uni10", "uniform", 10, 0, [1, 3, 5]),  # TMF: target + 9 uniform negatives
    ]


@dataclass
class EvalConfig:
    protocols: list[CandidateProtocol] = field(default_factory=_default_protocols)
    full_ranking: bool = True
    full_ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    batch_size: int = 1024  # evaluation rows per forward pass

    def validate(self) -> None:
        names = [p.name for p in self.protocols]
        if len(set(names)) != len(names) or "full" in names:
            raise ConfigError(f"protocol names must be unique and not 'full', got {names}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


class _RunningMean:
    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, metrics: dict[str, float], n: int, prefix: str) -> None:
        for key, value in metrics.items():
            self.sums[f"{prefix}/{key}"] = self.sums.get(f"{prefix}/{key}", 0.0) + float(value) * n

    def means(self, total: int) -> dict[str, float]:
        return {k: v / total for k, v in self.sums.items()}


@dataclass
class SplitEvaluation:
    """What :func:`evaluate_split` returns for one split."""

    metrics: dict[str, float]  # "<protocol>/<metric>@<k>" -> value (what evaluate returns)
    candidates: dict[str, CandidateSet]  # protocol name -> its frozen candidate set (rows = samples[split])
    scores: dict[str, np.ndarray]  # protocol name -> float32 [n_rows, size]; only the protocols asked for


def evaluate(
    model: SequentialRecommender, batcher: SequenceBatcher, split: str, config: EvalConfig,
    progress: bool = True,
) -> dict[str, float]:
    """Metrics of ``model`` on ``split`` (``valid`` or ``test``) under every protocol of ``config``."""
    return evaluate_split(model, batcher, split, config, progress=progress).metrics


@torch.no_grad()
def evaluate_split(
    model: SequentialRecommender, batcher: SequenceBatcher, split: str, config: EvalConfig,
    progress: bool = True, keep_scores: Collection[str] = (),
) -> SplitEvaluation:
    """:func:`evaluate`, also keeping the candidate scores of the protocols named in ``keep_scores``.

    Candidate scores come from ``model.score_all`` (gathered) when ``config.full_ranking``
    is on, else from ``model.score_candidates``; the kept arrays are the ones the metrics
    are computed from.
    """
    dataset = batcher.dataset
    unknown = sorted(set(keep_scores) - {p.name for p in config.protocols})
    if unknown:
        raise ValueError(f"keep_scores: {unknown} are not protocols of the eval config "
                         f"(has {[p.name for p in config.protocols]})")
    users, positions = batcher.evaluation_rows(split)
    n = len(users)
    candidate_sets = {}
    for proto in config.protocols:
        cands = load_candidates(dataset, split, sampler=proto.sampler, size=proto.size, seed=proto.seed)
        if cands.items.shape != (n, proto.size):
            raise ValueError(
                f"candidates {split}/{proto.sampler}/{proto.size}/seed {proto.seed}: shape {cands.items.shape}, "
                f"expected ({n}, {proto.size}) aligned with samples[{split!r}]"
            )
        candidate_sets[proto.name] = cands
    kept = {p.name: np.empty((n, p.size), dtype=np.float32) for p in config.protocols if p.name in keep_scores}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals = _RunningMean()
    chunks = range(0, n, config.batch_size)
    for start in tqdm(chunks, desc=f"eval {split}", leave=False, disable=not progress):
        stop = min(start + config.batch_size, n)
        batch = batcher.history_batch(users[start:stop], positions[start:stop]).to(device)
        targets = batch.targets.cpu().numpy()
        all_scores = model.score_all(batch) if config.full_ranking else None
        for proto in config.protocols:
            cands = candidate_sets[proto.name]
            items = cands.items[start:stop]
            target_index = cands.target_index[start:stop]
            found = items[np.arange(len(items)), target_index]
            if (found != targets).any():
                row = start + int(np.flatnonzero(found != targets)[0])
                raise ValueError(
                    f"candidates {proto.name} ({split}) row {row}: column {cands.target_index[row]} holds "
                    f"item {cands.items[row, cands.target_index[row]]}, but the target is {targets[row - start]}"
                )
            item_tensor = torch.as_tensor(items, device=device)
            scores = (all_scores.gather(1, item_tensor) if all_scores is not None
                      else model.score_candidates(batch, item_tensor))
            scores = scores.float().cpu().numpy()
            if proto.name in kept:
                kept[proto.name][start:stop] = scores
            totals.add(candidate_ranking_metrics(scores, target_index, proto.ks), stop - start, proto.name)
        if all_scores is not None:
            exclude = batcher.seen_items(users[start:stop], positions[start:stop])
            totals.add(full_ranking_metrics(all_scores.float().cpu().numpy(), targets, exclude, config.full_ks),
                       stop - start, "full")
    model.train(was_training)
    return SplitEvaluation(totals.means(n), candidate_sets, kept)
