"""MDSRec (graph_encoders/mdsrec.py) on tiny shapes, with random text / image tables.

Real layers, real Adam, real batches from SequenceBatcher over the hand-built dataset of
conftest.py; nothing is mocked.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from graph_encoders.base import build_model, model_config
from graph_encoders.export import embedding_table
from graph_encoders.mdsrec import MDSRec, MDSRecConfig
from llmrec.config import ConfigError, load_config

from .conftest import all_training_windows, evaluation_histories, fit_and_full_hr5, make_tiny_dataset, train_steps
from .conftest import random_modality_spec as spec_of

ROOT = Path(__file__).resolve().parents[2]
TINY = {"hidden_size": 16, "max_len": 8, "dropout": 0.0, "n_centers": 4, "top_h": 3, "num_heads": 2}


def build(spec, seed: int = 0, **overrides) -> MDSRec:
    torch.manual_seed(seed)
    return build_model("mdsrec", {**TINY, **overrides}, spec)


def train_batch(dataset):
    return all_training_windows(dataset, TINY["max_len"])


def eval_batch(dataset):
    return evaluation_histories(dataset, TINY["max_len"])

# ---- config ----------------------------------------------------------------------------
def test_defaults_are_the_papers():
    cfg = model_config("mdsrec", {})
    assert isinstance(cfg, MDSRecConfig)
    assert (cfg.mu_id, cfg.mu_modal, cfg.n_centers, cfg.top_h) == (16.0, 0.2, 32, 10)
    assert (cfg.selection_noise, cfg.temperature, cfg.co_occurrence) == ("logistic", 1.0, "distance")


@pytest.mark.parametrize("key, value, message", [
    ("use_behaviors", True, "use_behaviors"),
    ("modalities", ["audio"], "modalities"),
    ("selection_noise", "uniform", "selection_noise"),
    ("temperature", 0.0, "temperature"),
    ("num_heads", 3, "not divisible"),
    ("center_positions", 0, "center_positions"),
])
def test_bad_config_is_rejected(key, value, message):
    with pytest.raises(ConfigError, match=message):
        model_config("mdsrec", {key: value})


@pytest.mark.parametrize("name", ["mdsrec_ml100k.yaml", "mdsrec_taobao.yaml", "mdsrec_shop.yaml"])
def test_config_files_load(name):
    from graph_encoders.cli import FitGraphConfig

    cfg = load_config(FitGraphConfig, ROOT / "configs" / "graph" / name)
    assert cfg.model_name == "mdsrec"
    params = model_config("mdsrec", cfg.model_params)
    assert (params.mu_id, params.mu_modal, params.n_centers, params.top_h) == (16.0, 0.2, 32, 10)
    # the paper's patience 10; the shop's epochs are 3 steps, so every seed model there waits 60 (as MBHT's config)
    assert cfg.train.patience == (60 if name.endswith("_shop.yaml") else 10) and params.hidden_size == 64
    # ML-100k trains the centres at 10 sampled positions (the speed bound); the others at every position
    assert params.center_positions == (10 if name == "mdsrec_ml100k.yaml" else None)


# ---- shapes, loss, export --------------------------------------------------------------
def test_forward_shapes_and_candidate_scores(tiny_dataset):
    model = build(spec_of(tiny_dataset)).eval()
    batch = eval_batch(tiny_dataset)
    n, b = tiny_dataset.n_items, len(batch.items)
    scores = model.score_all(batch)
    assert scores.shape == (b, n) and torch.isfinite(scores).all()
    channels = model.channel_scores(batch)
    assert set(channels) == {"id", "text", "image"}
    assert torch.allclose(scores, channels["id"] + 0.5 * channels["text"] + 0.5 * channels["image"], atol=1e-5)
    candidates = torch.randint(0, n, (b, 5), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(model.score_candidates(batch, candidates), scores.gather(1, candidates))
    assert model.encode(batch).shape == (b, TINY["max_len"], 16)


def test_loss_falls(tiny_dataset):
    model = build(spec_of(tiny_dataset), dropout=0.1)
    batch = train_batch(tiny_dataset)
    torch.manual_seed(3)
    losses = train_steps(model, batch, 40, lr=2e-2)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, losses


def test_export_is_the_id_table(tiny_dataset):
    model = build(spec_of(tiny_dataset))
    table = embedding_table(model, tiny_dataset)
    assert table.item.shape == (tiny_dataset.n_items, 16) and table.behavior is None
    assert torch.equal(table.item, model.items.weight[1:].detach())
    assert table.metadata["model"] == "mdsrec"


# ---- determinism and noise -------------------------------------------------------------
def test_same_seed_same_weights(tiny_dataset):
    spec, batch = spec_of(tiny_dataset), train_batch(tiny_dataset)
    weights = []
    for _ in range(2):
        model = build(spec, seed=7, dropout=0.1)
        torch.manual_seed(11)  # dropout and the Eq. 19 noise
        train_steps(model, batch, 3)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    other = build(spec, seed=8).state_dict()
    assert any(not torch.equal(weights[0][k], other[k]) for k in other)


def test_graphs_are_deterministic(tiny_dataset):
    first, second = build(spec_of(tiny_dataset), seed=1), build(spec_of(tiny_dataset), seed=2)
    for name in ("co_occurrence_matrix", "relation_graph_text", "cluster_means_text", "cluster_means_image"):
        a, b = getattr(first, name), getattr(second, name)
        assert torch.equal(a.to_dense() if a.is_sparse else a, b.to_dense() if b.is_sparse else b), name


def test_noise_only_in_training(tiny_dataset):
    model = build(spec_of(tiny_dataset))  # dropout 0: only the Eq. 19 noise is random
    torch.manual_seed(0)
    train_steps(model, train_batch(tiny_dataset), 20, lr=2e-2)  # the initial centres are near zero; let them grow
    batch = eval_batch(tiny_dataset)
    model.train()
    assert not torch.allclose(model.score_all(batch), model.score_all(batch))
    model.eval()
    assert torch.equal(model.score_all(batch), model.score_all(batch))
    quiet = build(spec_of(tiny_dataset), selection_noise="none").train()
    assert torch.equal(quiet.score_all(batch), quiet.score_all(batch))


# ---- no leak ---------------------------------------------------------------------------
def test_graphs_use_the_training_part_only(tiny_dataset):
    """A co-occurrence in the valid/test part leaves Ō unchanged; one in the training part changes it."""
    base = build(spec_of(tiny_dataset)).co_occurrence_matrix.to_dense()

    def altered(at_valid: bool):
        sequences = []
        for seq in tiny_dataset.sequences:
            items = seq.items.copy()
            position = seq.valid_pos + 1 if at_valid else seq.valid_pos - 2
            items[position] = (items[position] + 7) % tiny_dataset.n_items
            sequences.append(replace(seq, items=items))
        return replace(tiny_dataset, sequences=sequences)

    after_test_change = build(spec_of(altered(True))).co_occurrence_matrix.to_dense()
    assert torch.equal(base, after_test_change)
    after_train_change = build(spec_of(altered(False))).co_occurrence_matrix.to_dense()
    assert not torch.equal(base, after_train_change)


def test_a_later_item_does_not_change_earlier_positions(tiny_dataset):
    """The per-position centres (Eq. 12-16) attend only to positions <= t."""
    model = build(spec_of(tiny_dataset)).eval()
    batch = eval_batch(tiny_dataset)
    changed = replace(batch, items=batch.items.clone())
    changed.items[:, -1] = (changed.items[:, -1] % tiny_dataset.n_items) + 1
    fused, centred, _ = model.channels(batch)
    fused2, centred2, _ = model.channels(changed)
    assert torch.allclose(fused[:, :-1], fused2[:, :-1], atol=1e-6)
    assert torch.allclose(centred["text"][:, :-1], centred2["text"][:, :-1], atol=1e-6)
    assert not torch.allclose(centred["text"][:, -1], centred2["text"][:, -1])


# ---- modalities ------------------------------------------------------------------------
def test_missing_modality_drops_its_channel(tiny_dataset):
    model = build(spec_of(tiny_dataset, image=False)).eval()
    assert model.modalities == ["text"] and model.rho == {"text": 1.0}
    assert not any("image" in name for name in model.state_dict())
    assert not hasattr(model, "relation_graph_image")
    batch = eval_batch(tiny_dataset)
    channels = model.channel_scores(batch)
    assert set(channels) == {"id", "text"}
    assert torch.allclose(model.score_all(batch), channels["id"] + channels["text"], atol=1e-5)
    with pytest.raises(ValueError, match="needs a modality table"):
        build(spec_of(tiny_dataset, text=False, image=False))
    # a table present but not listed in model.modalities is not used either
    assert build(spec_of(tiny_dataset), modalities=["image"]).modalities == ["image"]


def test_the_text_table_changes_the_scores(tiny_dataset):
    batch = eval_batch(tiny_dataset)
    first = build(spec_of(tiny_dataset, image=False, seed=0)).eval().score_all(batch)
    second = build(spec_of(tiny_dataset, image=False, seed=1)).eval().score_all(batch)
    assert not torch.allclose(first, second)


def test_fit_on_the_tiny_dataset_beats_chance():
    """A few epochs through the project's trainer and evaluator (frozen candidate sets)."""
    dataset = make_tiny_dataset(n_users=40)
    model = build(spec_of(dataset), dropout=0.1)
    assert fit_and_full_hr5(model, dataset, TINY["max_len"], epochs=15) > 3 * 5 / dataset.n_items  # chance is 5/30


