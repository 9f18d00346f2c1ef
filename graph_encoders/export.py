"""Export a trained model's item and behavior embeddings as an :mod:`llmrec.tables` table.

The table holds ``item`` ``[n_items, d]`` in internal item order (the padding row and
special rows such as BERT4Rec's [MASK] dropped), ``item_mask`` all True, and
``behavior`` ``[n_behaviors, d]`` when the model has behavior embeddings (MBHT, or a
model trained with ``use_behaviors``). TMF reads these as its graph modality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from graph_encoders.base import SequentialRecommender
from llmrec.config import to_dict
from llmrec.tables import EmbeddingTable, save_table

TABLE_FILE = "embeddings.safetensors"


@torch.no_grad()
def embedding_table(model: SequentialRecommender, dataset: Any,
                    extra_metadata: dict[str, Any] | None = None) -> EmbeddingTable:
    """The model's embeddings with metadata (model, config, dataset fingerprint, id maps)."""
    item = model.item_embeddings().detach().float().cpu()
    if item.shape[0] != dataset.n_items:
        raise ValueError(f"{model.name}: item_embeddings() has {item.shape[0]} rows, "
                         f"dataset has {dataset.n_items} items")
    behavior = model.behavior_embeddings()
    if behavior is not None:
        behavior = behavior.detach().float().cpu()
        if behavior.shape[0] != dataset.n_behaviors:
            raise ValueError(
                f"{model.name}: behavior_embeddings() has {behavior.shape[0]} rows, "
                f"dataset has {dataset.n_behaviors} behaviors"
            )
    metadata = {
        "model": model.name,
        "model_config": to_dict(model.config),
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "item_ids": list(dataset.item_ids),
        "behaviors": list(dataset.behaviors),
        "target_behavior": dataset.target_behavior,
        "dim": int(item.shape[1]),
        **(extra_metadata or {}),
    }
    return EmbeddingTable(item=item, item_mask=torch.ones(item.shape[0], dtype=torch.bool), behavior=behavior,
                          metadata=metadata)


def export_embeddings(
    model: SequentialRecommender, dataset: Any, run_dir: str | Path, extra_metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``<run_dir>/embeddings.safetensors`` (+ ``.json``); returns its path."""
    return save_table(Path(run_dir) / TABLE_FILE, embedding_table(model, dataset, extra_metadata))
