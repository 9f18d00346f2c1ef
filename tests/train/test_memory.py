"""``release_memory``: freed memory goes back to the OS, the losses stay bit for bit the same, bad values fail."""

from __future__ import annotations

import json

import pytest
import torch

from llmrec.config import ConfigError
from llmrec.train.config import load_train_config
from llmrec.train.loop import train
from llmrec.train.memory import _malloc_trim, release_freed_memory, resident_memory

glibc = pytest.mark.skipif(_malloc_trim() is None or resident_memory() == (0, 0),
                           reason="needs glibc's malloc_trim and /proc/self/status (Linux)")


@glibc
def test_release_hands_freed_tensor_memory_back_to_the_os():
    # a freed 24 MB tensor raises glibc's dynamic mmap threshold, so the 4 MB tensors below come from the heap,
    # where their freed pages stay resident; one tensor allocated last pins the top of the heap
    big = torch.ones(6 * 2**20)
    del big
    held = [torch.ones(2**20) for _ in range(100)]  # 100 x 4 MiB, touched
    pin = torch.ones(2**20)
    del held
    before, _ = resident_memory()
    assert release_freed_memory() is True
    after, _ = resident_memory()
    assert before - after > 200 * 2**20, (before, after)
    assert float(pin.sum()) == 2**20  # live memory is untouched


def tiny_config(tmp_path, lm_dir, name, *overrides):
    return load_train_config(None, [
        f"output_dir={tmp_path / name}", f"model.lm.name_or_path={lm_dir}", "max_steps=3", "batch_size=2",
        "gradient_accumulation_steps=2", "eval.every=2", "eval.n_samples=4", "eval.candidates.size=5",
        "train_candidates.size=5", "curriculum.t1=1", "precision=fp32", "trackers=[]", *overrides])


def test_release_memory_leaves_losses_and_evaluation_unchanged(tmp_path, tiny_lm_dir, shop, tables):
    from accelerate.state import AcceleratorState, GradientState

    records = {}
    for mode in ("never", "step", "micro_batch"):
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        train(tiny_config(tmp_path, tiny_lm_dir, mode, f"release_memory={mode}"), shop, tables)
        lines = (tmp_path / mode / "metrics.jsonl").read_text().splitlines()
        records[mode] = [json.loads(line) for line in lines]
    losses = {mode: [r["loss"] for r in rs] for mode, rs in records.items()}
    assert len(losses["never"]) == 3
    assert losses["step"] == losses["never"] and losses["micro_batch"] == losses["never"]
    assert [r.get("eval") for r in records["micro_batch"]] == [r.get("eval") for r in records["never"]]
    if resident_memory() != (0, 0):
        assert all(r["peak_rss_mib"] > 0 for rs in records.values() for r in rs)


def test_release_memory_rejects_unknown_values():
    with pytest.raises(ConfigError, match="release_memory"):
        load_train_config(None, ["release_memory=sometimes"])


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradient_checkpointing_recomputes_from_the_first_step(tmp_path, tiny_lm_dir, shop, tables, checkpointing):
    """A decoder layer's MLP starts twice per micro-batch (forward + recomputation in backward; a pre-hook, as the
    recomputation stops inside the layer's last op) from the first step on, not only after the first validation
    put the LM in train mode."""
    from llmrec.train.loop import Trainer

    trainer = Trainer(tiny_config(tmp_path, tiny_lm_dir, f"gc-{checkpointing}", "gradient_accumulation_steps=1",
                                  f"model.lm.gradient_checkpointing={str(checkpointing).lower()}"), shop, tables)
    calls = []
    trainer.unwrapped.causal_lm.get_decoder().layers[0].mlp.register_forward_pre_hook(lambda *args: calls.append(1))
    record = trainer.train_step()
    assert len(calls) == (2 if checkpointing else 1)
    assert record["loss"] > 0
