"""DreamRec (graph_encoders/dreamrec.py) on tiny shapes, with random text / image feature tables.

Real layers, real Adam, real batches from SequenceBatcher over the hand-built dataset of
conftest.py; nothing is mocked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from graph_encoders.base import DatasetSpec, SeqBatch, build_model, model_config
from graph_encoders.batching import SequenceBatcher
from graph_encoders.cli import FitGraphConfig, dataset_spec
from graph_encoders.dreamrec import DreamRec, DreamRecConfig
from graph_encoders.export import embedding_table
from graph_encoders.layers import LearnedQueryAttention
from llmrec.config import ConfigError, load_config

from .conftest import fixed_mask_loss

ROOT = Path(__file__).resolve().parents[2]
TINY = {"hidden_size": 16, "max_len": 10, "inner_size": 32, "low_rank": 3, "pool_sizes": [3, 7], "semantic_top_k": 2}


def feature_tables(dataset, seed: int = 7) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"text_table": torch.randn(dataset.n_items, 12, generator=generator),
            "image_table": torch.randn(dataset.n_items, 6, generator=generator)}


def build(dataset, seed: int = 0, tables: dict | None = None, **overrides) -> DreamRec:
    tables = feature_tables(dataset) if tables is None else tables
    torch.manual_seed(seed)
    return build_model("dreamrec", {**TINY, **overrides}, DatasetSpec.from_dataset(dataset, **tables))


def train_batch(dataset, n: int = 16) -> SeqBatch:
    batcher = SequenceBatcher(dataset, TINY["max_len"])
    return batcher.training_batch(batcher.training_windows("all", "all").rows[:n], "all")


def eval_batch(dataset, split: str = "valid") -> SeqBatch:
    batcher = SequenceBatcher(dataset, TINY["max_len"])
    return batcher.history_batch(*batcher.evaluation_rows(split))


# ---- config -----------------------------------------------------------------------------
def test_defaults_extend_mbht():
    cfg = model_config("dreamrec", {})
    assert isinstance(cfg, DreamRecConfig)
    assert cfg.modalities == ["text", "image"] and cfg.behavior_loss_weight == 0.0 and cfg.mask_ratio == 0.2


@pytest.mark.parametrize("key, value, message", [
    ("modalities", ["audio"], "modalities"),
    ("modalities", ["text", "text"], "modalities"),
    ("modality_heads", 3, "modality_heads"),
    ("behavior_loss_weight", -1.0, "behavior_loss_weight"),
    ("modality_dropout", 1.0, "modality_dropout"),
    ("projection_init", "xavier", "projection_init"),
    ("use_behaviors", False, "use_behaviors"),
])
def test_bad_config_is_rejected(key, value, message):
    with pytest.raises(ConfigError, match=message):
        model_config("dreamrec", {key: value})


@pytest.mark.parametrize("dataset", ["ml100k", "taobao", "shop"])
def test_config_files_load(dataset):
    cfg = load_config(FitGraphConfig, ROOT / "configs" / "graph" / f"dreamrec_{dataset}.yaml")
    assert cfg.model_name == "dreamrec" and (ROOT / cfg.encode).is_file()
    params = model_config("dreamrec", cfg.model_params)
    assert params.hidden_size == 64 and params.behavior_loss_weight == 0.0


# ---- forward / loss / export --------------------------------------------------------------
def test_forward_shapes_and_scores(tiny_dataset):
    model = build(tiny_dataset).eval()
    batch = eval_batch(tiny_dataset)
    assert model.encode(batch).shape == (len(batch.items), 10, 16)
    scores = model.score_all(batch)
    assert scores.shape == (len(batch.items), tiny_dataset.n_items) and torch.isfinite(scores).all()
    candidates = torch.stack([torch.randperm(tiny_dataset.n_items)[:5] for _ in range(len(batch.items))])
    torch.testing.assert_close(model.score_candidates(batch, candidates), scores.gather(1, candidates))


def test_loss_falls_over_a_few_steps(tiny_dataset):
    model = build(tiny_dataset, dropout=0.1, attention_dropout=0.1)
    batch = train_batch(tiny_dataset)
    before = fixed_mask_loss(model, batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        optimizer.zero_grad()
        model.loss(batch).backward()
        optimizer.step()
    after = fixed_mask_loss(model, batch)
    assert after < before - 0.5, (before, after)


def test_every_parameter_gets_a_gradient(tiny_dataset):
    model = build(tiny_dataset)
    model.loss(train_batch(tiny_dataset, n=64)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == [], missing


def test_user_embedding_and_branch_dropout_are_options(tiny_dataset):
    """Ablation knobs: without E_u (Eq. 7) the scores do not depend on the user; the branch dropout is its own."""
    import dataclasses

    def branch_dropouts(model):
        return {m.p for m in model.modality_encoders.modules() if isinstance(m, torch.nn.Dropout)}

    default = build(tiny_dataset).eval()
    no_user = build(tiny_dataset, user_embedding=False, modality_dropout=0.05).eval()
    assert branch_dropouts(default) == {default.config.dropout} and branch_dropouts(no_user) == {0.05}
    assert no_user.users is None and not any(n.startswith("users.") for n in no_user.state_dict())
    batch = eval_batch(tiny_dataset)
    other_users = dataclasses.replace(batch, users=batch.users.flip(0))
    torch.testing.assert_close(no_user.score_all(batch), no_user.score_all(other_users), rtol=0, atol=0)
    assert not torch.equal(default.score_all(batch), default.score_all(other_users))


def test_input_projection_is_an_option(tiny_dataset):
    """Without Eq. 22 there is no W_proj and the Transformer's input is the plain sum S (+ E_b), not ReLU(S W + b)."""
    plain = build(tiny_dataset, input_projection=False).eval()
    assert plain.projection is None and not any(n.startswith("projection.") for n in plain.state_dict())
    batch = eval_batch(tiny_dataset)
    items, behaviors = plain.window(*plain.prediction_inputs(batch))
    inputs = plain.dream_inputs(items, behaviors, batch.users)
    emb = plain.embedding
    positions = emb.positions(torch.arange(emb.max_len - items.shape[1], emb.max_len))
    summed = (emb.items(items) + positions[None] + plain.users(batch.users)[:, None]
              + plain.modality_vector(items)[:, None])
    torch.testing.assert_close(inputs, emb.norm(summed + emb.behaviors(behaviors)))
    assert torch.isfinite(plain.score_all(batch)).all()


