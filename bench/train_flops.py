"""FLOP budget of a `bench/train_throughput.py` run: what each loop computes, how fast, and what 2x would need.

Counts the matrix-product FLOPs of one training sample for a Llama-architecture model with LoRA on the seven
projections (forward; backward = input gradients of the frozen weights + both gradients of LoRA; attention
forward and backward), for our loop (logits only at the answer tokens) and the plain loop (logits at every
token, with the input gradient of the tied output layer), on the real tokens the throughput run counted (the
plain loop's padding tokens are not counted, so its figure is a lower bound). Then measures, on this machine,
fp32 matrix products of the model's own shapes with the run's thread count: the rate that bounds a training
step, since every FLOP counted here is a matrix product.

    python bench/train_flops.py docs/results/throughput/train_throughput_s21_avx2.json

Writes bench/out/train_flops.{json,md} (``--out``). Run it on an idle machine (the matrix-product timing).
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


def projection_shapes(cfg: dict) -> dict[str, tuple[int, int]]:
    """``(in, out)`` of each LoRA target projection of one decoder layer."""
    d, inner = cfg["hidden_size"], cfg["intermediate_size"]
    kv = cfg["num_key_value_heads"] * cfg.get("head_dim", d // cfg["num_attention_heads"])
    return {"q": (d, d), "k": (d, kv), "v": (d, kv), "o": (d, d), "gate": (d, inner), "up": (d, inner),
            "down": (inner, d)}


def flops_per_sample(cfg: dict, tokens: float, answer_tokens: float, rank: int, full_logits: bool,
                     causal_attention: bool = True) -> dict:
    """Matrix-product FLOPs of one sample of ``tokens`` tokens (forward, backward, total), in GFLOP.

    Attention counts the causal half of ``QK^T`` and ``AV`` (``causal_attention``; false: the full square, as
    eager attention computes it). Backward skips what autograd skips: the input gradients of layer 0's q / k / v
    (their input, the frozen embeddings, needs none); the frozen output layer gets its input gradient only.
    """
    layers, d, vocab = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]
    shapes = projection_shapes(cfg)
    width = cfg["num_attention_heads"] * cfg.get("head_dim", d // cfg["num_attention_heads"])
    frozen = 2 * sum(i * o for i, o in shapes.values()) * tokens  # x W, per layer
    lora = 2 * sum(rank * (i + o) for i, o in shapes.values()) * tokens  # x A B, per layer
    attention = 2 * 2 * width * tokens * tokens * (0.5 if causal_attention else 1.0)  # QK^T and AV, per layer
    head = 2 * d * vocab * (tokens if full_logits else answer_tokens)  # output layer
    forward = layers * (frozen + lora + attention) + head
    # backward: dX of the frozen weights, dA dB and the two thin input gradients of LoRA, attention twice
    skipped = sum(2 * tokens * shapes[m][0] * (shapes[m][1] + rank) for m in ("q", "k", "v"))  # layer 0's dX
    backward = layers * (frozen + 2 * lora + 2 * attention) - skipped + head
    return {"forward": forward / 1e9, "backward": backward / 1e9, "total": (forward + backward) / 1e9}


def gemm_rate(cfg: dict, rows: int, threads: int, repeats: int) -> tuple[dict, float]:
    """fp32 GFLOP/s of ``[rows, in] @ [in, out]`` per projection shape (medians of ``repeats``), and the rate of
    one layer's seven products together (their FLOPs over the sum of their times)."""
    torch.set_num_threads(threads)
    rates, flops, seconds = {}, 0.0, 0.0
    for name, (i, o) in projection_shapes(cfg).items():
        x, w = torch.randn(rows, i), torch.randn(i, o)
        for _ in range(3):
            x @ w
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(10):
                x @ w
            times.append((time.perf_counter() - start) / 10)
        rates[f"{name} [{rows}x{i}]@[{i}x{o}]"] = 2 * rows * i * o / statistics.median(times) / 1e9
        flops, seconds = flops + 2 * rows * i * o, seconds + statistics.median(times)
    return rates, flops / seconds / 1e9


