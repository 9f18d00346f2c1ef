"""Typed configuration of a TMF training run (``configs/tmf_*.yaml``); every key is in docs/training.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llmrec.config import ConfigError, ConfigPaths, flatten, load_config, read_yaml, to_dict
from llmrec.data.types import DEFAULT_CANDIDATE_SET_SIZE
from llmrec.tmf.model import ModelConfig
from llmrec.tmf.prompts.render import PromptConfig
from llmrec.tmf.tasks import TASKS
from llmrec.train.memory import RELEASE_MEMORY

TRAIN_CONFIG_FILE = "train_config.yaml"
"""The resolved config a run writes into its output folder and every checkpoint."""


@dataclass
class CurriculumSettings:
    """Eq. 12-14 schedule; T and T1 default to the run's length."""

    t1_fraction: float = 1 / 3
    """T1 as a fraction of T when ``t1`` is unset (the paper gives no value; see docs/training.md)."""
    t1: int | None = None
    total: int | None = None
    """T; default the run's total optimizer steps."""
    per_sample: bool = False
    fixed_task: Literal["easy", "medium", "hard"] | None = None
    """Train one task only (text-only baseline: easy; ablations)."""
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    """The schedule's tasks, easiest first: all three (Eq. 12-14) or two, e.g. [easy, medium] for the
    "+ behavior tokens" row of TMF Table 3 or [easy, hard] for LLaRA (one linear stage, p = step / T)."""

    def validate(self) -> None:
        if not 0.0 <= self.t1_fraction < 1.0:
            raise ConfigError(f"curriculum.t1_fraction must be in [0, 1), got {self.t1_fraction}")


