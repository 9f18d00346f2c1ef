"""Can vLLM score a candidate answer exactly after ``{"prompt_embeds": tensor}`` prompts (issue 16, item 3)?

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=2 OMP_WAIT_POLICY=PASSIVE \
        taskset -c 1 .venv-vllm/bin/python bench/vllm_score_probe.py [--model <HF folder>] [--out <json>]

The reference is what ``llmrec/generation/ranking.py`` computes: the summed ``log_softmax`` (full vocabulary,
fp32) of the answer's training token ids (``" <name>"`` + end token) given the prompt's embeddings, here from
``AutoModelForCausalLM`` on the same folder vLLM loads (default: the safetensors folder llmrec converts the
embedded SmolLM2 GGUF into, ``$LLMREC_CACHE_DIR/lm/SmolLM2-135M-Instruct*``; pass a merged-LoRA folder from
``.cache/vllm-merged`` to check a LoRA). Prompts are token embeddings with two positions replaced by random
"slot" vectors, so they are not expressible as token ids. One engine (``dtype=float32``,
``enable_prompt_embeds``, ``logprobs_mode="raw_logprobs"``) answers every route, each as one batched call:

* ``plain_prompt_logprobs``: ``SamplingParams(prompt_logprobs=0)`` on the prompt embeddings (expected: None);
* ``choice_grammar``: greedy with ``StructuredOutputsParams(choice=[answer])``, ``allowed_token_ids`` = the
  answer's ids + end token, ``logprobs=1``; reports whether the generated ids are the training ids and compares
  the returned logprobs with HF's full-vocabulary ones and with HF's renormalised over the tokens that spell a
  prefix of the rest of the answer (what a grammar mask leaves);
* ``allowed_ids_only``: the same without the grammar (the greedy path may leave the answer);
* ``mixed_prompt_logprobs``: the answer appended to the prompt as real token ids (``EmbedsPrompt`` mixed mode:
  ``prompt_token_ids`` = placeholders + answer ids, ``prompt_is_token_ids`` = False for the embedding rows, True
  for the answer) with ``prompt_logprobs=0``: the logprob of each answer token at its prompt position;
* ``mixed_all_embeds``: as above, but the answer rows also given as embeddings (HF's ``embed_tokens``), every
  ``prompt_is_token_ids`` False (the ids only name the scoring targets);
* ``forced_logits_processor``: greedy decoding forced onto the answer ids by a custom logits processor
  (``ForceTokens``, applied by the sampler after it takes the raw logprobs), ``logprobs=0``.

Prints one line per route (pairs, generated == training ids, max |vLLM - HF| per summed answer and per token)
and writes the details to ``--out`` (default ``bench/out/vllm_score_probe.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

PROMPTS = [
    ("Question: What is the capital of France?\nAnswer:",
     ["Paris", "Rome", "Lyon", "The city of light"]),
    ("Question: Which book should I read after The Hobbit?\nAnswer:",
     ["The Lord of the Rings", "Harry Potter and the Philosopher's Stone", "Dune", "Eragon"]),
    ("The user watched: Toy Story; Finding Nemo; Up.\nWhich movie will the user watch next?\nAnswer:",
     ["Inside Out", "Ratatouille", "The Godfather Part II", "WALL-E"]),
    ("Question: Name a programming language.\nAnswer:",
     ["Python", "C++", "JavaScript (ES2020)", "Rust"]),
]
TOLERANCE = 1e-3
VOCAB: list[str] = []  # decoded single tokens, filled on first use


class ForceTokens(LogitsProcessor):
    """Forces request ``i`` onto ``extra_args["force_ids"]``: every other logit is -inf at each step. Not argmax
    invariant, so vLLM's sampler applies it after it computed the raw logprobs it returns."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        self.forced: dict[int, tuple[list[int], list[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.forced.pop(index, None)
        for index, params, _, output_ids in batch_update.added:
            ids = ((params.extra_args or {}).get("force_ids") if params is not None else None)
            if ids:
                self.forced[index] = (list(ids), output_ids)
            else:
                self.forced.pop(index, None)
        for a, b, direction in batch_update.moved:
            at_a, at_b = self.forced.pop(a, None), self.forced.pop(b, None)
            if at_a is not None:
                self.forced[b] = at_a
            if direction == MoveDirectionality.SWAP and at_b is not None:
                self.forced[a] = at_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, (ids, output_ids) in self.forced.items():
            token = ids[min(len(output_ids), len(ids) - 1)]
            row = torch.full_like(logits[index], float("-inf"))
            row[token] = 0.0
            logits[index] = row
        return logits


def default_model_folder() -> str:
    root = Path(os.environ.get("LLMREC_CACHE_DIR", ".cache")) / "lm"
    found = sorted(p for p in root.glob("SmolLM2-135M-Instruct*") if (p / "config.json").is_file())
    if not found:
        raise FileNotFoundError(f"no converted SmolLM2 folder under {root} (load the model once with llmrec)")
    return str(found[0])


