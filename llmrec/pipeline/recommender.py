"""``llmrec.Recommender``: a trained TMF checkpoint asked about new histories, from Python.

    from llmrec import Recommender

    rec = Recommender.from_pretrained("runs/tmf_smollm2_shop")          # a run folder or one checkpoint
    top = rec.recommend([("p17", "view"), ("p17", "cart"), ("p3", "purchase")], k=5)
    top.items[0].item_id, top.items[0].score                             # best first, log-likelihood scores

Loading is ``llmrec infer``'s own path (:func:`llmrec.pipeline.commands.inference_inputs` builds or reuses the
recipe's dataset and tables, :func:`llmrec.eval.infer.load_model` rebuilds the model), so a ranking here scores
exactly what ``llmrec infer mode=rank paraphrase=fixed`` scores for the same history and candidates.

Choices (also in docs/recommend.md):

* **Histories** are ``(item_id, behavior)`` or ``(item_id, behavior, timestamp)`` pairs (or dicts with those keys),
  oldest first; with timestamps they are sorted by time (ties keep their order). Only the newest ``max_history``
  interactions (the prepared dataset's) are kept, as in the splits; the collator shortens over-long prompts further.
* **Unknown items** (ids outside the checkpoint's catalog): ``unknown="error"`` raises :class:`UnknownItemError`
  naming the item; ``unknown="skip"`` drops them and lists them in :attr:`Recommendations.skipped`. An unknown
  behavior name is always an error.
* **Cold items** (a text / image row but no graph embedding: ``item_mask`` False in the graph table) keep their
  slot: the fusion zero-masks the missing modality (``adapters.fusion``: a masked modality is a zero row that no
  item attends to), so their ``[MT_i]`` vector comes from text and image alone, as for an item without an image.
  The graph encoders export a row for every item of the prepared catalog, so this arises with tables built or
  edited elsewhere; :attr:`Recommender.cold_items` lists them.
* **Candidates**: ``None`` means the whole catalog minus the history's items. A prompt lists at most
  ``chunk_size`` candidates (default the recipe's evaluation candidate-set size, what the model was trained and
  validated on); longer lists are cut into chunks of that size, one prompt each. ``rank`` scores every candidate on
  its chunk's prompt, so the cost is ``ceil(n / chunk_size)`` packed forward passes per user (the shop's 200
  items at size 10: 20 prompts per user). ``constrained`` and ``generate`` let the LLM name one item per prompt and
  run a knockout: each chunk's named item goes on to the next round until one prompt holds the rest; the result is
  that one item (``score`` None), or nothing when free generation names no candidate.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llmrec.devices import autocast_dtype
from llmrec.eval.infer import (
    InferConfig,
    load_model,
    make_generator,
    rank_prompts,
    resolve_checkpoint,
    resolve_device,
    resolve_task,
    resolve_train_config,
)
from llmrec.metrics import parse_generation
from llmrec.pipeline.commands import inference_inputs
from llmrec.tmf.collator import TMFCollator
from llmrec.tmf.prompts.render import PromptRenderer, RenderedPrompt

logger = logging.getLogger(__name__)

MODES = ("rank", "constrained", "generate")
Mode = Literal["rank", "constrained", "generate"]
Unknown = Literal["error", "skip"]


class UnknownItemError(KeyError):
    """An item id the checkpoint's catalog does not hold (``unknown="error"``)."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class RankedItem:
    item_id: str
    title: str
    score: float | None
    """Summed answer log-likelihood (``rank``); None for an item named by generation."""


@dataclass
class Recommendations:
    """One history's answer: ``items`` best first, plus what was left out and what the LLM wrote."""

    items: list[RankedItem]
    mode: str
    skipped: list[str] = field(default_factory=list)
    """Unknown item ids dropped from the history and candidates (``unknown="skip"``), in order."""
    generations: list[str] = field(default_factory=list)
    """Raw text of every prompt of the generate modes (knockout rounds in order); empty for ``rank``."""

    def to_dict(self) -> dict[str, Any]:
        return {"items": [dataclasses.asdict(i) for i in self.items], "mode": self.mode, "skipped": self.skipped,
                "generations": self.generations}


