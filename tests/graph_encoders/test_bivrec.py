"""BivRec (graph_encoders/bivrec.py) on tiny shapes, with random text / image tables.

Real layers, real Adam, real batches from SequenceBatcher over the hand-built dataset of
conftest.py; nothing is mocked.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from graph_encoders.base import build_model, model_config
from graph_encoders.bivrec import (
    BivRec,
    BivRecConfig,
    allocation_similarity_loss,
    max_score_loss,
    nearest_interest_loss,
)
from graph_encoders.export import embedding_table
from llmrec.config import ConfigError, load_config

from .conftest import all_training_windows, evaluation_histories, fit_and_full_hr5, make_tiny_dataset, train_steps
from .conftest import random_modality_spec as spec_of

ROOT = Path(__file__).resolve().parents[2]
TINY = {"hidden_size": 16, "max_len": 8, "dropout": 0.0, "scales": [2, 4], "interests": [6, 3]}
VARIANTS = {  # Table 1's four rows
    "BivRec-ID": {"views": ["id", "mm"], "score_view": "id"},
    "BivRec-MM": {"views": ["id", "mm"], "score_view": "mm"},
    "PureID": {"views": ["id"], "score_view": "id"},
    "PureMM": {"views": ["mm"], "score_view": "mm"},
}


def build(spec, seed: int = 0, **overrides) -> BivRec:
    torch.manual_seed(seed)
    return build_model("bivrec", {**TINY, **overrides}, spec)


def train_batch(dataset):
    return all_training_windows(dataset, TINY["max_len"])


def eval_batch(dataset):
    return evaluation_histories(dataset, TINY["max_len"])


# ---- config ----------------------------------------------------------------------------
def test_defaults_are_the_papers():
    cfg = model_config("bivrec", {})
    assert isinstance(cfg, BivRecConfig)
    assert (cfg.scales, cfg.interests, cfg.top_f, cfg.temperature) == ([4, 8], [24, 4], 1, 1.0)  # A.4, MovieLens
    assert (cfg.contrast_weight, cfg.allocation_weight, cfg.beta_init) == (0.5, 0.3, 0.07)
    assert (cfg.views, cfg.score_view, cfg.selection_noise, cfg.hidden_size) == (["id", "mm"], "id", "gumbel", 64)
    assert (cfg.interest_pooling, cfg.skip_empty_interests, cfg.recency_interest) == ("sum", False, False)  # as printed
    assert cfg.rec_loss == "nearest"  # Eq. 19-21


@pytest.mark.parametrize("key, value, message", [
    ("use_behaviors", True, "use_behaviors"),
    ("views", [], "views"),
    ("views", ["id", "id"], "views"),
    ("views", ["text"], "views"),
    ("score_view", "mm", "score_view"),  # with views [id]
    ("scales", [1], "scales"),
    ("interests", [4, 0], "interests"),
    ("top_f", 5, "top_f"),
    ("temperature", 0.0, "temperature"),
    ("num_heads", 3, "num_heads"),
    ("interest_init_std", 0.0, "interest_init_std"),
])
def test_bad_config_is_rejected(key, value, message):
    params = {key: value, **({"views": ["id"]} if key == "score_view" else {})}
    with pytest.raises(ConfigError, match=message):
        model_config("bivrec", params)


@pytest.mark.parametrize("name, scales, interests", [
    ("bivrec_ml100k.yaml", [4, 8], [24, 4]), ("bivrec_taobao.yaml", [4], [4]), ("bivrec_shop.yaml", [4], [4]),
])
def test_config_files_load(name, scales, interests):
    from graph_encoders.cli import FitGraphConfig

    cfg = load_config(FitGraphConfig, ROOT / "configs" / "graph" / name)
    assert cfg.model_name == "bivrec"
    params = model_config("bivrec", cfg.model_params)
    assert (params.scales, params.interests, params.views, params.score_view) == (scales, interests, ["id", "mm"], "id")
    assert params.hidden_size == 64 and cfg.train.learning_rate == 0.001


# ---- shapes, loss, export --------------------------------------------------------------
def test_forward_shapes_and_max_over_interests(tiny_dataset):
    model = build(spec_of(tiny_dataset)).eval()
    batch = eval_batch(tiny_dataset)
    n, b = tiny_dataset.n_items, len(batch.items)
    scores = model.score_all(batch)
    assert scores.shape == (b, n) and torch.isfinite(scores).all()
    out = model.view_output("id", batch, newest_only=True)
    assert out.interests.shape == (b, 1, 3, 16)
    per_interest = out.interests[:, 0] @ model.item_embeddings().T  # [B, K, n]
    torch.testing.assert_close(scores, per_interest.max(1).values)
    assert (per_interest.argmax(1).unique().numel()) > 1  # several interests win some item
    candidates = torch.randint(0, n, (b, 5), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.score_candidates(batch, candidates), scores.gather(1, candidates))
    # the newest position of the all-position pass is the scoring pass
    full = model.view_output("id", batch).interests
    assert full.shape == (b, TINY["max_len"], 3, 16)
    torch.testing.assert_close(full[:, -1], out.interests[:, 0])
    assert model.encode(batch).shape == (b, TINY["max_len"], 16)


def test_loss_terms(tiny_dataset):
    model = build(spec_of(tiny_dataset)).eval()
    terms = model.losses(train_batch(tiny_dataset))
    assert set(terms) == {"rec_id", "rec_mm", "contrast", "allocation"}
    n = tiny_dataset.n_items
    assert abs(terms["rec_id"].item() - torch.log(torch.tensor(float(n))).item()) < 0.1  # near-uniform at init
    assert -(6 + 3) / 2 <= terms["allocation"].item() < -0.1  # -Σ_k cos over 6 and 3 interests, stage mean
    total = model.loss(train_batch(tiny_dataset))
    expected = 2 * terms["rec_id"] + 0.5 * terms["contrast"] + 0.3 * terms["allocation"]  # sg weight: L_MM -> L_ID
    torch.testing.assert_close(total, expected)


def test_loss_falls(tiny_dataset):
    model = build(spec_of(tiny_dataset))
    batch = train_batch(tiny_dataset)
    torch.manual_seed(3)
    before = {k: v.item() for k, v in model.losses(batch).items()}
    losses = train_steps(model, batch, 60, lr=1e-2)
    after = {k: v.item() for k, v in model.losses(batch).items()}
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
    assert after["rec_id"] < 0.85 * before["rec_id"] and after["rec_mm"] < 0.85 * before["rec_mm"], (before, after)


def test_export_is_the_id_table(tiny_dataset):
    model = build(spec_of(tiny_dataset))
    table = embedding_table(model, tiny_dataset)
    assert table.item.shape == (tiny_dataset.n_items, 16) and table.behavior is None
    assert torch.equal(table.item, model.id_items.weight[1:].detach())
    assert table.metadata["model"] == "bivrec"
    pure_mm = build(spec_of(tiny_dataset), **VARIANTS["PureMM"])
    exported = embedding_table(pure_mm, tiny_dataset).item
    assert exported.shape == (tiny_dataset.n_items, 16)
    torch.testing.assert_close(exported, pure_mm.mm_projection(pure_mm.mm_features).detach())


def test_features_are_not_saved_with_the_weights(tiny_dataset):
    assert "mm_features" not in build(spec_of(tiny_dataset)).state_dict()


# ---- determinism -------------------------------------------------------------------------
def test_same_seed_same_weights(tiny_dataset):
    spec, batch = spec_of(tiny_dataset), train_batch(tiny_dataset)
    weights = []
    for _ in range(2):
        model = build(spec, seed=7, dropout=0.1)
        torch.manual_seed(11)  # dropout and the Gumbel noise
        train_steps(model, batch, 3)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    other = build(spec, seed=8).state_dict()
    assert any(not torch.equal(weights[0][k], other[k]) for k in other)


def test_interest_init_std_scales_only_the_interest_tokens(tiny_dataset):
    """``interest_init_std`` draws ``c_k`` at that scale (truncated at two stds) and leaves every other weight as
    the default draws it, so a probe against the shipped 0.02 differs in ``c_k`` alone."""
    spec = spec_of(tiny_dataset)
    shipped, unit = build(spec).state_dict(), build(spec, interest_init_std=1.0).state_dict()
    tokens = [k for k in shipped if k.endswith(".interests")]
    assert len(tokens) == 2 * len(TINY["interests"])  # one per clustering stage, in each of the two views
    for key in tokens:
        assert 0.5 < unit[key].std() < 1.0 and unit[key].abs().max() <= 2.0  # truncated normal, std 1 before the cut
        assert shipped[key].abs().max() <= 0.04 and torch.allclose(unit[key] * 0.02, shipped[key], atol=1e-7)
    assert all(torch.equal(shipped[k], unit[k]) for k in shipped if k not in tokens)


def test_noise_only_in_training(tiny_dataset):
    model = build(spec_of(tiny_dataset))
    batch = eval_batch(tiny_dataset)
    assert not torch.equal(model.score_all(batch), model.score_all(batch))  # Gumbel draws
    model.eval()
    assert torch.equal(model.score_all(batch), model.score_all(batch))


# ---- straight-through in the model --------------------------------------------------------
def test_hard_assignment_with_gradients_on_the_soft_path(tiny_dataset):
    model = build(spec_of(tiny_dataset))
    batch = train_batch(tiny_dataset)
    torch.manual_seed(0)
    out = model.view_output("id", batch)
    for allocation in out.allocations:
        values = allocation.detach().unique().tolist()
        assert set(values) == {0.0, 1.0}  # the forward is the hard top-1 filter
    model.loss(batch).backward()
    for view in ("id", "mm"):
        for stage in model.towers[view].stages:  # W_q^c, W_k^c get gradient only through the soft path
            assert stage.query.weight.grad.abs().sum() > 0 and stage.key.weight.grad.abs().sum() > 0
        assert model.towers[view].blocks[0].attention.sigma_raw.grad.abs() > 0
    assert model.contrast_logit_scale.grad.abs() > 0


def test_allocation_loss_ignores_empty_interests():
    """An interest empty in a view has an undefined cosine: it adds 0 and no (1/eps) gradient."""
    soft = torch.tensor([[[0.9, 0.1, 0.0], [0.8, 0.2, 0.0]]], requires_grad=True)  # [B=1, N=2, K=3]
    hard = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]]) + soft - soft.detach()  # interests 1, 2 empty
    other = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    loss = allocation_similarity_loss([hard], [other])
    assert loss.item() == pytest.approx(-1 / 2**0.5)  # only interest 0: cos([1, 1], [1, 0])
    loss.backward()
    assert torch.isfinite(soft.grad).all() and soft.grad.abs().max() < 2


def test_skip_empty_interests_leaves_empty_interests_out(tiny_dataset):
    """``skip_empty_interests``: a first-stage interest that received no token (its vector is the bare ``c_k``,
    the same for every user) does not reach stage 2, and a final interest that received nothing cannot win
    the max score. Without the option, moving such an interest's ``c_k`` moves the scores."""
    spec, batch = spec_of(tiny_dataset), eval_batch(tiny_dataset)
    interests = {"interests": [12, 3]}
    skip, plain = build(spec, skip_empty_interests=True, **interests).eval(), build(spec, **interests).eval()
    with torch.no_grad():
        first_stage = skip.view_output("id", batch, newest_only=True).allocations[0].sum(1)  # [B, K_1] tokens
        k = int((first_stage == 0).sum(0).argmax())  # the first-stage interest empty for the most users
        rows = (first_stage[:, k] == 0).nonzero().flatten()
        assert len(rows) > 0, "every first-stage interest got a token from every user: nothing to test"
        out = skip.view_output("id", batch, newest_only=True)
        assert out.present.shape == (len(batch.items), 1, 3) and out.present[:, -1].any(-1).all()
        # the max runs over present interests only
        per_interest = torch.einsum("bkd,nd->bkn", out.interests[:, -1], out.table)
        expected = per_interest.masked_fill(~out.present[:, -1, :, None], float("-inf")).amax(1)
        torch.testing.assert_close(skip.score_all(batch), expected)
        before = {name: m.score_all(batch) for name, m in (("skip", skip), ("plain", plain))}

        def move_interest_k(module, inputs, output):  # what stage 1 hands to stage 2, interest k moved
            interests, allocation = output
            shift = torch.zeros_like(interests)
            shift[..., k, :] = torch.linspace(-1.0, 1.0, shift.shape[-1])  # not constant: stage 2 LayerNorms it
            return interests + shift, allocation

        for m in (skip, plain):  # (moving c_k itself would also move the assignments)
            m.towers["id"].stages[0].register_forward_hook(move_interest_k)
        # for the users whose interest k is empty, nothing changes with the option, the scores move without it
        torch.testing.assert_close(skip.score_all(batch)[rows], before["skip"][rows], rtol=0, atol=0)
        assert not torch.allclose(plain.score_all(batch)[rows], before["plain"][rows])
        assert plain.view_output("id", batch, newest_only=True).present.all()  # off: every interest counts
    model = build(spec, skip_empty_interests=True, **interests)
    torch.manual_seed(0)
    losses = train_steps(model, train_batch(tiny_dataset), 25, lr=1e-2)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses


