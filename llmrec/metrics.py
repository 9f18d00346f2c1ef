"""Ranking metrics and the generative metrics with exact parsing rules.

Ranking (one relevant item per row, the target):

* rank = 1 + the number of *other* items scored **>=** the target. Ties are
  pessimistic: the target is ranked after every item with an equal score, so a
  constant scorer gets the worst rank, never a lucky one.
* ``HR@K`` = mean of [rank <= K]; ``NDCG@K`` = mean of [rank <= K] / log2(rank + 1)
  (the ideal DCG of one relevant item is 1); ``MRR@K`` = mean of [rank <= K] / rank.

Generation (TMF Sec. 5.1: HitRate@1 and the valid ratio of LLaRA): the output
is parsed into one candidate or ``None`` by :func:`parse_generation`;
``HitRate@1`` = correct / total, ``HitRate@1_valid`` = correct / valid and
``ValidRatio`` = valid / total. The rules and examples are in ``docs/metrics.md``.
"""

from __future__ import annotations

import logging
import re
import string
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

DEFAULT_KS = (1, 5, 10)


# ----------------------------------------------------------------------------- ranking
def _as_tensor(values: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    tensor = values.detach() if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    return tensor if dtype is None else tensor.to(dtype)


def _score_tensor(scores: Any) -> torch.Tensor:
    """Scores as float32/float64 (half precision widened exactly, integers to float64)."""
    tensor = _as_tensor(scores)
    if tensor.dtype in (torch.float32, torch.float64):
        return tensor
    return tensor.to(torch.float32 if tensor.is_floating_point() else torch.float64)


def _check_ranking_inputs(scores: torch.Tensor, targets: torch.Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(f"scores: expected a 2-D array [n, n_candidates], got shape {tuple(scores.shape)}")
    if targets.dim() != 1 or targets.shape[0] != scores.shape[0]:
        raise ValueError(f"targets: expected shape [{scores.shape[0]}] (one per score row), got {tuple(targets.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("scores: no rows to evaluate")
    bad = (targets < 0) | (targets >= scores.shape[1])
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"targets: row {row} has target {int(targets[row])}, outside 0..{scores.shape[1] - 1}")
    if torch.isnan(scores).any():
        row = int(torch.isnan(scores).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"scores: row {row} contains NaN; a score is needed for every candidate")


def target_ranks(scores: Any, targets: Any, exclude_mask: torch.Tensor | None = None) -> np.ndarray:
    """1-based pessimistic rank of each row's target (ties rank the target last).

    ``exclude_mask`` ([n, n_items] bool, optional) marks items that do not compete;
    the target itself always competes.
    """
    scores = _score_tensor(scores)
    targets = _as_tensor(targets, torch.long).to(scores.device)
    _check_ranking_inputs(scores, targets)
    target_scores = scores.gather(1, targets[:, None])
    at_least_as_good = scores >= target_scores  # includes the target itself
    if exclude_mask is not None:
        at_least_as_good &= ~exclude_mask.to(scores.device)
        at_least_as_good.scatter_(1, targets[:, None], True)
    return at_least_as_good.sum(dim=1).cpu().numpy().astype(np.int64)


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """HR@K, NDCG@K and MRR@K (means over rows) from 1-based target ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.ndim != 1 or ranks.size == 0 or (ranks < 1).any():
        raise ValueError(f"ranks: expected a non-empty 1-D array of ranks >= 1, got shape {ranks.shape}")
    out: dict[str, float] = {}
    for k in ks:
        if int(k) < 1:
            raise ValueError(f"ks: every K must be >= 1, got {k}")
        hit = ranks <= k
        out[f"HR@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
        out[f"MRR@{k}"] = float(np.where(hit, 1.0 / ranks, 0.0).mean())
    return out


def candidate_ranking_metrics(scores: Any, target_index: Any, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """HR@K / NDCG@K / MRR@K on frozen candidate sets.

    ``scores`` [n, C] (numpy or torch; higher is better) scores each row's C
    candidates; ``target_index`` [n] is the column of the target. Every K must be
    <= C (HR@C is 1 by construction; a larger K means nothing).
    """
    n_candidates = np.shape(scores)[1] if np.ndim(scores) == 2 else None
    too_big = [k for k in ks if n_candidates is not None and k > n_candidates]
    if too_big:
        raise ValueError(f"ks: {too_big} exceed the {n_candidates} candidates per row")
    return metrics_from_ranks(target_ranks(scores, target_index), ks)


def exclusion_mask(exclude: Any, shape: tuple[int, int]) -> torch.Tensor:
    """A bool mask [n, n_items] from a mask or from one array of item indices per row."""
    n, n_items = shape
    if isinstance(exclude, (torch.Tensor, np.ndarray)) and np.ndim(exclude) == 2:
        mask = _as_tensor(exclude)
        if mask.dtype != torch.bool or tuple(mask.shape) != (n, n_items):
            raise ValueError(f"exclude: a mask must be bool with shape {(n, n_items)}, got {mask.dtype} "
                             f"{tuple(mask.shape)}")
        return mask
    if len(exclude) != n:
        raise ValueError(f"exclude: expected one index array per score row ({n}), got {len(exclude)}")
    lists = [np.asarray(row, dtype=np.int64).reshape(-1) for row in exclude]
    rows = np.repeat(np.arange(n), [len(r) for r in lists])
    cols = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)
    bad = (cols < 0) | (cols >= n_items)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"exclude: row {int(rows[first])} lists item {int(cols[first])}, outside 0..{n_items - 1}")
    mask = torch.zeros((n, n_items), dtype=torch.bool)
    mask[torch.from_numpy(rows), torch.from_numpy(cols)] = True
    return mask


def full_ranking_metrics(scores: Any, targets: Any, exclude: Any = None,
                         ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """HR@K / NDCG@K / MRR@K ranking the target among all items.

    ``scores`` [n, n_items] (numpy or torch, any device), ``targets`` [n] item
    indices. ``exclude`` (optional): a bool mask [n, n_items] or one index array
    per row of items that do not compete (e.g. already-seen items). The target is
    never excluded: if a row lists its own target, the target still competes and
    the number of such rows is logged.
    """
    score_tensor = _score_tensor(scores)
    mask = None
    if exclude is not None:
        mask = exclusion_mask(exclude, tuple(score_tensor.shape)).to(score_tensor.device)
        target_tensor = _as_tensor(targets, torch.long).to(score_tensor.device)
        if target_tensor.dim() == 1 and target_tensor.shape[0] == mask.shape[0] and \
                ((target_tensor >= 0) & (target_tensor < mask.shape[1])).all():
            own = int(mask.gather(1, target_tensor[:, None]).sum())
            if own:
                logger.info("full ranking: %d of %d rows exclude their own target; it still competes",
                            own, mask.shape[0])
    return metrics_from_ranks(target_ranks(score_tensor, targets, mask), ks)


# ----------------------------------------------------------------------------- generation
# Characters stripped from both ends of a title or an output (closing brackets only when unbalanced).
_EDGE_PUNCTUATION = set(string.punctuation + "“”‘’«»„‚–—…·•") - set("()[]{}")
_BRACKETS = {"(": ")", "[": "]", "{": "}"}


def normalize_title(text: str) -> str:
    """Case-fold, NFKC-normalize, collapse whitespace and strip surrounding punctuation.

    Brackets are stripped from an end only when unbalanced, so "Toy Story (1995)"
    keeps its closing parenthesis while "(The Matrix" loses its opening one.
    """
    text = " ".join(unicodedata.normalize("NFKC", str(text)).casefold().split())
    changed = True
    while changed and text:
        changed = False
        first, last = text[0], text[-1]
        if first in _EDGE_PUNCTUATION or first.isspace() or (
                first in _BRACKETS and text.count(first) > text.count(_BRACKETS[first])):
            text, changed = text[1:], True
        elif last in _EDGE_PUNCTUATION or last.isspace() or (
                last in _BRACKETS.values() and text.count(last) > text.count(_opening(last))):
            text, changed = text[:-1], True
    return text


def _opening(closing: str) -> str:
    return next(o for o, c in _BRACKETS.items() if c == closing)


def first_line(text: str) -> str:
    """The output up to its first line break, after dropping leading whitespace and blank lines."""
    lines = str(text).lstrip().splitlines()
    return lines[0] if lines else ""


def _occurrences(needle: str, haystack: str) -> list[tuple[int, int]]:
    """Spans where ``needle`` occurs in ``haystack`` as whole words (no letter or digit on either side)."""
    pattern = r"(?<![^\W_])" + re.escape(needle) + r"(?![^\W_])"
    return [(m.start(), m.end()) for m in re.finditer(pattern, haystack)]


def parse_generation(text: str, candidates: Sequence[str]) -> int | None:
    """The index of the one candidate the output names, or ``None`` (invalid).

    1. Keep the first line (leading blank lines skipped) and normalize it
       (:func:`normalize_title`); empty -> invalid.
    2. Exact match: candidates whose normalized title equals the output. One ->
       that one; several (duplicate titles) -> invalid.
    3. Otherwise substring match: candidates whose normalized title occurs in the
       output as whole words. A candidate all of whose occurrences lie inside
       occurrences of another matched, longer candidate is dropped (nested titles:
       "Alien" inside "Alien (1979)"). Exactly one distinct title left -> that
       candidate; none or several -> invalid (several = two candidates named).
    """
    output = normalize_title(first_line(text))
    if not output:
        return None
    titles = [normalize_title(c) for c in candidates]
    exact = [i for i, title in enumerate(titles) if title == output]
    if exact:
        return exact[0] if len(exact) == 1 else None
    spans = {title: _occurrences(title, output) for title in set(titles) if title}
    spans = {title: found for title, found in spans.items() if found}
    covering = [(s, e) for found in spans.values() for s, e in found]
    named = [title for title, found in spans.items()
             if not all(any(cs <= s and e <= ce and (ce - cs) > (e - s) for cs, ce in covering) for s, e in found)]
    if len(named) != 1:
        return None
    matches = [i for i, title in enumerate(titles) if title == named[0]]
    return matches[0] if len(matches) == 1 else None


def generative_metrics(generations: Sequence[str], candidates: Sequence[Sequence[str]],
                       target_index: Sequence[int]) -> dict[str, float]:
    """HitRate@1 (correct / total, the main number), HitRate@1_valid (correct / valid), ValidRatio.

    Also returns the counts ``n_total``, ``n_valid`` and ``n_correct``.
    ``HitRate@1_valid`` is 0.0 when no output is valid.
    """
    if not len(generations) == len(candidates) == len(target_index):
        raise ValueError(f"generative_metrics: {len(generations)} generations, {len(candidates)} candidate lists "
                         f"and {len(target_index)} targets; expected one of each per row")
    if not generations:
        raise ValueError("generative_metrics: no rows to evaluate")
    n_valid = n_correct = 0
    for row, (text, names, target) in enumerate(zip(generations, candidates, target_index, strict=True)):
        if not 0 <= int(target) < len(names):
            raise ValueError(f"target_index: row {row} has target {target}, outside 0..{len(names) - 1}")
        parsed = parse_generation(text, names)
        n_valid += parsed is not None
        n_correct += parsed is not None and parsed == int(target)
    total = len(generations)
    return {"HitRate@1": n_correct / total, "HitRate@1_valid": n_correct / n_valid if n_valid else 0.0,
            "ValidRatio": n_valid / total, "n_total": total, "n_valid": n_valid, "n_correct": n_correct}


# ----------------------------------------------------------------------------- noise
def bootstrap_interval(values: Any, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of per-user ``values`` (users resampled with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"bootstrap_interval: expected a non-empty 1-D array of per-user values, got {values.shape}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def paired_comparison(a: Any, b: Any, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """``mean(b) - mean(a)`` on the same users, its 95% paired-bootstrap interval and a two-sided sign-flip
    permutation p-value (each user's difference negated at random, ``n_boot`` times; exact for 0/1 hits up
    to Monte-Carlo error)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_comparison: expected two equal-length 1-D arrays (same users), got {a.shape} and "
                         f"{b.shape}")
    diff = b - a
    low, high = bootstrap_interval(diff, n_boot, seed)
    rng = np.random.default_rng([seed, 1])
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_boot, diff.size))
    null = np.abs((signs * diff).mean(axis=1))
    p_value = (1 + int((null >= abs(diff.mean()) - 1e-12).sum())) / (n_boot + 1)
    return {"difference": float(diff.mean()), "ci_low": low, "ci_high": high, "p_value": p_value,
            "n_users": int(diff.size), "b_better": int((diff > 0).sum()), "a_better": int((diff < 0).sum())}


PAIRED_COLUMNS = "difference | 95% CI | p (sign-flip) | users b better / a better"


def paired_cells(comparison: dict[str, float]) -> str:
    """A :func:`paired_comparison` as markdown table cells, in the order of :data:`PAIRED_COLUMNS`."""
    c = comparison
    return (f"{c['difference']:+.3f} | [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | {c['p_value']:.4f} | "
            f"{c['b_better']} / {c['a_better']}")
