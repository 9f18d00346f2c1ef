"""One rank of the multi-process training tests (tests/train/test_two_processes.py); not a test module.

    CUDA_VISIBLE_DEVICES= accelerate launch --multi_gpu --num_processes 2 tests/train/two_process_worker.py spec.json

(``--cpu`` would start one process: accelerate launches several CPU processes only through MPI; with
``--multi_gpu`` it starts them with torchrun, and the Trainer, seeing no GPU, builds a gloo CPU run.)
The spec (JSON) names the prepared synthetic shop's folder and the recipe overrides (the tiny Llama's
folder among them). The shop is read back from disk and the random tables are rebuilt with the test kit's
seed, so every rank (and the one-process reference run in the test) trains on the same inputs. Each rank writes
``rank-<i>.json`` into the run's output folder: per micro-batch the optimizer step, the plan slot, the
plan rows and the tasks it trained on, the DDP settings it ran with and the buffers training changed
(none: they are constant tables); the main process saves the checkpoint as ``llmrec train`` would.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def load_testkit():
    spec = importlib.util.spec_from_file_location("tmf_testkit", TESTS / "tmf" / "tmf_testkit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tmf_testkit"] = module
    spec.loader.exec_module(module)
    return module


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    if spec.get("deepspeed"):
        import deepspeed

        # the shared-memory all-reduce DeepSpeed would JIT-compile (minutes of C++) for CPU runs: gloo instead
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

    import torch

    from llmrec.data.cache import load_prepared
    from llmrec.train.config import load_train_config
    from llmrec.train.loop import Trainer

    kit = load_testkit()
    shop = load_prepared(Path(spec["dataset_root"]))
    tables = kit.random_tables(shop.n_items, shop.n_behaviors)  # the `tables` fixture: same seed
    cfg = load_train_config(None, spec["overrides"])
    trainer = Trainer(cfg, shop, tables)
    acc = trainer.accelerator
    drawn: list[dict] = []
    micro_batch = trainer.micro_batch

    def recording_micro_batch(step: int, micro: int):
        batch = micro_batch(step, micro)
        slot = micro * acc.num_processes + acc.process_index
        drawn.append({"step": step, "slot": slot, "rows": trainer.plan[trainer.position + slot].tolist(),
                      "tasks": list(batch["tasks"])})
        return batch

    trainer.micro_batch = recording_micro_batch
    buffers = {name: tensor.clone() for name, tensor in trainer.unwrapped.named_buffers()}
    folder = trainer.run()
    after = dict(trainer.unwrapped.named_buffers())
    changed = sorted(name for name in buffers if not torch.equal(buffers[name], after[name]))
    ddp = {key: getattr(trainer.model, key, None) for key in ("broadcast_buffers", "find_unused_parameters")}
    record = {"rank": acc.process_index, "world_size": acc.num_processes, "model_type": type(trainer.model).__name__,
              "zero_stage": trainer.zero_stage, "ddp": ddp,
              "buffers": sorted(buffers), "changed_buffers": changed, "micro_batches": drawn, "checkpoint": str(folder)}
    out = Path(cfg.output_dir) / f"rank-{acc.process_index}.json"
    out.write_text(json.dumps(record, indent=1), encoding="utf-8")
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