def test_projection_init_sets_the_scale_of_eq22(tiny_dataset):
    """At init, ``ReLU(S W_proj + b)`` is ~20x smaller than ``S`` with the 0.02 normal init of W_proj (d = 16 here)
    and keeps ``S``'s scale with the He init; the option touches W_proj alone."""
    batch = eval_batch(tiny_dataset)
    ratios = {}
    for init in ("normal", "kaiming"):
        model = build(tiny_dataset, projection_init=init).eval()
        items, _ = model.window(*model.prediction_inputs(batch))
        emb = model.embedding
        positions = emb.positions(torch.arange(emb.max_len - items.shape[1], emb.max_len))
        with torch.no_grad():
            summed = emb.items(items) + positions[None] + model.users(batch.users)[:, None] + \
                model.modality_vector(items)[:, None]
            ratios[init] = (torch.relu(model.projection(summed)).square().mean() / summed.square().mean()).sqrt().item()
    assert ratios["normal"] < 0.15 and 0.6 < ratios["kaiming"] < 1.6, ratios
    normal, kaiming = build(tiny_dataset).state_dict(), build(tiny_dataset, projection_init="kaiming").state_dict()
    assert [k for k in normal if not torch.equal(normal[k], kaiming[k])] == ["projection.weight"]


def test_export_shapes(tiny_dataset):
    table = embedding_table(build(tiny_dataset), tiny_dataset)
    assert table.item.shape == (tiny_dataset.n_items, 16) and table.behavior.shape == (tiny_dataset.n_behaviors, 16)
    assert table.metadata["model"] == "dreamrec"


def test_determinism_with_a_fixed_seed(tiny_dataset):
    a, b, c = build(tiny_dataset, seed=3), build(tiny_dataset, seed=3), build(tiny_dataset, seed=4)
    state_a, state_b = a.state_dict(), b.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not torch.equal(state_a["users.weight"], c.state_dict()["users.weight"])
    batch = train_batch(tiny_dataset)
    torch.manual_seed(5)
    loss_a = a.loss(batch)
    torch.manual_seed(5)
    assert loss_a.item() == b.loss(batch).item()


def test_features_are_not_saved_with_the_weights(tiny_dataset):
    keys = build(tiny_dataset).state_dict().keys()
    assert not [k for k in keys if k.endswith(("_features", "_present"))]


# ---- no leak -----------------------------------------------------------------------------
def _with_rows_changed(tables: dict, items: list[int]) -> dict:
    changed = {k: v.clone() for k, v in tables.items()}
    for v in changed.values():
        v[items] = torch.randn(len(items), v.shape[1]) * 5
    return changed


