"""vLLM backend: the same slot-filled prompt embeddings as HF generation, decoded by a vLLM engine.

Two halves, one job each:

* this module (the environment that holds the TMF model: PEFT, fusion, adaptors) turns rendered prompts into
  prompt embeddings, prepares the weights vLLM loads, and collects the answers;
* :mod:`llmrec.generation.vllm_worker` (the environment that holds vLLM) runs the engine on them.

They share one process when ``vllm`` is importable here. Otherwise (the usual case: vLLM pins its own torch
and transformers, so it lives in ``.venv-vllm``, built by ``make vllm-venv``) the embeddings go to a job folder
as safetensors and ``<vllm.python> -m llmrec.generation.vllm_worker <folder>`` answers them: one engine start
per :meth:`VLLMGenerator.generate` call (docs/inference.md "vLLM backend").

vLLM's documented offline API (docs.vllm.ai, "Prompt Embedding Inputs", "LoRA Adapters", "Structured
Outputs")::

    llm = LLM(model=<folder>, enable_prompt_embeds=True[, enable_lora=True, max_lora_rank=r], dtype=...)
    llm.generate([{"prompt_embeds": tensor[L_i, hidden]}, ...], SamplingParams(stop=["\\n"], ...)
                 [, lora_request=LoRARequest("tmf", 1, <checkpoint folder>)])

* **Prompt embeddings** come from :meth:`llmrec.tmf.model.TMFModel.embed_inputs`, the tensors HF generation
  uses (DESIGN "Slots, not new tokens"): one ``[L_i, hidden]`` tensor per prompt, padding removed. They are
  exact only if the input embedding layer is not LoRA-adapted (vLLM skips its embedding layer for them);
  :func:`check_lora_targets` enforces that.
* **Weights** (``vllm.merge_lora``, default true): the LoRA adapter merged into a saved copy of the base
  weights (:func:`merged_model_folder`), which vLLM loads without ``enable_lora``. With ``merge_lora: false``
  the base folder (:func:`vllm_model_path`) plus ``LoRARequest`` on the checkpoint's PEFT adapter, for free
  generation only and one request at a time: vLLM 0.32's LoRA embedding layer fails on any engine step that
  mixes prompt embeddings with token ids (``vllm_worker.LORA_MIXED_STEP_BUG``; on GPUs this is vLLM issue
  #51122's illegal memory access, on this CPU an einsum size mismatch that hit a batched test now and then).
  Merged and unmerged give the same greedy answers (tests/generation/test_vllm_engine.py).
* **Stopping**: ``stop=["\\n"]`` ends an answer at its first line break (the metrics read only the first line,
  ``llmrec.metrics.first_line``), or at the end token. Unlike HF generation, a blank line *before* any text
  ends the answer too (empty, hence invalid); trained checkpoints answer ``" <title><eos>"``.
* **Constrained decoding** (``generation.constrained``): ``StructuredOutputsParams(choice=[...])`` over the
  candidates' answer texts as the collator writes them (``" <title>"`` in plain prompts). vLLM's grammar
  accepts every tokenization of a choice, not only the canonical one the model was trained on (the HF trie,
  :mod:`llmrec.generation.constraints`, allows only that): answers are always candidates, but may differ from
  the HF backend's constrained answers (docs/inference.md).
* **Ranking** (:meth:`VLLMGenerator.rank`): each candidate's answer ids (the ones HF ranking sums,
  :func:`llmrec.generation.ranking.shared_prompt_answers`) appended to the prompt embeddings as token ids (a mixed
  ``EmbedsPrompt``), scored from ``prompt_logprobs`` (:mod:`llmrec.generation.vllm_scoring`): exact, one request
  per (prompt, candidate). Pure ``prompt_embeds`` prompts get no prompt logprobs, and a ``choice`` grammar's
  logprobs are taken after its bitmask (docs/inference.md).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft.tuners.lora import LoraLayer
from tqdm.auto import tqdm

from llmrec.config import ConfigError
from llmrec.devices import batch_to_device
from llmrec.generation.constraints import candidate_answer_ids
from llmrec.generation.hf import GenerationSettings
from llmrec.generation.ranking import shared_prompt_answers
from llmrec.generation.vllm_scoring import SCORING_SAMPLING, score_answers
from llmrec.generation.vllm_worker import (
    LORA_MIXED_STEP_BUG,
    generate_texts,
    import_vllm,
    lora_request,
    read_answers,
    read_scores,
    read_timings,
    set_cpu_kvcache,
    shutdown_engine,
    start_engine,
    write_job,
)
from llmrec.io import commit_folder, temp_folder_beside
from llmrec.tmf.lm import gguf_cache_folder, resolve_source

logger = logging.getLogger(__name__)

LORA_NAME = "tmf"
VLLM_VENV_PYTHON = Path(".venv-vllm") / "bin" / "python"
"""Where ``make vllm-venv`` puts vLLM's Python, relative to the repository root."""
WORKER_MODULE = "llmrec.generation.vllm_worker"


