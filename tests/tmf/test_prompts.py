"""Prompt templates, domain phrases and rendering (TMF Fig. 3)."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmrec.config import ConfigError, load_config
from llmrec.data.types import CandidateSet, SequenceDataset, UserSequence
from llmrec.tmf.prompts.render import (
    TASKS,
    PromptConfig,
    PromptRenderer,
    Slot,
    TemplateError,
    load_domains,
    load_templates,
    main,
    render_sample,
    resolve_path,
    shorten_title,
)

REPO = Path(__file__).resolve().parents[2]
SHOP_BEHAVIORS = ["view", "cart", "purchase"]
SHOP_TITLES = [
    "Water Bottle", "Athletic T-Shirt", "Trail Backpack", "Camping Tent", "Athletic Pants",
    "Cellphone Case", "Running Shoes", "Yoga Mat", "Bike Helmet", "Sports Watch", "Energy Bars", "Headlamp",
]
# One shop sample: history (oldest first), candidates in frozen order, target = candidates[2].
HISTORY = [0, 1, 6, 7]
HISTORY_BEHAVIORS = [0, 1, 0, 2]
CANDIDATES = [2, 3, 4, 5, 8, 9, 10, 11, 6, 7]
TARGET_INDEX = 2


def shop_renderer(**overrides) -> PromptRenderer:
    """A renderer over the shop titles above (no dataset needed)."""
    config = PromptConfig(**{"domain": "auto", **overrides})
    return PromptRenderer(config, item_titles=SHOP_TITLES, behaviors=SHOP_BEHAVIORS, target_behavior="purchase")


def render_shop(task: str, paraphrase: int = 0, renderer: PromptRenderer | None = None, **kw):
    renderer = renderer or shop_renderer()
    args = dict(history_items=HISTORY, history_behaviors=HISTORY_BEHAVIORS, candidates=CANDIDATES,
                target_index=TARGET_INDEX, task=task)
    args.update(kw)
    return renderer.render(**args, paraphrase=paraphrase)


def tiny_dataset() -> SequenceDataset:
    """Two shop users with prepared train samples, built by hand."""
    import datasets

    catalog = pd.DataFrame({"item_id": [f"p{i}" for i in range(len(SHOP_TITLES))], "title": SHOP_TITLES})
    samples = datasets.Dataset.from_dict({
        "user": [0, 1], "history_items": [[0, 1], [3]], "history_behaviors": [[0, 2], [1]],
        "target": [4, 5], "target_behavior": [2, 2], "position": [2, 1],
    })
    seqs = [UserSequence(u, np.array([0, 1, 4]), np.array([0, 2, 2]), np.arange(3), 1, 2) for u in range(2)]
    return SequenceDataset("shop", catalog["item_id"].tolist(), ["u0", "u1"], SHOP_BEHAVIORS, "purchase",
                           catalog, seqs, {"train": samples})


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD_TEMPLATE = """
answer_cue: "\\nAnswer:"
empty_history: "has no earlier interactions"
separators: {history: ", ", candidates: ", "}
tasks:
  easy: ["The user {history}. Next to {target}? {candidates}. One of {n_candidates} candidates."]
  medium: ["The user {history}. Next to {target}? {candidates}. One of {n_candidates} candidates."]
  hard: ["The user {history}. Next to {target}? {candidates}. One of {n_candidates} candidates."]
