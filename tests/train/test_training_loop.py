"""The training loop end to end on a tiny Llama: schedule, batching, exact resume, crash-safe checkpoints.

Real accelerate, PEFT, prompts, collator and the synthetic shop prepared on disk; the LLM is a
2-layer random-init Llama with the SmolLM2 tokenizer's vocabulary.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tmf_testkit as kit  # registered by tests/conftest.py
import torch
from safetensors.torch import load_file

from llmrec.generation.ranking import candidate_log_likelihoods
from llmrec.tmf.model import TMFModel
from llmrec.train import checkpoint as ckpt
from llmrec.train.config import OptimizerSettings, load_train_config
from llmrec.train.curriculum import CurriculumSampler
from llmrec.train.loop import Trainer, train
from llmrec.train.schedule import learning_rate, plan_epoch, rows_seen


def tiny_config(tmp_path, lm_dir, name="run", *overrides):
    return load_train_config(None, [
        f"output_dir={tmp_path / name}", f"model.lm.name_or_path={lm_dir}", "max_steps=4", "batch_size=4",
        "gradient_accumulation_steps=2", "eval.every=2", "eval.n_samples=4", "eval.candidates.size=5",
        "train_candidates.size=5", "curriculum.t1=1", "precision=fp32", *overrides])


def read_checkpoint(folder):
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    tensors.update({f"adaptors/{k}": v for k, v in load_file(str(folder / "adaptors.safetensors")).items()})
    return tensors, json.loads((folder / ckpt.STATE_FILE).read_text())


def test_plan_epoch_is_seeded_covers_every_row_and_groups_lengths():
    lengths = np.random.default_rng(0).integers(10, 500, size=203)
    plan = plan_epoch(lengths, batch_size=8, seed=3, epoch=1, group_size=5)
    assert sorted(np.concatenate(plan).tolist()) == list(range(203))
    assert all(len(b) <= 8 for b in plan)
    assert [b.tolist() for b in plan] == [b.tolist() for b in plan_epoch(lengths, 8, 3, 1, 5)]
    assert [b.tolist() for b in plan] != [b.tolist() for b in plan_epoch(lengths, 8, 3, 2, 5)]
    random_plan = plan_epoch(lengths, 8, 3, 1, None)

    def padding(p):
        return sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum()) for b in p)

    assert padding(plan) < 0.5 * padding(random_plan)


def test_rows_seen_replays_the_rows_the_trainer_consumes(tmp_path, tiny_lm_dir, shop, tables):
    """bench/train_fit.py splits training rows into seen / unseen with rows_seen: it must name exactly the rows
    the loop's micro-batches take, across an epoch boundary (the loop itself drives the plan; no forward pass)."""
    cfg = tiny_config(tmp_path, tiny_lm_dir, "seen", "batch_size=32", "gradient_accumulation_steps=2", "eval.every=-1")
    trainer = Trainer(cfg, shop, tables)
    steps = trainer.steps_per_epoch + 3
    taken = np.zeros(len(trainer.lengths), dtype=np.int64)
    for step in range(steps):
        for micro in range(cfg.gradient_accumulation_steps):
            batch = trainer.micro_batch(step, micro)
            rows = trainer.plan[trainer.position + micro]
            assert len(batch["tasks"]) == len(rows)
            taken[rows] += 1
        trainer._advance()
    assert trainer.epoch == steps // trainer.steps_per_epoch >= 1 and taken.max() >= 2  # later epochs entered
    replay = rows_seen(trainer.lengths, cfg.batch_size, cfg.gradient_accumulation_steps, cfg.seed,
                       cfg.length_group_size, steps)
    assert np.array_equal(replay, taken)
    other_seed = rows_seen(trainer.lengths, cfg.batch_size, cfg.gradient_accumulation_steps, cfg.seed + 1,
                           cfg.length_group_size, steps)
    assert not np.array_equal(replay, other_seed)  # the replay depends on the plan, not only on the counts


