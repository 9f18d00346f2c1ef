"""TMF hybrid prompts (TMF §4.2-4.3, Fig. 3): templates, domain phrases, rendering.

A sample (history items with behaviors, candidates, target) is rendered into a
:class:`RenderedPrompt`: text segments and typed :class:`Slot` s that the collator
turns into placeholder tokens and the model fills with adaptor outputs (DESIGN
"Slots, not new tokens"). The tasks of Fig. 3 are fixed (:data:`TASK_SLOTS`; they
decide which adaptors a task trains, Eq. 9-11): ``easy`` is text only; ``medium``
adds a behavior slot ``[MT_b]`` after every behavior phrase, the target's in the
question included; ``hard`` adds an item slot ``[MT_i]`` after every item name,
history and candidates.

Choices where the paper is silent (also in docs/prompts.md): a behavior phrase
that wraps the item (``rated {item} highly``) gets its behavior slot after the whole
phrase, otherwise after the words before the item (``views [MT_b] tent [MT_i]``);
the paraphrase is drawn uniformly per example with the caller's rng (§5.1); titles
are whitespace-normalized and cut to ``title_max_chars`` at a word boundary, and
the answer uses the same name; item slots come history first, then candidates
(the loader checks that ``{history}`` precedes ``{candidates}``).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from llmrec.cli_common import fail
from llmrec.config import ConfigError
from llmrec.tmf.prompts.templates import TemplateError, load_domains, load_templates, resolve_path, select_domain
from llmrec.tmf.tasks import TASKS

logger = logging.getLogger(__name__)

TASK_SLOTS: dict[str, frozenset[str]] = {
    "easy": frozenset(),  # Fig. 3(a)
    "medium": frozenset({"behavior"}),  # Fig. 3(b)
    "hard": frozenset({"behavior", "item"}),  # Fig. 3(c)
}


@dataclass
class PromptConfig:
    """Which templates and phrases render prompts, and how."""

    templates: str = "prompts/tmf.yaml"
    """Template file (tasks and paraphrases); relative paths try the working directory, then the repository."""
    domains: str = "prompts/domains.yaml"
    """Behavior phrases per domain."""
    domain: str = "auto"
    """Domain name in the domains file; ``auto`` picks the one whose behaviors equal the dataset's."""
    sample_paraphrases: bool = True
    """Draw one paraphrase per example with the caller's rng (TMF §5.1); false: always ``paraphrase``."""
    paraphrase: int = 0
    """Paraphrase used when sampling is off or no rng is given."""
    title_max_chars: int | None = 80
    """Item names longer than this are cut at a word boundary; null keeps whole titles."""
    chat_template: bool = False
    behavior_slots: bool = True
    """False: no ``[MT_b]`` slot in any task (medium renders as easy; hard has item slots only: LLaRA's hybrid
    prompt)."""
    """Use the tokenizer's chat template (answer in the assistant turn); false: plain ``...\\nAnswer:``."""

    def validate(self) -> None:
        if self.title_max_chars is not None and self.title_max_chars < 8:
            raise ConfigError(f"title_max_chars must be >= 8 or null, got {self.title_max_chars}")
        if self.paraphrase < 0:
            raise ConfigError(f"paraphrase must be >= 0, got {self.paraphrase}")


@dataclass(frozen=True)
class Slot:
    """A position the model fills with an adaptor vector: an item (internal index) or a behavior (index)."""

    kind: Literal["item", "behavior"]
    index: int


@dataclass
class RenderedPrompt:
    """A prompt as text segments and slots, plus what the collator and evaluation need.

    ``history_items`` / ``history_behaviors`` / ``paraphrase`` let the collator
    re-render the same prompt with fewer history items when it is too long.
    """

    segments: list[str | Slot]
    answer: str | None
    task: str
    n_history_items: int
    candidates: list[int]
    target_index: int | None
    history_items: list[int] = field(default_factory=list)
    history_behaviors: list[int] = field(default_factory=list)
    paraphrase: int = 0

    def slots(self, kind: str) -> list[Slot]:
        return [s for s in self.segments if isinstance(s, Slot) and s.kind == kind]

    def text(self, slot_markers: bool = True) -> str:
        """Human-readable text; slots shown as ``[MT_b:2]`` / ``[MT_i:17]`` (or dropped)."""
        parts = []
        for seg in self.segments:
            if isinstance(seg, Slot):
                if slot_markers:
                    parts.append(f" [MT_{seg.kind[0]}:{seg.index}]")
            else:
                parts.append(seg)
        return "".join(parts)


def shorten_title(title: str, max_chars: int | None) -> str:
    """Collapse whitespace; cut to ``max_chars`` at the last word boundary (hard cut if none)."""
    title = " ".join(str(title).split())
    if max_chars is None or len(title) <= max_chars:
        return title
    cut = title[:max_chars]
    space = cut.rfind(" ")
    if space >= max_chars // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-")


