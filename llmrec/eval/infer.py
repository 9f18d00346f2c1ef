"""``llmrec infer`` / ``infer.py``: predictions of a TMF checkpoint (or a zero-shot LLM) for test users.

    python infer.py --config configs/infer/shop.yaml checkpoint=runs/tmf_smollm2_shop
    llmrec infer checkpoint=runs/tmf_smollm2_shop/checkpoints/step-00000150 mode=generate n_users=100

The run's resolved train config (``train_config.yaml`` in the checkpoint, or ``recipe``) says where the
data, text/image tables and graph tables come from (:func:`llmrec.pipeline.stages.ensure_inputs`); the model is
rebuilt with :meth:`llmrec.tmf.model.TMFModel.from_pretrained`. Every user of ``split`` (or a seeded subset of
``n_users``) gets the hybrid prompt of ``task`` (TMF Fig. 3) over the split's frozen candidate set, the one
the recipe's evaluation uses (``eval.candidates``: sampler, size, seed), and then

* ``mode: generate``: the LLM writes the item's name (TMF §4.3 "LLM-based Generation Process"), by HF
  ``generate`` or vLLM (``backend``), parsed with DESIGN's rules (``llmrec.metrics.parse_generation``);
* ``mode: rank``: every candidate's name is scored by its answer log-likelihood (``generation/ranking.py``);
* ``mode: both``: both, from the same prompts;
* ``mode: auto`` (default): ``rank`` under ``protocol: rerank``, ``generate`` under ``backend: vllm`` (vLLM ranks
  with one full prompt pass per candidate and no prefix-cache reads, C times generation's prompt work), else
  ``both``.

Under ``backend: vllm`` both steps run on the engine (ranking: :meth:`llmrec.generation.vllm.VLLMGenerator.rank`,
the HF ranking's scores); under ``hf`` on the HF model.

Paraphrases (choice): TMF §5.1 samples the instruction format "for training and testing", so
``paraphrase: sampled`` (default) draws one per user with ``numpy.random.default_rng([seed, row])``;
``fixed`` uses ``prompts.paraphrase`` for every user (what the training loop's validation does).

``checkpoint: null`` runs the recipe's base LLM untrained (zero-shot baseline): its LoRA starts as the
identity (PEFT initializes B = 0); the adaptors would be random, so only ``task: easy`` is allowed.

One JSON line per user is written to ``output`` (see docs/inference.md for the fields), plus
``<output>.meta.json`` with the resolved settings and counts.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from llmrec.config import ConfigError, load_config, to_dict
from llmrec.data.candidates import load_candidates
from llmrec.devices import autocast_dtype
from llmrec.generation.hf import GenerationSettings, HFGenerator
from llmrec.generation.ranking import candidate_log_likelihoods
from llmrec.generation.vllm import VLLMGenerator, VLLMSettings
from llmrec.io import write_json, write_jsonl
from llmrec.metrics import generative_metrics, parse_generation
from llmrec.tmf.collator import TMFCollator
from llmrec.tmf.model import MODEL_CONFIG_FILE, TMFModel
from llmrec.tmf.prompts.render import PromptRenderer, render_sample
from llmrec.train.checkpoint import latest_checkpoint, run_folder
from llmrec.train.config import TRAIN_CONFIG_FILE, evaluation_task, load_train_config

logger = logging.getLogger(__name__)


@dataclass
class RerankSettings:
    """``protocol: rerank``: a sequential recommender retrieves, the LLM re-ranks (docs/inference.md)."""

    retriever: str | None = None
    """A graph config (configs/graph/*.yaml) whose model retrieves from the whole catalog, trained on the
    recipe's split on first use and reused afterwards; null: the recipe's own graph_config."""
    k: int = 20
    """Items retrieved per user, all of which the LLM scores."""
    order: Literal["shuffled", "retriever"] = "shuffled"
    """Candidate order in the prompt: seeded shuffle per user (the LLM gets no hint of the retriever's order)
    or the retriever's order, best first."""
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    """Cut-offs of HR@K / NDCG@K over the whole catalog; each must be <= k."""

    def validate(self) -> None:
        if self.k < 2:
            raise ConfigError(f"rerank.k must be >= 2 (something to re-rank), got {self.k}")
        if not self.ks or any(not 1 <= x <= self.k for x in self.ks):
            raise ConfigError(f"rerank.ks {self.ks} must be non-empty and within 1..rerank.k ({self.k})")


@dataclass
class InferConfig:
    """One inference run (every key is described in docs/inference.md)."""

    checkpoint: str | None = None
    """A checkpoint folder, or a run's output_dir (its latest checkpoint); null: zero-shot base LLM."""
    recipe: str | None = None
    """Train recipe (configs/tmf_*.yaml): required when checkpoint is null or has no train_config.yaml."""
    train_overrides: list[str] = field(default_factory=list)
    """Dotted overrides of the train config, e.g. ``model.lm.dtype=bfloat16`` or ``eval.candidates.size=20``."""
    split: Literal["valid", "test"] = "test"
    task: Literal["easy", "medium", "hard"] | None = None
    """Prompt task; null: the recipe's eval.task, else curriculum.fixed_task, else hard (full TMF)."""
    mode: Literal["auto", "rank", "generate", "both"] = "auto"
    """auto: rank under protocol rerank, generate under backend vllm, else both (:func:`resolve_mode`)."""
    protocol: Literal["sampled", "rerank"] = "sampled"
    """sampled: the recipe's frozen candidate sets; rerank: the retriever's top ``rerank.k`` of the whole
    catalog, re-ranked by the LLM (mode: rank; :mod:`llmrec.eval.rerank`)."""
    rerank: RerankSettings = field(default_factory=RerankSettings)
    backend: Literal["hf", "vllm"] = "hf"
    """Generation and ranking backend (docs/inference.md "vLLM backend"; protocol rerank ranks on HF)."""
    batch_size: int = 8
    """Prompts per generation batch (vLLM: per prompt-embedding batch, generation and ranking)."""
    rank_batch_size: int = 32
    """(prompt, candidate) rows per HF ranking forward pass."""
    rank_method: Literal["packed", "prefix", "full"] = "packed"
    """How ranking runs the LM (docs/inference.md "Candidate ranking"); same scores, packed is fastest."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    vllm: VLLMSettings = field(default_factory=VLLMSettings)
    n_users: int | None = None
    """Predict for a seeded random subset of this many users (null: every user of the split)."""
    paraphrase: Literal["sampled", "fixed"] = "sampled"
    seed: int = 0
    """Seeds the user subset and the paraphrase draws."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    """Autocast of the forward passes (auto: bf16 where the device supports it)."""
    device: str = "auto"
    """auto: cuda if available (the HF model stays on cpu under backend=vllm), else cpu."""
    output: str | None = None
    """Predictions JSONL; null: ``<run>/predictions/<step-…>-<split>-<task>.jsonl`` beside the checkpoints
    (required when zero-shot)."""
    save_prompts: bool = False
    """Also store each prompt's text (slots shown as [MT_i:k] / [MT_b:k])."""
    drop_modalities: list[Literal["image", "text", "graph"]] = field(default_factory=list)
    """Modalities masked out of the fusion at inference (an ablation; ``TMFModel.drop_modalities``)."""

    def validate(self) -> None:
        for key in ("batch_size", "rank_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.n_users is not None and self.n_users < 1:
            raise ConfigError(f"n_users must be >= 1 or null, got {self.n_users}")
        if self.checkpoint is None and self.recipe is None:
            raise ConfigError("checkpoint is null (zero-shot) so recipe must name a train recipe (configs/tmf_*.yaml)")
        if self.checkpoint is None and self.output is None:
            raise ConfigError("a zero-shot run (checkpoint: null) needs an explicit output path")
        if self.checkpoint is None and self.task not in (None, "easy"):
            raise ConfigError(f"task={self.task!r} with checkpoint: null would feed untrained (random) adaptor "
                              "vectors; zero-shot runs use task: easy")
        if len(set(self.drop_modalities)) != len(self.drop_modalities) or len(self.drop_modalities) == 3:
            raise ConfigError(f"drop_modalities {self.drop_modalities}: each at most once, and at least one of "
                              "image / text / graph must stay")
        if self.protocol == "rerank" and self.mode not in ("rank", "auto"):
            raise ConfigError(f"protocol: rerank orders the retrieved items by candidate ranking; set mode: rank "
                              f"(got {self.mode!r})")


def load_infer_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> InferConfig:
    return load_config(InferConfig, path, overrides)


# ----------------------------------------------------------------------------- checkpoint and config
def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder (holds tmf_model.yaml) or a run folder (its latest checkpoint)."""
    folder = Path(path)
    if (folder / MODEL_CONFIG_FILE).is_file():
        return folder
    found = latest_checkpoint(folder) if folder.is_dir() else None
    if found is None:
        raise FileNotFoundError(f"checkpoint: {folder} is neither a checkpoint folder (no {MODEL_CONFIG_FILE}) "
                                "nor a run folder with checkpoints/")
    logger.info("checkpoint: using %s, the latest of %s", found, folder)
    return found


def resolve_train_config(cfg: InferConfig, checkpoint: Path | None) -> Any:
    """The recipe's TrainConfig: ``recipe`` when given, else the checkpoint's own ``train_config.yaml``."""
    if cfg.recipe is not None:
        if checkpoint is not None and (checkpoint / TRAIN_CONFIG_FILE).is_file():
            logger.warning("recipe %s given: it replaces %s", cfg.recipe, checkpoint / TRAIN_CONFIG_FILE)
        return load_train_config(cfg.recipe, cfg.train_overrides)
    path = checkpoint / TRAIN_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint}: no {TRAIN_CONFIG_FILE}; set recipe: to the train recipe it was "
                                "trained with (it names the data, encode and graph configs)")
    return load_train_config(path, cfg.train_overrides)


def resolve_task(cfg: InferConfig, train_cfg: Any) -> str:
    """``task`` when set, else the task the recipe is evaluated on (:func:`llmrec.train.config.evaluation_task`)."""
    return cfg.task or evaluation_task(train_cfg)


def resolve_run(cfg: InferConfig) -> tuple[Path | None, Any, str]:
    """``(checkpoint or None, train config, task)`` of an inference run; zero-shot runs must use task easy."""
    checkpoint = resolve_checkpoint(cfg.checkpoint) if cfg.checkpoint is not None else None
    train_cfg = resolve_train_config(cfg, checkpoint)
    task = resolve_task(cfg, train_cfg)
    if checkpoint is None and task != "easy":
        raise ConfigError(f"zero-shot runs use task: easy (the recipe resolves the task to {task!r})")
    return checkpoint, train_cfg, task


def default_output(checkpoint: Path, split: str, task: str) -> Path:
    """``<run>/predictions/<step-…>-<split>-<task>.jsonl``: beside the run, not inside the checkpoint, whose
    folder ``keep_last`` rotation deletes."""
    return run_folder(checkpoint) / "predictions" / f"{checkpoint.name}-{split}-{task}.jsonl"


def resolve_mode(cfg: InferConfig) -> str:
    """``cfg.mode``, with ``auto`` resolved: rank (protocol rerank), generate (backend vllm) or both."""
    if cfg.mode != "auto":
        return cfg.mode
    if cfg.protocol == "rerank":
        return "rank"
    return "generate" if cfg.backend == "vllm" else "both"


def resolve_device(cfg: InferConfig) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() and cfg.backend == "hf" else "cpu")


# ----------------------------------------------------------------------------- prompts
def select_rows(n_rows: int, n_users: int | None, seed: int, split: str) -> np.ndarray:
    """Every row, or a seeded random subset of ``n_users`` rows (sorted)."""
    if n_users is None or n_users >= n_rows:
        return np.arange(n_rows)
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    return np.sort(rng.choice(n_rows, n_users, replace=False))


def build_prompts(cfg: InferConfig, renderer: Any, dataset: Any, candidate_set: Any, task: str,
                  rows: np.ndarray) -> list[Any]:
    prompts = []
    for row in rows.tolist():
        rng = np.random.default_rng([cfg.seed, row]) if cfg.paraphrase == "sampled" else None
        prompts.append(render_sample(renderer, dataset, cfg.split, row, candidate_set, task, rng))
    return prompts


# ----------------------------------------------------------------------------- records
def prediction_records(dataset: Any, renderer: Any, split: str, rows: np.ndarray, prompts: list[Any],
                       generations: list[str] | None, scores: np.ndarray | None,
                       save_prompts: bool = False) -> list[dict[str, Any]]:
    """One JSON-able dict per user (the fields of docs/inference.md)."""
    samples = dataset.samples[split]
    users = samples.data.column("user").to_pylist()
    records = []
    for k, (row, prompt) in enumerate(zip(rows.tolist(), prompts, strict=True)):
        names = [renderer.item_name(c) for c in prompt.candidates]
        target = prompt.candidates[prompt.target_index]
        record: dict[str, Any] = {
            "user": dataset.user_ids[users[row]], "split": split, "row": row, "task": prompt.task,
            "paraphrase": prompt.paraphrase,
            "candidates": [{"item_id": dataset.item_ids[c], "title": n}
                           for c, n in zip(prompt.candidates, names, strict=True)],
            "target_index": prompt.target_index,
            "target": {"item_id": dataset.item_ids[target], "title": renderer.item_name(target)},
        }
        if generations is not None:
            parsed = parse_generation(generations[k], names)
            record["generation"] = generations[k]
            record["parsed_index"] = parsed
            record["parsed_item_id"] = None if parsed is None else dataset.item_ids[prompt.candidates[parsed]]
        if scores is not None:
            record["scores"] = [float(s) for s in scores[k]]
            record["ranked_index"] = int(np.argmax(scores[k]))
        if save_prompts:
            record["prompt"] = prompt.text()
        records.append(record)
    return records


# ----------------------------------------------------------------------------- running
def load_model(cfg: InferConfig, checkpoint: Path | None, train_cfg: Any, tables: Any) -> Any:
    if checkpoint is None:
        logger.info("zero-shot: %s without fine-tuning (LoRA is the identity at initialization)",
                    train_cfg.model.lm.name_or_path)
        model = TMFModel(train_cfg.model, tables)
    else:
        model_overrides = [o[len("model."):] for o in cfg.train_overrides if o.startswith("model.")]
        model = TMFModel.from_pretrained(checkpoint, tables, overrides=model_overrides)
    if cfg.drop_modalities:
        logger.info("ablation: modalities %s masked out of the fusion", cfg.drop_modalities)
        model.drop_modalities(cfg.drop_modalities)
    return model


def make_generator(cfg: InferConfig, model: Any, tokenizer_collator: Any, answer_collator: Any,
                   checkpoint: Path | None, autocast: torch.dtype | None) -> Any:
    if cfg.backend == "vllm":
        return VLLMGenerator(model, tokenizer_collator, checkpoint, cfg.generation, cfg.vllm,
                             answer_collator=answer_collator)
    return HFGenerator(model, tokenizer_collator, cfg.generation, answer_collator=answer_collator,
                       autocast_dtype=autocast)


def rank_prompts(cfg: InferConfig, model: Any, answer_collator: Any, renderer: Any, prompts: list[Any],
                 autocast: torch.dtype | None, progress: bool = True) -> np.ndarray:
    """``[n_prompts, C]`` candidate log-likelihoods under the run's autocast
    (``cfg.rank_batch_size``, ``rank_method``)."""
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        return candidate_log_likelihoods(model, answer_collator, renderer, prompts, cfg.rank_batch_size, progress,
                                         method=cfg.rank_method)


def run_inference(cfg: InferConfig, dataset: Any, tables: Any, *, progress: bool = True) -> Path:
    """Write the predictions of ``cfg`` on ``dataset`` with ``tables`` (the recipe's, built by
    ``llmrec.pipeline.stages.ensure_inputs``) and return their path."""
    if cfg.protocol != "sampled":
        raise ConfigError(f"protocol: {cfg.protocol} runs through llmrec.eval.rerank.run_rerank (llmrec infer "
                          "dispatches on it)")
    start = time.perf_counter()
    checkpoint, train_cfg, task = resolve_run(cfg)
    output = Path(cfg.output) if cfg.output else default_output(checkpoint, cfg.split, task)
    device = resolve_device(cfg)
    model = load_model(cfg, checkpoint, train_cfg, tables).to(device).eval()
    autocast = autocast_dtype(cfg.precision, device)
    renderer = PromptRenderer(train_cfg.prompts, dataset)
    cands = train_cfg.eval.candidates
    candidate_set = load_candidates(dataset, cfg.split, sampler=cands.sampler, size=cands.size, seed=cands.seed)
    rows = select_rows(len(dataset.samples[cfg.split]), cfg.n_users, cfg.seed, cfg.split)
    prompts = build_prompts(cfg, renderer, dataset, candidate_set, task, rows)
    mode = resolve_mode(cfg)
    logger.info("%s: %d of %d %s users, task %s, %d candidates (%s, seed %d), mode %s, backend %s",
                checkpoint or "zero-shot", len(rows), len(dataset.samples[cfg.split]), cfg.split, task,
                cands.size, cands.sampler, cands.seed, mode, cfg.backend)
    max_length = train_cfg.max_length
    answer_collator = TMFCollator(model.tokenizer, renderer, max_length, padding_side="right", with_answer=True)
    prompt_collator = TMFCollator(model.tokenizer, renderer, max_length, padding_side="left", with_answer=False)

    generations = scores = generator = None
    timings: dict[str, float] = {}
    try:
        if mode in ("generate", "both"):
            t0 = time.perf_counter()
            generator = make_generator(cfg, model, prompt_collator, answer_collator, checkpoint, autocast)
            engine = generator.where() if isinstance(generator, VLLMGenerator) else "HF generate"
            logger.info("generate: %s; the TMF model (prompt embeddings) on %s, precision %s", engine, device,
                        cfg.precision)
            generations = generator.generate(prompts, cfg.batch_size, progress)
            timings["generate_s"] = time.perf_counter() - t0
        if mode in ("rank", "both"):
            t0 = time.perf_counter()
            if cfg.backend == "vllm":
                if not isinstance(generator, VLLMGenerator):  # in-process, the generator keeps its engine for both
                    generator = make_generator(cfg, model, prompt_collator, answer_collator, checkpoint, autocast)
                logger.info("rank: %s, answer log-likelihoods from prompt logprobs; the TMF model (prompt embeddings) "
                            "on %s, precision %s", generator.where(), device, cfg.precision)
                scores = generator.rank(prompts, cfg.batch_size, progress)
            else:
                logger.info("rank: HF model on %s (%s, %s)", device, cfg.rank_method, cfg.precision)
                scores = rank_prompts(cfg, model, answer_collator, renderer, prompts, autocast, progress)
            timings["rank_s"] = time.perf_counter() - t0
    finally:  # the vLLM engine (a subprocess, or the device's memory) is released on errors too
        if isinstance(generator, VLLMGenerator):
            generator.close()
    records = prediction_records(dataset, renderer, cfg.split, rows, prompts, generations, scores, cfg.save_prompts)
    write_jsonl(output, records)
    meta = {"config": to_dict(cfg), "checkpoint": None if checkpoint is None else str(checkpoint),
            "task": task, "mode": mode, "n_users": len(rows), "n_split_users": len(dataset.samples[cfg.split]),
            "candidates": to_dict(cands), "dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint,
            "truncated_prompts": prompt_collator.truncations + answer_collator.truncations,
            "seconds": time.perf_counter() - start, **timings}
    write_json(output.with_name(output.name + ".meta.json"), meta, indent=1)
    if generations is not None:
        counts = generative_metrics(generations, [[c["title"] for c in r["candidates"]] for r in records],
                                    [r["target_index"] for r in records])
        logger.info("generation: %d/%d valid, %d/%d correct", counts["n_valid"], counts["n_total"],
                    counts["n_correct"], counts["n_total"])
    logger.info("wrote %d predictions to %s (%.1f s)", len(records), output, meta["seconds"])
    return output
