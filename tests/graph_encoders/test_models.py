"""Tiny-shape tests run for every registered model (forward, loss falls, export shapes, determinism)."""

import pytest
import torch

from graph_encoders.base import MODELS, DatasetSpec, SequentialRecommender, build_model, get_model_class
from graph_encoders.batching import SequenceBatcher
from graph_encoders.export import embedding_table
from llmrec.config import ConfigError

from .conftest import train_steps

MODEL_NAMES = ["sasrec", "gru4rec", "bert4rec"]
TINY = {"hidden_size": 16, "max_len": 8, "dropout": 0.1}


def _build(name, dataset, seed=0, **params):
    torch.manual_seed(seed)
    return build_model(name, {**TINY, **params}, DatasetSpec.from_dataset(dataset))

@pytest.mark.parametrize("use_behaviors", [False, True])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shapes_and_candidate_scores(name, use_behaviors, tiny_dataset):
    model = _build(name, tiny_dataset, use_behaviors=use_behaviors).eval()
    assert isinstance(model, SequentialRecommender) and model.name == name
    batcher = SequenceBatcher(tiny_dataset, 8)
    users, positions = batcher.evaluation_rows("test")
    batch = batcher.history_batch(users, positions)
    scores = model.score_all(batch)
    assert scores.shape == (len(users), tiny_dataset.n_items) and torch.isfinite(scores).all()
    candidates = torch.randint(0, tiny_dataset.n_items, (len(users), 5), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(model.score_candidates(batch, candidates), scores.gather(1, candidates), atol=1e-5)
    assert model.item_embeddings().shape == (tiny_dataset.n_items, 16)
    behavior = model.behavior_embeddings()
    assert (behavior is not None) == use_behaviors
    if use_behaviors:
        assert behavior.shape == (tiny_dataset.n_behaviors, 16)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_loss_falls(name, tiny_dataset):
    model = _build(name, tiny_dataset)
    batcher = SequenceBatcher(tiny_dataset, 8)
    batch = batcher.training_batch(batcher.training_windows().rows)
    torch.manual_seed(3)
    losses = train_steps(model, batch, 40, lr=2e-2)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, losses


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_export_shapes(name, tiny_dataset, tmp_path):
    model = _build(name, tiny_dataset, use_behaviors=True)
    table = embedding_table(model, tiny_dataset)
    assert table.item.shape == (tiny_dataset.n_items, 16) and table.item_mask.all()
    assert table.behavior.shape == (tiny_dataset.n_behaviors, 16)
    assert table.metadata["model"] == name and table.metadata["item_ids"] == tiny_dataset.item_ids
    # the padding row is not exported: row 0 of the table is item 0's embedding, not zeros
    assert table.item[0].abs().sum() > 0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_same_seed_same_weights(name, tiny_dataset):
    batcher = SequenceBatcher(tiny_dataset, 8)
    batch = batcher.training_batch(batcher.training_windows().rows)
    weights = []
    for _ in range(2):
        model = _build(name, tiny_dataset, seed=7)
        torch.manual_seed(11)  # dropout and Cloze masks
        train_steps(model, batch, 3)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    other = _build(name, tiny_dataset, seed=8).state_dict()
    assert any(not torch.equal(weights[0][k], other[k]) for k in other)


def test_bert4rec_masks_only_eligible_positions(tiny_dataset):
    model = _build("bert4rec", tiny_dataset, mask_prob=0.5)
    batcher = SequenceBatcher(tiny_dataset, 8)
    batch = batcher.training_batch(batcher.training_windows().rows, loss_on="target")
    torch.manual_seed(0)
    masked = model._draw_mask(batch.loss_mask)
    assert masked.any(1).all()  # every row trains
    assert not (masked & ~batch.loss_mask).any()


def test_registry_and_config_errors(tiny_dataset):
    for name in MODEL_NAMES:
        assert get_model_class(name) is MODELS[name]
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        get_model_class("nope")
    with pytest.raises(ConfigError, match="model.num_layerz"):
        build_model("sasrec", {"num_layerz": 2}, DatasetSpec.from_dataset(tiny_dataset))
    with pytest.raises(ConfigError, match="divisible"):
        build_model("sasrec", {"hidden_size": 10, "num_heads": 3}, DatasetSpec.from_dataset(tiny_dataset))