class _SegmentBuilder:
    """Collects text and slots, merging adjacent text."""

    def __init__(self, slot_kinds: frozenset[str]):
        self.slot_kinds = slot_kinds
        self.segments: list[str | Slot] = []

    def text(self, value: str) -> None:
        if not value:
            return
        if self.segments and isinstance(self.segments[-1], str):
            self.segments[-1] += value
        else:
            self.segments.append(value)

    def slot(self, kind: str, index: int) -> None:
        if kind in self.slot_kinds:
            self.segments.append(Slot(kind, int(index)))


class PromptRenderer:
    """Renders samples into :class:`RenderedPrompt` s for one dataset's items and behaviors.

    Give either a :class:`~llmrec.data.types.SequenceDataset` or the three lists
    (``item_titles`` by internal item index, ``behaviors`` weakest first, ``target_behavior``).
    """

    def __init__(self, config: PromptConfig, dataset: Any = None, *, item_titles: Sequence[str] | None = None,
                 behaviors: Sequence[str] | None = None, target_behavior: str | None = None):
        if dataset is not None:
            missing = dataset.catalog["title"].isna().tolist()
            item_titles = ["" if gone else t for t, gone in zip(dataset.item_titles(), missing, strict=True)]
            behaviors, target_behavior, item_ids = dataset.behaviors, dataset.target_behavior, list(dataset.item_ids)
        else:
            if item_titles is None or behaviors is None or target_behavior is None:
                raise ValueError("PromptRenderer needs a dataset or item_titles, behaviors and target_behavior")
            item_ids = [str(i) for i in range(len(item_titles))]
        if target_behavior not in behaviors:
            raise ValueError(f"target behavior {target_behavior!r} is not among the behaviors {list(behaviors)}")
        self.config = config
        self.templates = load_templates(config.templates)
        domains_path = resolve_path(config.domains)
        self.domain = select_domain(load_domains(domains_path), config.domain, behaviors, target_behavior, domains_path)
        self.behaviors = list(behaviors)
        self.target_behavior = self.behaviors.index(target_behavior)
        for task, options in self.templates.paraphrases.items():
            if config.paraphrase >= len(options):
                raise ConfigError(f"paraphrase={config.paraphrase} but {self.templates.path} has only "
                                  f"{len(options)} for task '{task}'")
        self.item_names = self._item_names(item_titles, item_ids)
        logger.info("prompt renderer: templates %s, domain '%s', %d items",
                    self.templates.path, self.domain.name, len(self.item_names))

    def _item_names(self, titles: Sequence[str], item_ids: Sequence[str]) -> list[str]:
        names, cut, empty = [], 0, 0
        for title, item_id in zip(titles, item_ids, strict=True):
            name = shorten_title(title, self.config.title_max_chars)
            if not name:
                name, empty = f"item {item_id}", empty + 1
            elif name != " ".join(str(title).split()):
                cut += 1
            names.append(name)
        if cut:
            logger.info("shortened %d of %d titles to at most %s characters", cut, len(names),
                        self.config.title_max_chars)
        if empty:
            logger.warning("%d of %d items have no title; they are named 'item <id>'", empty, len(names))
        return names

    def item_name(self, item: int) -> str:
        """The name the prompts and answers use for internal item ``item``."""
        return self.item_names[item]

    def n_paraphrases(self, task: str) -> int:
        return len(self.templates.paraphrases[task])

    def _choose_paraphrase(self, task: str, rng: Any) -> int:
        if not self.config.sample_paraphrases or rng is None:
            return self.config.paraphrase
        n = self.n_paraphrases(task)
        return int(rng.integers(n)) if hasattr(rng, "integers") else int(rng.randrange(n))

    def _check(self, history_items, history_behaviors, candidates, target_index, task) -> None:
        problems = [
            (task not in TASKS, f"unknown task {task!r}; expected one of {list(TASKS)}"),
            (len(history_items) != len(history_behaviors), f"history_items ({len(history_items)}) and "
             f"history_behaviors ({len(history_behaviors)}) differ in length"),
            (not candidates, "a prompt needs at least one candidate"),
            (target_index is not None and not 0 <= target_index < len(candidates),
             f"target_index {target_index} is outside the {len(candidates)} candidates"),
        ]
        problems += [(not 0 <= i < len(self.item_names), f"item index {i} is outside 0..{len(self.item_names) - 1}")
                     for i in history_items + candidates]
        problems += [(not 0 <= b < len(self.behaviors), f"behavior index {b} is outside 0..{len(self.behaviors) - 1}")
                     for b in history_behaviors]
        for failed, message in problems:
            if failed:
                raise ValueError(message)

    def render(self, history_items: Sequence[int], history_behaviors: Sequence[int], candidates: Sequence[int],
               target_index: int | None, task: str, rng: Any = None, *,
               paraphrase: int | None = None) -> RenderedPrompt:
        """Render one sample; ``rng`` (numpy Generator or random.Random) picks the paraphrase."""
        history_items, history_behaviors = [int(i) for i in history_items], [int(b) for b in history_behaviors]
        candidates = [int(c) for c in candidates]
        target_index = None if target_index is None else int(target_index)
        self._check(history_items, history_behaviors, candidates, target_index, task)
        choice = self._choose_paraphrase(task, rng) if paraphrase is None else paraphrase
        template = self.templates.paraphrases[task][choice]
        out = _SegmentBuilder(TASK_SLOTS[task] if self.config.behavior_slots else TASK_SLOTS[task] - {"behavior"})
        for literal, name in template.parts:
            out.text(literal)
            if name == "history":
                self._render_history(out, history_items, history_behaviors)
            elif name == "candidates":
                for k, item in enumerate(candidates):
                    out.text((self.templates.candidate_separator if k else "") + self.item_names[item])
                    out.slot("item", item)
            elif name == "target":
                out.text(self.domain.behaviors[self.behaviors[self.target_behavior]].question)
                out.slot("behavior", self.target_behavior)
            elif name == "n_candidates":
                out.text(str(len(candidates)))
            elif name == "item_noun":
                out.text(self.domain.item_noun)
        if not self.config.chat_template:
            out.text(self.templates.answer_cue)
        answer = None if target_index is None else self.item_names[candidates[target_index]]
        return RenderedPrompt(out.segments, answer, task, len(history_items), candidates, target_index,
                              history_items, history_behaviors, choice)

    def _render_history(self, out: _SegmentBuilder, items: list[int], behaviors: list[int]) -> None:
        if not items:
            out.text(self.templates.empty_history)
            return
        for k, (item, behavior) in enumerate(zip(items, behaviors, strict=True)):
            phrase = self.domain.behaviors[self.behaviors[behavior]]
            if k:
                out.text(self.templates.history_separator)
            if phrase.after_item.strip():  # "rated {item} highly": the behavior slot follows the phrase
                out.text(phrase.before_item + self.item_names[item])
                out.slot("item", item)
                out.text(phrase.after_item)
                out.slot("behavior", behavior)
            else:  # "views {item}": the behavior slot follows the behavior words
                words = phrase.before_item.rstrip()
                out.text(words)
                out.slot("behavior", behavior)
                out.text(phrase.before_item[len(words):] + self.item_names[item])
                out.slot("item", item)
                out.text(phrase.after_item)

    def render_sample(self, sample: Mapping[str, Any], candidates: Sequence[int], task: str,
                      rng: Any = None) -> RenderedPrompt:
        """Render a row of ``SequenceDataset.samples[split]`` with its frozen candidate row."""
        candidates = [int(c) for c in candidates]
        target = int(sample["target"])
        if target not in candidates:
            raise ValueError(f"user {sample.get('user')}: target item {target} is not in its candidate row "
                             f"{candidates}")
        return self.render(sample["history_items"], sample["history_behaviors"], candidates,
                           candidates.index(target), task, rng)


