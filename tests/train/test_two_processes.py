"""Two training processes on CPU (gloo) end with the same weights as one process accumulating their micro-batches.

``accelerate launch --multi_gpu --num_processes 2`` with no GPU visible starts two ranks with torchrun; the
Trainer makes them a gloo CPU run (DDP, or DeepSpeed ZeRO-2 with a ``deepspeed_config``). The reference is
one process with ``gradient_accumulation_steps=2``: the same global batch (2 x 2 rows per step) split into the
same micro-batches (slot ``micro * processes + rank`` of the epoch's plan), the same task per step, LoRA
dropout 0 and fp32. DDP averages the two ranks' gradients of their token-mean losses and accumulation
averages the two micro-batches' ones (accelerate divides each loss by the accumulation steps), so the two
must agree; they do to the last bit here, and the comparison allows float rounding.

The curriculum (seed 0, T1 = 1, T = 4) draws easy, easy, hard, medium: steps that leave adaptors unused
(which DDP must tolerate: ``find_unused_parameters``), and a medium step after the hard one, where the fusion
and item adaptor have Adam moments but no gradient; an optimizer step given zero gradients there instead
of none would move them, and the weights would differ. Ranks that drew different tasks, trained the same
rows, or rows other than the reference's make the recorded micro-batches or the weights differ.

Each run is a subprocess (tests/train/two_process_worker.py) with a timeout; they run concurrently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import free_port

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "two_process_worker.py"
TIMEOUT_S = 600  # import-bound: 70-85 s per test pinned to one busy core; the limit only stops a hang

pytestmark = pytest.mark.slow


def recipe(output_dir: Path, lm_dir: Path, accumulation: int) -> list[str]:
    return [f"output_dir={output_dir}", f"model.lm.name_or_path={lm_dir}", "max_steps=4", "batch_size=2",
            f"gradient_accumulation_steps={accumulation}", "eval.every=-1", "train_candidates.size=5",
            "curriculum.t1=1", "curriculum.total=4", "precision=fp32", "model.lora.dropout=0", "num_threads=1",
            "optimizer.lr=0.001", "log_every=1"]


def start(tmp_path: Path, name: str, dataset_root: Path, overrides: list[str], processes: int,
          deepspeed: bool) -> tuple[subprocess.Popen, Path]:
    spec = tmp_path / f"{name}.json"
    spec.write_text(json.dumps({"dataset_root": str(dataset_root), "overrides": overrides, "deepspeed": deepspeed}))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env = {k: v for k, v in env.items() if not k.startswith("ACCELERATE_")}
    if processes > 1:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(WORKER), str(spec)]
    else:
        cmd = [sys.executable, str(WORKER), str(spec)]
        if deepspeed:  # one DeepSpeed process still needs the rendezvous variables a launcher sets
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                       LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    log = tmp_path / f"{name}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    return process, log


def finish(process: subprocess.Popen, log: Path) -> None:
    try:
        process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"{log.stem}: no result within {TIMEOUT_S} s\n{log.read_text(errors='replace')[-3000:]}")
    assert process.returncode == 0, f"{log.stem} failed:\n{log.read_text(errors='replace')[-6000:]}"


def trained_weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    tensors.update({f"adaptors/{k}": v for k, v in load_file(str(folder / "adaptors.safetensors")).items()})
    return tensors


def read_ranks(output_dir: Path, world_size: int) -> list[dict]:
    ranks = [json.loads((output_dir / f"rank-{r}.json").read_text()) for r in range(world_size)]
    assert [r["rank"] for r in ranks] == list(range(world_size))
    assert all(r["world_size"] == world_size for r in ranks)
    return ranks


def compare_with_one_process(tmp_path, tiny_lm_dir, shop, deepspeed: str | None) -> list[dict]:
    """Run both, check the micro-batches and the weights agree; returns the two ranks' records."""
    extra = [f"deepspeed_config={REPO / 'configs' / 'deepspeed' / f'{deepspeed}.json'}"] if deepspeed else []
    two_dir, one_dir = tmp_path / "two", tmp_path / "one"
    runs = [start(tmp_path, "two-processes", shop.root, recipe(two_dir, tiny_lm_dir, 1) + extra, 2, bool(deepspeed)),
            start(tmp_path, "one-process", shop.root, recipe(one_dir, tiny_lm_dir, 2) + extra, 1, bool(deepspeed))]
    for process, log in runs:
        finish(process, log)
    ranks = read_ranks(two_dir, 2)
    (one,) = read_ranks(one_dir, 1)

    # both ranks trained one task per step, the same one, and the schedule reached every task
    steps = [[m for m in r["micro_batches"]] for r in ranks]
    assert [len(s) for s in steps] == [4, 4]
    for first, second in zip(*steps, strict=True):
        assert first["step"] == second["step"] and len(set(first["tasks"] + second["tasks"])) == 1, (first, second)
    assert [m["tasks"][0] for m in steps[0]] == ["easy", "easy", "hard", "medium"]
    # the global batch of a step is split as in the reference: rank r trains the reference's micro-batch r
    reference = {(m["step"], m["slot"]): m for m in one["micro_batches"]}
    assert len(reference) == 8
    for rank, records in enumerate(steps):
        for m in records:
            assert m["slot"] == rank
            assert (m["rows"], m["tasks"]) == (reference[m["step"], rank]["rows"], reference[m["step"], rank]["tasks"])

    # the table buffers are constant: training wrote none of them
    assert all(r["changed_buffers"] == [] and "text_table" in r["buffers"] for r in ranks + [one])

    two = trained_weights(Path(ranks[0]["checkpoint"]))
    ref = trained_weights(Path(one["checkpoint"]))
    assert two.keys() == ref.keys() and any(k.startswith("adaptors/") for k in two)
    worst = max(float((two[k] - ref[k]).abs().max()) for k in two)
    for key in two:
        torch.testing.assert_close(two[key], ref[key], rtol=1e-5, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in two.items())  # B starts at 0
    print(f"{deepspeed or 'ddp'}: max |two processes - one process| = {worst:.3g}")
    return ranks


def test_two_ddp_processes_train_like_one_process_accumulating(tmp_path, tiny_lm_dir, shop):
    ranks = compare_with_one_process(tmp_path, tiny_lm_dir, shop, deepspeed=None)
    for record in ranks:
        assert record["model_type"] == "DistributedDataParallel"
        # the item/behavior tables are buffers; constant, they are not re-broadcast before every forward pass
        assert record["ddp"] == {"broadcast_buffers": False, "find_unused_parameters": True}


def test_two_deepspeed_zero2_processes_train_like_one_process_accumulating(tmp_path, tiny_lm_dir, shop):
    """The reference is one ZeRO-2 process (DeepSpeed's optimizer steps parameters without gradient, unlike
    torch's AdamW, so a run without DeepSpeed would differ by design; see test_deepspeed_tasks.py)."""
    pytest.importorskip("deepspeed")
    ranks = compare_with_one_process(tmp_path, tiny_lm_dir, shop, deepspeed="zero2")
    assert all(r["model_type"] == "DeepSpeedEngine" and r["zero_stage"] == 2 for r in ranks)
