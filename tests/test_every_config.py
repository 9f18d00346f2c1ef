"""Every shipped YAML config loads into its typed dataclass and names its launch command.

One place that walks ``configs/``: a new config folder without a loader here fails the
last test, so no config file can go unchecked.
"""

from pathlib import Path

import pytest

from llmrec.config import flatten, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def _load_data(path):
    from llmrec.data import load_data_config

    return load_data_config(path)


def _load_encode(path):
    from llmrec.encoders.config import load_encode_config

    return load_encode_config(path)


def _load_graph(path):
    from graph_encoders.cli import FitGraphConfig

    return load_config(FitGraphConfig, path)


def _load_infer(path):
    from llmrec.eval.infer import load_infer_config

    return load_infer_config(path)


def _load_recipe(path):
    from llmrec.train.config import load_train_config

    return load_train_config(path)


def _load_pipeline(path):
    from llmrec.pipeline.run import PipelineConfig

    return load_config(PipelineConfig, path)


def _load_profile(path):
    """A hardware profile is a partial recipe: it loads layered over a full row."""
    return _load_recipe_layers(CONFIGS / "ablations/tmf_full_ml100k.yaml", path)


def _load_recipe_layers(*paths):
    from llmrec.train.config import load_train_config

    return load_train_config(list(paths))


LOADERS = {"data": _load_data, "encode": _load_encode, "graph": _load_graph, "infer": _load_infer,
           "ablations": _load_recipe, "baselines": _load_recipe, "profiles": _load_profile}
YAML_FILES = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "accelerate")


def _loader_for(path: Path):
    if path.parent.name in LOADERS:
        return LOADERS[path.parent.name]
    if path.parent == CONFIGS and path.name.startswith("tmf_"):
        return _load_recipe
    if path == CONFIGS / "quickstart.yaml":
        return _load_pipeline
    return None


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_loads_and_has_a_run_comment(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    loader = _loader_for(path)
    assert loader is not None, f"{path}: no loader registered in tests/test_every_config.py"
    assert loader(path) is not None
    header = "".join(line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)[:12]
                     if line.startswith("#"))
    assert any(word in header for word in ("Run:", "run:", "launch", "python ", "llmrec ", "make ")), (
        f"{path}: the header comment should give the command that runs it")


def test_paths_named_inside_configs_exist(monkeypatch):
    monkeypatch.chdir(ROOT)
    from llmrec.pipeline.run import PipelineConfig

    pipeline = load_config(PipelineConfig, CONFIGS / "quickstart.yaml")
    named = [pipeline.recipe, *pipeline.baselines]
    for recipe in [*CONFIGS.glob("tmf_*.yaml"), *CONFIGS.glob("ablations/*.yaml"), *CONFIGS.glob("baselines/*.yaml")]:
        cfg = _load_recipe(recipe)
        named += [p for p in (cfg.data_config, cfg.encode_config, cfg.graph_config) if p]
    for graph in (CONFIGS / "graph").glob("*.yaml"):
        named.append(_load_graph(graph).data)
    missing = sorted({p for p in named if not (ROOT / p).is_file()})
    assert not missing, f"configs name files that do not exist: {missing}"


# Each TMF Table 3 row / baseline differs from full TMF only in what makes it that row (and its output folder).
ROW_CHANGES = {
    "ablations/text_only_shop.yaml": {"curriculum.fixed_task": "easy", "eval.task": "easy"},
    "ablations/behavior_tokens_shop.yaml": {"curriculum.tasks": ["easy", "medium"]},
    "ablations/item_tokens_amsa_shop.yaml": {"model.fusion.use_cma": False},
    "ablations/no_curriculum_shop.yaml": {"curriculum.fixed_task": "hard"},
    "ablations/image_off_shop.yaml": {"model.masked_modalities": ["image"]},
    "ablations/text_off_shop.yaml": {"model.masked_modalities": ["text"]},
    "ablations/graph_off_shop.yaml": {"model.masked_modalities": ["graph"]},
    "baselines/llara_shop.yaml": {"graph_config": "configs/graph/sasrec_shop.yaml", "model.fusion.enabled": False,
                                  "curriculum.tasks": ["easy", "hard"], "prompts.behavior_slots": False},
}
CATEGORY_FIRST = {"data_overrides": ["max_history=20", "synthetic.title_order=category_first"]}  # the answer format
# Every shop row has a category-first twin: the row's own changes plus the titles (configs/*/..._category_first.yaml).
ROW_CHANGES_SHOP_ONLY = {name.replace("_shop.yaml", "_shop_category_first.yaml"): {**change, **CATEGORY_FIRST}
                         for name, change in ROW_CHANGES.items()}
ROW_CHANGES_SHOP_ONLY["ablations/tmf_full_shop_category_first.yaml"] = CATEGORY_FIRST
# The ML-100k table: the same rows against tmf_full_ml100k.yaml (no images there: no separate AMSA-only row).
ROW_CHANGES.update({
    name.replace("_shop", "_ml100k"): {k: (v.replace("_shop", "_ml100k") if isinstance(v, str) else v)
                                       for k, v in change.items()}
    for name, change in ROW_CHANGES.items() if "item_tokens_amsa" not in name and "_off_" not in name
})
ROW_CHANGES.update(ROW_CHANGES_SHOP_ONLY)


@pytest.mark.parametrize("name", sorted(ROW_CHANGES))
def test_ablation_rows_change_only_their_own_keys(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    from llmrec.config import to_dict

    dataset = "ml100k" if name.endswith("_ml100k.yaml") else "shop"
    full = flatten(to_dict(_load_recipe(CONFIGS / f"ablations/tmf_full_{dataset}.yaml")))
    row = flatten(to_dict(_load_recipe(CONFIGS / name)))
    changed = {k: v for k, v in row.items() if full[k] != v and k != "output_dir"}
    assert changed == ROW_CHANGES[name]
    assert row["output_dir"] != full["output_dir"]


PROFILES = sorted((CONFIGS / "profiles").glob("*.yaml"))


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
@pytest.mark.parametrize("name", sorted(ROW_CHANGES))
def test_a_profile_over_a_row_keeps_the_row_and_sets_the_profile(name, profile, monkeypatch):
    """Row x hardware: every key the profile names takes its value, every other key stays the row's."""
    monkeypatch.chdir(ROOT)
    import yaml

    from llmrec.config import to_dict

    row = flatten(to_dict(_load_recipe(CONFIGS / name)))
    layered = flatten(to_dict(_load_recipe_layers(CONFIGS / name, profile)))
    named = flatten(yaml.safe_load(profile.read_text(encoding="utf-8")))
    assert named, f"{profile}: empty profile"
    assert {k: layered[k] for k in named} == named
    assert {k: v for k, v in layered.items() if k not in named} == {k: v for k, v in row.items() if k not in named}
    assert not set(named) & set(ROW_CHANGES[name]), f"{profile} overrides what makes {name} its row"


def test_the_gpu_profile_is_the_papers_setting(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = _load_recipe_layers(CONFIGS / "baselines/llara_ml100k.yaml", CONFIGS / "profiles/llama2_7b_gpu.yaml")
    assert cfg.model.lm.name_or_path == "meta-llama/Llama-2-7b-hf" and cfg.precision == "bf16"
    assert cfg.batch_size * cfg.gradient_accumulation_steps == 64 and cfg.epochs == 3 and cfg.max_steps is None
    assert cfg.graph_config == "configs/graph/sasrec_ml100k.yaml"  # the row's own encoder survives
