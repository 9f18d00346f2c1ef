"""Where a training run's numbers come from: code version, library versions, CPU, threads, precision.

A run's trainer state keeps one provenance record per segment (the first start and every resume), so a result
whose run was resumed with other code, another thread count or another precision says so; a resume that changes
any of them logs a warning, because the continuation will not be bit-identical to an uninterrupted run of the
same command (floating-point sums depend on the thread count and the precision).
"""

from __future__ import annotations

import importlib.metadata
import logging
import subprocess
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
CODE_FOLDERS = ("llmrec", "adapters", "graph_encoders", "prompts")  # what decides the numbers besides the config
LIBRARIES = ("torch", "transformers", "peft", "accelerate")
COMPARED = ("code", "versions", "precision", "torch_threads", "world_size", "cpu_capability")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def code_version() -> dict[str, Any]:
    """The checkout's commit and whether the code folders differ from it (``None`` outside a git checkout)."""
    if not (ROOT / ".git").exists():
        return {"commit": None, "dirty": None}
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no", "--", *CODE_FOLDERS)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def library_versions() -> dict[str, str | None]:
    """Installed versions; torch's with its build tag (``torch.__version__``, e.g. ``2.14.1+cpu``)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["torch"] = torch.__version__
    return versions


def run_provenance(step: int, precision: str, world_size: int) -> dict[str, Any]:
    """The record of a run segment that starts (or resumes) at optimizer step ``step``."""
    return {"from_step": step, "code": code_version(), "versions": library_versions(), "precision": precision,
            "torch_threads": torch.get_num_threads(), "world_size": world_size,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every setting that changes the floating-point result between two segments."""
    return [f"{key}: {before.get(key)} -> {now.get(key)}" for key in COMPARED if before.get(key) != now.get(key)]


def begin_segment(history: list[dict[str, Any]], step: int, precision: str, world_size: int,
                  where: str) -> list[dict[str, Any]]:
    """``history`` plus the record of the segment starting now; warns when it differs from the previous one."""
    record = run_provenance(step, precision, world_size)
    if history:
        changed = differences(history[-1], record)
        if changed:
            logger.warning("resuming %s at step %d with other settings than its previous segment (%s): the run "
                           "will not match an uninterrupted one bit for bit", where, step, "; ".join(changed))
    return [*history, record]