"""


# ---- shipped files ------------------------------------------------------------------------------
def test_every_shipped_prompt_file_validates():
    files = sorted((REPO / "prompts").glob("*.yaml"))
    assert files, "prompts/ has no YAML files"
    kinds = set()
    for path in files:
        if "tasks:" in path.read_text(encoding="utf-8"):
            templates = load_templates(path)
            kinds.add("templates")
            for task in TASKS:
                texts = [p.text for p in templates.paraphrases[task]]
                assert len(set(texts)) >= 3, f"{path}: task {task} needs at least three distinct paraphrases"
        else:
            load_domains(path)
            kinds.add("domains")
    assert kinds == {"templates", "domains"}


def test_shipped_domains_cover_the_datasets_behaviors():
    domains = load_domains(resolve_path(PromptConfig.domains))
    assert set(domains["shop"].behaviors) == {"view", "cart", "purchase"}
    assert set(domains["taobao"].behaviors) == {"pv", "fav", "cart", "buy"}
    assert set(domains["ml-100k"].behaviors) == {"dislike", "neutral", "like"}


def test_cli_checks_the_shipped_files_and_reports_bad_ones(tmp_path, capsys):
    assert main(["--domain", "taobao"]) == 0
    assert "buys example item 1" in capsys.readouterr().out
    bad = write(tmp_path, "bad.yaml", GOOD_TEMPLATE.replace("{n_candidates} candidates.\"]\n  hard",
                                                             "{n_candidates} {oops}.\"]\n  hard"))
    assert main(["--templates", str(bad)]) == 1
    assert "{oops}" in capsys.readouterr().err


# ---- slots per task -----------------------------------------------------------------------------
@pytest.mark.parametrize("paraphrase", range(4))
def test_slot_counts_and_order_follow_fig3(paraphrase):
    easy, medium, hard = (render_shop(t, paraphrase) for t in TASKS)
    assert easy.slots("item") == [] and easy.slots("behavior") == []
    assert all(isinstance(s, str) for s in easy.segments) and len(easy.segments) == 1
    # medium: one behavior slot per history item + the target behavior in the question
    assert medium.slots("item") == []
    assert [s.index for s in medium.slots("behavior")] == HISTORY_BEHAVIORS + [2]
    # hard: + one item slot per history item and per candidate, history first
    assert [s.index for s in hard.slots("item")] == HISTORY + CANDIDATES
    assert [s.index for s in hard.slots("behavior")] == HISTORY_BEHAVIORS + [2]
    # the slots are the only difference between the three tasks
    assert easy.text(slot_markers=False) == medium.text(slot_markers=False) == hard.text(slot_markers=False)
    for prompt in (easy, medium, hard):
        assert prompt.answer == SHOP_TITLES[CANDIDATES[TARGET_INDEX]] == "Athletic Pants"
        assert prompt.n_history_items == len(HISTORY) and prompt.candidates == CANDIDATES


def test_without_behavior_slots_hard_is_llaras_hybrid_prompt():
    renderer = shop_renderer(behavior_slots=False)
    easy, medium, hard = (render_shop(t, 0, renderer) for t in TASKS)
    assert medium.slots("behavior") == [] and hard.slots("behavior") == []
    assert [s.index for s in hard.slots("item")] == HISTORY + CANDIDATES
    assert easy.text(slot_markers=False) == hard.text(slot_markers=False) == render_shop("hard", 0).text(
        slot_markers=False)


def test_slots_sit_after_behavior_phrases_and_item_names():
    text = render_shop("hard").text()
    assert text.startswith("The user views [MT_b:0] Water Bottle [MT_i:0], "
                           "adds to cart [MT_b:1] Athletic T-Shirt [MT_i:1],")
    assert "What will the user purchase [MT_b:2] next?" in text
    assert "The candidates are Trail Backpack [MT_i:2], Camping Tent [MT_i:3]," in text
    assert text.endswith("Choose one of these 10 candidates.\nAnswer:")


def test_ml100k_phrases_wrap_the_title_and_the_behavior_slot_follows_the_phrase():
    renderer = PromptRenderer(PromptConfig(), item_titles=["Heat (1995)", "Fargo (1996)", "Babe (1995)"],
                              behaviors=["dislike", "neutral", "like"], target_behavior="like")
    assert renderer.domain.name == "ml-100k"
    prompt = renderer.render([0, 1], [0, 2], [2, 1], 0, "hard", paraphrase=0)
    assert prompt.text() == (
        "The user rated Heat (1995) [MT_i:0] poorly [MT_b:0], rated Fargo (1996) [MT_i:1] highly [MT_b:2]. "
        "What will the user rate highly [MT_b:2] next? The candidates are Babe (1995) [MT_i:2], Fargo (1996) [MT_i:1]. "
        "Choose one of these 2 candidates.\nAnswer:")
    second = renderer.render([0], [1], [2], 0, "easy", paraphrase=1)
    assert "Which movie will the user rate highly next?" in second.text()


def test_taobao_phrases_and_empty_history():
    renderer = PromptRenderer(PromptConfig(), item_titles=["a", "b", "c"], behaviors=["pv", "fav", "cart", "buy"],
                              target_behavior="buy")
    text = renderer.render([0, 1, 2], [0, 1, 2], [1], 0, "easy", paraphrase=0).text()
    assert text.startswith("The user clicks a, favorites b, adds to cart c. What will the user buy next?")
    empty = renderer.render([], [], [1, 2], 1, "hard", paraphrase=0)
    assert empty.text().startswith("The user has no earlier interactions. What will the user buy [MT_b:3] next?")
    assert [s.index for s in empty.slots("item")] == [1, 2] and empty.n_history_items == 0


@pytest.mark.parametrize("n_candidates", [1, 3, 10])
def test_stated_candidate_count_is_the_true_count(n_candidates):
    renderer = shop_renderer()
    for paraphrase in range(renderer.n_paraphrases("easy")):
        prompt = renderer.render(HISTORY, HISTORY_BEHAVIORS, CANDIDATES[:n_candidates], 0, "easy",
                                 paraphrase=paraphrase)
        assert re.findall(r"(\d+) candidates", prompt.text()) == [str(n_candidates)]


# ---- paraphrase sampling ------------------------------------------------------------------------
def test_paraphrases_differ_and_are_drawn_deterministically_by_the_rng():
    renderer = shop_renderer()
    args = (HISTORY, HISTORY_BEHAVIORS, CANDIDATES, TARGET_INDEX, "medium")
    first = [renderer.render(*args, np.random.default_rng(7)).paraphrase for _ in range(3)]
    assert len(set(first)) == 1  # same seed, same draw
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    seq_a = [renderer.render(*args, rng_a).paraphrase for _ in range(40)]
    seq_b = [renderer.render(*args, rng_b).paraphrase for _ in range(40)]
    assert seq_a == seq_b
    assert set(seq_a) == set(range(renderer.n_paraphrases("medium")))
    texts = {renderer.render(*args, paraphrase=p).text() for p in range(renderer.n_paraphrases("medium"))}
    assert len(texts) == renderer.n_paraphrases("medium")
    py_rng = [renderer.render(*args, random.Random(5)).paraphrase for _ in range(2)]
    assert py_rng[0] == py_rng[1]


def test_sampling_off_uses_the_configured_paraphrase():
    renderer = shop_renderer(sample_paraphrases=False, paraphrase=2)
    rng = np.random.default_rng(0)
    draws = {renderer.render(HISTORY, HISTORY_BEHAVIORS, CANDIDATES, 0, "hard", rng).paraphrase for _ in range(20)}
    assert draws == {2}
    with pytest.raises(ConfigError, match="paraphrase=9"):
        shop_renderer(paraphrase=9)


# ---- names --------------------------------------------------------------------------------------
def test_titles_are_normalized_and_shortened_consistently():
    assert shorten_title("  Star\nWars:\tA  New Hope ", None) == "Star Wars: A New Hope"
    assert shorten_title("The Lord of the Rings: The Fellowship of the Ring", 24) == "The Lord of the Rings"
    long_title = "Ultralight Waterproof Four Season Backpacking Tent With Vestibule"
    renderer = PromptRenderer(PromptConfig(title_max_chars=30), item_titles=[long_title, "Mat", ""],
                              behaviors=SHOP_BEHAVIORS, target_behavior="purchase")
    prompt = renderer.render([1], [0], [0, 1, 2], 0, "easy", paraphrase=0)
    assert prompt.answer == renderer.item_name(0) == "Ultralight Waterproof Four"
    assert prompt.answer in prompt.text() and long_title not in prompt.text()
    assert renderer.item_name(2) == "item 2"  # no title: named by its id, with a logged warning


def test_bad_render_inputs_are_rejected():
    renderer = shop_renderer()
    with pytest.raises(ValueError, match="unknown task"):
        renderer.render([0], [0], [1], 0, "expert")
    with pytest.raises(ValueError, match="differ in length"):
        renderer.render([0, 1], [0], [1], 0, "easy")
    with pytest.raises(ValueError, match="outside the 1 candidates"):
        renderer.render([0], [0], [1], 1, "easy")
    with pytest.raises(ValueError, match="item index 99"):
        renderer.render([99], [0], [1], 0, "easy")


# ---- dataset rows -------------------------------------------------------------------------------
def test_render_sample_from_a_dataset_row_and_its_frozen_candidates():
    dataset = tiny_dataset()
    renderer = PromptRenderer(PromptConfig(), dataset)
    cands = CandidateSet("train", "uniform", 3, 0, np.array([[2, 4, 7], [5, 0, 1]]), np.array([1, 0]))
    prompt = render_sample(renderer, dataset, "train", 0, cands, "hard", np.random.default_rng(0))
    assert prompt.answer == "Athletic Pants" and prompt.target_index == 1
    assert [s.index for s in prompt.slots("item")] == [0, 1, 2, 4, 7]
    assert [s.index for s in prompt.slots("behavior")] == [0, 2, 2]
    wrong = CandidateSet("train", "uniform", 3, 0, np.array([[2, 3, 7], [5, 0, 1]]), np.array([1, 0]))
    with pytest.raises(ValueError, match="target item 4 is not in its candidate row"):
        render_sample(renderer, dataset, "train", 0, wrong, "easy")


def test_real_ml100k_titles_render(tmp_path):
    root = os.environ.get("LLMREC_DATA_DIR")
    if not root:
        pytest.skip("set LLMREC_DATA_DIR to the folder holding ml-100k/ to render real MovieLens titles")
    items = pd.read_csv(Path(root) / "ml-100k" / "u.item", sep="|", header=None, encoding="latin-1", usecols=[1])
    titles = items[1].astype(str).tolist()
    renderer = PromptRenderer(PromptConfig(), item_titles=titles, behaviors=["dislike", "neutral", "like"],
                              target_behavior="like")
    rng = np.random.default_rng(0)
    cands = rng.choice(len(titles), 10, replace=False).tolist()
    prompt = renderer.render([0, 49, 99], [2, 1, 0], cands, 4, "hard", rng)
    assert prompt.answer == renderer.item_name(cands[4]) and "\n" not in prompt.answer
    assert "rated Toy Story (1995) [MT_i:0] highly [MT_b:2]" in prompt.text()
    assert len(prompt.slots("item")) == 13


# ---- validation errors --------------------------------------------------------------------------
@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("{n_candidates} candidates.\"]\n  hard", "{n_candidates} {user}.\"]\n  hard"),
     r"tasks.medium\[0\]: unknown placeholder \{user\}"),
    (lambda t: t.replace("  hard: [", "  expert: ["), r"unknown key\(s\) \['expert'\]"),
    (lambda t: t.split("  hard:")[0], r"missing task 'tasks.hard'"),
    (lambda t: t.replace("One of {n_candidates}", "One of ten"), r"\{n_candidates\} must appear exactly once"),
    (lambda t: t.replace("The user {history}. Next to {target}? {candidates}.", "{candidates}. {history} {target}"),
     r"\{history\} must come before \{candidates\}"),
    (lambda t: t.replace("Next to {target}?", "Next to {target!r}?"), r"no format spec or conversion"),
    (lambda t: t.replace("Next to {target}?", "Next to {target}} ?"), r"malformed braces"),
    (lambda t: t.replace('"\\nAnswer:"', '"\\nAnswer: "'), r"answer_cue must not end with whitespace"),
    (lambda t: t + "colour: red\n", r"unknown key\(s\) \['colour'\]"),
    (lambda t: t.replace('empty_history: "has no earlier interactions"', ""), r"missing key 'empty_history'"),
])
def test_template_errors_name_the_file_and_key(tmp_path, edit, message):
    path = write(tmp_path, "bad.yaml", edit(GOOD_TEMPLATE))
    with pytest.raises(TemplateError, match=message) as info:
        load_templates(path)
    assert str(path) in str(info.value)


def test_good_template_loads_and_literal_braces_survive(tmp_path):
    path = write(tmp_path, "good.yaml", GOOD_TEMPLATE.replace("One of", "{{sic}} One of"))
    templates = load_templates(path)
    renderer = PromptRenderer(PromptConfig(templates=str(path)), item_titles=SHOP_TITLES,
                              behaviors=SHOP_BEHAVIORS, target_behavior="purchase")
    assert "{sic} One of 2 candidates" in renderer.render([0], [0], [1, 2], 0, "easy").text()
    assert templates.paraphrases["hard"][0].text.startswith("The user {history}")


@pytest.mark.parametrize("domains, kwargs, message", [
    ("domains:\n  shop:\n    item_noun: p\n    behaviors:\n      view: {history: views}\n",
     {}, r"domains.shop.behaviors.view.history: must contain \{item\} exactly once"),
    ("domains:\n  shop:\n    item_noun: p\n    behaviors:\n      view: {history: 'views {item} {when}'}\n",
     {}, r"no other placeholder"),
    ("domains:\n  shop:\n    item_noun: p\n    behaviors:\n      view: {history: 'views {item}', verb: x}\n",
     {}, r"domains.shop.behaviors.view: unknown key\(s\) \['verb'\]"),
    ("domains:\n  s:\n    item_noun: p\n    behaviors:\n      view: {history: 'v {item}'}\n"
     "      cart: {history: 'c {item}'}\n      purchase: {history: 'p {item}'}\n",
     {}, r"domains.s.behaviors.purchase.question is required"),
    ("domains:\n  s:\n    item_noun: p\n    behaviors:\n      view: {history: 'v {item}'}\n",
     {}, r"no domain has exactly the dataset's behaviors"),
    ("domains:\n  s:\n    item_noun: p\n    behaviors:\n      view: {history: 'v {item}'}\n",
     {"domain": "s"}, r"domains.s.behaviors lacks the dataset's behavior\(s\) \['cart', 'purchase'\]"),
    ("domains:\n  s:\n    item_noun: p\n    behaviors:\n      view: {history: 'v {item}'}\n",
     {"domain": "books"}, r"unknown domain 'books'"),
])
def test_domain_errors_name_the_file_and_key(tmp_path, domains, kwargs, message):
    path = write(tmp_path, "domains.yaml", domains)
    with pytest.raises(TemplateError, match=message) as info:
        shop_renderer(domains=str(path), **kwargs)
    assert str(path) in str(info.value)


def test_prompt_config_loads_from_yaml_with_checked_keys(tmp_path):
    path = write(tmp_path, "prompts.yaml", "domain: shop\ntitle_max_chars: 40\nchat_template: true\n")
    config = load_config(PromptConfig, path, ["sample_paraphrases=false"])
    assert (config.domain, config.title_max_chars, config.chat_template, config.sample_paraphrases) == \
        ("shop", 40, True, False)
    with pytest.raises(ConfigError, match="title_max_chars must be >= 8"):
        load_config(PromptConfig, path, ["title_max_chars=3"])
    with pytest.raises(ConfigError, match="unknown config key 'template'"):
        load_config(PromptConfig, path, ["template=x.yaml"])
    assert Slot("item", 3) == Slot("item", 3)