@dataclass
class _Query:
    """A history resolved to internal indices, with its candidate pool."""

    history_items: list[int]
    history_behaviors: list[int]
    candidates: list[int]
    skipped: list[str]


class Recommender:
    """A TMF model with its catalog, prompts and collators; see the module docstring.

    Build it with :meth:`from_pretrained`; ``config`` holds the inference settings (an
    :class:`llmrec.eval.infer.InferConfig`: device, precision, batch sizes, rank method, generation).
    """

    def __init__(self, model: Any, dataset: Any, train_cfg: Any, config: InferConfig, *,
                 checkpoint: Path | None = None, chunk_size: int | None = None):
        self.model, self.dataset, self.train_cfg, self.config = model, dataset, train_cfg, config
        self.checkpoint = checkpoint
        self.task = resolve_task(config, train_cfg)
        self.chunk_size = chunk_size or train_cfg.eval.candidates.size
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        self.renderer = PromptRenderer(dataclasses.replace(train_cfg.prompts, sample_paraphrases=False), dataset)
        self.answer_collator = TMFCollator(model.tokenizer, self.renderer, train_cfg.max_length,
                                           padding_side="right", with_answer=True)
        self.prompt_collator = TMFCollator(model.tokenizer, self.renderer, train_cfg.max_length,
                                           padding_side="left", with_answer=False)
        self.autocast = autocast_dtype(config.precision, next(model.parameters()).device)
        self.item_index = {item_id: k for k, item_id in enumerate(dataset.item_ids)}
        self.behavior_index = {name: k for k, name in enumerate(dataset.behaviors)}
        self.max_history = (dataset.stats or {}).get("config", {}).get("max_history")
        self._generators: dict[str, Any] = {}

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path, *, recipe: str | None = None,
                        train_overrides: Sequence[str] = (), task: str | None = None, device: str = "auto",
                        precision: str = "fp32", rank_batch_size: int = 32, batch_size: int = 8,
                        chunk_size: int | None = None, dataset: Any = None, tables: Any = None,
                        **infer_settings: Any) -> Recommender:
        """Load a checkpoint folder (or a run folder: its latest checkpoint) with the tables it was trained with.

        The dataset and tables come from the checkpoint's ``train_config.yaml`` (or ``recipe``), built or reused
        by the pipeline's stages as ``llmrec infer`` does; pass ``dataset`` and ``tables`` to use ones in memory.
        Other keyword arguments are :class:`~llmrec.eval.infer.InferConfig` keys (``rank_method``, ``backend``,
        ``generation``, ...).
        """
        cfg = InferConfig(checkpoint=str(checkpoint), recipe=recipe, train_overrides=list(train_overrides), task=task,
                          device=device, precision=precision, rank_batch_size=rank_batch_size,
                          batch_size=batch_size, mode="rank", **infer_settings)
        cfg.validate()
        path = resolve_checkpoint(checkpoint)
        train_cfg = resolve_train_config(cfg, path)
        if dataset is None or tables is None:
            dataset, tables = inference_inputs(cfg)
        model = load_model(cfg, path, train_cfg, tables).to(resolve_device(cfg)).eval()
        return cls(model, dataset, train_cfg, cfg, checkpoint=path, chunk_size=chunk_size)

    # ------------------------------------------------------------------ catalog
    @property
    def cold_items(self) -> list[str]:
        """Item ids without a graph embedding (graph modality masked): their slots read text and image only."""
        missing = ~self.model.modality_mask_table[:, 2].cpu()
        return [self.dataset.item_ids[k] for k in missing.nonzero().flatten().tolist()]

    def _item(self, item_id: Any, where: str, unknown: Unknown, skipped: list[str]) -> int | None:
        index = self.item_index.get(str(item_id))
        if index is not None:
            return index
        if unknown == "skip":
            skipped.append(str(item_id))
            return None
        raise UnknownItemError(f"item {str(item_id)!r} ({where}) is not in the catalog of {self.dataset.name} "
                               f"({len(self.item_index)} items); pass unknown='skip' to drop unknown items")

    def _behavior(self, name: Any, where: str) -> int:
        if str(name) not in self.behavior_index:
            raise ValueError(f"behavior {name!r} ({where}) is not one of {self.dataset.name}'s behaviors "
                             f"{self.dataset.behaviors}")
        return self.behavior_index[str(name)]

    def _query(self, history: Iterable[Any], candidates: Iterable[Any] | None, unknown: Unknown) -> _Query:
        if unknown not in ("error", "skip"):
            raise ValueError(f"unknown must be 'error' or 'skip', got {unknown!r}")
        events = [_event(e, k) for k, e in enumerate(history)]
        timed = [e[2] is not None for e in events]
        if any(timed) and not all(timed):
            raise ValueError("give a timestamp for every interaction of a history or for none")
        if all(timed):
            events.sort(key=lambda e: e[2])  # stable: equal timestamps keep their order
        skipped: list[str] = []
        items, behaviors = [], []
        for k, (item_id, behavior, _) in enumerate(events):
            index = self._item(item_id, f"history position {k}", unknown, skipped)
            behavior_index = self._behavior(behavior, f"history position {k}")
            if index is not None:
                items.append(index)
                behaviors.append(behavior_index)
        if self.max_history is not None:
            items, behaviors = items[-self.max_history:], behaviors[-self.max_history:]
        if candidates is None:
            seen = set(items)
            pool = [k for k in range(len(self.dataset.item_ids)) if k not in seen]
        else:
            pool, listed = [], set()
            for k, item_id in enumerate(candidates):
                index = self._item(item_id, f"candidate {k}", unknown, skipped)
                if index is not None and index not in listed:  # a repeated candidate is scored once
                    pool.append(index)
                    listed.add(index)
        return _Query(items, behaviors, pool, skipped)

    # ------------------------------------------------------------------ prompts
    def _prompt(self, query: _Query, candidates: list[int]) -> RenderedPrompt:
        return self.renderer.render(query.history_items, query.history_behaviors, candidates, None, self.task)

    def _chunks(self, pool: list[int]) -> list[list[int]]:
        return [pool[s:s + self.chunk_size] for s in range(0, len(pool), self.chunk_size)]

    def _rank(self, queries: list[_Query], progress: bool) -> list[np.ndarray]:
        """Scores of every query's pool, in pool order; prompts of equal candidate counts are scored together."""
        prompts = [(q, start, self._prompt(query, chunk)) for q, query in enumerate(queries)
                   for start, chunk in zip(range(0, len(query.candidates), self.chunk_size),
                                           self._chunks(query.candidates), strict=True)]
        scores = [np.zeros(len(query.candidates)) for query in queries]
        for size in sorted({len(p.candidates) for _, _, p in prompts}):
            group = [(q, start, p) for q, start, p in prompts if len(p.candidates) == size]
            result = rank_prompts(self.config, self.model, self.answer_collator, self.renderer,
                                  [p for _, _, p in group], self.autocast, progress)
            for (q, start, _), row in zip(group, result, strict=True):
                scores[q][start:start + size] = row
        return scores

    def _generator(self, mode: str) -> Any:
        if mode not in self._generators:
            settings = dataclasses.replace(self.config.generation, constrained=mode == "constrained")
            cfg = dataclasses.replace(self.config, generation=settings)
            self._generators[mode] = make_generator(cfg, self.model, self.prompt_collator, self.answer_collator,
                                                    self.checkpoint, self.autocast)
        return self._generators[mode]

    def _knockout(self, queries: list[_Query], mode: str, progress: bool) -> list[tuple[list[int], list[str]]]:
        """Per query: the item the LLM names in the last round (or none) and every generation, round by round."""
        if self.chunk_size < 2:
            raise ValueError(f"mode {mode!r} needs chunk_size >= 2 (a knockout round must shrink the pool)")
        pools = [list(q.candidates) for q in queries]
        texts: list[list[str]] = [[] for _ in queries]
        done = [not pool for pool in pools]
        while not all(done):
            active = [q for q in range(len(queries)) if not done[q]]
            prompts = [(q, chunk, self._prompt(queries[q], chunk)) for q in active for chunk in self._chunks(pools[q])]
            generated = self._generator(mode).generate([p for _, _, p in prompts], self.config.batch_size, progress)
            named: list[list[int]] = [[] for _ in queries]
            for (q, chunk, _), text in zip(prompts, generated, strict=True):
                texts[q].append(text)
                choice = parse_generation(text, [self.renderer.item_name(c) for c in chunk])
                if choice is not None:
                    named[q].append(chunk[choice])
            for q in active:  # one prompt held the whole pool, or at most one item is left: final
                done[q] = len(pools[q]) <= self.chunk_size or len(named[q]) <= 1
                pools[q] = named[q]
        return list(zip(pools, texts, strict=True))

    # ------------------------------------------------------------------ API
    def recommend(self, history: Iterable[Any], candidates: Iterable[Any] | None = None, k: int = 10,
                  mode: Mode = "rank", unknown: Unknown = "error", progress: bool = False) -> Recommendations:
        """The top ``k`` items for one history (see the module docstring for histories, candidates and modes)."""
        return self.recommend_batch([history], None if candidates is None else [candidates], k, mode, unknown,
                                    progress)[0]

    def recommend_batch(self, histories: Sequence[Iterable[Any]],
                        candidates: Sequence[Iterable[Any] | None] | None = None, k: int = 10,
                        mode: Mode = "rank", unknown: Unknown = "error",
                        progress: bool = False) -> list[Recommendations]:
        """:meth:`recommend` for many histories at once (their prompts share forward passes); ``candidates`` is
        None (the whole catalog for everyone) or one entry per history (None there: the whole catalog)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if candidates is not None and len(candidates) != len(histories):
            raise ValueError(f"candidates has {len(candidates)} entries for {len(histories)} histories")
        queries = [self._query(h, None if candidates is None else candidates[u], unknown)
                   for u, h in enumerate(histories)]
        if mode == "rank":
            results = []
            for query, scores in zip(queries, self._rank(queries, progress), strict=True):
                order = np.argsort(-scores, kind="stable")[:k]
                items = [self._ranked(query.candidates[j], float(scores[j])) for j in order]
                results.append(Recommendations(items, mode, query.skipped))
            return results
        return [Recommendations([self._ranked(c, None) for c in chosen[:k]], mode, query.skipped, texts)
                for query, (chosen, texts) in zip(queries, self._knockout(queries, mode, progress), strict=True)]

    def _ranked(self, item: int, score: float | None) -> RankedItem:
        return RankedItem(self.dataset.item_ids[item], self.renderer.item_name(item), score)

    def __repr__(self) -> str:
        return (f"Recommender({self.checkpoint}, {self.dataset.name}: {len(self.item_index)} items, task "
                f"{self.task}, chunk_size {self.chunk_size})")


def _event(event: Any, position: int) -> tuple[Any, Any, float | None]:
    """``(item_id, behavior, timestamp or None)`` of a pair, triple or mapping."""
    if isinstance(event, Mapping):
        if "item_id" not in event or "behavior" not in event:
            raise ValueError(f"history position {position}: a mapping needs 'item_id' and 'behavior', got "
                             f"{sorted(event)}")
        return event["item_id"], event["behavior"], event.get("timestamp")
    if isinstance(event, (str, bytes)) or len(event) not in (2, 3):
        raise ValueError(f"history position {position}: expected (item_id, behavior[, timestamp]), got {event!r}")
    return event[0], event[1], (event[2] if len(event) == 3 else None)

