"""DataConfig: every shipped config loads; errors name the key; ${VAR} expansion."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrec.config import ConfigError
from llmrec.data import load_data_config, prepare

CONFIGS = sorted((Path(__file__).parents[2] / "configs" / "data").glob("*.yaml"))


def test_the_shipped_configs_exist():
    assert {p.name for p in CONFIGS} >= {"ml100k.yaml", "taobao.yaml", "shop.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_documents_its_command(path):
    cfg = load_data_config(path)
    assert cfg.target_behavior in cfg.behaviors
    text = path.read_text()
    assert text.startswith("#") and "llmrec data --config configs/data/" + path.name in text
    for line in text.splitlines():  # every key is commented, nested ones too
        if line.strip() and not line.lstrip().startswith("#") and ":" in line:
            assert "#" in line, f"{path.name}: uncommented key line {line!r}"


def test_source_defaults():
    ml = load_data_config(None, ["name=m", "source=ml100k", "path=/x"])
    assert ml.behaviors == ["dislike", "neutral", "like"] and ml.target_behavior == "like"
    assert ml.rating_behaviors == {1: "dislike", 2: "dislike", 3: "neutral", 4: "like", 5: "like"}
    tb = load_data_config(None, ["name=t", "source=taobao", "path=/x"])
    assert tb.behaviors == ["pv", "fav", "cart", "buy"] and tb.target_behavior == "buy"
    assert (tb.k_core, tb.k_core_behavior, tb.max_history, tb.min_target_interactions) == (5, "all", 50, 2)


@pytest.mark.parametrize("overrides, message", [
    (["source=csv", "path=/x"], "behaviors and target_behavior are required"),
    (["source=ml100k", "path=/x", "target_behavior=buy"], "target_behavior: 'buy' is not in behaviors"),
    (["source=ml100k"], "path: required"),
    (["source=ml100k", "path=/x", "columns={user: u}"], "columns: only used by the generic sources"),
    (["source=ml100k", "path=/x", "min_target_interactions=1"], "min_target_interactions: 1 must be >= 2"),
    (["source=ml100k", "path=/x", "k_core_behavior=likes"], "k_core_behavior: 'likes' is not allowed"),
    (["source=ml100k", "path=/x", "candidates=[{splits: [dev]}]"], "candidates[0]: splits: ['dev']"),
    (["source=ml100k", "path=/x", "rating_behaviors={5: love}"], "rating_behaviors.5: 'love' is not in behaviors"),
    (["source=ml100k", "path=/x", "kcore=3"], "unknown config key 'kcore'"),
    (["source=mnist", "path=/x"], "source: 'mnist' is not allowed"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_data_config(None, ["name=x", *overrides])
    assert message in str(err.value)


def test_unset_environment_variable_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMREC_DATA_DIR", raising=False)
    cfg = load_data_config(None, ["name=m", "source=ml100k", "path=${LLMREC_DATA_DIR}/ml-100k",
                                  f"cache_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=(r"path: .* uses \$\{LLMREC_DATA_DIR\} but the environment variable "
                                           r"LLMREC_DATA_DIR is not set")):
        prepare(cfg)
    monkeypatch.setenv("LLMREC_DATA_DIR", str(tmp_path))
    assert cfg.resolve_path("path") == tmp_path / "ml-100k"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_prepares(path, tmp_path, monkeypatch):
    cfg = load_data_config(path, [f"cache_dir={tmp_path}"])
    if "${LLMREC_DATA_DIR}" in (cfg.path or ""):
        import os

        if not os.environ.get("LLMREC_DATA_DIR"):
            pytest.skip("LLMREC_DATA_DIR is not set: the config reads a real dataset")
    if cfg.source == "synthetic":  # the full-size shop is the synthetic tests' business; keep this one fast
        cfg = load_data_config(path, [f"cache_dir={tmp_path}", "synthetic.n_users=40", "synthetic.image_size=16"])
    ds = prepare(cfg)
    assert ds.n_users > 0 and all(len(ds.samples[s]) > 0 for s in ("valid", "test"))
    for spec in cfg.candidates:
        for split in spec.splits:
            assert (ds.root / "candidates" / f"{split}-{spec.sampler}-n{spec.size}-seed{spec.seed}.arrow").is_file()
