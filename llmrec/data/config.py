"""``DataConfig``: what to load and how to turn it into splits and candidates.

Loaded with :func:`llmrec.data.load_data_config` (YAML + dotted overrides, see
:mod:`llmrec.config`). Paths may use ``${LLMREC_DATA_DIR}`` (any environment
variable in ``${...}`` form); they are expanded when the data is read, so a
config loads without the variable set and :meth:`DataConfig.resolve_path`
raises a clear error if it is still unset then.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llmrec.config import ConfigError
from llmrec.data.synthetic import SyntheticConfig
from llmrec.data.types import SPLITS

GENERIC_SOURCES = ("csv", "parquet", "jsonl")
Source = Literal["csv", "parquet", "jsonl", "ml100k", "ml1m", "taobao", "synthetic", "recbole", "samples", "llara"]
MAPPED_SOURCES = (*GENERIC_SOURCES, "recbole")  # sources read through `columns:` / `item_columns:`

# Behaviors (weakest first) and the target behavior of each built-in source.
# Taobao: pv < fav < cart < buy. A favourite is a bookmark with no purchase
# intent attached to a quantity; adding to cart is the step right before a
# purchase in the funnel, so cart ranks above fav (MBHT's order is the same).
SOURCE_BEHAVIORS: dict[str, tuple[list[str], str]] = {
    "ml100k": (["dislike", "neutral", "like"], "like"),
    "ml1m": (["dislike", "neutral", "like"], "like"),
    "taobao": (["pv", "fav", "cart", "buy"], "buy"),
    "synthetic": (["view", "cart", "purchase"], "purchase"),
    "samples": (["interaction"], "interaction"),  # pre-split rows: single behavior unless `behaviors:` says otherwise
    "llara": (["interaction"], "interaction"),  # LLaRA's benchmarks are single-behavior (ratings are not prompt inputs)
}
# MovieLens rating -> behavior (DreamRec, following MBHT): <=2 dislike, 3 neutral, >=4 like.
MOVIELENS_RATING_BEHAVIORS = {1: "dislike", 2: "dislike", 3: "neutral", 4: "like", 5: "like"}

_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class IdMap:
    """How the log spells an id differently from the catalog: ``strip_prefix`` is removed, then ``add_prefix`` added."""

    strip_prefix: str = ""  # e.g. "i": log 'i161' -> catalog '161' (a log id without the prefix is an error)
    add_prefix: str = ""  # e.g. "i": log '161' -> catalog 'i161'

    def validate(self) -> None:
        if not self.strip_prefix and not self.add_prefix:
            raise ConfigError("set strip_prefix and/or add_prefix (an empty id_map entry rewrites nothing)")


@dataclass
class InteractionColumns:
    """Column names of the interaction file (generic csv/parquet/jsonl sources and recbole's .inter fields)."""

    user: str = "user_id"
    item: str = "item_id"
    behavior: str | None = "behavior"  # null: behaviors come from `rating` or every row is the target
    timestamp: str = "timestamp"
    rating: str | None = None  # with `rating_behaviors`, turns ratings into behaviors
    id_map: dict[Literal["user", "item"], IdMap] = field(default_factory=dict)  # log id rewrite before the join


@dataclass
class ItemColumns:
    """Column names of the item file (generic sources with ``items_path``; recbole's .item fields)."""

    item: str = "item_id"
    title: str = "title"
    text: str | None = None
    image: str | None = None  # a path (relative to the item file's folder) or URL
    category: str | None = None
    extra: list[str] = field(default_factory=list)  # further item-file columns kept in the catalog (e.g. brand_id)

    def validate(self) -> None:
        reserved = [c for c in self.extra if c in ("item_id", "title", "text", "image", "category")]
        if reserved:
            raise ConfigError(f"extra: {reserved} are catalog columns already; map them with item/title/text/...")


@dataclass
class CandidateSpec:
    """One frozen candidate set to sample at preparation time, per listed split."""

    splits: list[str] = field(default_factory=lambda: ["valid", "test"])
    sampler: Literal["uniform", "popularity"] = "uniform"
    size: int = 20  # target + (size - 1) negatives
    seed: int = 0

    def validate(self) -> None:
        bad = [s for s in self.splits if s not in SPLITS]
        if bad or not self.splits:
            raise ConfigError(f"splits: {self.splits!r}; expected a non-empty list from {list(SPLITS)}")
        if self.size < 1:
            raise ConfigError(f"size: {self.size} must be >= 1 (the target plus size-1 negatives)")


@dataclass
class DataConfig:
    """A dataset and its preprocessing (every key is documented in docs/data.md)."""

    name: str
    source: Source
    path: str | None = None  # file or folder of the interactions (unused for `synthetic`)
    items_path: str | None = None  # item catalog file (generic sources; optional)
    encoding: str | None = None  # text encoding of the input files; null = UTF-8 (ML u.item: latin-1)
    delimiter: str = ","  # csv only
    columns: InteractionColumns | None = None  # generic sources; null = the defaults
    item_columns: ItemColumns | None = None  # generic sources with items_path; null = the defaults
    timestamp_format: str | None = None  # generic: strftime format of text timestamps; null = numeric
    behaviors: list[str] | None = None  # ordered weakest first; null = the source's default
    target_behavior: str | None = None  # null = the source's default
    behavior_map: dict[str, str] = field(default_factory=dict)  # raw value -> behavior name
    rating_behaviors: dict[int, str] | None = None  # rating -> behavior (MovieLens default: see above)
    k_core: int = 5  # users and items need >= k counted interactions (fixed point); 1 disables
    k_core_behavior: Literal["all", "target"] = "all"  # which interactions the k-core counts
    min_target_interactions: int = 2  # a user needs >= this many target interactions (valid + test)
    max_history: int = 50  # newest interactions kept in a sample's history
    candidates: list[CandidateSpec] = field(default_factory=lambda: [CandidateSpec()])
    cache_dir: str = ".cache/llmrec"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    llara_dataset: Literal["movielens", "steam", "lastfm"] | None = None  # source llara: the benchmark in `path`
    llara_splits: list[str] = field(default_factory=lambda: list(SPLITS))  # source llara: splits whose pickles are read
    verify_sha256: bool = True  # source llara: files whose official sha256 is known must match it

    def __post_init__(self) -> None:
        if self.source in SOURCE_BEHAVIORS:
            behaviors, target = SOURCE_BEHAVIORS[self.source]
            if self.behaviors is None:
                self.behaviors = list(behaviors)
            if self.target_behavior is None:
                self.target_behavior = target
        if self.source in ("ml100k", "ml1m") and self.rating_behaviors is None:
            self.rating_behaviors = dict(MOVIELENS_RATING_BEHAVIORS)
        if self.source == "samples" and self.item_columns is None:
            self.item_columns = ItemColumns()
        if self.source in MAPPED_SOURCES:
            if self.columns is None:
                self.columns = InteractionColumns()
            if self.item_columns is None:
                self.item_columns = ItemColumns()

    def validate(self) -> None:
        """Cross-field checks; raises :class:`ConfigError` naming the key."""
        if not _SAFE_NAME.match(self.name):
            raise ConfigError(f"name: {self.name!r} must be letters, digits, '.', '_' or '-' "
                              "(it names the cache folder)")
        if self.source != "synthetic" and not self.path:
            raise ConfigError(f"path: required for source {self.source!r}")
        if not self.behaviors or self.target_behavior is None:
            raise ConfigError(f"behaviors and target_behavior are required for source {self.source!r}")
        if len(set(self.behaviors)) != len(self.behaviors):
            raise ConfigError(f"behaviors: {self.behaviors} has duplicates")
        if self.target_behavior not in self.behaviors:
            raise ConfigError(f"target_behavior: {self.target_behavior!r} is not in behaviors {self.behaviors}")
        for raw, name in self.behavior_map.items():
            if name not in self.behaviors:
                raise ConfigError(f"behavior_map.{raw}: {name!r} is not in behaviors {self.behaviors}")
        for rating, name in (self.rating_behaviors or {}).items():
            if name not in self.behaviors:
                raise ConfigError(f"rating_behaviors.{rating}: {name!r} is not in behaviors {self.behaviors}")
        for key in ("columns", "item_columns", "items_path", "timestamp_format"):
            if self.source == "samples" and key in ("items_path", "item_columns"):
                continue  # pre-split samples: the item catalog file and its columns
            users = GENERIC_SOURCES if key == "items_path" else MAPPED_SOURCES  # recbole finds its .item file itself
            if getattr(self, key) is not None and self.source not in users:
                also = "" if key == "items_path" else " and recbole"
                raise ConfigError(f"{key}: only used by the generic sources {list(GENERIC_SOURCES)}{also}, "
                                  f"not {self.source!r}")
        cols = self.columns
        if self.source in MAPPED_SOURCES and cols is not None and cols.behavior is None and cols.rating is not None:
            if not self.rating_behaviors:
                raise ConfigError("rating_behaviors: required when columns.behavior is null and columns.rating is set")
        if (self.source == "llara") != (self.llara_dataset is not None):
            raise ConfigError(f"llara_dataset: {self.llara_dataset!r}; set it (movielens, steam, lastfm) "
                              "exactly for source llara")
        if not self.llara_splits or any(s not in SPLITS for s in self.llara_splits):
            raise ConfigError(f"llara_splits: {self.llara_splits!r}; expected a non-empty list from {list(SPLITS)}")
        if self.k_core < 1:
            raise ConfigError(f"k_core: {self.k_core} must be >= 1 (1 disables the filter)")
        if self.min_target_interactions < 2:
            raise ConfigError(f"min_target_interactions: {self.min_target_interactions} must be >= 2 "
                              "(validation + test)")
        if self.max_history < 1:
            raise ConfigError(f"max_history: {self.max_history} must be >= 1")
        seen = set()
        for i, spec in enumerate(self.candidates):
            for split in spec.splits:
                key = (split, spec.sampler, spec.size, spec.seed)
                if key in seen:
                    raise ConfigError(f"candidates[{i}]: {key} is listed twice")
                seen.add(key)

    def resolve_path(self, key: str) -> Path:
        """The path in config field ``key`` with ``${VAR}`` expanded; clear error if unset."""
        value = getattr(self, key)
        if value is None:
            raise ConfigError(f"{key}: not set in the data config {self.name!r}")
        return Path(expand_env(str(value), key))

    @property
    def target_index(self) -> int:
        return self.behaviors.index(self.target_behavior)


def expand_env(value: str, key: str) -> str:
    """Expand ``${VAR}`` in ``value``; an unset variable is an error naming ``key``."""

    def _sub(match: re.Match) -> str:
        var = match.group(1)
        if var not in os.environ:
            hint = (" (the folder holding the datasets, e.g. export LLMREC_DATA_DIR=/path/to/data)"
                    if var == "LLMREC_DATA_DIR" else "")
            raise ConfigError(f"{key}: {value!r} uses ${{{var}}} but the environment variable {var} is not set; "
                              f"set it{hint}")
        return os.environ[var]

    return _ENV_VAR.sub(_sub, value)
