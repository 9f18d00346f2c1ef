"""Prompt template and domain-phrase files (``prompts/*.yaml``): parsing and validation.

Every error is a :class:`TemplateError` naming the file and the key (docs/prompts.md has the format).
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmrec.config import ConfigError, read_yaml
from llmrec.tmf.tasks import TASKS

PLACEHOLDERS = ("history", "target", "candidates", "n_candidates", "item_noun")
REQUIRED_PLACEHOLDERS = ("history", "target", "candidates", "n_candidates")
TEMPLATE_KEYS = ("answer_cue", "empty_history", "separators", "tasks")
DOMAIN_KEYS = ("item_noun", "behaviors")
BEHAVIOR_KEYS = ("history", "question")
REPO_ROOT = Path(__file__).resolve().parents[1]


class TemplateError(ConfigError):
    """A prompt template or domain file is invalid; the message names the file and key."""


@dataclass(frozen=True)
class _Paraphrase:
    text: str
    parts: tuple[tuple[str, str | None], ...]  # (literal text, placeholder or None)


@dataclass
class TemplateSet:
    """A parsed template file (see docs/prompts.md for the format)."""

    path: Path
    answer_cue: str
    empty_history: str
    history_separator: str
    candidate_separator: str
    paraphrases: dict[str, list[_Paraphrase]]


@dataclass(frozen=True)
class BehaviorPhrase:
    """How one behavior reads: ``history`` holds ``{item}`` once; ``question`` is the target form."""

    before_item: str
    after_item: str
    question: str | None


@dataclass
class DomainPhrases:
    name: str
    item_noun: str
    behaviors: dict[str, BehaviorPhrase]


def resolve_path(path: str | Path) -> Path:
    """``path`` as given if it exists or is absolute, else relative to the repository."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    return REPO_ROOT / path if (REPO_ROOT / path).exists() else path