@dataclass
class VLLMSettings:
    """Engine options passed to ``vllm.LLM`` (others keep vLLM's defaults) and where the engine runs."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.8
    """Fraction of GPU memory vLLM may claim (the HF side that computes prompt embeddings needs some)."""
    dtype: str = "bfloat16"
    """vLLM's compute dtype; the prompt embeddings are cast to it ("auto": vLLM chooses, embeddings keep
    the HF model's dtype). float32 on a CPU gives HF fp32's greedy answers."""
    max_model_len: int | None = None
    chunk_size: int = 256
    """Prompts whose embeddings are built and sent to vLLM at once (bounds host memory)."""
    enforce_eager: bool = False
    merge_lora: bool = True
    """Merge the checkpoint's LoRA adapter into a saved copy of the base weights (cached under
    ``$LLMREC_CACHE_DIR/vllm-merged``) and run vLLM without ``enable_lora``; false: base weights +
    ``LoRARequest``, for free generation only, one request at a time (vLLM 0.32's LoRA embedding layer fails
    on engine steps that mix prompt embeddings with token ids: ``vllm_worker.LORA_MIXED_STEP_BUG``)."""
    python: str | None = None
    """The Python of vLLM's environment, which runs the engine as a worker process; null: this process when it
    can import vllm, else ``.venv-vllm/bin/python`` (``make vllm-venv``) when that exists."""
    cpu_kvcache_gib: int = 2
    """Whole GiB of KV cache on a CPU (``VLLM_CPU_KVCACHE_SPACE``, an integer for vLLM; unless the environment
    sets it)."""
    max_num_batched_tokens: int | None = None
    """Tokens one engine step may process (vLLM's scheduler budget; longer prefills are chunked); null: vLLM's
    default. Smaller bounds the engine's activation memory."""
    max_num_seqs: int | None = None
    """Requests one engine step may hold (must be <= max_num_batched_tokens); null: vLLM's default."""

    def validate(self) -> None:
        if self.tensor_parallel_size < 1 or self.chunk_size < 1:
            raise ConfigError("vllm.tensor_parallel_size and vllm.chunk_size must be >= 1")
        for key in ("max_num_batched_tokens", "max_num_seqs"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"vllm.{key} must be >= 1 or null, got {value}")
        if (self.max_num_batched_tokens is not None and self.max_num_seqs is not None
                and self.max_num_seqs > self.max_num_batched_tokens):
            raise ConfigError(f"vllm.max_num_seqs ({self.max_num_seqs}) must be <= vllm.max_num_batched_tokens "
                              f"({self.max_num_batched_tokens}): vLLM refuses it")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.cpu_kvcache_gib <= 0:
            raise ConfigError(f"vllm.cpu_kvcache_gib must be > 0, got {self.cpu_kvcache_gib}")


def check_lora_targets(model: Any) -> None:
    """Raise if LoRA adapts the input embedding or the LM head (prompt embeddings would be inexact)."""
    for what, module in (("input embedding", model.causal_lm.get_input_embeddings()),
                         ("output embedding (lm_head)", model.causal_lm.get_output_embeddings())):
        if isinstance(module, LoraLayer):
            raise ValueError(f"the model's LoRA adapts its {what}; vLLM prompt embeddings are computed outside "
                             "vLLM and would miss that adapter. Train without embed_tokens/lm_head in "
                             "model.lora.target_modules or use backend=hf")


def vllm_model_path(lm_cfg: Any) -> str:
    """What ``vllm.LLM(model=...)`` loads for ``LMConfig`` ``lm_cfg`` (a GGUF source: its converted folder)."""
    source = resolve_source(lm_cfg)
    if not source.is_gguf:
        return source.folder_or_name
    folder = gguf_cache_folder(lm_cfg, source)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{lm_cfg.name_or_path}: the converted safetensors folder {folder} does not exist "
                                "yet; load the model once with llmrec (e.g. backend=hf on one user) to create it")
    return str(folder)