def build_pairs(tokenizer: Any, embed: torch.nn.Module) -> list[dict[str, Any]]:
    """(prompt embeddings, answer ids incl. the end token, answer text) for every prompt x answer."""
    gen = torch.Generator().manual_seed(0)
    scale = embed.weight.norm(dim=1).mean()
    pairs = []
    for p, (text, answers) in enumerate(PROMPTS):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        with torch.no_grad():
            embeds = embed(torch.tensor(ids)).clone()
        for pos in (2, len(ids) // 2):  # two "slot" vectors that no token id spells
            vec = torch.randn(embeds.shape[1], generator=gen)
            embeds[pos] = vec / vec.norm() * scale
        for name in answers:
            answer_ids = tokenizer(" " + name, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
            pairs.append({"prompt": p, "answer": name, "embeds": embeds, "ids": answer_ids,
                          "text": tokenizer.decode(answer_ids[:-1])})
    return pairs


@torch.no_grad()
def hf_logprobs(model: Any, embeds: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """``[len(ids), vocab]`` fp32 log_softmax predicting each of ``ids`` after ``embeds`` (teacher forcing)."""
    answer = model.get_input_embeddings()(torch.tensor(ids))
    logits = model(inputs_embeds=torch.cat([embeds, answer]).unsqueeze(0)).logits[0].float()
    start = embeds.shape[0] - 1
    return torch.log_softmax(logits[start:start + len(ids)], dim=-1)


def prefix_token_sets(tokenizer: Any, text: str, eos: int) -> list[set[int]]:
    """Tokens a one-choice grammar allows at each step of the canonical path: those spelling a non-empty prefix
    of the rest of ``text`` (then only the end token)."""
    if not VOCAB:
        VOCAB.extend(tokenizer.decode([i]) for i in range(len(tokenizer)))
    vocab = VOCAB
    canonical = tokenizer(text, add_special_tokens=False).input_ids
    sets, done = [], 0
    for token in canonical:
        rest = text[done:]
        sets.append({i for i, s in enumerate(vocab) if s and rest.startswith(s)})
        done += len(vocab[token])
    return sets + [{eos}]


def output_token_logprobs(completion: Any) -> tuple[list[int], list[float]]:
    ids = list(completion.token_ids)
    return ids, [step[t].logprob for t, step in zip(ids, completion.logprobs, strict=True)]


def compare(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    scored = [r for r in rows if r.get("vllm_sum") is not None]
    exact_path = sum(r["path_ok"] for r in rows)
    sum_err = max((abs(r["vllm_sum"] - r["hf_sum"]) for r in scored), default=math.nan)
    tok_err = max((max(abs(a - b) for a, b in zip(r["vllm_tokens"], r["hf_tokens"], strict=True)) for r in scored),
                  default=math.nan)
    summary = {"route": name, "pairs": len(rows), "generated_ids_equal_training_ids": exact_path,
               "scored": len(scored), "max_abs_sum_diff": sum_err, "max_abs_token_diff": tok_err,
               "exact": bool(scored) and len(scored) == len(rows) and exact_path == len(rows) and sum_err <= TOLERANCE}
    print(f"{name:26s} pairs {len(rows)}  ids==training {exact_path}/{len(rows)}  scored {len(scored)}  "
          f"max|d sum| {sum_err:.3g}  max|d token| {tok_err:.3g}  exact(1e-3) {summary['exact']}", flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="HF folder (default: the converted SmolLM2 in the cache)")
    parser.add_argument("--out", default="bench/out/vllm_score_probe.json")
    args = parser.parse_args()
    folder = args.model or default_model_folder()

    import vllm
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm.sampling_params import StructuredOutputsParams

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    eos = tokenizer.eos_token_id
    pairs = build_pairs(tokenizer, hf.get_input_embeddings())
    for pair in pairs:
        lp = hf_logprobs(hf, pair["embeds"], pair["ids"])
        pair["hf_tokens"] = [float(lp[j, t]) for j, t in enumerate(pair["ids"])]
    print(f"model {folder}; {len(pairs)} (prompt, answer) pairs, answer lengths (incl. end token) "
          f"{sorted({len(p['ids']) for p in pairs})}; HF reference {time.perf_counter() - t0:.1f} s", flush=True)

    t1 = time.perf_counter()
    llm = vllm.LLM(model=folder, enable_prompt_embeds=True, dtype="float32", logprobs_mode="raw_logprobs",
                   max_model_len=512, seed=0, logits_processors=[ForceTokens])
    engine_s = time.perf_counter() - t1
    print(f"vllm {vllm.__version__} engine started in {engine_s:.1f} s", flush=True)
    results: dict[str, Any] = {"model": folder, "vllm": vllm.__version__, "engine_start_s": engine_s, "routes": {}}
    plain = [{"prompt_embeds": p["embeds"]} for p in pairs]

    def run(name: str, requests: list[Any], params: list[Any], score: Any) -> None:
        start = time.perf_counter()
        try:
            outputs = llm.generate(requests, params, use_tqdm=False)
            rows = [score(pair, out) for pair, out in zip(pairs, outputs, strict=True)]
            summary = compare(name, rows)
        except (ValueError, RuntimeError, TypeError, KeyError, IndexError, AttributeError) as err:  # record why
            print(f"{name:26s} FAILED: {type(err).__name__}: {err}", flush=True)
            summary, rows = {"route": name, "error": f"{type(err).__name__}: {err}"}, []
        summary["seconds"] = time.perf_counter() - start
        results["routes"][name] = {"summary": summary, "rows": rows}

    # 1. prompt_logprobs on a pure prompt-embeds request
    def score_plain(pair: dict[str, Any], out: Any) -> dict[str, Any]:
        return {"answer": pair["answer"], "path_ok": False, "vllm_sum": None,
                "prompt_logprobs": repr(out.prompt_logprobs)}

    run("plain_prompt_logprobs", plain,
        [vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)] * len(plain),
        score_plain)

    # 2./3. greedy generation with returned logprobs, with and without a one-choice grammar
    def score_generated(pair: dict[str, Any], out: Any, renormalise: bool = False) -> dict[str, Any]:
        ids, lps = output_token_logprobs(out.outputs[0])
        ref = hf_logprobs(hf, pair["embeds"], ids)
        row = {"answer": pair["answer"], "training_ids": pair["ids"], "generated_ids": ids,
               "path_ok": ids == pair["ids"], "vllm_tokens": lps, "vllm_sum": sum(lps),
               "hf_tokens": [float(ref[j, t]) for j, t in enumerate(ids)], "hf_training_sum": sum(pair["hf_tokens"])}
        row["hf_sum"] = sum(row["hf_tokens"])
        if renormalise and row["path_ok"]:
            sets = prefix_token_sets(tokenizer, pair["text"], eos)
            row["hf_grammar_renormalised_tokens"] = [
                float(ref[j, t] - torch.logsumexp(ref[j, sorted(s)], 0))
                for j, (t, s) in enumerate(zip(ids, sets, strict=True))]
        return row

    choice = [vllm.SamplingParams(temperature=0.0, logprobs=1, max_tokens=len(p["ids"]) + 1,
                                  allowed_token_ids=sorted(set(p["ids"]) | {eos}),
                                  structured_outputs=StructuredOutputsParams(choice=[p["text"]])) for p in pairs]
    run("choice_grammar", plain, choice, lambda pair, out: score_generated(pair, out, renormalise=True))
    allowed = [vllm.SamplingParams(temperature=0.0, logprobs=1, max_tokens=len(p["ids"]) + 1,
                                   allowed_token_ids=sorted(set(p["ids"]) | {eos})) for p in pairs]
    run("allowed_ids_only", plain, allowed, score_generated)

    # 4./5. the answer appended as prompt tokens (mixed mode) + prompt_logprobs
    def score_prompt(pair: dict[str, Any], out: Any) -> dict[str, Any]:
        n = pair["embeds"].shape[0]
        plp = out.prompt_logprobs
        lps = None if plp is None else [plp[n + j][t].logprob for j, t in enumerate(pair["ids"])]
        return {"answer": pair["answer"], "path_ok": True, "vllm_tokens": lps,
                "vllm_sum": None if lps is None else sum(lps),
                "hf_tokens": pair["hf_tokens"], "hf_sum": sum(pair["hf_tokens"])}

    once = [vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)] * len(pairs)
    mixed = [{"prompt_embeds": torch.cat([p["embeds"], torch.zeros(len(p["ids"]), p["embeds"].shape[1])]),
              "prompt_token_ids": [0] * p["embeds"].shape[0] + p["ids"],
              "prompt_is_token_ids": [False] * p["embeds"].shape[0] + [True] * len(p["ids"])} for p in pairs]
    run("mixed_prompt_logprobs", mixed, once, score_prompt)
    with torch.no_grad():
        all_embeds = [{"prompt_embeds": torch.cat([p["embeds"], hf.get_input_embeddings()(torch.tensor(p["ids"]))]),
                       "prompt_token_ids": [0] * p["embeds"].shape[0] + p["ids"],
                       "prompt_is_token_ids": [False] * (p["embeds"].shape[0] + len(p["ids"]))} for p in pairs]
    run("mixed_all_embeds", all_embeds, once, score_prompt)

    # 6. decoding forced onto the training ids by a logits processor applied after the raw logprobs
    forced = [vllm.SamplingParams(temperature=0.0, logprobs=0, max_tokens=len(p["ids"]),
                                  extra_args={"force_ids": p["ids"]}) for p in pairs]
    run("forced_logits_processor", plain, forced, score_generated)

    results["total_s"] = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    print(f"wrote {args.out}; total {results['total_s']:.1f} s", flush=True)


if __name__ == "__main__":
    main()