@dataclass
class OptimizerSettings:
    """AdamW over LoRA (Phi_LLM) and the adaptors (Psi); TMF §5.1 uses Adam."""

    lr: float = 2e-4
    weight_decay: float = 0.0
    """Decay of the LoRA weights (LLaRA: none)."""
    adaptor_weight_decay: float = 1e-5
    """Decay of fusion and adaptor weights (LLaRA's projector: 1e-5)."""
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    warmup_ratio: float = 0.05
    """Warm-up steps as a fraction of all steps (LLaRA: max_step // 20)."""
    warmup_start_lr: float = 2e-6
    min_lr: float = 2e-6

    def validate(self) -> None:
        if self.lr <= 0 or self.min_lr < 0 or self.warmup_start_lr < 0:
            raise ConfigError("optimizer.lr must be > 0 and min_lr, warmup_start_lr >= 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"optimizer.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class CandidateSettings:
    """Which frozen candidate set a split uses (``llmrec.data.candidates.load_candidates``)."""

    sampler: Literal["uniform", "popularity"] = "uniform"
    size: int = DEFAULT_CANDIDATE_SET_SIZE
    """Candidates per prompt, target included: 10 (target + 9), the size of every recorded result; TMF §5.1
    reads as 11 (the target plus 10 non-interacted items), available as ``size: 11`` (docs/data.md)."""
    seed: int = 0


@dataclass
class EvalSettings:
    """HitRate@1 by candidate ranking on a fixed validation subset."""

    every: int = 0
    """Evaluate every N optimizer steps and after the last one (0: only after the last step; -1: never)."""
    n_samples: int = 64
    batch_size: int = 16
    """Rows (prompt x candidate) per forward pass."""
    task: Literal["easy", "medium", "hard"] | None = None
    """Prompt task of the evaluation; default curriculum.fixed_task, else the curriculum's hardest task."""
    candidates: CandidateSettings = field(default_factory=CandidateSettings)


TRACKERS = ("tensorboard", "wandb")  # accelerate trackers a run may log to (TrainConfig.trackers)


@dataclass
class TrainConfig:
    """One training run (every key is documented in docs/training.md)."""

    output_dir: str = "runs/tmf"
    data_config: str | None = None
    """Data config YAML (llmrec.data); with encode/graph configs read by llmrec.pipeline.stages.ensure_inputs."""
    encode_config: str | None = None
    graph_config: str | None = None
    behavior_config: str | None = None
    """Graph config (configs/graph/*.yaml) whose run's ``behavior`` table fills the behavior slots (Eq. 4) in place of
    graph_config's own, e.g. MBHT's behaviors beside MDSRec's or SASRec's item table (they export none).
    null (default): graph_config's behavior table, as before. Trained or reused like graph_config, on the same data."""
    data_overrides: list[str] = field(default_factory=list)
    """Dotted overrides applied to the data config (e.g. ``max_history=10``)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    curriculum: CurriculumSettings = field(default_factory=CurriculumSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    train_candidates: CandidateSettings = field(default_factory=CandidateSettings)
    batch_size: int = 4
    """Micro-batch per process; effective batch = batch_size * gradient_accumulation_steps * processes."""
    gradient_accumulation_steps: int = 1
    max_length: int | None = 1024
    """Tokens per row (prompt + answer); over-long rows lose their oldest history items."""
    epochs: float = 3.0
    max_steps: int | None = None
    """Optimizer steps; overrides epochs when set."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 autocast where the device supports it (CUDA bf16, CPU AVX512-BF16/AMX), else fp32."""
    length_grouping: bool = True
    length_group_size: int = 32
    save_every: int = 0
    """Checkpoint every N steps (0: only at the end)."""
    keep_last: int = 2
    log_every: int = 10
    seed: int = 0
    num_threads: int | None = None
    """torch CPU threads (null: torch's default)."""
    release_memory: Literal["never", "step", "micro_batch"] = "step"
    """Hand the memory freed tensors leave in the C allocator back to the OS (glibc ``malloc_trim``; a no-op
    elsewhere) after every optimizer step (and evaluation), after every micro-batch (lowest peak RSS), or never.
    Numerics are unchanged; see docs/training.md "Memory"."""
    deepspeed_config: str | None = None
    """A configs/deepspeed/*.json file for single-command runs; ``accelerate launch`` configs also work."""
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    """accelerate trackers that also receive the scalars of metrics.jsonl (loss, lr, throughput, the curriculum's
    task probabilities, validation HR@1): ``tensorboard`` writes <output_dir>/tracking/ (open it with
    ``tensorboard --logdir <output_dir>/tracking``), ``wandb`` where installed; ``[]`` turns tracking off."""

    def validate(self) -> None:
        for key in ("batch_size", "gradient_accumulation_steps", "length_group_size", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.max_steps is None and self.epochs <= 0:
            raise ConfigError(f"epochs must be > 0 when max_steps is unset, got {self.epochs}")
        if self.release_memory not in RELEASE_MEMORY:
            raise ConfigError(f"release_memory must be one of {list(RELEASE_MEMORY)}, got {self.release_memory!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 or null, got {self.max_steps}")
        unknown = [t for t in self.trackers if t not in TRACKERS]
        if unknown or len(set(self.trackers)) != len(self.trackers):
            raise ConfigError(f"trackers: expected distinct names among {list(TRACKERS)} (or [] for none), "
                              f"got {self.trackers}")


def evaluation_task(cfg: TrainConfig) -> str:
    """The prompt task a run is evaluated on: ``eval.task``, else ``curriculum.fixed_task``, else the hardest task
    of its curriculum (hard for full TMF)."""
    return cfg.eval.task or cfg.curriculum.fixed_task or cfg.curriculum.tasks[-1]


def load_train_config(path: ConfigPaths, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A recipe (one file, or several layered in order: a row, then a profile such as
    ``configs/profiles/llama2_7b_gpu.yaml``) with dotted overrides; ``train.<key>=v`` is accepted as ``<key>=v``
    (the recipe *is* the train section)."""
    overrides = [o.removeprefix("train.") for o in overrides]
    return load_config(TrainConfig, path, overrides)


def config_changes(saved_file: str | Path, cfg: TrainConfig) -> list[str]:
    """``"key: before -> now"`` for every dotted key where ``cfg`` differs from the resolved config a checkpoint
    saved (``saved_file``, :data:`TRAIN_CONFIG_FILE`); keys only one side has count as changed."""
    before, now = flatten(read_yaml(saved_file)), flatten(to_dict(cfg))
    return [f"{key}: {before.get(key, '(absent)')!r} -> {now.get(key, '(absent)')!r}"
            for key in sorted(before.keys() | now.keys()) if before.get(key, "(absent)") != now.get(key, "(absent)")]
