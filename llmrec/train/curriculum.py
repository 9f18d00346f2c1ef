"""Curriculum task sampler of TMF section 4.3 (Eq. 9-14): easy -> medium -> hard.

With tau the number of optimizer steps taken so far, T1 < T:

* Eq. 12, ``0 <= tau <= T1``: ``p_m = tau / T`` (divided by T, not T1, exactly as
  printed, so at tau = T1 the medium probability is only T1/T < 1), ``p_e = 1 - p_m``.
* Eq. 13, ``T1 < tau <= T``: ``p_h = (tau - T1) / (T - T1)``, ``p_m = 1 - p_h``.
* ``tau > T``: clamped to T (hard only).
* Eq. 14: draw ``u ~ U[0, 1)``; the harder task of the stage is chosen when
  ``u < p`` (``I_[0,p]``), the easier one otherwise (``I_(p,1]``). Eq. 14 assigns
  tau = T1 to the first stage, so Eq. 13's overlapping endpoint is not used.

Two tasks (``tasks: [easy, hard]``, or ``[easy, medium]``, ``[medium, hard]``): a single linear stage,
``p_second = min(tau, T) / T``; that is Eq. 12 with T1 = T, and it is LLaRA's curriculum (text-only
prompts, then hybrid ones with probability step / max_step). It gives the ablation rows of TMF Table 3
a curriculum up to their own hardest task (docs/training.md); ``t1`` is then unused.

The draw for a step comes from a generator seeded with ``(seed, step, substep)``,
so a resumed run reproduces the task sequence without stored RNG state.

Which parameters each task trains (Eq. 9-11) is a property of the model: :mod:`llmrec.tmf.tasks`.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from llmrec.config import ConfigError, from_dict, to_dict
from llmrec.tmf.tasks import TASKS

logger = logging.getLogger(__name__)


@dataclass
class CurriculumConfig:
    """Task schedule of Eq. 12-14; steps count optimizer updates."""

    t1: int
    """T1: last step of the easy/medium stage (Eq. 12); 0 <= t1 < total."""
    total: int
    """T: step at which the hard task reaches probability 1 (Eq. 13); usually the run's total steps."""
    per_sample: bool = False
    """False: one task per batch (one draw per step); True: one draw per sample."""
    seed: int = 0
    """Seed of the task draws; with the step it fixes every draw."""
    fixed_task: Literal["easy", "medium", "hard"] | None = None
    """Always this task (text-only baseline, ablations); the schedule is then unused."""
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    """The tasks of the schedule, easiest first: all three (Eq. 12-14) or two (one linear stage)."""

    def validate(self) -> None:
        if list(self.tasks) != [t for t in TASKS if t in self.tasks] or len(self.tasks) not in (2, 3):
            raise ConfigError(f"curriculum.tasks must be two or three of {list(TASKS)} in that order, "
                              f"got {list(self.tasks)}")
        if self.total < 1:
            raise ConfigError(f"curriculum.total must be >= 1, got {self.total}")
        if not 0 <= self.t1 < self.total:
            raise ConfigError(f"curriculum.t1 must satisfy 0 <= t1 < total (T1 < T), got t1={self.t1}, "
                              f"total={self.total}")
        if self.seed < 0:
            raise ConfigError(f"curriculum.seed must be >= 0, got {self.seed}")
        if self.fixed_task is not None and self.fixed_task not in TASKS:
            raise ConfigError(f"curriculum.fixed_task must be one of {list(TASKS)} or null, got {self.fixed_task!r}")

    def __post_init__(self) -> None:
        self.validate()