def test_learning_rate_warms_up_then_decays_to_min():
    cfg = OptimizerSettings(lr=1e-3, warmup_ratio=0.1, warmup_start_lr=1e-5, min_lr=1e-6)
    lrs = [learning_rate(s, 100, cfg) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[10] == pytest.approx(1e-3) and lrs[100] == pytest.approx(1e-6)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True)) and all(
        a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_resume_continues_the_run_exactly(tmp_path, tiny_lm_dir, shop, tables):
    """4 steps straight == 2 steps, stop, resume, 2 steps: same weights, optimizer, curriculum, losses."""
    straight = train(tiny_config(tmp_path, tiny_lm_dir, "straight", "save_every=2"), shop, tables)
    interrupted = tiny_config(tmp_path, tiny_lm_dir, "resumed", "save_every=2")
    first = train(interrupted, shop, tables, stop_after=2)
    assert first.name == "step-00000002"
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    resumed = train(interrupted, shop, tables, resume="auto")
    assert straight.name == resumed.name == "step-00000004"

    tensors_a, state_a = read_checkpoint(straight)
    tensors_b, state_b = read_checkpoint(resumed)
    assert tensors_a.keys() == tensors_b.keys() and len(tensors_a) > 10
    for key in tensors_a:
        assert torch.equal(tensors_a[key], tensors_b[key]), key
    initial, _ = read_checkpoint(first)
    assert any(not torch.equal(initial[k], tensors_a[k]) for k in tensors_a)  # steps 3-4 changed weights
    assert state_a["curriculum"] == state_b["curriculum"]
    assert sum(state_a["curriculum"]["task_counts"].values()) > 0
    assert state_a["curriculum"]["task_counts"]["hard"] > 0  # t1=1: the hard task is reached
    for key in ("step", "epoch", "position", "eval_history"):
        assert state_a[key] == state_b[key], key
    kit.assert_same_optimizer_state(straight, resumed)
    lines_a = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    lines_b = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines_b] == [1, 2, 3, 4]  # the second run started at step 3, not from scratch
    assert [r["loss"] for r in lines_a] == [r["loss"] for r in lines_b]


def test_provenance_records_each_segment_and_warns_when_a_resume_changes_threads(tmp_path, tiny_lm_dir, shop, tables,
                                                                                  caplog):
    """Every checkpoint says which code, libraries, precision and thread count produced it, one record per start or
    resume; a resume with another thread count (floating-point sums change) is logged as a warning."""
    from accelerate.state import AcceleratorState, GradientState

    cfg = tiny_config(tmp_path, tiny_lm_dir, "prov", "save_every=2", "eval.every=-1")
    first = train(cfg, shop, tables, stop_after=2)
    threads = torch.get_num_threads()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    torch.set_num_threads(threads + 1)
    try:
        with caplog.at_level("WARNING", logger="llmrec.train.provenance"):
            last = train(cfg, shop, tables, resume="auto")
    finally:
        torch.set_num_threads(threads)
    (one,) = json.loads((first / ckpt.STATE_FILE).read_text())["provenance"]
    segments = json.loads((last / ckpt.STATE_FILE).read_text())["provenance"]
    assert [s["from_step"] for s in segments] == [0, 2] and segments[0] == one
    assert [s["torch_threads"] for s in segments] == [threads, threads + 1]
    assert one["versions"]["torch"] == torch.__version__ and one["precision"] == "no"  # fp32: accelerate's "no"
    commit = one["code"]["commit"]
    assert commit is None or (len(commit) == 40 and isinstance(one["code"]["dirty"], bool))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"torch_threads: {threads} -> {threads + 1}" in m for m in warnings), warnings


