"""``source: llara``: LLaRA's benchmark pickles (data/llara-ref) import with LLaRA's rules; odd files are refused."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from graph_encoders.base import DatasetSpec, build_model
from graph_encoders.batching import SequenceBatcher
from graph_encoders.evaluation import CandidateProtocol, EvalConfig, evaluate
from graph_encoders.trainer import seed_everything
from llmrec.data import DataError, load_candidates, load_data_config, prepare
from llmrec.tmf.prompts.render import PromptConfig, PromptRenderer, render_sample

REF = Path(os.environ.get("LLMREC_DATA_DIR", "/nonexistent")) / "llara-ref"
pytestmark = pytest.mark.skipif(not (REF / "SOURCE.md").is_file(), reason="needs $LLMREC_DATA_DIR/llara-ref")
ROOT = Path(__file__).resolve().parents[2]


def llara_config(name: str, cache: Path, *overrides: str):
    """The shipped configs/data/llara_<name>.yaml, cached under ``cache``."""
    return load_data_config(ROOT / "configs" / "data" / f"llara_{name}.yaml", [f"cache_dir={cache}", *overrides])


@pytest.fixture(scope="module")
def lastfm(tmp_path_factory):
    return prepare(llara_config("lastfm", tmp_path_factory.mktemp("llara")))


def test_lastfm_counts_names_and_frozen_candidates(lastfm):
    ds = lastfm
    assert {s: len(t) for s, t in ds.samples.items()} == {"train": 47_872, "valid": 122, "test": 122}  # SOURCE.md
    loader = ds.stats["loader"]
    assert loader["train_rows_in_file"] == 50_800 and loader["train_rows_len_seq_below_3"] == 2_928
    assert loader["valid_rows_len_seq_below_3"] == 0 and loader["test_rows_len_seq_below_3"] == 0
    assert ds.stats["removed"]["rows_dropped_by_loader"] == 2_928
    assert ds.n_items == 4_606 and ds.item_ids[:3] == ["0", "1", "2"]
    first = ds.samples["valid"][0]  # Val_data.df row 1: seq [496, 497, 498, pad...], next 499
    assert [ds.item_ids[i] for i in first["history_items"]] == ["496", "497", "498"]
    assert ds.item_ids[first["target"]] == "499"
    assert ds.item_titles()[:2] == ["Morcheeba", "Enigma"]
    cands = load_candidates(ds, "test", "uniform", 20, 0)  # LLaRA's protocol: 20 candidates, frozen at preparation
    assert cands.path is not None and cands.path.is_file() and cands.items.shape == (122, 20)
    rows = ds.samples["test"].to_list()
    for row, items in zip(rows, cands.items, strict=True):
        assert list(items).count(row["target"]) == 1 and not set(items) & set(row["history_items"])


@pytest.mark.parametrize(("name", "params"), [
    ("sasrec", {"hidden_size": 16, "max_len": 10, "num_layers": 1}),
    ("mbht", {"hidden_size": 16, "max_len": 10, "num_layers": 1, "inner_size": 32, "pool_sizes": [2, 5]}),
])
def test_steps_on_lastfm_rows_and_scores_test_with_20_candidates(lastfm, name, params):
    seed_everything(0)
    model = build_model(name, params, DatasetSpec.from_dataset(lastfm))
    batcher = SequenceBatcher(lastfm, 10)
    windows = batcher.training_windows("rows")
    assert len(windows.rows) == 47_872
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = batcher.training_batch(windows.rows[:256], from_rows=True)
    losses = []
    for _ in range(4):
        loss = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    metrics = evaluate(model, batcher, "test", EvalConfig([CandidateProtocol("llara20", "uniform", 20, 0, [1, 5])],
                                                           full_ranking=False), progress=False)
    assert set(metrics) == {f"llara20/{m}@{k}" for m in ("HR", "NDCG", "MRR") for k in (1, 5)}


def test_lastfm_rows_render_as_prompts_with_their_frozen_candidates(lastfm):
    # the shipped domains file: `domain: auto` finds its single-behavior "music" domain (listen)
    renderer = PromptRenderer(PromptConfig(templates=str(ROOT / "prompts/tmf.yaml"),
                                           domains=str(ROOT / "prompts/domains.yaml")), lastfm)
    assert "listened to" in renderer.render_sample(lastfm.samples["valid"][0], load_candidates(
        lastfm, "valid", "uniform", 20, 0).items[0], "easy").text()
    prompt = render_sample(renderer, lastfm, "valid", 0, load_candidates(lastfm, "valid", "uniform", 20, 0), "easy")
    text = "".join(segment for segment in prompt.segments if isinstance(segment, str))
    names = [lastfm.item_titles()[lastfm.item_ids.index(i)] for i in ("496", "497", "498")]
    assert all(name in text for name in names) and prompt.answer == lastfm.item_titles()[lastfm.item_ids.index("499")]
    assert len(prompt.candidates) == 20


@pytest.mark.parametrize("name, valid, test, dropped",
                         [("movielens", 94, 95, (0, 0)), ("steam", 1_184, 1_186, (10, 8))])
def test_movielens_and_steam_import_for_evaluation(tmp_path, name, valid, test, dropped):
    ds = prepare(llara_config(name, tmp_path))
    assert {s: len(t) for s, t in ds.samples.items()} == {"train": 0, "valid": valid, "test": test}
    assert (ds.stats["loader"]["valid_rows_len_seq_below_3"],
            ds.stats["loader"]["test_rows_len_seq_below_3"]) == dropped
    assert load_candidates(ds, "test", "uniform", 20, 0).items.shape == (test, 20)
    if name == "movielens":  # (item, rating) tuples; LLaRA id k is MovieLens id k + 1 (u.item line k + 1)
        assert ds.item_titles()[0] == "Toy Story (1995)" and ds.catalog["movielens_id"].iloc[0] == "1"
        assert ds.stats["loader"]["test_target_rating_5"] == 25
        assert ds.item_ids[ds.samples["test"][0]["target"]] == "3"  # Test_data.df row 1: next (3, 4)


def _copy(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    shutil.copytree(REF / name, folder)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


def test_missing_train_file_says_what_to_do(tmp_path):
    with pytest.raises(DataError,
                       match=r"train_data.df: file not found.*no movielens train file.*sha256.*llara_splits"):
        prepare(llara_config("movielens", tmp_path, "llara_splits=[train, valid, test]"))


def test_a_user_supplied_train_file_is_checked_against_the_official_sha256(tmp_path):
    folder = _copy("steam", tmp_path)
    shutil.copy(folder / "Val_data.df", folder / "train_data.df")  # not the official train file
    cfg = llara_config("steam", tmp_path, f"path={folder}", "llara_splits=[train, valid, test]")
    with pytest.raises(DataError, match=r"train_data.df: sha256 .* differs from the official steam train_data.df "
                                        r"\(90f8e2ec.*verify_sha256: false"):
        prepare(cfg)
    ds = prepare(llara_config("steam", tmp_path, f"path={folder}", "llara_splits=[train, valid, test]",
                              "verify_sha256=false"))
    assert len(ds.samples["train"]) == 1_184


@pytest.mark.parametrize("frame, message", [
    (pd.DataFrame({"seq": [[1] * 10], "len_seq": [3], "next": [2], "user": [0]}),
     r"columns \['len_seq', 'next', 'seq', 'user'\]; LLaRA's files have exactly"),
    (pd.DataFrame({"seq": [[1] * 10], "len_seq": [3.0], "next": [2]}), r"len_seq has dtype float64, expected integers"),
    (pd.DataFrame({"seq": [[1, 2, 3] + [4606] * 6], "len_seq": [3], "next": [2]}),
     r"row 1: `seq` is .*expected a list of 10"),
    (pd.DataFrame({"seq": [[1, 2, 4606, 4606] + [4606] * 6], "len_seq": [3], "next": [2]}),
     r"row 1: `seq` .* does not hold len_seq=3 items followed by padding 4606"),
])
def test_unexpected_layouts_are_refused(tmp_path, frame, message):
    folder = _copy("lastfm", tmp_path)
    (folder / "Val_data.df").unlink()
    frame.to_pickle(folder / "Val_data.df")
    with pytest.raises(DataError, match=message):
        prepare(llara_config("lastfm", tmp_path, f"path={folder}", "llara_splits=[valid]", "verify_sha256=false"))


def test_a_pickle_of_anything_else_is_refused_before_it_is_built(tmp_path):
    folder = _copy("lastfm", tmp_path)
    (folder / "Test_data.df").unlink()
    (folder / "Test_data.df").write_bytes(pickle.dumps({"seq": [1, 2, 3], "f": print}))
    with pytest.raises(DataError, match=r"Test_data.df: not a pickled pandas DataFrame of LLaRA's layout "
                                        r"\(refers to builtins.print\); refusing to load it"):
        prepare(llara_config("lastfm", tmp_path, f"path={folder}", "llara_splits=[test]", "verify_sha256=false"))
