"""DeepSpeed ZeRO-2 and ZeRO-3 (configs/deepspeed/zero{2,3}.json) initialize, train, save and resume on CPU.

DeepSpeed 0.19 runs on its CPU accelerator with the gloo backend; a single process needs the
torch.distributed rendezvous variables (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK) that
``accelerate launch`` would otherwise set. The shared-memory all-reduce op DeepSpeed JIT-compiles
for multi-process CPU runs (minutes of C++ compilation, useless with one process) is switched off.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmrec.train.config import load_train_config
from llmrec.train.loop import Trainer

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stage_initializes_takes_steps_saves_and_resumes(tmp_path, tiny_lm_dir, shop, tables, stage,
                                                              deepspeed_rendezvous):
    cfg = load_train_config(None, [
        f"output_dir={tmp_path / f'zero{stage}'}", f"model.lm.name_or_path={tiny_lm_dir}", "max_steps=3",
        "batch_size=4",
        "eval.every=-1", "train_candidates.size=5", "curriculum.fixed_task=hard", "precision=fp32",
        f"deepspeed_config={REPO / f'configs/deepspeed/zero{stage}.json'}"])
    trainer = Trainer(cfg, shop, tables)
    assert type(trainer.model).__name__ == "DeepSpeedEngine" and trainer.zero_stage == stage
    ds = trainer.accelerator.state.deepspeed_plugin.deepspeed_config
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 1
    before = {k: v.clone() for k, v in trainer.unwrapped.adaptor_state_dict().items()}
    if stage == 3:  # partitioned: the initial values come from a saved step-0 checkpoint instead
        before = load_file(str(trainer.save() / "adaptors.safetensors"))
    folder = trainer.run(stop_after=2)
    assert (folder / "deepspeed").is_dir() and (folder / "adapter_model.safetensors").is_file()
    saved = load_file(str(folder / "adaptors.safetensors"))
    assert any(not torch.equal(saved[k], before[k]) for k in before)  # the hard task trained the adaptors
    lora = load_file(str(folder / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in lora.items())  # B starts at 0

    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)  # one Accelerator per process, as in real runs
    GradientState._reset_state()
    resumed = Trainer(cfg, shop, tables)
    final = resumed.run(resume="auto")
    assert resumed.step == 3 and final.name == "step-00000003"
    assert resumed.curriculum.task_counts["hard"] == 3 * 4