def test_resume_names_the_config_keys_that_changed(tmp_path, tiny_lm_dir, shop, tables, caplog):
    """Resuming with the same recipe is silent; with another value (a profile or an override left out, say) the
    warning names each changed key with both values."""
    from accelerate.state import AcceleratorState, GradientState

    cfg = tiny_config(tmp_path, tiny_lm_dir, "changed", "save_every=1", "eval.every=-1", "max_steps=3")
    train(cfg, shop, tables, stop_after=1)
    for overrides, expected in (((), None), (("optimizer.max_grad_norm=0.5",), "optimizer.max_grad_norm: 1.0 -> 0.5")):
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        caplog.clear()
        again = tiny_config(tmp_path, tiny_lm_dir, "changed", "save_every=1", "eval.every=-1", "max_steps=3",
                            *overrides)
        with caplog.at_level("WARNING", logger="llmrec.train.loop"):
            train(again, shop, tables, resume="latest", stop_after=2 if expected is None else 3)
        warnings = [r.getMessage() for r in caplog.records if "config key" in r.getMessage()]
        if expected is None:
            assert warnings == []
        else:
            assert len(warnings) == 1 and "1 config key(s)" in warnings[0] and expected in warnings[0], warnings


def test_resume_refuses_a_checkpoint_of_another_dataset_version(tmp_path, tiny_lm_dir, shop, tables):
    import dataclasses

    from accelerate.state import AcceleratorState, GradientState

    cfg = tiny_config(tmp_path, tiny_lm_dir, "other-data", "save_every=1", "eval.every=-1")
    train(cfg, shop, tables, stop_after=1)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    other = dataclasses.replace(shop, fingerprint="another-version")
    with pytest.raises(ValueError, match=rf"step-00000001: trained on dataset version {shop.fingerprint}, this run's "
                                         r"data is another-version; resuming would continue on other rows"):
        train(cfg, other, tables, resume="auto")


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, tiny_lm_dir, shop, tables, monkeypatch):
    cfg = tiny_config(tmp_path, tiny_lm_dir, "crash", "save_every=2", "eval.every=-1")
    real_save_state = ckpt.save_trainer_state

    def dies_at_step_4(folder, state):
        if state["step"] == 4:  # the adapter and adaptor files of step 4 are already written
            assert (folder / "adapter_model.safetensors").is_file()
            raise RuntimeError("simulated kill while writing the checkpoint")
        real_save_state(folder, state)

    monkeypatch.setattr(ckpt, "save_trainer_state", dies_at_step_4)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(cfg, shop, tables)
    root = ckpt.checkpoint_root(cfg.output_dir)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000002"]  # no half-written step 4
    assert ckpt.latest_checkpoint(cfg.output_dir).name == "step-00000002"
    TMFModel.from_pretrained(root / "step-00000002", tables)  # loadable

    monkeypatch.setattr(ckpt, "save_trainer_state", real_save_state)
    (root / ".tmp-step-00000004").mkdir()  # what a SIGKILL would leave behind
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    final = train(cfg, shop, tables, resume="auto")
    assert final.name == "step-00000004" and not list(root.glob(".tmp-*"))


