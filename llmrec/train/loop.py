"""The TMF training loop (run by ``llmrec train`` / ``train.py``): accelerate, curriculum, exact resume.

    accelerate launch train.py --config configs/tmf_smollm2_ml100k.yaml [key=value ...] [--resume auto]
    python train.py --config configs/tmf_smollm2_ml100k.yaml max_steps=20

One optimizer step (one iteration tau of Eq. 12-14) = ``gradient_accumulation_steps`` micro-batches
per process. Its task comes from :class:`llmrec.train.curriculum.CurriculumSampler`: one draw per step,
shared by all its micro-batches and processes (or one draw per sample with ``per_sample``); the rows
come from the epoch's batch plan, the paraphrase from a generator seeded by ``(seed, epoch, row)``. Everything
is a function of (seed, step), so
``--resume`` continues a run exactly: the checkpoint stores the step, the plan position, the
curriculum counts, the optimizer and the RNG states (used by dropout).

Batches are length-grouped: each epoch's seeded permutation is cut into groups of
``batch_size * length_group_size`` rows, each group sorted by estimated prompt length and cut into
micro-batches, and the micro-batches are shuffled (seeded). Micro-batches that do not fill a whole
optimizer step at the end of an epoch are skipped for that epoch (a different few each epoch;
counted and logged). The learning rate warms up linearly from ``warmup_start_lr`` and decays by a
cosine to ``min_lr`` (LLaRA's schedule, which TMF §5.1 follows).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import (
    DistributedDataParallelKwargs,
    InitProcessGroupKwargs,
    is_tensorboard_available,
    is_wandb_available,
    set_seed,
)
from peft import get_peft_model_state_dict
from tqdm.auto import tqdm

from llmrec.config import ConfigError, save_config, to_dict
from llmrec.data.candidates import load_candidates
from llmrec.devices import batch_to_device
from llmrec.generation.ranking import ranking_hit_rate
from llmrec.tmf.collator import TMFCollator
from llmrec.tmf.model import ADAPTOR_GROUPS, ModalityTables, TMFModel
from llmrec.tmf.prompts.render import PromptRenderer
from llmrec.train import checkpoint as ckpt
from llmrec.train.config import TRAIN_CONFIG_FILE, TrainConfig, config_changes, evaluation_task
from llmrec.train.curriculum import CurriculumConfig, CurriculumSampler
from llmrec.train.memory import release_freed_memory, resident_memory
from llmrec.train.provenance import begin_segment
from llmrec.train.schedule import (
    configure_deepspeed,
    estimate_prompt_lengths,
    fill_deepspeed_auto,
    learning_rate,
    mixed_precision,
    plan_epoch,
    steps_per_epoch,
    title_token_counts,
)

logger = logging.getLogger(__name__)


class Trainer:
    """One run: accelerator, TMFModel, AdamW, batch plan and curriculum; :meth:`run` trains."""

    def __init__(self, cfg: TrainConfig, dataset: Any, tables: ModalityTables) -> None:
        self.cfg = cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        deepspeed = cfg.deepspeed_config is not None or os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"
        kwargs: dict[str, Any] = {
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "mixed_precision": mixed_precision(cfg.precision),
            # accelerate detects multi-process CPU runs only with cpu=True, and DeepSpeed only without it
            "cpu": not torch.cuda.is_available() and not deepspeed,
            # find_unused_parameters: easy/medium batches leave the adaptors unused (Eq. 9-10). The task of a
            # step is drawn from (seed, step), so every process leaves the same ones unused; with per-sample
            # draws the sets may differ between processes, which DDP also handles (zero gradient from the
            # processes that did not use a parameter, as one process accumulating the same micro-batches).
            # broadcast_buffers=False: the model's buffers are the item/behavior tables TMFModel registers (and
            # the LM's rotary frequencies), built identically on every process and never written by training;
            # DDP's default would broadcast all of them from rank 0 before every forward pass
            "kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)]}
        if deepspeed and not torch.cuda.is_available():
            # DeepSpeed on CPU: without a named backend accelerate leaves the process group to DeepSpeed and
            # then counts one process (num_processes 1, process_index 0 on every rank), so the ranks would
            # train the same micro-batches and all write the checkpoint; naming gloo makes it count them
            kwargs["kwargs_handlers"].append(InitProcessGroupKwargs(backend="gloo"))
        if cfg.trackers:
            kwargs.update(log_with=list(cfg.trackers), project_dir=cfg.output_dir)
        configure_deepspeed(kwargs, cfg)
        self.accelerator = acc = Accelerator(**kwargs)
        fill_deepspeed_auto(acc, cfg)
        set_seed(cfg.seed)
        model = TMFModel(cfg.model, tables)
        self.renderer = PromptRenderer(cfg.prompts, dataset)
        self.collator = TMFCollator(model.tokenizer, self.renderer, cfg.max_length)
        self.eval_collator = TMFCollator(model.tokenizer, self.renderer, cfg.max_length)
        self.dataset = dataset

        train = dataset.samples["train"]
        self.samples = {k: list(train[k]) for k in ("history_items", "history_behaviors")}
        c = cfg.train_candidates
        self.candidates = load_candidates(dataset, "train", sampler=c.sampler, size=c.size, seed=c.seed)
        title_tokens = title_token_counts(model.tokenizer, self.renderer.item_names)
        self.lengths = estimate_prompt_lengths(self.samples, self.candidates.items, title_tokens)
        self.micro_per_step = acc.num_processes * cfg.gradient_accumulation_steps
        n_micro = math.ceil(len(self.lengths) / cfg.batch_size)
        self.steps_per_epoch = steps_per_epoch(len(self.lengths), cfg.batch_size, self.micro_per_step)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.lengths)} training rows make {n_micro} micro-batches of {cfg.batch_size}, "
                             f"fewer than one optimizer step needs ({self.micro_per_step})")
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        skipped = n_micro - self.steps_per_epoch * self.micro_per_step
        logger.info("%d training rows -> %d micro-batches/epoch, %d steps/epoch (%d micro-batches per epoch "
                    "skipped to keep whole steps), %d steps in all", len(self.lengths), n_micro,
                    self.steps_per_epoch, skipped, self.total_steps)

        cur = cfg.curriculum
        total = cur.total or self.total_steps
        t1 = cur.t1 if cur.t1 is not None else int(cur.t1_fraction * total)
        self.curriculum = CurriculumSampler(CurriculumConfig(t1=t1, total=total, per_sample=cur.per_sample,
                                                             seed=cfg.seed, fixed_task=cur.fixed_task,
                                                             tasks=list(cur.tasks)))
        groups = model.parameter_groups()
        adaptor_params = groups["fusion"] + groups["item_adaptor"] + groups["behavior_adaptor"]
        opt = cfg.optimizer
        optimizer = torch.optim.AdamW([{"params": groups["lora"], "weight_decay": opt.weight_decay},
                                       {"params": adaptor_params, "weight_decay": opt.adaptor_weight_decay}],
                                      lr=opt.lr, betas=opt.betas, eps=opt.eps)
        self.trainable = groups["lora"] + adaptor_params
        self.model, self.optimizer = acc.prepare(model, optimizer)
        # transformers' from_pretrained leaves the LM in eval mode and its decoder layers' gradient checkpointing
        # acts only in train mode (until 2026-12-04 it started after the first validation). PEFT's get_peft_model
        # creates the LoRA modules, dropout included, in train mode, so LoRA dropout always acted from step 1.
        self.model.train()
        self.step = self.epoch = self.position = 0
        self.plan: list[np.ndarray] | None = None
        self.eval_history: list[dict[str, Any]] = []
        self.provenance: list[dict[str, Any]] = []  # one record per start / resume (llmrec.train.provenance)
        self._eval_prompts: list[Any] | None = None
        self.metrics_file = Path(cfg.output_dir) / "metrics.jsonl"

    # ------------------------------------------------------------------ data
    @property
    def unwrapped(self) -> TMFModel:
        return self.accelerator.unwrap_model(self.model)

    @property
    def zero_stage(self) -> int:
        plugin = self.accelerator.state.deepspeed_plugin
        return int(plugin.zero_stage) if plugin is not None else 0

    def micro_batch(self, step: int, micro: int) -> dict[str, Any]:
        """The collated micro-batch ``micro`` of optimizer step ``step`` for this process."""
        cfg = self.cfg
        if self.plan is None:
            group = cfg.length_group_size if cfg.length_grouping else None
            self.plan = plan_epoch(self.lengths, cfg.batch_size, cfg.seed, self.epoch, group)
        slot = micro * self.accelerator.num_processes + self.accelerator.process_index
        rows = self.plan[self.position + slot]
        # Eq. 14 draws once per iteration: one task for the whole optimizer step (every micro-batch and
        # process) unless per-sample draws are asked for
        tasks = self.curriculum.sample(step, n=len(rows), substep=slot if cfg.curriculum.per_sample else 0)
        prompts = []
        for row, task in zip(rows.tolist(), tasks, strict=True):
            rng = np.random.default_rng([cfg.seed, self.epoch, row])  # paraphrase choice
            prompts.append(self.renderer.render(self.samples["history_items"][row],
                                                self.samples["history_behaviors"][row], self.candidates.items[row],
                                                int(self.candidates.target_index[row]), task, rng))
        return self.collator(prompts)

    def _advance(self) -> None:
        self.position += self.micro_per_step
        if self.position >= self.steps_per_epoch * self.micro_per_step:
            self.epoch, self.position, self.plan = self.epoch + 1, 0, None

    # ------------------------------------------------------------------ loop
    def train_step(self) -> dict[str, Any]:
        """One optimizer step (all its micro-batches); returns what is logged."""
        acc, cfg = self.accelerator, self.cfg
        lr = learning_rate(self.step, self.total_steps, cfg.optimizer)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        start, losses, tokens, tasks = time.perf_counter(), [], 0, []
        for micro in range(cfg.gradient_accumulation_steps):
            batch = self.micro_batch(self.step, micro)
            tokens += int(batch["attention_mask"].sum())
            tasks.extend(batch["tasks"])
            batch = batch_to_device(batch, acc.device)
            with acc.accumulate(self.model):
                loss = self.model(batch).loss
                acc.backward(loss)
                if acc.sync_gradients and cfg.optimizer.max_grad_norm:
                    acc.clip_grad_norm_(self.trainable, cfg.optimizer.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            del loss, batch
            if cfg.release_memory == "micro_batch":
                release_freed_memory()
        if cfg.release_memory == "step":
            release_freed_memory()
        seconds = time.perf_counter() - start
        self.step += 1
        self._advance()
        counts = {t: tasks.count(t) for t in sorted(set(tasks))}
        return {"step": self.step, "loss": float(np.mean(losses)), "lr": lr, "tasks": counts,
                "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
                "samples_per_s": len(tasks) / seconds, "peak_rss_mib": resident_memory()[1] / 2**20,
                "p": self.curriculum.probabilities(self.step - 1)}

    def run(self, resume: str | Path | None = None, stop_after: int | None = None) -> Path:
        """Train to ``total_steps`` (or ``stop_after``); returns the last checkpoint folder."""
        acc, cfg = self.accelerator, self.cfg
        if resume is not None:
            self.resume(resume)
        self.provenance = begin_segment(self.provenance, self.step, str(acc.mixed_precision), acc.num_processes,
                                        str(cfg.output_dir))
        if acc.is_main_process:
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
            save_config(cfg, Path(cfg.output_dir) / TRAIN_CONFIG_FILE)
        start_tracking(acc, cfg)
        end = self.total_steps if stop_after is None else min(self.total_steps, stop_after)
        saved: Path | None = None
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step",
                   disable=not acc.is_local_main_process)
        while self.step < end:
            record = self.train_step()
            saved = None
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", task="/".join(record["tasks"]),
                            tok_s=f"{record['tokens_per_s']:.0f}")
            if self.step % cfg.log_every == 0 or self.step == 1:
                logger.info("step %d/%d loss %.4f lr %.2e tasks %s p(easy/medium/hard)=%s %.0f tokens/s",
                            self.step, self.total_steps, record["loss"], record["lr"], record["tasks"],
                            "/".join(f"{record['p'][t]:.2f}" for t in ("easy", "medium", "hard")),
                            record["tokens_per_s"])
            every = cfg.eval.every
            if (every > 0 and self.step % every == 0) or (every >= 0 and self.step == self.total_steps):
                record["eval"] = self.evaluate()
            self._append_metrics(record)
            if cfg.trackers:
                acc.log(tracked_scalars(record), step=self.step)
            if cfg.save_every and self.step % cfg.save_every == 0:
                saved = self.save()
        bar.close()
        saved = saved or self.save()
        if cfg.trackers:  # not acc.end_training(): it also destroys the process group, which the caller may still use
            for tracker in acc.trackers:
                tracker.finish()
        return saved

    # ------------------------------------------------------------------ evaluation
    def eval_prompts(self) -> list[Any]:
        """The fixed validation subset (seeded choice of rows), rendered once with the default paraphrase."""
        if self._eval_prompts is None:
            ev = self.cfg.eval
            task = evaluation_task(self.cfg)
            valid = self.dataset.samples["valid"]
            cands = load_candidates(self.dataset, "valid", sampler=ev.candidates.sampler, size=ev.candidates.size,
                                            seed=ev.candidates.seed)
            n = min(ev.n_samples, len(valid))
            rows = np.sort(np.random.default_rng([self.cfg.seed, 0x657661]).choice(len(valid), n, replace=False))
            self._eval_prompts = [self.renderer.render(valid[int(r)]["history_items"],
                                                       valid[int(r)]["history_behaviors"], cands.items[r],
                                                       int(cands.target_index[r]), task) for r in rows]
        return self._eval_prompts

    def evaluate(self) -> dict[str, float]:
        """HitRate@1 by candidate log-likelihood ranking (main process; others wait)."""
        acc = self.accelerator
        if self.zero_stage == 3:
            logger.warning("step %d: evaluation skipped under ZeRO-3 (parameters are partitioned); "
                           "evaluate the saved checkpoint with llmrec infer", self.step)
            return {}
        acc.wait_for_everyone()
        result: dict[str, float] = {}
        if acc.is_main_process:
            with acc.autocast():
                result = ranking_hit_rate(self.unwrapped, self.eval_collator, self.renderer, self.eval_prompts(),
                                          self.cfg.eval.batch_size, ks=(1,), progress=False)
            result = {"step": self.step, **result}
            self.eval_history.append(result)
            if self.cfg.release_memory != "never":
                release_freed_memory()
            logger.info("step %d: validation HR@1 %.4f on %d samples", self.step, result["HR@1"],
                        len(self.eval_prompts()))
        acc.wait_for_everyone()
        return result

    def _append_metrics(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            self.metrics_file.parent.mkdir(parents=True, exist_ok=True)
            with self.metrics_file.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, sort_keys=True) + "\n")

    # ------------------------------------------------------------------ checkpoints
    def trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "position": self.position,
                "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
                "world_size": self.accelerator.num_processes, "curriculum": self.curriculum.state_dict(),
                "dataset_fingerprint": getattr(self.dataset, "fingerprint", None),
                "rng": ckpt.capture_rng_state(), "eval_history": self.eval_history, "provenance": self.provenance,
                "collator": {"truncations": self.collator.truncations,
                             "dropped_history_items": self.collator.dropped_history_items}}

    def _gathered_states(self) -> tuple[dict | None, dict | None]:
        """Under ZeRO-3 the trainable tensors must be gathered (collective); otherwise read directly."""
        if self.zero_stage != 3:
            return None, None
        full = self.accelerator.get_state_dict(self.model)
        base = {k[len("peft_model."):]: v for k, v in full.items() if k.startswith("peft_model.")}
        lora = get_peft_model_state_dict(self.unwrapped.peft_model, state_dict=base, save_embedding_layers=False)
        adaptors = {k: v for k, v in full.items() if k.split(".")[0] in ADAPTOR_GROUPS}
        return lora, adaptors

    def save(self) -> Path:
        """Write the checkpoint of the current step atomically (see :mod:`llmrec.train.checkpoint`)."""
        acc, cfg = self.accelerator, self.cfg
        acc.wait_for_everyone()
        tmp = ckpt.checkpoint_root(cfg.output_dir) / f".tmp-{ckpt.step_dir_name(self.step)}"
        if acc.is_main_process:
            tmp = ckpt.begin_checkpoint(cfg.output_dir, self.step)
        acc.wait_for_everyone()
        lora, adaptors = self._gathered_states()
        try:
            if self.zero_stage:
                self.model.save_checkpoint(str(tmp / "deepspeed"), tag="state", exclude_frozen_parameters=True)
            if acc.is_main_process:
                self.unwrapped.save_pretrained(tmp, lora_state=lora, adaptor_state=adaptors)
                save_config(cfg, tmp / TRAIN_CONFIG_FILE)
                if not self.zero_stage:
                    ckpt.save_optimizer(tmp, self.optimizer)
                ckpt.save_trainer_state(tmp, self.trainer_state())
        except BaseException:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        acc.wait_for_everyone()
        final = ckpt.checkpoint_root(cfg.output_dir) / ckpt.step_dir_name(self.step)
        if acc.is_main_process:
            final = ckpt.commit_checkpoint(tmp, self.step, cfg.keep_last)
        acc.wait_for_everyone()
        return final

    def resume(self, resume: str | Path) -> None:
        """Restore weights, optimizer, position, curriculum and RNG states from a checkpoint."""
        folder = ckpt.resolve_resume(resume, self.cfg.output_dir)
        if folder is None:  # "auto" on a run that has no checkpoint yet
            return
        state = ckpt.load_trainer_state(folder)
        saved, now = state.get("dataset_fingerprint"), getattr(self.dataset, "fingerprint", None)
        if saved is not None and saved != now:  # None: a checkpoint written before fingerprints were recorded
            raise ValueError(f"{folder}: trained on dataset version {saved}, this run's data is {now}; resuming "
                             "would continue on other rows. Train into a new output_dir instead")
        if (folder / TRAIN_CONFIG_FILE).is_file():  # a different recipe (a profile left out, say) is worth a look
            changed = config_changes(folder / TRAIN_CONFIG_FILE, self.cfg)
            if changed:
                logger.warning("resuming %s with %d config key(s) other than it was trained with: %s", folder,
                               len(changed), "; ".join(changed))
        for key, now in (("total_steps", self.total_steps), ("world_size", self.accelerator.num_processes)):
            if state.get(key) != now:
                logger.warning("resuming %s: it had %s=%s, this run has %s; the continuation will differ",
                               folder, key, state.get(key), now)
        if self.zero_stage:
            self.model.load_checkpoint(str(folder / "deepspeed"), tag="state", load_module_strict=False,
                                       load_optimizer_states=True, load_lr_scheduler_states=False)
        else:
            self.unwrapped.load_trainable_state(folder)
            ckpt.load_optimizer(folder, self.optimizer)
        try:
            self.curriculum.load_state_dict(state["curriculum"])
        except ValueError as err:
            saved = state["curriculum"]["config"]
            raise ValueError(f"{folder}: {err}. To continue that run's schedule, override "
                             f"curriculum.t1={saved['t1']} curriculum.total={saved['total']}") from None
        self.step, self.epoch, self.position, self.plan = state["step"], state["epoch"], state["position"], None
        self.eval_history = list(state.get("eval_history", []))
        self.provenance = list(state.get("provenance", []))  # absent in checkpoints written before 2026-12-05
        self.collator.truncations = state.get("collator", {}).get("truncations", 0)
        self.collator.dropped_history_items = state.get("collator", {}).get("dropped_history_items", 0)
        self._truncate_metrics(self.step)
        ckpt.restore_rng_state(state["rng"])
        logger.info("resumed from %s at step %d (epoch %d, micro-batch %d)", folder, self.step, self.epoch,
                    self.position)

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines written after the checkpoint (a crashed run's tail)."""
        if self.accelerator.is_main_process and self.metrics_file.is_file():
            lines = self.metrics_file.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if json.loads(line)["step"] <= step]
            self.metrics_file.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


