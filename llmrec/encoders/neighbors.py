"""Nearest neighbours in an embedding table (cosine similarity), for sanity checks."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch

from llmrec.tables import EmbeddingTable


def find_item(titles: Sequence[str], query: str) -> int:
    """Index of the item titled ``query`` (exact, then case-insensitive); error with close matches."""
    for i, title in enumerate(titles):
        if title == query:
            return i
    folded = query.casefold().strip()
    for i, title in enumerate(titles):
        if title.casefold().strip() == folded:
            return i
    close = difflib.get_close_matches(query, list(titles), n=5, cutoff=0.5)
    hint = f"; close matches: {close}" if close else ""
    raise KeyError(f"no item titled {query!r} among {len(titles)} items{hint}")


def nearest_neighbors(table: EmbeddingTable, index: int, k: int = 10) -> list[tuple[int, float]]:
    """The ``k`` items most cosine-similar to item ``index`` (itself and masked rows excluded)."""
    if not 0 <= index < table.n_items:
        raise IndexError(f"item {index} out of range for a table of {table.n_items} items")
    if not bool(table.item_mask[index]):
        raise ValueError(f"item {index} has no embedding in this table (mask False)")
    vectors = table.item.float()
    unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    scores = unit @ unit[index]
    scores[~table.item_mask.bool()] = float("-inf")
    scores[index] = float("-inf")
    k = min(k, int(torch.isfinite(scores).sum()))
    top = torch.topk(scores, k)
    return [(int(i), float(s)) for s, i in zip(top.values, top.indices, strict=True)]