def test_trainer_sees_every_task_and_logs_progress(tmp_path, tiny_lm_dir, shop, tables, caplog):
    cfg = tiny_config(tmp_path, tiny_lm_dir, "tasks", "max_steps=6", "gradient_accumulation_steps=1",
                      "curriculum.per_sample=true", "log_every=1", "eval.every=-1", "precision=bf16")
    with caplog.at_level("INFO", logger="llmrec"):
        trainer = Trainer(cfg, shop, tables)
        trainer.run()
    counts = trainer.curriculum.task_counts
    assert min(counts.values()) > 0 and sum(counts.values()) == 6 * 4  # easy, medium and hard all trained
    assert any("p(easy/medium/hard)" in r.getMessage() for r in caplog.records)
    records = [json.loads(x) for x in trainer.metrics_file.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    # the tasks the model was given (the batches' own task labels) are the curriculum's draws for that step,
    # replayed on a fresh sampler: catches an off-by-one step (step 0 is all easy at T1 = 1), draws that do not
    # reach the batch, or a renderer that ignores the task
    replay = CurriculumSampler(trainer.curriculum.cfg)
    for r in records:
        drawn = replay.sample(r["step"] - 1, n=sum(r["tasks"].values()), substep=0)
        assert r["tasks"] == {t: drawn.count(t) for t in sorted(set(drawn))}, f"step {r['step']}"
    assert records[0]["tasks"] == {"easy": 4}
    assert replay.task_counts == counts
    assert all(np.isfinite(r["loss"]) and r["tokens_per_s"] > 0 for r in records)


def test_validation_runs_every_n_steps_and_after_the_last(tmp_path, tiny_lm_dir, shop, tables):
    trainer = Trainer(tiny_config(tmp_path, tiny_lm_dir, "evals", "max_steps=3", "eval.every=2"), shop, tables)
    trainer.run()
    assert [r["step"] for r in trainer.eval_history] == [2, 3]
    # the last validation is the final weights' HR@1 on the fixed validation prompts, recomputed here with the
    # reference ranking path (one full sequence per candidate): catches evaluating stale weights, other prompts,
    # or a metric averaged over the wrong count
    prompts = trainer.eval_prompts()
    scores = candidate_log_likelihoods(trainer.unwrapped.eval(), trainer.eval_collator, trainer.renderer, prompts,
                                       progress=False, method="full")
    hits = sum(int(np.argmax(row) == p.target_index) for row, p in zip(scores, prompts, strict=True))
    assert len(prompts) == 4 and trainer.eval_history[-1]["HR@1"] == pytest.approx(hits / 4)
    # exact-loss regression of the loop (fp32, recorded on this run's settings): a change in data order,
    # prompts, curriculum draws, initialisation, learning-rate schedule or loss averaging moves these
    losses = [json.loads(x)["loss"] for x in trainer.metrics_file.read_text().splitlines()]
    assert losses == pytest.approx([10.819016, 10.811065, 10.828009], abs=1e-4)


def test_scalars_reach_tensorboard_and_trackers_can_be_off(tmp_path, tiny_lm_dir, shop, tables):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from llmrec.config import ConfigError

    trainer = Trainer(tiny_config(tmp_path, tiny_lm_dir, "tracked", "max_steps=2", "eval.every=2"), shop, tables)
    trainer.run()
    records = [json.loads(x) for x in trainer.metrics_file.read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "tracked" / "tracking"))
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in records])  # the very numbers of metrics.jsonl
    assert [e.value for e in events.Scalars("valid/HR@1")] == pytest.approx([records[-1]["eval"]["HR@1"]])
    assert {"curriculum/p_easy", "curriculum/p_medium", "curriculum/p_hard"} <= set(events.Tags()["scalars"])

    off = Trainer(tiny_config(tmp_path, tiny_lm_dir, "untracked", "max_steps=2", "trackers=[]"), shop, tables)
    off.run()
    assert off.metrics_file.is_file() and not (tmp_path / "untracked" / "tracking").exists()
    with pytest.raises(ConfigError, match="trackers"):
        tiny_config(tmp_path, tiny_lm_dir, "bad", "trackers=[tensorbord]")


def test_resume_auto_starts_fresh_without_a_checkpoint_and_latest_refuses(tmp_path, tiny_lm_dir, shop, tables):
    """One command starts a long run and continues it: ``auto`` on an empty run trains from step 0."""
    cfg = tiny_config(tmp_path, tiny_lm_dir, "fresh", "max_steps=2", "gradient_accumulation_steps=1", "eval.every=-1")
    with pytest.raises(FileNotFoundError, match=r"--resume latest: no checkpoint under .*fresh"):
        ckpt.resolve_resume("latest", cfg.output_dir)
    assert ckpt.resolve_resume("auto", cfg.output_dir) is None
    final = train(cfg, shop, tables, resume="auto")
    assert final.name == "step-00000002"
    assert ckpt.resolve_resume("auto", cfg.output_dir) == final
