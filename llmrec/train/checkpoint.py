"""Training checkpoints: atomic folders that a run resumes from exactly.

Layout of ``<output_dir>/checkpoints/step-00000120/`` (DESIGN "Checkpoints"):

* ``adapter_config.json``, ``adapter_model.safetensors``: the PEFT LoRA adapter;
* ``adaptors.safetensors``: fusion + item adaptor + behavior adaptor;
* ``tmf_model.yaml``: the resolved model config; ``train_config.yaml``: the resolved run config;
* ``optimizer.pt``: the optimizer state (``torch.save``; read back with ``weights_only=True``),
  or ``deepspeed/`` (the engine's own sharded optimizer state) under DeepSpeed;
* ``trainer_state.json``: step, epoch, dataloader position, curriculum state, RNG states, metrics.

A checkpoint is written into ``checkpoints/.tmp-step-…`` and renamed into place only when
complete, then ``checkpoints/latest`` (a one-line text file) is replaced atomically. A crash
while writing leaves the previous checkpoint and ``latest`` untouched; the stale temporary
folder is removed by the next save. Only the newest ``keep_last`` checkpoints are kept.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmrec.io import commit_folder, write_text

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
LATEST_FILE = "latest"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def run_folder(checkpoint: str | Path) -> Path:
    """The run's ``output_dir`` of a checkpoint folder ``<output_dir>/checkpoints/step-…``; for a folder
    elsewhere (e.g. a copied checkpoint), the folder itself."""
    checkpoint = Path(checkpoint)
    if _STEP_DIR.match(checkpoint.name) and checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    return checkpoint


# ----------------------------------------------------------------------------- RNG states
def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU + CUDA) generator states as JSON-able values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
    }
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode("ascii") for s in torch.cuda.get_rng_state_all()]
    return state


def _bytes_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def restore_rng_state(state: dict[str, Any]) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_bytes_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        saved = [_bytes_tensor(s) for s in state["cuda"]]
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)
        else:
            logger.warning("checkpoint has CUDA RNG states for %d devices, this machine has %d; not restored",
                           len(saved), torch.cuda.device_count())


# ----------------------------------------------------------------------------- writing
def begin_checkpoint(output_dir: str | Path, step: int) -> Path:
    """A fresh temporary folder for the checkpoint of ``step`` (removing any stale one)."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
        logger.info("removed an incomplete checkpoint folder %s", stale)
    tmp = root / f".tmp-{step_dir_name(step)}"
    tmp.mkdir()
    return tmp


def commit_checkpoint(tmp: Path, step: int, keep_last: int) -> Path:
    """Rename the finished ``tmp`` folder into place, point ``latest`` at it, prune old ones."""
    root = tmp.parent
    final = root / step_dir_name(step)
    commit_folder(tmp, final)  # replaces a same-step folder (e.g. the final save right after a periodic one)
    write_text(root / LATEST_FILE, final.name + "\n")
    if keep_last > 0:
        for old in list_checkpoints(root.parent)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
            logger.info("removed old checkpoint %s (keep_last=%d)", old, keep_last)
    logger.info("saved checkpoint %s", final)
    return final


def write_checkpoint(output_dir: str | Path, step: int, write: Callable[[Path], None], keep_last: int = 2) -> Path:
    """Single-process helper: ``write(tmp)`` fills the folder, then it is committed atomically.

    If ``write`` raises, the temporary folder is removed and the previous checkpoint stays current.
    """
    tmp = begin_checkpoint(output_dir, step)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return commit_checkpoint(tmp, step, keep_last)


def save_trainer_state(folder: Path, state: dict[str, Any]) -> None:
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")


def save_optimizer(folder: Path, optimizer: torch.optim.Optimizer) -> None:
    torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)


def load_optimizer(folder: Path, optimizer: torch.optim.Optimizer) -> None:
    path = folder / OPTIMIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: missing {OPTIMIZER_FILE}; cannot resume the optimizer")
    optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


# ----------------------------------------------------------------------------- reading
def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint ``latest`` points to (or the newest complete one); None if there is none."""
    root = checkpoint_root(output_dir)
    pointer = root / LATEST_FILE
    if pointer.is_file():
        folder = root / pointer.read_text(encoding="utf-8").strip()
        if (folder / STATE_FILE).is_file():
            return folder
        logger.warning("%s points to %s, which is missing; using the newest complete checkpoint", pointer, folder)
    complete = [p for p in list_checkpoints(output_dir) if (p / STATE_FILE).is_file()]
    return complete[-1] if complete else None


def resolve_resume(resume: str | Path, output_dir: str | Path) -> Path | None:
    """The checkpoint folder to resume from, or None to start fresh.

    ``"auto"``: the run's latest checkpoint if it has one, else None (so one command both starts a run
    and continues it after an interruption). ``"latest"``: the latest checkpoint, which must exist.
    Anything else: a checkpoint folder, which must exist.
    """
    if str(resume) in ("auto", "latest"):
        found = latest_checkpoint(output_dir)
        if found is None:
            if str(resume) == "latest":
                raise FileNotFoundError(f"--resume latest: no checkpoint under {checkpoint_root(output_dir)}")
            logger.info("--resume auto: no checkpoint under %s; starting fresh", checkpoint_root(output_dir))
        return found
    folder = Path(resume)
    if not (folder / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume: {folder} is not a checkpoint folder (no {STATE_FILE})")
    return folder


def load_trainer_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the trainer state: {err}") from None
    missing = [k for k in ("step", "epoch", "position", "curriculum", "rng") if k not in state]
    if missing:
        raise ValueError(f"{path}: trainer state lacks key(s) {missing}")
    return state
