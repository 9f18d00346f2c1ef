"""Seeded random modality tables of the real widths, for benchmarks (values do not change the cost)."""

from __future__ import annotations

TEXT_WIDTH, IMAGE_WIDTH, GRAPH_WIDTH = 384, 512, 64  # MiniLM, CLIP ViT-B, MBHT


def random_tables(n_items: int, n_behaviors: int, with_image: bool = True):
    """Text, image (unless ``with_image`` is false: ML-100k has none) and graph tables with behaviors."""
    import torch

    from llmrec.tables import EmbeddingTable
    from llmrec.tmf.model import ModalityTables

    gen = torch.Generator().manual_seed(0)
    ones = torch.ones(n_items, dtype=torch.bool)
    text = EmbeddingTable(torch.randn(n_items, TEXT_WIDTH, generator=gen), ones)
    image = EmbeddingTable(torch.randn(n_items, IMAGE_WIDTH, generator=gen), ones) if with_image else None
    graph = EmbeddingTable(torch.randn(n_items, GRAPH_WIDTH, generator=gen), ones,
                           behavior=torch.randn(n_behaviors, GRAPH_WIDTH, generator=gen))
    return ModalityTables(text=text, image=image, graph=graph)