def default_model_config() -> Path:
    found = sorted(glob.glob(str(REPO / ".cache/lm/SmolLM2-135M-Instruct*/config.json")))
    if not found:
        raise SystemExit("no cached SmolLM2 config under .cache/lm/ (run the quickstart or a training once, "
                         "or pass --model-config path/to/config.json)")
    return Path(found[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("throughput_json", help="a bench/train_throughput.py JSON")
    parser.add_argument("--model-config", type=Path, help="HF config.json (default: the cached SmolLM2 one)")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--answer-tokens", type=float, default=12.0,
                        help="tokens our loop takes logits at per sample (an ML-100k title and the end token)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "bench/out")
    args = parser.parse_args()

    report = json.loads(Path(args.throughput_json).read_text())
    cfg_path = args.model_config or default_model_config()
    cfg = json.loads(cfg_path.read_text())
    threads = report["settings"]["threads"]
    first = next(iter(report["results"].values()))
    rows = report["settings"]["batch_size"] * round(first["tokens"] / first["samples"])  # one micro-batch of tokens
    rates, ceiling = gemm_rate(cfg, rows, threads, args.repeats)

    lines, table = [], []
    for run, result in report["results"].items():
        loop = run.split("/")[0].split(",")[0]
        tokens = result["tokens"] / result["samples"]
        flops = flops_per_sample(cfg, tokens, args.answer_tokens, args.lora_rank, full_logits=loop == "plain")
        achieved = flops["total"] * result["samples_per_s"]
        table.append({"run": run, "tokens_per_sample": tokens, "gflop_per_sample": flops,
                      "samples_per_s": result["samples_per_s"], "gflop_per_s": achieved,
                      "share_of_gemm_rate": achieved / ceiling})
    by_run = {row["run"]: row for row in table}
    precision = report["settings"]["precisions"].split(",")[0]
    ours, plain = by_run.get(f"ours/easy/{precision}"), by_run.get(f"plain/easy/{precision}")
    needed = None
    if ours and plain:
        needed = 2 * plain["samples_per_s"] * ours["gflop_per_sample"]["total"]
    machine = report["machine"]
    lines.append(f"Machine: {machine['cpu']} ({machine['cpu_capability']}), {machine['cores']} cores; "
                 f"{threads} threads; model config "
                 f"{cfg_path.parent.name}; LoRA rank {args.lora_rank}; our logits at {args.answer_tokens:g} "
                 f"tokens per sample. Throughput from {args.throughput_json}.")
    lines += ["", "| run | tokens/sample | GFLOP/sample | samples/s | GFLOP/s | share of the fp32 matmul rate |",
              "|---|---:|---:|---:|---:|---:|"]
    for row in table:
        lines.append(f"| {row['run']} | {row['tokens_per_sample']:.0f} | {row['gflop_per_sample']['total']:.1f} | "
                     f"{row['samples_per_s']:.3f} | {row['gflop_per_s']:.1f} | {row['share_of_gemm_rate']:.2f} |")
    gemm_line = (f"fp32 matrix products of the model's shapes, {threads} threads, [{rows} x in] @ [in x out] "
                 f"(one layer's seven together: **{ceiling:.1f} GFLOP/s**, the rate above):")
    lines += ["", gemm_line, "", "| product | GFLOP/s |", "|---|---:|"]
    lines += [f"| {name} | {rate:.1f} |" for name, rate in rates.items()]
    if needed is not None:
        ratio = plain["gflop_per_sample"]["total"] / ours["gflop_per_sample"]["total"]
        verdict = (f"Plain computes {ratio:.2f}x our FLOPs per sample. 2x the plain loop's samples/s needs our loop "
                   f"at **{needed:.1f} GFLOP/s = {needed / ceiling:.2f} of the matmul rate** (now "
                   f"{ours['gflop_per_s']:.1f} = {ours['share_of_gemm_rate']:.2f}).")
        lines += ["", verdict]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    resolved = cfg_path.resolve()  # the model config, named relative to the repository (no machine paths)
    config_name = resolved.relative_to(REPO).as_posix() if resolved.is_relative_to(REPO) else cfg_path.name
    (args.out / "train_flops.json").write_text(json.dumps(
        {"throughput": str(args.throughput_json), "model_config": config_name, "threads": threads,
         "lora_rank": args.lora_rank, "answer_tokens": args.answer_tokens, "gemm_gflop_per_s": rates,
         "gemm_layer_rate": ceiling, "runs": table, "needed_for_2x_gflop_per_s": needed}, indent=2))
    (args.out / "train_flops.md").write_text(text)


if __name__ == "__main__":
    main()