def render_sample(renderer: PromptRenderer, dataset: Any, split: str, row: int, candidate_set: Any, task: str,
                  rng: Any = None) -> RenderedPrompt:
    """Render row ``row`` of ``dataset.samples[split]`` with row ``row`` of a frozen :class:`CandidateSet`."""
    if candidate_set.split != split:
        raise ValueError(f"candidate set is for split {candidate_set.split!r}, not {split!r}")
    sample = dataset.samples[split][row]
    prompt = renderer.render_sample(sample, candidate_set.items[row], task, rng)
    if prompt.target_index != int(candidate_set.target_index[row]):
        raise ValueError(f"{split} row {row}: the candidate set's target_index {candidate_set.target_index[row]} "
                         f"does not point at the sample's target")
    return prompt


def main(argv: list[str] | None = None) -> int:
    """Validate a template file and a domains file; print one example prompt per task and domain."""
    parser = argparse.ArgumentParser(prog="python -m llmrec.tmf.prompts.render", description=main.__doc__)
    parser.add_argument("--templates", default=PromptConfig.templates)
    parser.add_argument("--domains", default=PromptConfig.domains)
    parser.add_argument("--domain", default=None, help="render the examples with this domain only")
    args = parser.parse_args(argv)
    try:
        domains = load_domains(args.domains)
        for name in [args.domain] if args.domain else sorted(domains):
            if name not in domains:
                raise TemplateError(f"{args.domains}: unknown domain {name!r}; known: {sorted(domains)}")
            phrases = domains[name].behaviors
            targets = [b for b in phrases if phrases[b].question is not None]
            if not targets:
                raise TemplateError(f"{args.domains}: domains.{name}: no behavior has a question")
            renderer = PromptRenderer(PromptConfig(args.templates, args.domains, name), behaviors=list(phrases),
                                      item_titles=[f"example {domains[name].item_noun} {i}" for i in range(5)],
                                      target_behavior=targets[-1])
            for task in TASKS:
                prompt = renderer.render([0, 1], [0, len(phrases) - 1], [2, 3, 4], 1, task)
                print(f"[{name} / {task}: paraphrase 1 of {renderer.n_paraphrases(task)}]\n"
                      f"{prompt.text()} {prompt.answer}\n")
    except ConfigError as err:
        return fail(parser.prog, err)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