class CurriculumSampler:
    """Draws the task of each step (or sample) from Eq. 12-14."""

    def __init__(self, cfg: CurriculumConfig) -> None:
        self.cfg = cfg
        self.task_counts: dict[str, int] = {task: 0 for task in TASKS}
        self.last_step: int | None = None
        self._logged_stage: str | None = None

    def stage(self, step: int) -> str:
        """``"fixed"``, ``"easy-medium"`` (tau <= T1), ``"medium-hard"`` (T1 < tau <= T) or ``"hard"``."""
        if self.cfg.fixed_task is not None:
            return "fixed"
        if len(self.cfg.tasks) == 2:
            return "-".join(self.cfg.tasks) if step <= self.cfg.total else self.cfg.tasks[1]
        if step <= self.cfg.t1:
            return "easy-medium"
        return "medium-hard" if step <= self.cfg.total else "hard"

    def probabilities(self, step: int) -> dict[str, float]:
        """Probability of each task at optimizer step ``step`` (Eq. 12-13)."""
        try:
            tau = -1 if isinstance(step, bool) else operator.index(step)
        except TypeError:
            tau = -1
        if tau < 0:
            raise ValueError(f"curriculum step must be a non-negative integer, got {step!r}")
        step = tau
        cfg = self.cfg
        if cfg.fixed_task is not None:
            return {task: float(task == cfg.fixed_task) for task in TASKS}
        tau = min(int(step), cfg.total)
        if len(cfg.tasks) == 2:  # one linear stage: Eq. 12 with T1 = T (LLaRA's curriculum)
            first, second = cfg.tasks
            return {task: (tau / cfg.total if task == second else 1.0 - tau / cfg.total if task == first else 0.0)
                    for task in TASKS}
        if tau <= cfg.t1:
            p_medium = tau / cfg.total  # Eq. 12 as printed: divided by T
            return {"easy": 1.0 - p_medium, "medium": p_medium, "hard": 0.0}
        p_hard = (tau - cfg.t1) / (cfg.total - cfg.t1)  # Eq. 13
        return {"easy": 0.0, "medium": 1.0 - p_hard, "hard": p_hard}

    def sample(self, step: int, n: int = 1, substep: int = 0) -> list[str]:
        """Tasks for ``n`` samples at ``step``; deterministic in ``(seed, step, substep)``.

        One task repeated ``n`` times unless ``per_sample``. ``substep`` separates
        several draws within one optimizer step (e.g. gradient-accumulation micro-batches).
        """
        if n < 1 or substep < 0:
            raise ValueError(f"sample needs n >= 1 and substep >= 0, got n={n}, substep={substep}")
        probs = self.probabilities(step)
        n_draws = n if self.cfg.per_sample else 1
        uniform = np.random.default_rng([self.cfg.seed, int(step), substep]).random(n_draws)
        if self.cfg.fixed_task is not None:
            drawn = [self.cfg.fixed_task] * n_draws
        elif len(self.cfg.tasks) == 2:
            first, second = self.cfg.tasks
            drawn = [second if u < probs[second] else first for u in uniform]
        elif min(int(step), self.cfg.total) <= self.cfg.t1:
            drawn = ["medium" if u < probs["medium"] else "easy" for u in uniform]  # Eq. 14, first case
        else:
            drawn = ["hard" if u < probs["hard"] else "medium" for u in uniform]  # Eq. 14, second case
        tasks = drawn if self.cfg.per_sample else drawn * n
        for task in tasks:
            self.task_counts[task] += 1
        self.last_step = int(step)
        self._log_stage(int(step), probs)
        logger.debug("curriculum step %d: p=%s -> %s", step, probs, tasks)
        return tasks

    def _log_stage(self, step: int, probs: dict[str, float]) -> None:
        stage = self.stage(step)
        if stage != self._logged_stage:
            logger.info("curriculum: step %d enters stage %s (p_easy=%.3f p_medium=%.3f p_hard=%.3f)",
                        step, stage, probs["easy"], probs["medium"], probs["hard"])
            self._logged_stage = stage

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: the config, the last step drawn and the task counts so far."""
        return {"config": to_dict(self.cfg), "last_step": self.last_step, "task_counts": dict(self.task_counts)}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Restore counts; with ``strict`` a saved config that differs from this one is an error."""
        missing = [key for key in ("config", "last_step", "task_counts") if key not in state]
        if missing:
            raise ValueError(f"curriculum state is missing key(s) {missing}")
        saved = from_dict(CurriculumConfig, state["config"], prefix="curriculum")
        differing = [key for key, value in to_dict(saved).items() if to_dict(self.cfg)[key] != value]
        if differing:
            message = (f"curriculum state was saved with different settings for {differing}: saved "
                       f"{ {k: to_dict(saved)[k] for k in differing} }, "
                       f"now { {k: to_dict(self.cfg)[k] for k in differing} }")
            if strict:
                raise ValueError(message + "; the resumed task sequence would differ (pass strict=False to accept)")
            logger.warning("%s; keeping the current settings", message)
        unknown = set(state["task_counts"]) - set(TASKS)
        if unknown:
            raise ValueError(f"curriculum state has unknown task(s) {sorted(unknown)} in task_counts")
        self.task_counts = {task: int(state["task_counts"].get(task, 0)) for task in TASKS}
        self.last_step = state["last_step"]
        self._logged_stage = None if self.last_step is None else self.stage(self.last_step)