def test_recency_interest_is_the_newest_token(tiny_dataset):
    """``recency_interest``: one more interest, the query position's own scale-1 token after the Gaussian
    attention; with no attention layer that is ``F[item] + E_pos`` (Eq. 1). It joins the max score and Eq. 19."""
    spec, batch = spec_of(tiny_dataset), eval_batch(tiny_dataset)
    model = build(spec, recency_interest=True, num_layers=0).eval()
    with torch.no_grad():
        out = model.view_output("id", batch, newest_only=True)
        assert out.interests.shape == (len(batch.items), 1, TINY["interests"][-1] + 1, 16)
        assert out.present[:, -1, -1].all()
        tower = model.towers["id"]
        expected = out.table[batch.items[:, -1] - 1] + tower.positions.weight[TINY["max_len"] - 1]
        torch.testing.assert_close(out.interests[:, 0, -1], expected)
        per_interest = torch.einsum("bkd,nd->bkn", out.interests[:, 0], out.table)
        torch.testing.assert_close(model.score_all(batch), per_interest.amax(1))
        assert (per_interest.argmax(1) == TINY["interests"][-1]).any()  # the recency interest wins some items
        full = model.view_output("id", batch)  # every position: its own token, absent at padding
        torch.testing.assert_close(full.interests[:, -1], out.interests[:, 0])
        torch.testing.assert_close(full.present[..., -1], batch.valid)
    model = build(spec, recency_interest=True)
    torch.manual_seed(0)
    losses = train_steps(model, train_batch(tiny_dataset), 25, lr=1e-2)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses


def test_max_score_loss_trains_the_score(tiny_dataset):
    """``rec_loss: max_score`` (ours): the cross-entropy of the score itself, ``max_k v_k · x_i`` over the present
    interests; equal to Eq. 19-21 with one interest; its model trains."""
    torch.manual_seed(0)
    interests, table, targets = torch.randn(5, 3, 4), torch.randn(7, 4), torch.tensor([0, 3, 6, 2, 2])
    present = torch.ones(5, 3, dtype=torch.bool)
    present[1, 0] = present[4, 2] = False
    scores = torch.einsum("mkd,nd->mkn", interests, table).masked_fill(~present[..., None], float("-inf")).amax(1)
    expected = torch.nn.functional.cross_entropy(scores, targets)
    torch.testing.assert_close(max_score_loss(interests, targets, table, present), expected)
    assert not torch.allclose(max_score_loss(interests, targets, table), expected)  # the mask matters here
    torch.testing.assert_close(max_score_loss(interests[:, :1], targets, table),
                               nearest_interest_loss(interests[:, :1], targets, table))
    spec, batch = spec_of(tiny_dataset), train_batch(tiny_dataset)
    nearest, max_score = build(spec), build(spec, rec_loss="max_score")
    torch.manual_seed(1)
    nearest_terms = nearest.losses(batch)
    torch.manual_seed(1)
    max_terms = max_score.losses(batch)
    assert max_terms["rec_id"] > nearest_terms["rec_id"]  # the nearest interest's loss is the smaller one
    torch.testing.assert_close(max_terms["contrast"], nearest_terms["contrast"])  # same weights, same noise
    torch.manual_seed(0)
    losses = train_steps(max_score, batch, 25, lr=1e-2)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses


# ---- variants ----------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_trains_and_scores(tiny_dataset, variant):
    params = VARIANTS[variant]
    model = build(spec_of(tiny_dataset), **params)
    batch = train_batch(tiny_dataset)
    expected_terms = {f"rec_{v}" for v in params["views"]} | ({"contrast", "allocation"} if len(params["views"]) == 2
                                                              else set())
    assert set(model.losses(batch)) == expected_terms
    assert set(model.towers) == set(params["views"])
    assert hasattr(model, "id_items") == ("id" in params["views"])
    assert hasattr(model, "mm_projection") == ("mm" in params["views"])
    torch.manual_seed(0)
    losses = train_steps(model, batch, 25, lr=1e-2)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    scores = model.eval().score_all(eval_batch(tiny_dataset))
    assert scores.shape == (len(eval_batch(tiny_dataset).items), tiny_dataset.n_items)


def test_score_view_switches_the_scoring_tower(tiny_dataset):
    spec, batch = spec_of(tiny_dataset), eval_batch(tiny_dataset)
    by_id = build(spec, **VARIANTS["BivRec-ID"]).eval()
    by_mm = build(spec, **VARIANTS["BivRec-MM"]).eval()
    by_mm.load_state_dict(by_id.state_dict())  # the same weights, scored by the other view
    mm = by_id.view_output("mm", batch, newest_only=True)
    torch.testing.assert_close(by_mm.score_all(batch), (mm.interests[:, 0] @ mm.table.T).max(1).values)
    assert not torch.allclose(by_mm.score_all(batch), by_id.score_all(batch))