def _require_str(value: Any, where: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise TemplateError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _check_keys(data: Any, allowed: Sequence[str], where: str) -> dict:
    if not isinstance(data, dict):
        raise TemplateError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise TemplateError(f"{where}: unknown key(s) {unknown}; allowed: {list(allowed)}")
    return data


def _parse_paraphrase(text: Any, where: str) -> _Paraphrase:
    text = _require_str(text, where)
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as err:
        raise TemplateError(f"{where}: malformed braces ({err}); write literal braces as {{{{ and }}}}") from None
    parts, seen = [], []
    for literal, name, spec, conversion in parsed:
        if name is not None:
            if name not in PLACEHOLDERS:
                raise TemplateError(f"{where}: unknown placeholder {{{name}}}; allowed: {list(PLACEHOLDERS)}")
            if spec or conversion:
                raise TemplateError(f"{where}: placeholder {{{name}}} takes no format spec or conversion")
            seen.append(name)
        parts.append((literal, name))
    for name in REQUIRED_PLACEHOLDERS:
        if seen.count(name) != 1:
            raise TemplateError(f"{where}: placeholder {{{name}}} must appear exactly once, found {seen.count(name)}")
    if seen.index("history") > seen.index("candidates"):
        raise TemplateError(f"{where}: {{history}} must come before {{candidates}} (item slots are history first)")
    return _Paraphrase(text, tuple(parts))


def load_templates(path: str | Path) -> TemplateSet:
    """Read and validate a template file; errors name the file and the key."""
    path = resolve_path(path)
    try:
        data = _check_keys(read_yaml(path), TEMPLATE_KEYS, str(path))
    except ConfigError as err:
        raise TemplateError(str(err)) from None
    for key in TEMPLATE_KEYS:
        if key not in data:
            raise TemplateError(f"{path}: missing key '{key}'")
    cue = _require_str(data["answer_cue"], f"{path}: answer_cue")
    if cue != cue.rstrip():
        raise TemplateError(f"{path}: answer_cue must not end with whitespace (the answer brings its own space)")
    seps = _check_keys(data["separators"], ("history", "candidates"), f"{path}: separators")
    for key in ("history", "candidates"):
        if key not in seps:
            raise TemplateError(f"{path}: separators.{key} is missing")
        _require_str(seps[key], f"{path}: separators.{key}", allow_empty=True)
    tasks = _check_keys(data["tasks"], TASKS, f"{path}: tasks")
    paraphrases = {}
    for task in TASKS:
        if task not in tasks:
            raise TemplateError(f"{path}: missing task 'tasks.{task}'; every file defines {list(TASKS)}")
        items = tasks[task]
        if not isinstance(items, list) or not items:
            raise TemplateError(f"{path}: tasks.{task}: expected a non-empty list of paraphrases")
        paraphrases[task] = [_parse_paraphrase(t, f"{path}: tasks.{task}[{i}]") for i, t in enumerate(items)]
    empty = _require_str(data["empty_history"], f"{path}: empty_history")
    return TemplateSet(path, cue, empty, seps["history"], seps["candidates"], paraphrases)


def _parse_behavior(value: Any, where: str) -> BehaviorPhrase:
    data = _check_keys(value, BEHAVIOR_KEYS, where)
    history = _require_str(data.get("history"), f"{where}.history")
    try:
        parsed = list(string.Formatter().parse(history))
    except ValueError as err:
        raise TemplateError(f"{where}.history: malformed braces ({err})") from None
    names = [name for _, name, _, _ in parsed if name is not None]
    if names != ["item"]:
        raise TemplateError(f"{where}.history: must contain {{item}} exactly once and no other placeholder, "
                            f"got {names}")
    item_at = next(k for k, part in enumerate(parsed) if part[1] == "item")
    before = "".join(literal for literal, _, _, _ in parsed[: item_at + 1])
    after = "".join(literal for literal, _, _, _ in parsed[item_at + 1:])
    question = data.get("question")
    if question is not None:
        question = _require_str(question, f"{where}.question")
    return BehaviorPhrase(before, after, question)


def load_domains(path: str | Path) -> dict[str, DomainPhrases]:
    """Read and validate a domains file (``domains: name: {item_noun, behaviors}``)."""
    path = resolve_path(path)
    try:
        data = _check_keys(read_yaml(path), ("domains",), str(path))
    except ConfigError as err:
        raise TemplateError(str(err)) from None
    domains = data.get("domains")
    if not isinstance(domains, dict) or not domains:
        raise TemplateError(f"{path}: 'domains' must be a non-empty mapping of domain name -> phrases")
    out = {}
    for name, spec in domains.items():
        where = f"{path}: domains.{name}"
        spec = _check_keys(spec, DOMAIN_KEYS, where)
        noun = _require_str(spec.get("item_noun"), f"{where}.item_noun")
        behaviors = spec.get("behaviors")
        if not isinstance(behaviors, dict) or not behaviors:
            raise TemplateError(f"{where}.behaviors: expected a mapping of behavior name -> phrases")
        out[str(name)] = DomainPhrases(
            str(name), noun, {str(b): _parse_behavior(v, f"{where}.behaviors.{b}") for b, v in behaviors.items()}
        )
    return out


def select_domain(domains: Mapping[str, DomainPhrases], name: str, behaviors: Sequence[str],
                  target_behavior: str, path: Path | str = "domains") -> DomainPhrases:
    """The named domain (or, for ``auto``, the one whose behavior set equals the dataset's), checked."""
    if name == "auto":
        matches = [d for d in domains.values() if set(d.behaviors) == set(behaviors)]
        if len(matches) != 1:
            found = "no domain" if not matches else f"several domains {[d.name for d in matches]}"
            raise TemplateError(f"{path}: {found} has exactly the dataset's behaviors {list(behaviors)}; "
                                f"set prompts.domain to one of {sorted(domains)} or add a domain")
        domain = matches[0]
    elif name in domains:
        domain = domains[name]
    else:
        raise TemplateError(f"{path}: unknown domain {name!r}; known: {sorted(domains)}")
    missing = [b for b in behaviors if b not in domain.behaviors]
    if missing:
        raise TemplateError(f"{path}: domains.{domain.name}.behaviors lacks the dataset's behavior(s) {missing}")
    if domain.behaviors[target_behavior].question is None:
        raise TemplateError(f"{path}: domains.{domain.name}.behaviors.{target_behavior}.question is required "
                            "(it is the dataset's target behavior)")
    return domain
