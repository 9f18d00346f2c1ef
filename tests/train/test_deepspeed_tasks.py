"""DeepSpeed ZeRO-2 and ZeRO-3 (one process, CPU) train the easy and medium tasks too, not only hard.

Easy steps leave every adaptor unused and medium steps the fusion and item adaptor; a batch that mixes
tasks (``curriculum.per_sample``) gives the rows outside a module's task a detached output
(``llmrec.tmf.model._call``), which under ZeRO-3 runs on partitioned parameters. ZeRO-2 keeps whole
parameters, so the two runs must end with the same weights: ZeRO-3 mishandling the per-row routing, or a
module no row used, would show as a difference or an error. (An earlier ``_call`` applied the module
with detached parameters through ``torch.func.functional_call``; ZeRO-3's hooks failed on it.)
The runs are compared with each other, not with a run without DeepSpeed: DeepSpeed's optimizer steps
every parameter of its flat partition, so a parameter no row used still decays and advances Adam's step
count, which ``torch.optim.AdamW`` skips for a parameter without a gradient (about 1e-4 apart after these
steps). The schedule lets no parameter group sit out a step after it first trained: with Adam moments
already there, ZeRO-2 and ZeRO-3 move such a parameter differently (DeepSpeed 0.19, about 4e-5 here).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmrec.train.config import load_train_config
from llmrec.train.loop import Trainer

REPO = Path(__file__).resolve().parents[2]


def trained_weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    tensors.update({f"adaptors/{k}": v for k, v in load_file(str(folder / "adaptors.safetensors")).items()})
    return tensors


@pytest.mark.parametrize("per_sample", [False, True],
                         ids=["one-task-per-step", "mixed-batches"])
def test_zero2_and_zero3_train_easy_and_medium_steps_alike(tmp_path, tiny_lm_dir, shop, tables, per_sample,
                                                           deepspeed_rendezvous):
    from accelerate.state import AcceleratorState, GradientState

    # seed 1, T1 = 1, T = 4: the steps draw easy, easy, medium, hard (one task per step); per sample, step 0
    # is all easy, step 1 mixes easy and medium rows, steps 2-3 medium and hard rows
    runs = {}
    for stage in (2, 3):
        cfg = load_train_config(None, [
            f"output_dir={tmp_path / f'zero{stage}'}", f"model.lm.name_or_path={tiny_lm_dir}", "max_steps=4",
            "batch_size=4", "seed=1", "eval.every=-1", "train_candidates.size=5", "curriculum.t1=1",
            "curriculum.total=4",
            f"curriculum.per_sample={str(per_sample).lower()}", "precision=fp32", "model.lora.dropout=0",
            "optimizer.lr=0.001", f"deepspeed_config={REPO / f'configs/deepspeed/zero{stage}.json'}"])
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        trainer = Trainer(cfg, shop, tables)
        assert trainer.zero_stage == stage
        steps = []
        sample = trainer.curriculum.sample

        def recording_sample(step, n=1, substep=0, sample=sample, steps=steps):
            tasks = sample(step, n=n, substep=substep)
            steps.append(tasks)
            return tasks

        trainer.curriculum.sample = recording_sample
        runs[stage] = trained_weights(trainer.run()), steps
    (zero2, tasks2), (zero3, tasks3) = runs[2], runs[3]
    assert tasks2 == tasks3 and len(tasks2) == 4
    assert set(tasks2[0]) == {"easy"}  # a step with every adaptor unused
    if per_sample:
        assert sorted(set(tasks2[1])) == ["easy", "medium"] and sorted(set(tasks2[2])) == ["hard", "medium"]
    else:
        assert [t[0] for t in tasks2] == ["easy", "easy", "medium", "hard"]  # easy-only and medium-only steps
    assert zero2.keys() == zero3.keys()
    for key in zero2:
        torch.testing.assert_close(zero3[key], zero2[key], rtol=1e-4, atol=1e-6, msg=key)
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in zero2.items())  # B starts at 0