def merged_cache_root() -> Path:
    return Path(os.environ.get("LLMREC_CACHE_DIR", ".cache")) / "vllm-merged"


def _adapter_digest(adapter_dir: Path, base: str) -> str:
    digest = hashlib.sha256(base.encode())
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        digest.update((adapter_dir / name).read_bytes())
    return digest.hexdigest()[:12]


def merged_model_folder(model: Any, adapter_dir: str | Path, cache_root: str | Path | None = None) -> Path:
    """A folder with the base weights plus the LoRA update ``B @ A * scale`` (PEFT ``merge_and_unload``) and the
    tokenizer, which ``vllm.LLM`` loads like any model. Cached by the adapter's and base's identity; written
    atomically. ``model`` (a TMFModel) must hold the adapter of ``adapter_dir`` (it is merged from a copy)."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_model.safetensors to merge")
    lm_cfg = model.cfg.lm
    if lm_cfg.quantization_scheme != "none":
        raise ConfigError(f"vllm.merge_lora needs unquantized base weights (model.lm.quantization is "
                          f"{lm_cfg.quantization!r}); set vllm.merge_lora=false")
    base = str(lm_cfg.name_or_path)
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(base).name).strip("-") or "lm"
    folder = Path(cache_root or merged_cache_root()) / f"{label}-{_adapter_digest(adapter_dir, base)}"
    if (folder / "config.json").is_file():
        logger.info("vLLM weights: reusing the merged LoRA checkpoint %s", folder)
        return folder
    start = time.perf_counter()
    tmp = temp_folder_beside(folder)
    try:
        merged = copy.deepcopy(model.peft_model).merge_and_unload()
        merged.save_pretrained(str(tmp), safe_serialization=True)
        model.tokenizer.save_pretrained(str(tmp))
        del merged
        commit_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("vLLM weights: merged the LoRA adapter of %s into %s (%.1f s)", adapter_dir, folder,
                time.perf_counter() - start)
    return folder


@torch.no_grad()
def prompt_embeds_requests(model: Any, collator: Any, prompts: Sequence[Any], batch_size: int = 8,
                           dtype: torch.dtype | None = None) -> list[dict[str, torch.Tensor]]:
    """``[{"prompt_embeds": [L_i, hidden]}, ...]``: one unpadded CPU tensor per prompt, in order."""
    if collator.with_answer:
        raise ValueError("prompt embeddings for generation need a collator with with_answer=False")
    device = next(model.parameters()).device
    requests = []
    for start in range(0, len(prompts), batch_size):
        batch = batch_to_device(collator(list(prompts[start:start + batch_size])), device)
        embeds = model.embed_inputs(batch)
        keep = batch["attention_mask"].bool()
        for row in range(embeds.shape[0]):
            tensor = embeds[row][keep[row]].detach().to("cpu")
            requests.append({"prompt_embeds": tensor if dtype is None else tensor.to(dtype)})
    return requests


def candidate_choices(prompt: Any, answer_collator: Any, tokenizer: Any) -> list[str]:
    """The candidates' answers as text, exactly as training wrote them (the answer tokens without the end
    token, decoded): what ``StructuredOutputsParams(choice=...)`` allows."""
    return [tokenizer.decode(ids[:-1]) for ids in candidate_answer_ids(prompt, answer_collator)]


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def worker_python(engine: VLLMSettings) -> str | None:
    """The Python that runs the worker, or None to run vLLM in this process (see ``VLLMSettings.python``)."""
    if engine.python is not None:
        path = Path(engine.python).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"vllm.python: {path} does not exist (build vLLM's environment with "
                                    "`make vllm-venv`, or set vllm.python=null to run vLLM in this process)")
        return str(path)
    if importlib.util.find_spec("vllm") is not None:
        return None
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / VLLM_VENV_PYTHON).is_file():
            return str(root / VLLM_VENV_PYTHON)
    import_vllm()  # raises the ImportError that says how to build .venv-vllm
    return None


class VLLMGenerator:
    """Generates answers with vLLM from TMF prompt embeddings (see the module docstring).

    ``model`` (a :class:`~llmrec.tmf.model.TMFModel`) computes the embeddings; ``adapter_dir`` is the
    checkpoint folder holding its PEFT adapter (``None``: the base model, for zero-shot runs).
    ``answer_collator`` (``with_answer=True``, with a renderer) is needed for ``constrained`` decoding and for
    :meth:`rank`. ``llm``: an engine
    already started with :attr:`llm_kwargs` (tests share one between generators; each start costs minutes on a
    CPU). The engine runs in this process when ``vllm`` imports here, else in the worker of ``engine.python``.
    """

    def __init__(self, model: Any, collator: Any, adapter_dir: str | Path | None,
                 settings: GenerationSettings | None = None, engine: VLLMSettings | None = None, *,
                 answer_collator: Any = None, llm: Any = None):
        self.settings = settings or GenerationSettings()
        self.engine = engine or VLLMSettings()
        if collator.padding_side != "left" or collator.with_answer:
            raise ValueError("the vLLM backend needs TMFCollator(padding_side='left', with_answer=False)")
        if self.settings.constrained and (answer_collator is None or not answer_collator.with_answer):
            raise ValueError("constrained decoding needs answer_collator=TMFCollator(..., with_answer=True)")
        check_lora_targets(model)
        self.model = model
        self.collator = collator
        self.answer_collator = answer_collator
        self.lora: list[Any] | None = None
        if adapter_dir is not None:
            adapter_dir = Path(adapter_dir)
            if not (adapter_dir / "adapter_config.json").is_file():
                raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (not a PEFT adapter folder)")
        if adapter_dir is not None and not self.engine.merge_lora and self.settings.constrained:
            raise ValueError("generation.constrained with vllm.merge_lora=false is not supported: "
                             f"{LORA_MIXED_STEP_BUG}. Use vllm.merge_lora=true (the default)")
        if adapter_dir is not None and self.engine.merge_lora:
            self.model_path = str(merged_model_folder(model, adapter_dir))
        else:
            self.model_path = vllm_model_path(model.cfg.lm)
            if adapter_dir is not None:
                self.lora = [LORA_NAME, 1, str(adapter_dir.resolve())]
        self.embed_dtype = _torch_dtype(self.engine.dtype, model.causal_lm.get_input_embeddings().weight.dtype)
        self.llm = llm
        self._owns_engine = llm is None  # close() shuts down only an engine this generator started
        self.python = None if llm is not None else worker_python(self.engine)
        # seconds of the last generate() / rank(): engine_start_s (0 when the engine was already up) and
        # generate_s / rank_s
        self.last_timings: dict[str, float] = {}

    @property
    def llm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``vllm.LLM`` for this generator's weights and settings."""
        e = self.engine
        kwargs: dict[str, Any] = {"model": self.model_path, "enable_prompt_embeds": True,
                                  "tensor_parallel_size": e.tensor_parallel_size,
                                  "gpu_memory_utilization": e.gpu_memory_utilization, "dtype": e.dtype,
                                  "enforce_eager": e.enforce_eager, "seed": self.settings.seed}
        for key in ("max_model_len", "max_num_batched_tokens", "max_num_seqs"):
            if getattr(e, key) is not None:
                kwargs[key] = getattr(e, key)
        if self.lora is not None:
            kwargs.update(enable_lora=True, max_lora_rank=_supported_rank(self.model.cfg.lora.r), max_loras=1)
        return kwargs

    def sampling(self) -> dict[str, Any]:
        """Keyword arguments of ``vllm.SamplingParams`` (greedy unless ``do_sample``)."""
        s = self.settings
        return {"max_tokens": s.max_new_tokens, "temperature": s.temperature if s.do_sample else 0.0,
                "top_p": s.top_p if s.do_sample else 1.0, "seed": s.seed, "stop": ["\n"],
                "skip_special_tokens": True}

    def close(self) -> None:
        """Shut down the in-process engine this generator started (its engine-core process and threads); a no-op
        for the worker path and for an engine passed in as ``llm``.

        Left running until interpreter exit, vLLM's background threads abort the process there ("terminate called
        without an active exception"), which turns a passing pytest run into a failed one."""
        if self.llm is None or not self._owns_engine:
            return
        shutdown_engine(self.llm)
        self.llm = None
        gc.collect()

    def where(self) -> str:
        """Where the engine runs, for the log."""
        weights = "merged LoRA" if self.lora is None and self.engine.merge_lora else (
            "LoRARequest" if self.lora is not None else "base weights")
        place = "this process" if self.python is None else f"worker {self.python}"
        return f"vLLM ({weights}, dtype {self.engine.dtype}) in {place}"

    def _choices(self, prompts: Sequence[Any]) -> list[list[str]] | None:
        if not self.settings.constrained:
            return None
        return [candidate_choices(p, self.answer_collator, self.model.tokenizer) for p in prompts]

    def _embeds(self, prompts: Sequence[Any], batch_size: int) -> list[torch.Tensor]:
        requests = prompt_embeds_requests(self.model, self.collator, prompts, batch_size, self.embed_dtype)
        return [r["prompt_embeds"] for r in requests]

    @contextlib.contextmanager
    def _engine_call(self) -> Iterator[None]:
        """The TMF model in eval mode (restored afterwards) and the engine's CPU KV cache size set."""
        was_training = self.model.training
        self.model.eval()
        set_cpu_kvcache(self.engine.cpu_kvcache_gib)
        try:
            yield
        finally:
            self.model.train(was_training)

    def generate(self, prompts: Sequence[Any], batch_size: int = 8, progress: bool = True) -> list[str]:
        """Decoded first lines, one per prompt, in order (``batch_size``: prompts per embedding forward pass)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        start = time.perf_counter()
        with self._engine_call():
            if self.python is None:
                texts = self._generate_here(prompts, batch_size, progress)
            else:
                texts = self._generate_in_worker(prompts, batch_size, progress)
        logger.info("%s generated %d answers in %.1f s", self.where(), len(texts), time.perf_counter() - start)
        return texts

    def _generate_here(self, prompts: Sequence[Any], batch_size: int, progress: bool) -> list[str]:
        vllm = import_vllm()
        start = time.perf_counter()
        if self.llm is None:
            self.llm = start_engine(vllm, self.llm_kwargs)
        started = time.perf_counter()
        texts: list[str] = []
        chunks = list(_chunks(prompts, self.engine.chunk_size))
        for chunk in tqdm(chunks, desc="vllm generate", unit="chunk", disable=not progress, leave=False):
            texts.extend(generate_texts(self.llm, vllm, self._embeds(chunk, batch_size), self.sampling(),
                                        self._choices(chunk), self.lora))
        self.last_timings = {"engine_start_s": started - start, "generate_s": time.perf_counter() - started}
        return texts

    def _generate_in_worker(self, prompts: Sequence[Any], batch_size: int, progress: bool) -> list[str]:
        with tempfile.TemporaryDirectory(prefix="llmrec-vllm-job-") as folder:
            chunks = list(_chunks(prompts, self.engine.chunk_size))
            embeds = (self._embeds(chunk, batch_size) for chunk in
                      tqdm(chunks, desc="prompt embeddings", unit="chunk", disable=not progress, leave=False))
            write_job(folder, self.llm_kwargs, self.sampling(), self.lora, embeds, self._choices(prompts))
            self._run_worker(folder)
            texts = read_answers(folder, len(prompts))
            self.last_timings = read_timings(folder)
            return texts

    def _run_worker(self, folder: str) -> None:
        """Run ``<vllm.python> -m llmrec.generation.vllm_worker <folder>``; raise with the end of its log on failure."""
        command = [str(self.python), "-m", WORKER_MODULE, folder]
        log = Path(folder) / "worker.log"
        logger.info("running the vLLM engine in its own environment: %s (log: %s)", " ".join(command), log)
        with open(log, "w", encoding="utf-8") as handle:
            result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=_worker_env(), check=False)
        if result.returncode != 0:
            tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:])
            raise RuntimeError(f"the vLLM worker ({' '.join(command)}) exited with {result.returncode}; "
                               f"the end of its log:\n{tail}")

    # ------------------------------------------------------------------------- candidate ranking
    def rank(self, prompts: Sequence[Any], batch_size: int = 8, progress: bool = True) -> np.ndarray:
        """``[n_prompts, C]`` summed answer log-likelihood of every candidate, the scores of
        :func:`llmrec.generation.ranking.candidate_log_likelihoods` (same fitted prompt, same answer ids incl. the
        end token), computed by the engine (:mod:`llmrec.generation.vllm_scoring`). ``batch_size``: prompts per
        embedding forward pass; ``vllm.chunk_size`` prompts (times C requests) go to the engine at once."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if (self.answer_collator is None or not self.answer_collator.with_answer
                or self.answer_collator.renderer is None):
            raise ValueError("vLLM ranking needs answer_collator=TMFCollator(..., renderer, with_answer=True)")
        if self.lora is not None:
            raise ValueError("vLLM ranking with vllm.merge_lora=false (LoRARequest) is not supported: each scoring "
                             f"request mixes prompt embeddings with answer token ids, and {LORA_MIXED_STEP_BUG}. "
                             "Use vllm.merge_lora=true (the default) or backend=hf")
        sizes = {len(p.candidates) for p in prompts}
        if len(sizes) > 1:
            raise ValueError(f"every prompt needs the same number of candidates, got sizes {sorted(sizes)}")
        start = time.perf_counter()
        with self._engine_call():
            shared = [shared_prompt_answers(p, self.answer_collator, self.answer_collator.renderer) for p in prompts]
            if self.python is None:
                scores = self._rank_here(shared, batch_size, progress)
            else:
                scores = self._rank_in_worker(shared, batch_size, progress)
        logger.info("%s scored %d candidates of %d prompts in %.1f s", self.where(), sum(map(len, scores)),
                    len(scores), time.perf_counter() - start)
        return np.asarray(scores, dtype=np.float32).reshape(len(prompts), sizes.pop() if sizes else 0)

    def _ranking_embeds(self, shared: Sequence[tuple[Any, int, list[list[int]]]], batch_size: int,
                        first_prompt: int) -> list[torch.Tensor]:
        """The prompt embeddings of the fitted prompts, each as long as the prompt HF ranking scores after."""
        embeds = self._embeds([fitted for fitted, _, _ in shared], batch_size)
        for i, (tensor, (_, length, _)) in enumerate(zip(embeds, shared, strict=True)):
            if tensor.shape[0] != length:
                raise RuntimeError(f"prompt {first_prompt + i}: {tensor.shape[0]} prompt embeddings but the answer "
                                   f"collator's prompt has {length} tokens (collators with different settings?)")
        return embeds

    def _rank_here(self, shared: Sequence[tuple[Any, int, list[list[int]]]], batch_size: int,
                   progress: bool) -> list[list[float]]:
        vllm = import_vllm()
        start = time.perf_counter()
        if self.llm is None:
            self.llm = start_engine(vllm, self.llm_kwargs)
        started = time.perf_counter()
        scores: list[list[float]] = []
        chunks = list(_chunks(shared, self.engine.chunk_size))
        for chunk in tqdm(chunks, desc="vllm rank", unit="chunk", disable=not progress, leave=False):
            embeds = self._ranking_embeds(chunk, batch_size, len(scores))
            scores.extend(score_answers(self.llm, vllm, embeds, [answers for _, _, answers in chunk],
                                        lora_request(vllm, self.lora), first_prompt=len(scores)))
        self.last_timings = {"engine_start_s": started - start, "rank_s": time.perf_counter() - started}
        return scores

    def write_rank_job(self, folder: str | Path, shared: Sequence[tuple[Any, int, list[list[int]]]],
                       batch_size: int = 8, progress: bool = False) -> Path:
        """A rank job folder (:mod:`llmrec.generation.vllm_worker`) for the :func:`shared_prompt_answers` of the
        prompts: their embeddings in chunks of ``vllm.chunk_size`` and every candidate's answer ids."""
        chunks = list(_chunks(shared, self.engine.chunk_size))
        starts = np.cumsum([0] + [len(c) for c in chunks]).tolist()
        embeds = (self._ranking_embeds(chunk, batch_size, first) for chunk, first in
                  zip(tqdm(chunks, desc="prompt embeddings", unit="chunk", disable=not progress, leave=False), starts,
                      strict=False))
        return write_job(folder, self.llm_kwargs, SCORING_SAMPLING, self.lora, embeds, None, kind="rank",
                         answers=[answers for _, _, answers in shared])

    def _rank_in_worker(self, shared: Sequence[tuple[Any, int, list[list[int]]]], batch_size: int,
                        progress: bool) -> list[list[float]]:
        with tempfile.TemporaryDirectory(prefix="llmrec-vllm-job-") as folder:
            self.write_rank_job(folder, shared, batch_size, progress)
            self._run_worker(folder)
            scores = read_scores(folder, [len(answers) for _, _, answers in shared])
            self.last_timings = read_timings(folder)
            return scores


def _worker_env() -> dict[str, str]:
    """The worker inherits this environment, with this checkout first on its import path (so a .venv-vllm
    whose llmrec is another install still runs this code's worker)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _supported_rank(r: int) -> int:
    """vLLM's ``max_lora_rank`` must be one of its supported sizes; the smallest one >= r."""
    for size in (8, 16, 32, 64, 128, 256, 320, 512):
        if r <= size:
            return size
    raise ValueError(f"LoRA rank {r} exceeds what vLLM supports (512)")


def _torch_dtype(name: str, fallback: torch.dtype) -> torch.dtype:
    table = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16, "half": torch.float16}
    return table.get(name, fallback)