# ---- centres at sampled positions (center_positions) ------------------------------------
def test_sampled_positions_are_distinct_loss_positions():
    model = build_model("mdsrec", {**TINY, "center_positions": 3}, spec_of(make_tiny_dataset()))
    loss_mask = torch.tensor([[False, True, True, True, True, True, False, True],
                              [False, False, False, False, False, False, True, True]])
    torch.manual_seed(0)
    seen = set()
    for _ in range(30):
        positions, chosen = model.sample_center_positions(loss_mask)
        assert positions.shape == chosen.shape == (2, 3)
        assert len(set(positions[0].tolist())) == 3 and bool(chosen[0].all())
        assert bool(loss_mask[0, positions[0]].all())
        seen.update(positions[0].tolist())
        # the second window has two loss positions: both chosen, the third slot carries no loss
        assert sorted(positions[1][chosen[1]].tolist()) == [6, 7] and int(chosen[1].sum()) == 2
    assert seen == {1, 2, 3, 4, 5, 7}  # every loss position gets drawn, no other


def test_every_position_sampled_gives_the_full_loss(tiny_dataset):
    """With S >= the window, the sampled path (masked attention) equals every-position training (running sums)."""
    spec, batch = spec_of(tiny_dataset), train_batch(tiny_dataset)
    full = build(spec, seed=4, selection_noise="none").train()
    sampled = build(spec, seed=4, selection_noise="none", center_positions=TINY["max_len"]).train()
    expected, got = full.loss(batch), sampled.loss(batch)
    assert torch.allclose(expected, got, atol=1e-5), (expected, got)
    got.backward()
    expected.backward()
    for (name, a), b in zip(full.named_parameters(), sampled.parameters(), strict=True):
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-5), name


def test_sampled_positions_train_and_leave_scoring_alone(tiny_dataset):
    spec, batch = spec_of(tiny_dataset), train_batch(tiny_dataset)
    model = build(spec, seed=5, center_positions=2)
    reference = build(spec, seed=5)
    history = eval_batch(tiny_dataset)
    model.eval(), reference.eval()
    assert torch.equal(model.score_all(history), reference.score_all(history))  # same weights: same scores
    model.train()  # the sampling is a training-mode path
    torch.manual_seed(3)
    losses = train_steps(model, batch, 40, lr=2e-2)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    centre_weights = model.center_updates["text"][1].first.weight
    assert not torch.equal(centre_weights, reference.center_updates["text"][1].first.weight)  # L^m reached Eq. 15
