"""Data pipeline: raw interaction logs -> filtered sequences, leave-one-out splits, frozen candidates.

Typical use::

    from llmrec.data import load_candidates, load_data_config, prepare

    cfg = load_data_config("configs/data/ml100k.yaml", ["max_history=20"])
    dataset = prepare(cfg)                 # cached under cfg.cache_dir
    test = dataset.samples["test"]         # HF datasets.Dataset, SAMPLE_COLUMNS
    cands = load_candidates(dataset, "test", sampler="uniform", size=20, seed=0)

See docs/data.md for the rules (tie-break, filters, splits, candidates, cache).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from llmrec.config import load_config
from llmrec.data.candidates import load_candidates
from llmrec.data.config import CandidateSpec, DataConfig, InteractionColumns, ItemColumns
from llmrec.data.errors import DataError
from llmrec.data.preparation import prepare
from llmrec.data.types import SAMPLE_COLUMNS, SPLITS, CandidateSet, SequenceDataset, UserSequence


def load_data_config(path: str | Path | None, overrides: Iterable[str] = ()) -> DataConfig:
    """Load a :class:`DataConfig` from YAML with dotted ``key=value`` overrides."""
    return load_config(DataConfig, path, overrides)


__all__ = [
    "CandidateSet", "CandidateSpec", "DataConfig", "DataError", "InteractionColumns", "ItemColumns",
    "SAMPLE_COLUMNS", "SPLITS", "SequenceDataset", "UserSequence", "load_candidates", "load_data_config",
    "prepare",
]