TRACKING_DIR = "tracking"  # <output_dir>/tracking/: the trackers' files (TensorBoard event files)


def start_tracking(acc: Accelerator, cfg: TrainConfig) -> None:
    """Start the run's trackers (``cfg.trackers``) with the flattened config as hyperparameters."""
    if not cfg.trackers:
        return
    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    missing = [name for name in cfg.trackers if not available[name]()]
    if missing:
        raise ConfigError(f"trackers: {missing} not installed (pip install {' '.join(missing)}), "
                          f"or set trackers: [] to log to metrics.jsonl only")
    acc.init_trackers(TRACKING_DIR, config=_hyperparameters(to_dict(cfg)))
    if acc.is_main_process and "tensorboard" in cfg.trackers:
        logger.info("tracking: tensorboard --logdir %s", Path(cfg.output_dir) / TRACKING_DIR)


def _hyperparameters(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattened config with the value types TensorBoard's hparams accept (lists and None as text)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_hyperparameters(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def tracked_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of one metrics.jsonl record, named for the trackers (train/*, curriculum/p_*, valid/*)."""
    scalars = {f"train/{key}": float(record[key]) for key in ("loss", "lr", "tokens_per_s", "samples_per_s")
               if key in record}
    scalars.update({f"curriculum/p_{task}": float(p) for task, p in record.get("p", {}).items()})
    scalars.update({f"valid/{key}": float(value) for key, value in record.get("eval", {}).items() if key != "step"})
    return scalars


def train(cfg: TrainConfig, dataset: Any, tables: ModalityTables, resume: str | Path | None = None,
          stop_after: int | None = None) -> Path:
    """Train on ``dataset`` with ``tables`` (built by ``llmrec.pipeline.stages.ensure_inputs``); returns the
    last checkpoint folder."""
    return Trainer(cfg, dataset, tables).run(resume=resume, stop_after=stop_after)