def test_masked_items_features_do_not_reach_the_training_states(tiny_dataset):
    tables = feature_tables(tiny_dataset)
    batch = train_batch(tiny_dataset)
    model = build(tiny_dataset, tables=tables).eval()
    torch.manual_seed(11)
    inputs, behaviors, labels, masked = model.cloze_inputs(batch)
    visible = {int(i) - 1 for i in inputs[(inputs > 0) & (inputs != model.mask_id)].tolist()}  # 0-based items
    hidden_only = sorted({int(i) - 1 for i in labels[masked].tolist()} - visible)  # masked, visible nowhere
    assert hidden_only, "the fixture should mask some item that is not visible elsewhere in the batch"
    with torch.no_grad():
        reference = model.encode_dream(inputs, behaviors, batch.users)
        leaked = build(tiny_dataset, tables=_with_rows_changed(tables, hidden_only)).eval()
        torch.testing.assert_close(leaked.encode_dream(inputs, behaviors, batch.users), reference, rtol=0, atol=0)
        # the test can fail: the features of a visible item do reach the states
        seen = build(tiny_dataset, tables=_with_rows_changed(tables, [min(visible)])).eval()
        assert not torch.allclose(seen.encode_dream(inputs, behaviors, batch.users), reference)


def test_the_dream_tokens_item_features_do_not_change_the_scores(tiny_dataset):
    tables = feature_tables(tiny_dataset)
    batch = eval_batch(tiny_dataset, "test")
    reference_model = build(tiny_dataset, tables=tables).eval()
    rows = [r for r in range(len(batch.items)) if not (batch.items[r] == batch.targets[r] + 1).any()][:4]
    assert rows, "the fixture should have test rows whose target is not in their history"
    for r in rows:  # rows are scored independently: change only this row's target's features
        row = SeqBatch(items=batch.items[r : r + 1], behaviors=batch.behaviors[r : r + 1],
                       lengths=batch.lengths[r : r + 1], users=batch.users[r : r + 1], targets=batch.targets[r : r + 1])
        changed = build(tiny_dataset, tables=_with_rows_changed(tables, [int(batch.targets[r])])).eval()
        with torch.no_grad():
            torch.testing.assert_close(changed.score_all(row), reference_model.score_all(row), rtol=0, atol=0)
            # and the test can fail: the features of the newest history item do change the scores
            newest = build(tiny_dataset, tables=_with_rows_changed(tables, [int(row.items[0, -1]) - 1])).eval()
            assert not torch.allclose(newest.score_all(row), reference_model.score_all(row))


# ---- missing modalities ------------------------------------------------------------------
def test_a_missing_modality_drops_its_branch(tiny_dataset):
    text_only = {"text_table": feature_tables(tiny_dataset)["text_table"]}
    model = build(tiny_dataset, tables=text_only)
    assert model.branches == ["text"] and list(model.modality_encoders) == ["text"]
    assert model.cross_attention.key.in_features == 16  # no zero image block in the concatenation (Eq. 16)
    both = build(tiny_dataset)
    assert both.cross_attention.key.in_features == 32
    scores = model.eval().score_all(eval_batch(tiny_dataset))
    assert torch.isfinite(scores).all()


def test_modalities_key_switches_a_branch_off(tiny_dataset):
    model = build(tiny_dataset, modalities=["image"])
    assert model.branches == ["image"] and not hasattr(model, "text_features")


def test_no_table_at_all_is_an_error(tiny_dataset):
    with pytest.raises(ValueError, match="encode"):
        build(tiny_dataset, tables={})


def test_learned_query_attention_ignores_invisible_keys():
    torch.manual_seed(0)
    pool = LearnedQueryAttention(4, 8)
    keys = torch.randn(2, 5, 4)
    visible = torch.tensor([[True, False, True, False, False], [False] * 5])
    out = pool(keys, visible)
    keys2 = keys.clone()
    keys2[0, 1] = 100.0
    keys2[1] = 7.0
    torch.testing.assert_close(pool(keys2, visible), out)
    assert torch.equal(out[1], torch.zeros(8))  # nothing visible: zero vector, not NaN


def test_behavior_head_is_an_option(tiny_dataset):
    batch = train_batch(tiny_dataset)
    plain = fixed_mask_loss(build(tiny_dataset), batch)
    with_head = fixed_mask_loss(build(tiny_dataset, behavior_loss_weight=1.0), batch)
    assert with_head > plain + 0.1  # the added behavior cross-entropy (3 behaviors: about log 3 untrained)


# ---- fit-graph: the encode key -----------------------------------------------------------
def test_fit_graph_names_the_encode_key_when_tables_are_missing(tiny_dataset):
    cfg = load_config(FitGraphConfig, None, ["data=unused.yaml", "model={name: dreamrec}"])
    with pytest.raises(ConfigError, match="encode"):
        dataset_spec(cfg, tiny_dataset)
    plain = load_config(FitGraphConfig, None, ["data=unused.yaml", "model={name: mbht}"])
    spec = dataset_spec(plain, tiny_dataset)  # models without modality inputs need no encode config
    assert spec.text_table is None and spec.n_users == tiny_dataset.n_users
