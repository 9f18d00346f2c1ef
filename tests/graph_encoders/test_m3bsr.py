"""M³BSR (graph_encoders/m3bsr.py) on tiny shapes, with random text / image tables.

Real layers, real Adam, real batches from SequenceBatcher over the hand-built dataset of
conftest.py (behaviors view < cart < buy); nothing is mocked.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from graph_encoders.base import SeqBatch, build_model, model_config
from graph_encoders.export import embedding_table
from graph_encoders.m3bsr import M3BSR, M3BSRConfig
from llmrec.config import ConfigError, load_config

from .conftest import all_training_windows, evaluation_histories, fit_and_full_hr5, make_tiny_dataset, train_steps
from .conftest import random_modality_spec as spec_of

ROOT = Path(__file__).resolve().parents[2]
# click view = view + cart, favour view = cart + buy (cart in both, as ML-100k's likes are)
TINY = {"hidden_size": 16, "max_len": 8, "dropout": 0.0, "num_heads": 2, "click_behaviors": [0, 1],
        "favor_behaviors": [1, 2], "modality_steps": 4, "behavior_steps": 3}


def build(spec, seed: int = 0, **overrides) -> M3BSR:
    torch.manual_seed(seed)
    return build_model("m3bsr", {**TINY, **overrides}, spec)


def train_batch(dataset):
    return all_training_windows(dataset, TINY["max_len"])


def eval_batch(dataset, split: str = "test"):
    return evaluation_histories(dataset, TINY["max_len"], split)


def row(batch: SeqBatch, r: int) -> SeqBatch:
    return SeqBatch(items=batch.items[r : r + 1], behaviors=batch.behaviors[r : r + 1],
                    lengths=batch.lengths[r : r + 1], users=batch.users[r : r + 1])


# ---- config ----------------------------------------------------------------------------
def test_defaults_are_the_papers():
    cfg = model_config("m3bsr", {})
    assert isinstance(cfg, M3BSRConfig)
    assert (cfg.modality_steps, cfg.behavior_steps, cfg.beta_start, cfg.beta_end) == (10, 10, 0.001, 0.1)
    assert (cfg.lambda_contrast, cfg.lambda_modality, cfg.lambda_behavior, cfg.temperature) == (0.05, 0.02, 0.02, 0.3)
    assert (cfg.hidden_size, cfg.denoise, cfg.click_behaviors, cfg.favor_behaviors) == (64, "all", None, None)
    # not the paper's (it does not say): our readings, chosen on ML-100k validation (docs/m3bsr.md)
    assert (cfg.diffuse_normalized, cfg.tie_output, cfg.scale_id) == (True, True, False)
    assert (cfg.eval_start, cfg.modality_condition) == ("noise", "history")  # Eq. 8 and Eq. 9 as printed


@pytest.mark.parametrize("key, value, message", [
    ("use_behaviors", True, "use_behaviors"),
    ("modalities", ["audio"], "modalities"),
    ("denoise", "some", "denoise"),
    ("favor_behaviors", [], "favor_behaviors"),
    ("click_behaviors", [0, 0], "click_behaviors"),
    ("beta_end", 1.0, "beta_end"),
    ("modality_steps", 0, "modality_steps"),
    ("temperature", 0.0, "temperature"),
    ("num_heads", 3, "num_heads"),
    ("eval_start", "dirty", "eval_start"),
    ("eval_samples", 0, "eval_samples"),
    ("modality_condition", "future", "modality_condition"),
])
def test_bad_config_is_rejected(key, value, message):
    with pytest.raises(ConfigError, match=message):
        model_config("m3bsr", {key: value})


@pytest.mark.parametrize("name, click, favor", [
    ("m3bsr_ml100k.yaml", [0, 1, 2], [2]),  # every rating / like
    ("m3bsr_taobao.yaml", [0], [1, 2, 3]),  # pv / fav, cart, buy
    ("m3bsr_shop.yaml", [0], [1, 2]),  # view / cart, purchase
])
def test_config_files_load_with_their_behavior_mapping(name, click, favor):
    from graph_encoders.cli import FitGraphConfig

    cfg = load_config(FitGraphConfig, ROOT / "configs" / "graph" / name)
    assert cfg.model_name == "m3bsr"
    params = model_config("m3bsr", cfg.model_params)
    assert (params.click_behaviors, params.favor_behaviors) == (click, favor)
    assert (params.modality_steps, params.lambda_contrast, params.hidden_size) == (10, 0.05, 64)
    # the paper's patience 10 on ML-100k; the shop's epochs are 3 steps, so every seed model there waits 60 (as
    # MBHT's config); the Taobao head's are 4 steps and with 10 the run stopped on its untrained weights: 40
    assert cfg.train.patience == {"shop": 60, "taobao": 40}.get(name.removesuffix(".yaml").split("_")[-1], 10)


def test_views_follow_the_behavior_mapping(tiny_dataset):
    model = build(spec_of(tiny_dataset))
    assert model.click_table.tolist() == [False, True, True, False]  # padding, view, cart, buy
    assert model.favor_table.tolist() == [False, False, True, True]
    default = build(spec_of(tiny_dataset), click_behaviors=None, favor_behaviors=None)
    assert default.click_table.tolist() == [False, True, True, True]  # every behavior
    assert default.favor_table.tolist() == [False, False, False, True]  # the target (buy)
    with pytest.raises(ConfigError, match="favor_behaviors"):
        build(spec_of(tiny_dataset), favor_behaviors=[3])
    views, member, _ = model.eval().views(eval_batch(tiny_dataset))
    off_click = ~member["click"]
    assert off_click.any() and views["click"]["text"][off_click].abs().max() == 0
    assert views["favor"]["id"][~member["favor"]].abs().max() == 0
    assert (views["favor"]["id"][member["favor"]].abs().sum(-1) > 0).all()


# ---- shapes, loss, export --------------------------------------------------------------
def test_forward_shapes_and_candidate_scores(tiny_dataset):
    model = build(spec_of(tiny_dataset)).eval()
    batch = eval_batch(tiny_dataset)
    n, b = tiny_dataset.n_items, len(batch.items)
    with torch.no_grad():
        scores = model.score_all(batch)
        assert scores.shape == (b, n) and torch.isfinite(scores).all()
        candidates = torch.randint(0, n, (b, 5), generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(model.score_candidates(batch, candidates), scores.gather(1, candidates))
        assert model.encode(batch).shape == (b, TINY["max_len"], 16)
    assert (list(model.modality_denoisers) == ["text", "image"]
            and list(model.behavior_denoisers) == ["id", "text", "image"])
    assert len(model.experts) == 6  # click / favour × id, text, image


def test_loss_terms_and_loss_falls(tiny_dataset):
    model = build(spec_of(tiny_dataset), dropout=0.1)
    batch = train_batch(tiny_dataset)
    torch.manual_seed(3)
    terms = model.loss_terms(batch)
    cfg = model.config
    expected = (terms["main"] + cfg.lambda_contrast * terms["contrast"] + cfg.lambda_modality * terms["modality"]
                + cfg.lambda_behavior * terms["behavior"])
    torch.testing.assert_close(terms["total"], expected)
    assert terms["modality"] > 0.5 and terms["behavior"] > 0.5  # ε-prediction errors of untrained denoisers
    torch.manual_seed(3)
    losses = train_steps(model, batch, 30, lr=2e-2)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, losses


def test_export_is_the_input_id_table(tiny_dataset):
    model = build(spec_of(tiny_dataset))
    table = embedding_table(model, tiny_dataset)
    assert table.item.shape == (tiny_dataset.n_items, 16) and table.behavior is None
    assert torch.equal(table.item, model.items.weight[1:].detach())
    assert not torch.equal(table.item, model.output.weight.detach()[:, :16])
    assert table.metadata["model"] == "m3bsr"


# ---- determinism -----------------------------------------------------------------------
def test_same_seed_same_loss_and_weights(tiny_dataset):
    spec, batch = spec_of(tiny_dataset), train_batch(tiny_dataset)
    losses, weights = [], []
    for _ in range(2):
        model = build(spec, seed=7, dropout=0.1)
        torch.manual_seed(11)  # dropout, diffusion steps and noise
        losses.append(train_steps(model, batch, 3))
        weights.append(model.state_dict())
    assert losses[0] == losses[1]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    other = build(spec, seed=8, dropout=0.1)
    torch.manual_seed(11)
    assert train_steps(other, batch, 1)[0] != losses[0][0]


def test_eval_reverse_process_is_deterministic_and_per_user(tiny_dataset):
    spec, batch = spec_of(tiny_dataset), eval_batch(tiny_dataset)
    model = build(spec).eval()
    with torch.no_grad():
        torch.manual_seed(0)
        first = model.score_all(batch)
        torch.manual_seed(1)  # the global RNG does not matter in eval mode
        torch.testing.assert_close(model.score_all(batch), first, rtol=0, atol=0)
        # a row's noise depends on its user, not on the batch it is scored in
        for r in (0, 5):
            torch.testing.assert_close(model.score_all(row(batch, r)), first[r : r + 1], rtol=1e-5, atol=1e-6)
        other = build(spec, eval_noise_seed=1).eval()  # the seed is used: other start noise, other denoised views
        assert not torch.allclose(other.views(batch)[0]["click"]["text"], model.views(batch)[0]["click"]["text"])
        # training mode samples fresh steps and noise
        model.train()
        assert not torch.allclose(model.encode(batch), model.encode(batch))


def test_eval_samples_average_the_chains_of_consecutive_noise_seeds(tiny_dataset):
    """``eval_samples: K`` scores are the mean logits of K single chains seeded ``eval_noise_seed + k``; one
    sample is the single chain; with no noisy start (clean start, no diffusion) there is one chain to run."""
    spec, batch = spec_of(tiny_dataset), eval_batch(tiny_dataset)
    with torch.no_grad():
        singles = [build(spec, eval_samples=1, eval_noise_seed=3 + k).eval().score_all(batch) for k in range(3)]
        averaged = build(spec, eval_samples=3, eval_noise_seed=3).eval()
        torch.testing.assert_close(averaged.score_all(batch), torch.stack(singles).mean(0), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(singles[0], singles[1])  # the draws differ, so the mean is not one chain
        for r in (0, 5):  # still per user, whatever batch the row is scored in
            torch.testing.assert_close(averaged.score_all(row(batch, r)), averaged.score_all(batch)[r : r + 1],
                                       rtol=1e-5, atol=1e-6)
    assert averaged.eval_draws() == 3 and averaged.train().eval_draws() == 1
    assert build(spec, eval_samples=3, eval_start="clean").eval().eval_draws() == 1
    assert build(spec, eval_samples=3, denoise="none").eval().eval_draws() == 1


def test_denoise_none_has_no_diffusion(tiny_dataset):
    spec, batch = spec_of(tiny_dataset), train_batch(tiny_dataset)
    model = build(spec, denoise="none")
    assert len(model.modality_denoisers) == 0 and len(model.behavior_denoisers) == 0
    terms = model.loss_terms(batch)
    assert terms["modality"] == 0 and terms["behavior"] == 0
    torch.testing.assert_close(terms["total"], terms["main"] + 0.05 * terms["contrast"])
    model.train()  # without diffusion (and dropout 0) training mode is deterministic too
    torch.testing.assert_close(model.encode(batch), model.encode(batch), rtol=0, atol=0)
    partial = build(spec, denoise="behavior")
    assert len(partial.modality_denoisers) == 0 and list(partial.behavior_denoisers) == ["id", "text", "image"]
    losses = train_steps(model, batch, 20, lr=2e-2)
    assert losses[-1] < 0.6 * losses[0]


def _denoised_cosine(model: M3BSR, batch: SeqBatch) -> float:
    """Mean cosine between the clean text features and the eval-mode denoised ones (real positions)."""
    with torch.no_grad():
        clean = model._features(batch.items)["text"]
        views, _, _ = model.views(batch)
        member = model.favor_table[batch.behaviors] & batch.valid
        return torch.nn.functional.cosine_similarity(views["favor"]["text"][member], clean[member],
                                                     dim=-1).mean().item()


def test_normalized_diffusion_keeps_the_features_the_raw_one_drowns(tiny_dataset):
    """At init the features have std ~0.02 per dimension: unit-variance noise drowns them (cosine with the
    clean features near 0 after the reverse chain); diffused at unit scale, most of the signal survives."""
    spec, batch = spec_of(tiny_dataset), eval_batch(tiny_dataset)
    raw = build(spec, denoise="modality", diffuse_normalized=False).eval()
    normalized = build(spec, denoise="modality", diffuse_normalized=True).eval()
    assert abs(_denoised_cosine(raw, batch)) < 0.2
    assert _denoised_cosine(normalized, batch) > 0.5
    with torch.no_grad():  # the scale comes back: denoised norms are those of the clean features, within 2x
        clean = normalized._features(batch.items)["text"].norm(dim=-1)
        member = normalized.favor_table[batch.behaviors] & batch.valid
        ratio = normalized.views(batch)[0]["favor"]["text"].norm(dim=-1)[member] / clean[member]
        assert 0.5 < ratio.median().item() < 2.0
        first = normalized.score_all(batch)
        for r in (0, 5):  # per-position scale: a row's scores do not depend on its batch
            torch.testing.assert_close(normalized.score_all(row(batch, r)), first[r : r + 1], rtol=1e-5, atol=1e-6)
    losses = train_steps(build(spec, diffuse_normalized=True), train_batch(tiny_dataset), 30, lr=2e-2)
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5]), losses


def test_tied_output_scores_with_the_id_table(tiny_dataset):
    spec, batch = spec_of(tiny_dataset), eval_batch(tiny_dataset)
    model = build(spec, tie_output=True, eval_samples=1).eval()  # one chain: score_all reads user_representation
    with torch.no_grad():
        y = model.user_representation(batch)
        expected = y @ model.items.weight[1:].T + model.output.bias
        torch.testing.assert_close(model.score_all(batch), expected)
        assert not torch.allclose(model.score_all(batch), model.output(y))  # W is not used
        untied = build(spec, tie_output=False, eval_samples=1).eval()  # the literal reading: a separate W
        torch.testing.assert_close(untied.score_all(batch), untied.output(untied.user_representation(batch)))
    model.train()
    train = train_batch(tiny_dataset)
    model.loss(train).backward()
    assert model.output.weight.grad is None and model.output.bias.grad is not None
    losses = train_steps(build(spec, tie_output=True), train, 30, lr=2e-2)
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5]), losses


def test_scale_id_multiplies_the_id_features_by_sqrt_d(tiny_dataset):
    spec, batch = spec_of(tiny_dataset), eval_batch(tiny_dataset)
    plain, scaled = build(spec).eval(), build(spec, scale_id=True).eval()
    with torch.no_grad():
        expected = plain._features(batch.items)["id"] * plain.config.hidden_size ** 0.5
        torch.testing.assert_close(scaled._features(batch.items)["id"], expected)
        assert not torch.allclose(scaled.score_all(batch), plain.score_all(batch))
    losses = train_steps(build(spec, scale_id=True), train_batch(tiny_dataset), 30, lr=2e-2)
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5]), losses


def test_clean_eval_start_runs_the_chain_from_the_clean_features(tiny_dataset):
    """``eval_start: clean``: no start noise, so the eval scores do not depend on ``eval_noise_seed``; the chain
    still runs (the denoised views differ from the clean features) and keeps more of them than the noisy start."""
    spec, batch = spec_of(tiny_dataset), eval_batch(tiny_dataset)
    clean = build(spec, eval_start="clean").eval()
    other_seed = build(spec, eval_start="clean", eval_noise_seed=7).eval()
    noisy = build(spec).eval()
    with torch.no_grad():
        torch.testing.assert_close(other_seed.score_all(batch), clean.score_all(batch), rtol=0, atol=0)
        assert not torch.allclose(noisy.score_all(batch), clean.score_all(batch))
        features = clean._features(batch.items)["text"]
        member = clean.favor_table[batch.behaviors] & batch.valid
        assert not torch.allclose(clean.views(batch)[0]["favor"]["text"][member], features[member])
    only_modality = {"denoise": "modality"}
    assert _denoised_cosine(build(spec, eval_start="clean", **only_modality).eval(), batch) > \
        _denoised_cosine(build(spec, **only_modality).eval(), batch)
    losses = train_steps(build(spec, eval_start="clean"), train_batch(tiny_dataset), 30, lr=2e-2)
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5]), losses


def test_own_id_condition_reads_only_the_items_own_id(tiny_dataset):
    """``modality_condition: own``: the denoised text feature at a position changes with its own item's ID
    embedding and not with an earlier item's; with ``history`` the earlier item's ID changes it."""
    spec, batch = spec_of(tiny_dataset), eval_batch(tiny_dataset)
    models = {c: build(spec, denoise="modality", modality_condition=c).eval() for c in ("own", "history")}
    r, last = 0, batch.items.shape[1] - 1
    earlier = batch.items[r, last - 1].item()
    assert batch.valid[r, last - 1] and earlier != batch.items[r, last].item()
    view = "click" if models["own"].click_table[batch.behaviors[r, last]] else "favor"  # a view holding it
    denoised = {}
    for condition, model in models.items():
        with torch.no_grad():
            before = model.views(row(batch, r))[0][view]["text"][0, last].clone()
            model.items.weight[earlier] += 1.0  # move the earlier item's ID embedding only
            after = model.views(row(batch, r))[0][view]["text"][0, last]
            denoised[condition] = (before, after)
            model.items.weight[batch.items[r, last]] += 1.0  # then the item's own
            own_moved = model.views(row(batch, r))[0][view]["text"][0, last]
            assert not torch.allclose(own_moved, after)
    torch.testing.assert_close(*denoised["own"], rtol=0, atol=0)
    assert not torch.allclose(*denoised["history"])
    losses = train_steps(build(spec, modality_condition="own"), train_batch(tiny_dataset), 30, lr=2e-2)
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5]), losses


# ---- no leak ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_a_later_item_does_not_change_earlier_positions(tiny_dataset, mode):
    """Every attention (denoisers, views, experts) reads positions <= t only, in both modes."""
    model = build(spec_of(tiny_dataset))
    model.train(mode == "train")
    batch = eval_batch(tiny_dataset)
    changed = replace(batch, items=batch.items.clone(), behaviors=batch.behaviors.clone())
    changed.items[:, -1] = (changed.items[:, -1] % tiny_dataset.n_items) + 1
    changed.behaviors[:, -1] = (changed.behaviors[:, -1] % 3) + 1
    with torch.no_grad():
        torch.manual_seed(5)
        before = model.encode(batch)
        torch.manual_seed(5)
        after = model.encode(changed)
    torch.testing.assert_close(after[:, :-1], before[:, :-1], rtol=0, atol=1e-5)
    assert not torch.allclose(after[:, -1], before[:, -1])


def test_scores_do_not_depend_on_items_after_the_history_cut(tiny_dataset):
    """Changing every item after the validation target leaves the validation scores unchanged;
    changing the item just before the target changes them (the test can fail)."""
    model = build(spec_of(tiny_dataset)).eval()

    def altered(start: int, stop: int | None):
        sequences = []
        for seq in tiny_dataset.sequences:
            items = seq.items.copy()
            part = slice(seq.valid_pos + start, None if stop is None else seq.valid_pos + stop)
            items[part] = (items[part] + 11) % tiny_dataset.n_items
            sequences.append(replace(seq, items=items))
        return replace(tiny_dataset, sequences=sequences)

    with torch.no_grad():
        reference = model.score_all(eval_batch(tiny_dataset, "valid"))
        future = model.score_all(eval_batch(altered(1, None), "valid"))
        past = model.score_all(eval_batch(altered(-1, 0), "valid"))
    torch.testing.assert_close(future, reference, rtol=0, atol=0)
    assert not torch.allclose(past, reference)


# ---- modalities ------------------------------------------------------------------------
def test_missing_modality_is_dropped(tiny_dataset):
    model = build(spec_of(tiny_dataset, image=False)).eval()
    assert model.modality_names == ["id", "text"]
    assert not any("image" in name for name in model.state_dict())
    assert model.view_inputs["click"].in_features == 2 * 16 and len(model.experts) == 4
    id_only = build(spec_of(tiny_dataset, text=False, image=False))  # ID modality alone still trains
    assert id_only.modality_names == ["id"] and len(id_only.modality_denoisers) == 0
    assert torch.isfinite(id_only.loss(train_batch(tiny_dataset)))
    batch = eval_batch(tiny_dataset)
    with torch.no_grad():
        first = model.score_all(batch)
        second = build(spec_of(tiny_dataset, image=False, seed=1)).eval().score_all(batch)
    assert not torch.allclose(first, second)  # the text table reaches the scores


def test_fit_on_the_tiny_dataset_beats_chance():
    """A few epochs through the project's trainer and evaluator."""
    dataset = make_tiny_dataset(n_users=40)
    model = build(spec_of(dataset), dropout=0.1)
    assert fit_and_full_hr5(model, dataset, TINY["max_len"], epochs=12) > 3 * 5 / dataset.n_items  # chance is 5/30
