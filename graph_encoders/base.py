"""One interface for every sequential recommender, plus the model registry.

Batch convention (:class:`SeqBatch`)
-----------------------------------
* ``items`` ``[B, L]``: internal item index **+ 1**, ``0`` = padding, **left-padded**:
  the newest interaction of every row sits at column ``L - 1``. (Left padding makes
  "the user state" simply the last column for every causal model and matches
  SASRec's reference code; recurrent models re-align with
  :func:`graph_encoders.layers.left_to_right_padded`.)
* ``behaviors`` ``[B, L]``: behavior index **+ 1** (weakest behavior = 1), ``0`` = padding.
* ``lengths`` ``[B]``: real (non-padding) positions per row; ``users`` ``[B]``.
* Training (one row = one user's whole training window, every position trained):
  ``labels`` ``[B, L]`` the next item after each position (same +1 space as ``items``,
  so ``labels[:, t] == items[:, t + 1]``), ``label_behaviors`` ``[B, L]`` its behavior
  (+1), ``loss_mask`` ``[B, L]`` bool, the positions that contribute to the loss
  (every next item, or only next target-behavior items; see ``TrainConfig.loss_on``).
* Evaluation: ``targets`` ``[B]`` the item to predict as a **0-based** internal index
  (it indexes score columns), ``next_behaviors`` ``[B]`` its behavior (+1).

Scores are always over internal items ``0..n_items-1`` (no padding column).

A model subclasses :class:`SequentialRecommender`, declares its ``config_class`` and
``inputs``, implements ``encode`` and ``item_embeddings`` (and overrides ``loss`` /
``user_representation`` when its objective is not next-item prediction), and
registers itself with ``@register_model("name")``. See docs/graph_encoders.md.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmrec.config import ConfigError, from_dict

# Modules imported on demand when a model name is looked up (each registers itself).
BUILTIN_MODEL_MODULES = {
    "sasrec": "graph_encoders.sasrec",
    "gru4rec": "graph_encoders.gru4rec",
    "bert4rec": "graph_encoders.bert4rec",
    "mbht": "graph_encoders.mbht",
    "dreamrec": "graph_encoders.dreamrec",
    "mdsrec": "graph_encoders.mdsrec",
    "m3bsr": "graph_encoders.m3bsr",
    "bivrec": "graph_encoders.bivrec",
}
# Item feature tables a model can read; ``llmrec fit-graph`` fills them from its ``encode`` config.
MODALITY_KINDS = ("text", "image")
INPUT_KINDS = frozenset({"items", "behaviors", "text", "image"})


@dataclass
class SeqBatch:
    """A batch of left-padded sequences (see the module docstring for every field)."""

    items: torch.Tensor
    behaviors: torch.Tensor
    lengths: torch.Tensor
    users: torch.Tensor
    labels: torch.Tensor | None = None
    label_behaviors: torch.Tensor | None = None
    loss_mask: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    next_behaviors: torch.Tensor | None = None

    @property
    def valid(self) -> torch.Tensor:
        """``[B, L]`` bool, True at real (non-padding) positions."""
        return self.items > 0

    def to(self, device: torch.device | str) -> SeqBatch:
        def move(value):
            return value.to(device) if isinstance(value, torch.Tensor) else value

        return SeqBatch(**{f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self)})


@dataclass
class DatasetSpec:
    """What a model needs to know about the data to build itself."""

    n_items: int
    n_behaviors: int
    target_behavior: int  # 0-based behavior index of the target behavior
    text_table: torch.Tensor | None = None  # [n_items, d_text], for models that read "text" (zero row = no text)
    image_table: torch.Tensor | None = None  # [n_items, d_image], for models that read "image" (zero row = no image)
    n_users: int | None = None  # internal user indices 0..n_users-1 (models with a user embedding need it)
    # each user's training part ``items[:valid_pos]`` (models that build item graphs from it, e.g. MDSRec)
    train_sequences: list[np.ndarray] | None = None

    @classmethod
    def from_dataset(cls, dataset: Any, **tables: torch.Tensor | None) -> DatasetSpec:
        return cls(dataset.n_items, dataset.n_behaviors, dataset.target_behavior_index, **tables,
                   n_users=len(dataset.user_ids),
                   train_sequences=[seq.items[: seq.valid_pos] for seq in dataset.sequences])


@dataclass
class ModelConfig:
    """Settings every model has; each model extends this with its own dataclass."""

    hidden_size: int = 64  # embedding / hidden width d
    max_len: int = 50  # window length L (newest interactions kept)
    dropout: float = 0.2
    use_behaviors: bool = False  # add a behavior-type embedding to the input (models that support it)

    def validate(self) -> None:
        if self.hidden_size <= 0:
            raise ConfigError(f"hidden_size must be positive, got {self.hidden_size}")
        if self.max_len < 2:
            raise ConfigError(f"max_len must be at least 2, got {self.max_len}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


class SequentialRecommender(nn.Module):
    """Base class: a user's left-padded history in, scores over items out."""

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    # what the model reads: "items" always; "behaviors" (if use_behaviors or always), "text", "image"
    inputs: ClassVar[frozenset[str]] = frozenset({"items"})
    # modalities read when their table is given and ignored otherwise (e.g. DreamRec on ML-100k: no images)
    optional_inputs: ClassVar[frozenset[str]] = frozenset()
    name: ClassVar[str] = ""

    def __init__(self, config: ModelConfig, spec: DatasetSpec) -> None:
        super().__init__()
        unknown = (set(self.inputs) | set(self.optional_inputs)) - INPUT_KINDS
        if unknown:
            raise ValueError(f"{type(self).__name__}.inputs has unknown kinds {sorted(unknown)}")
        for kind, table in (("text", spec.text_table), ("image", spec.image_table)):
            if kind in self.inputs and table is None:
                raise ValueError(f"{type(self).__name__} needs a {kind} table but DatasetSpec has none")
        self.config = config
        self.spec = spec
        self.n_items = spec.n_items
        self.n_behaviors = spec.n_behaviors

    # ---- to implement -------------------------------------------------------------
    def encode(self, batch: SeqBatch) -> torch.Tensor:
        """Hidden state after every position ``[B, L, d]`` (row ``t`` summarises items ``<= t``)."""
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:
        """Output item embeddings ``[n_items, d]`` in internal item order (no padding row)."""
        raise NotImplementedError

    def behavior_embeddings(self) -> torch.Tensor | None:
        """Behavior-type embeddings ``[n_behaviors, d]`` (no padding row) or None."""
        return None

    def item_bias(self) -> torch.Tensor | None:
        """Optional per-item output bias ``[n_items]`` added to every score (e.g. BERT4Rec's b^O)."""
        return None

    # ---- defaults (override when the objective differs) ---------------------------
    @property
    def uses_behaviors(self) -> bool:
        return "behaviors" in self.inputs or bool(self.config.use_behaviors)

    def user_representation(self, batch: SeqBatch) -> torch.Tensor:
        """``[B, d]`` state used to score the next item: the newest position (left padding)."""
        return self.encode(batch)[:, -1]

    def loss(self, batch: SeqBatch) -> torch.Tensor:
        """Next-item cross-entropy over all items at every ``loss_mask`` position."""
        if batch.labels is None or batch.loss_mask is None:
            raise ValueError("loss() needs a training batch (labels and loss_mask)")
        return next_item_cross_entropy(
            self.encode(batch), batch.labels, batch.loss_mask, self.item_embeddings(), self.item_bias()
        )

    def score_all(self, batch: SeqBatch) -> torch.Tensor:
        """``[B, n_items]`` scores of every item."""
        scores = self.user_representation(batch) @ self.item_embeddings().T
        bias = self.item_bias()
        return scores if bias is None else scores + bias

    def score_candidates(self, batch: SeqBatch, candidates: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` scores of the given internal (0-based) item indices ``[B, C]``."""
        user = self.user_representation(batch)
        scores = torch.einsum("bd,bcd->bc", user, self.item_embeddings()[candidates])
        bias = self.item_bias()
        return scores if bias is None else scores + bias[candidates]


def next_item_cross_entropy(
    hidden: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor, item_table: torch.Tensor,
    item_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean softmax cross-entropy over all items at the masked positions.

    ``hidden`` ``[B, L, d]``, ``labels`` ``[B, L]`` (+1 item space), ``item_table`` ``[n_items, d]``.
    Only the selected positions are projected onto the item table (saves the
    ``[B, L, n_items]`` logits of padded / unlabelled positions).
    """
    mask = loss_mask & (labels > 0)
    if not bool(mask.any()):
        raise ValueError("batch has no position to train on (loss_mask is empty)")
    logits = hidden[mask] @ item_table.T
    if item_bias is not None:
        logits = logits + item_bias
    return F.cross_entropy(logits, labels[mask] - 1)


# ---- registry -------------------------------------------------------------------------
MODELS: dict[str, type[SequentialRecommender]] = {}


def register_model(name: str):
    """Class decorator: make a model buildable by ``name`` (its ``config_class`` holds its defaults)."""

    def wrap(cls: type[SequentialRecommender]) -> type[SequentialRecommender]:
        if name in MODELS and MODELS[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered by {MODELS[name].__name__}")
        if not (isinstance(cls.config_class, type) and issubclass(cls.config_class, ModelConfig)):
            raise TypeError(f"{cls.__name__}.config_class must subclass ModelConfig")
        cls.name = name
        MODELS[name] = cls
        return cls

    return wrap


def get_model_class(name: str) -> type[SequentialRecommender]:
    """The registered class for ``name`` (imports built-in model modules on demand)."""
    if name not in MODELS and name in BUILTIN_MODEL_MODULES:
        importlib.import_module(BUILTIN_MODEL_MODULES[name])
    if name not in MODELS:
        known = sorted(set(MODELS) | set(BUILTIN_MODEL_MODULES))
        raise ConfigError(f"unknown model {name!r}; known models: {known}")
    return MODELS[name]


def model_config(name: str, params: dict[str, Any] | ModelConfig | None = None) -> ModelConfig:
    """Validate ``params`` against the model's config dataclass (errors name ``model.<key>``)."""
    cls = get_model_class(name).config_class
    if isinstance(params, cls):
        return params
    return from_dict(cls, dict(params or {}), prefix="model")


def build_model(name: str, params: dict[str, Any] | ModelConfig | None, spec: DatasetSpec) -> SequentialRecommender:
    """Instantiate model ``name`` with its validated config."""
    return get_model_class(name)(model_config(name, params), spec)