def test_pure_id_needs_no_feature_table(tiny_dataset):
    model = build(spec_of(tiny_dataset, text=False, image=False), **VARIANTS["PureID"])
    assert not any("mm" in name for name in model.state_dict())
    with pytest.raises(ValueError, match="multimodal view needs a table"):
        build(spec_of(tiny_dataset, text=False, image=False))


def test_missing_modality_is_dropped(tiny_dataset):
    model = build(spec_of(tiny_dataset, image=False))
    assert model.modalities == ["text"] and model.mm_features.shape == (tiny_dataset.n_items, 12)
    both = build(spec_of(tiny_dataset))
    assert both.modalities == ["text", "image"] and both.mm_features.shape == (tiny_dataset.n_items, 32)
    assert build(spec_of(tiny_dataset), modalities=["image"]).mm_features.shape == (tiny_dataset.n_items, 20)


# ---- no leak -----------------------------------------------------------------------------
def _changed_at(batch, column: int, n_items: int):
    items = batch.items.clone()
    items[:, column] = (items[:, column] % n_items) + 1  # another real item
    return replace(batch, items=items)


@pytest.mark.parametrize("column, recency", [(-1, False), (-3, False), (-3, True)])
def test_a_later_item_does_not_change_earlier_positions(tiny_dataset, column, recency):
    """Every position's interests (Eq. 7-12, through the multi-scale tokens and the Gaussian attention; and the
    recency interest) depend only on the items up to it, in both views; the changed position itself does change."""
    model = build(spec_of(tiny_dataset), recency_interest=recency).eval()
    batch = train_batch(tiny_dataset)
    changed = _changed_at(batch, column, tiny_dataset.n_items)
    length = TINY["max_len"]
    t = length + column
    with torch.no_grad():
        for view in ("id", "mm"):
            before = model.view_output(view, batch).interests
            after = model.view_output(view, changed).interests
            torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=0)
            assert not torch.allclose(after[:, t], before[:, t]), view


def test_a_later_items_features_do_not_reach_earlier_positions(tiny_dataset):
    """The newest item's features (MM view) reach only the newest position of its row."""
    spec, batch = spec_of(tiny_dataset), train_batch(tiny_dataset)
    rows = [r for r in range(len(batch.items)) if int(batch.items[r, -1]) not in batch.items[r, :-1].tolist()]
    assert rows, "the fixture should have a row whose newest item does not occur earlier in it"
    row = rows[0]
    item = int(batch.items[row, -1]) - 1
    altered = replace(spec, text_table=spec.text_table.clone())
    altered.text_table[item] += 5.0
    with torch.no_grad():
        before = build(spec).eval().view_output("mm", batch).interests[row]
        after = build(altered).eval().view_output("mm", batch).interests[row]
    assert before.shape[0] == TINY["max_len"]  # every position's interests
    torch.testing.assert_close(after[:-1], before[:-1], rtol=0, atol=0)
    assert not torch.allclose(after[-1], before[-1])


def test_fit_on_the_tiny_dataset_beats_chance():
    """A few epochs through the project's trainer and evaluator (frozen candidate sets)."""
    dataset = make_tiny_dataset(n_users=40)
    model = build(spec_of(dataset), dropout=0.1)
    # chance is 5/30 (measured: 0.45)
    assert fit_and_full_hr5(model, dataset, TINY["max_len"], epochs=15) > 2 * 5 / dataset.n_items
