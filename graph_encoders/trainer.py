"""One training loop for every sequential recommender.

* Adam (``torch.optim.Adam``, L2 ``weight_decay``), seeded: model init by
  :func:`seed_everything`, window order by ``numpy.random.default_rng([seed, epoch])``
  (so a resumed run sees the same order), dropout / Cloze masks by the global torch RNG
  whose state is checkpointed.
* One pass trains every position of every training window (see
  :mod:`graph_encoders.batching`), not every prefix as its own sample.
* Validation every ``eval_every`` epochs on ``monitor`` (a key of
  :func:`graph_encoders.evaluation.evaluate`); early stopping after ``patience``
  evaluations without an improvement larger than ``min_delta``; the best weights are
  restored at the end.
* Atomic checkpoints in ``<run_dir>/checkpoint``: written to a temporary folder, then
  renamed. Weights, best weights, optimizer state and RNG state are safetensors;
  counters and history are JSON. ``resume=true`` continues from the last complete one;
  a checkpoint of another dataset version (its fingerprint) or window count raises
  :class:`StaleCheckpointError` instead of being continued on data it was not trained on.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from graph_encoders.base import SequentialRecommender
from graph_encoders.batching import SequenceBatcher
from graph_encoders.evaluation import EvalConfig, evaluate
from llmrec.config import ConfigError
from llmrec.io import commit_folder

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoint"


class StaleCheckpointError(ValueError):
    """The run folder's checkpoint was trained on other data than this run's."""


@dataclass
class TrainConfig:
    epochs: int = 200  # upper bound; early stopping usually ends sooner
    batch_size: int = 128  # training windows per step
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    grad_clip_norm: float | None = None  # null = no clipping
    loss_on: Literal["all", "target"] = "all"  # next items that carry loss: every behavior, or target behavior only
    windows: Literal["all", "newest", "rows"] = "all"  # every window of the training part, the newest per user, or
    # one example per samples["train"] row (history -> target; the mode for pre-split data, docs/data.md)
    seed: int = 42
    eval_every: int = 1  # epochs between validations
    monitor: str = "pop100/NDCG@10"  # validation metric for early stopping (higher is better)
    patience: int = 10  # validations without improvement before stopping
    min_delta: float = 0.0
    num_threads: int | None = 2  # torch CPU threads; null = leave torch's default
    checkpoint: bool = True  # write <run_dir>/checkpoint after every validation
    resume: bool = True  # continue from <run_dir>/checkpoint when it exists

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "eval_every", "patience"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if "/" not in self.monitor:
            raise ConfigError(f"monitor {self.monitor!r} must look like '<protocol>/<metric>@<k>', "
                              "e.g. 'pop100/NDCG@10'")


@dataclass
class TrainerState:
    epoch: int = 0  # completed epochs
    best_metric: float = -math.inf
    best_epoch: int = 0
    bad_evaluations: int = 0
    elapsed_seconds: float = 0.0  # training + validation wall time, summed over resumed runs
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def epoch_reaching(history: list[dict], metric: str, value: float) -> dict:
    """The first validated epoch of ``history`` (``Trainer`` records) whose ``valid[metric]`` reaches ``value``.

    With ``value`` the restored best epoch's, this is "time to final validation quality": the record's
    ``epoch`` and ``elapsed_seconds`` (training + validation wall time up to it). Raises when no epoch
    was validated; falls back to the last validated one when none reaches ``value``.
    """
    evaluated = [h for h in history if metric in h.get("valid", {})]
    if not evaluated:
        raise ValueError(f"no epoch of the history was validated on {metric!r}")
    return next((h for h in evaluated if h["valid"][metric] >= value - 1e-12), evaluated[-1])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and numpy's legacy global RNG."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


class Trainer:
    """Fits ``model`` on ``batcher``'s training windows, validating with ``eval_config``."""

    def __init__(
        self, model: SequentialRecommender, batcher: SequenceBatcher, config: TrainConfig,
        eval_config: EvalConfig, run_dir: str | Path | None = None, progress: bool = True,
    ) -> None:
        self.model = model
        self.batcher = batcher
        self.config = config
        self.eval_config = eval_config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = progress
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        self.state = TrainerState()
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.windows = batcher.training_windows(config.windows, config.loss_on)

    # ---- the loop -------------------------------------------------------------------
    def fit(self) -> TrainerState:
        cfg = self.config
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        if cfg.resume and self.checkpoint_path is not None and self._find_checkpoint() is not None:
            self.load_checkpoint()
        n_windows = len(self.windows.rows)
        steps = math.ceil(n_windows / cfg.batch_size)
        log.info("training %s: %d windows, %d steps/epoch, from epoch %d",
                 type(self.model).__name__, n_windows, steps, self.state.epoch)
        epochs = tqdm(range(self.state.epoch, cfg.epochs), desc=f"fit {self.model.name}", disable=not self.progress)
        for epoch in epochs:
            if self.state.stopped_early:
                break
            started = time.perf_counter()
            loss = self._train_epoch(epoch, steps)
            record: dict[str, Any] = {"epoch": epoch + 1, "loss": loss, "train_seconds": time.perf_counter() - started}
            self.state.epoch = epoch + 1
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                eval_started = time.perf_counter()
                metrics = evaluate(self.model, self.batcher, "valid", self.eval_config, progress=self.progress)
                record["eval_seconds"] = time.perf_counter() - eval_started
                record["valid"] = metrics
                self._update_best(metrics, epoch + 1)
            self.state.elapsed_seconds += time.perf_counter() - started
            record["elapsed_seconds"] = self.state.elapsed_seconds
            self.state.history.append(record)
            epochs.set_postfix(loss=f"{loss:.4f}", best=f"{self.state.best_metric:.4f}")
            log.info("epoch %d loss %.4f %s", epoch + 1, loss,
                     f"{cfg.monitor} {record['valid'][cfg.monitor]:.4f}" if "valid" in record else "")
            if cfg.checkpoint and "valid" in record and self.checkpoint_path is not None:
                self.save_checkpoint()
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
            log.info("restored the best weights (epoch %d, %s %.4f)", self.state.best_epoch, cfg.monitor,
                     self.state.best_metric)
        return self.state

    def _train_epoch(self, epoch: int, steps: int) -> float:
        cfg = self.config
        self.model.train()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(self.windows.rows))
        device = next(self.model.parameters()).device
        total, count = 0.0, 0
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}", leave=False, disable=not self.progress)
        for step in bar:
            rows = self.windows.rows[order[step * cfg.batch_size : (step + 1) * cfg.batch_size]]
            batch = self.batcher.training_batch(rows, cfg.loss_on, self.windows.from_rows).to(device)
            loss = self.model.loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch + 1} step {step}: loss is {loss.item()}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip_norm)
            self.optimizer.step()
            total += loss.item() * len(rows)
            count += len(rows)
        return total / count

    def _update_best(self, metrics: dict[str, float], epoch: int) -> None:
        cfg = self.config
        if cfg.monitor not in metrics:
            raise ConfigError(f"train.monitor {cfg.monitor!r} is not an evaluation metric; "
                              f"available: {sorted(metrics)}")
        value = metrics[cfg.monitor]
        if value > self.state.best_metric + cfg.min_delta:
            self.state.best_metric, self.state.best_epoch, self.state.bad_evaluations = value, epoch, 0
            self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.state.bad_evaluations += 1
            if self.state.bad_evaluations >= cfg.patience:
                self.state.stopped_early = True
                log.info("early stop after epoch %d: no %s improvement for %d validations",
                         epoch, cfg.monitor, cfg.patience)

    # ---- checkpoints ----------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / CHECKPOINT_DIR

    def _find_checkpoint(self) -> Path | None:
        """The last complete checkpoint (``checkpoint``, or ``checkpoint.old`` if a swap was interrupted)."""
        for path in (self.checkpoint_path, self.checkpoint_path.with_name(CHECKPOINT_DIR + ".old")):
            if (path / "trainer_state.json").is_file():
                return path
        return None

    def save_checkpoint(self) -> Path:
        final = self.checkpoint_path
        tmp = final.with_name(CHECKPOINT_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(_contiguous(self.model.state_dict()), str(tmp / "model.safetensors"))
        if self.best_weights is not None:
            save_file(_contiguous(self.best_weights), str(tmp / "best_model.safetensors"))
        optim_tensors, param_groups = _flatten_optimizer(self.optimizer.state_dict())
        optim_tensors["rng.torch"] = torch.get_rng_state()
        save_file(optim_tensors, str(tmp / "optimizer.safetensors"))
        state = {**self.state.__dict__, "param_groups": param_groups, "windows": len(self.windows.rows),
                 "dataset_fingerprint": self._fingerprint()}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1, default=float), encoding="utf-8")
        return commit_folder(tmp, final)

    def _fingerprint(self) -> str | None:
        return getattr(self.batcher.dataset, "fingerprint", None)

    def load_checkpoint(self) -> None:
        path = self._find_checkpoint()
        if path is None:
            raise FileNotFoundError(f"no complete checkpoint under {self.checkpoint_path}")
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        saved = state.pop("dataset_fingerprint", None)  # None: written before fingerprints were recorded
        if saved is not None and saved != self._fingerprint():
            raise StaleCheckpointError(f"{path}: checkpoint was trained on dataset version {saved}, this data is "
                                       f"{self._fingerprint()}; use a fresh run folder or train.resume=false")
        if state.get("windows") != len(self.windows.rows):
            raise StaleCheckpointError(f"{path}: checkpoint was trained on {state.get('windows')} windows, this data "
                                       f"has {len(self.windows.rows)}; use a fresh run folder or train.resume=false")
        self.model.load_state_dict(load_file(str(path / "model.safetensors")))
        best = path / "best_model.safetensors"
        self.best_weights = load_file(str(best)) if best.is_file() else None
        tensors = load_file(str(path / "optimizer.safetensors"))
        torch.set_rng_state(tensors.pop("rng.torch"))
        self.optimizer.load_state_dict(_unflatten_optimizer(tensors, state.pop("param_groups")))
        state.pop("windows")
        self.state = TrainerState(**state)
        log.info("resumed from %s at epoch %d", path, self.state.epoch)


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors = {}
    for index, slots in state_dict["state"].items():
        for name, value in slots.items():
            tensors[f"state.{index}.{name}"] = torch.as_tensor(value).detach().contiguous().cpu()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, groups


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": groups}
