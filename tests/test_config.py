"""The typed config system: YAML + dotted overrides, errors that name the key."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from llmrec.config import ConfigError, apply_overrides, from_dict, load_config, save_config, to_dict


@dataclass
class Inner:
    r: int = 8
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    dropout: float = 0.05


@dataclass
class Outer:
    name: str = "x"
    mode: Literal["easy", "hard"] = "easy"
    path: Path | None = None
    inner: Inner = field(default_factory=Inner)

    def validate(self) -> None:
        if self.inner.r <= 0:
            raise ConfigError("inner.r must be positive")


def test_defaults_and_nested_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("name: demo\ninner:\n  r: 4\n")
    cfg = load_config(Outer, cfg_file, ["inner.dropout=0.1", "mode=hard", "inner.targets=[a, b, c]"])
    assert cfg.name == "demo" and cfg.mode == "hard"
    assert cfg.inner == Inner(r=4, targets=["a", "b", "c"], dropout=0.1)
    assert isinstance(cfg.inner.dropout, float)


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert from_dict(Inner, {"dropout": 0}).dropout == 0.0
    with pytest.raises(ConfigError, match=r"inner\.r: expected an integer"):
        from_dict(Outer, {"inner": {"r": 2.5}})


def test_unknown_key_names_dotted_key_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config(Outer, None, ["inner.rank=16"])
    msg = str(err.value)
    assert "inner.rank" in msg and "'r'" in msg and "'dropout'" in msg


def test_literal_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"mode: 'medium' is not allowed; expected one of \['easy', 'hard'\]"):
        from_dict(Outer, {"mode": "medium"})


def test_bool_is_not_an_int_and_strings_are_not_numbers():
    with pytest.raises(ConfigError, match="inner.r"):
        from_dict(Outer, {"inner": {"r": True}})
    with pytest.raises(ConfigError, match="inner.dropout"):
        from_dict(Outer, {"inner": {"dropout": "high"}})


def test_validate_hook_runs(tmp_path):
    with pytest.raises(ConfigError, match="inner.r must be positive"):
        from_dict(Outer, {"inner": {"r": 0}})


def test_optional_path_and_roundtrip(tmp_path):
    cfg = from_dict(Outer, {"path": "runs/a"})
    assert cfg.path == Path("runs/a")
    out = tmp_path / "saved.yaml"
    save_config(cfg, out)
    assert load_config(Outer, out) == cfg
    assert to_dict(cfg)["path"] == "runs/a"


def test_bad_override_syntax_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["inner.r"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(Outer, bad)


def test_files_layer_in_order_sections_merge_values_replace(tmp_path):
    base, profile = tmp_path / "row.yaml", tmp_path / "profile.yaml"
    base.write_text("name: row\nmode: hard\ninner:\n  r: 4\n  targets: [a, b]\n")
    profile.write_text("name: gpu\ninner:\n  targets: [c]\n  dropout: 0.2\n")
    cfg = load_config(Outer, [base, profile], ["inner.r=16"])
    # the profile's scalar and list replace, the row's other keys survive the section merge, overrides come last
    assert cfg == Outer(name="gpu", mode="hard", inner=Inner(r=16, targets=["c"], dropout=0.2))
    assert load_config(Outer, [profile, base]).name == "row"  # order decides
    assert load_config(Outer, [base]) == load_config(Outer, base)


def test_layered_error_names_every_file(tmp_path):
    base, profile = tmp_path / "row.yaml", tmp_path / "profile.yaml"
    base.write_text("name: row\n")
    profile.write_text("inner:\n  rank: 4\n")
    with pytest.raises(ConfigError, match=r"row\.yaml \+ .*profile\.yaml: unknown config key 'inner\.rank'"):
        load_config(Outer, [base, profile])
