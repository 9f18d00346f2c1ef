"""CLIP through open_clip: ``F_visual`` (Eq. 1) and ``F_text`` (Eq. 2) from one model.

TMF (§5, "Implementation Details") takes both item encoders from CLIP, so the
text and image embeddings live in one space; one :class:`OpenClipEncoder`
serves both modalities. Weights come from

* ``model: ViT-B-32`` + ``pretrained: <tag>``: open_clip's registry (downloaded
  once into the library cache, then found offline), or
* ``pretrained: /path/to/checkpoint.safetensors`` (or .bin/.pt, loaded with
  ``weights_only=True``), or
* ``model: local-dir:/folder`` holding ``open_clip_config.json`` and weights
  (``hf-hub:org/repo`` is resolved to its cached snapshot, never downloaded here).

With no weights the encoder refuses to run unless ``allow_random_init`` is set
(tests only), and then it warns loudly and records ``random_init`` in the table.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from llmrec.encoders.base import ItemEncoder, l2_normalize, resolve_device
from llmrec.encoders.weights import (
    WeightsNotFoundError,
    file_sha256,
    folder_fingerprint,
    has_weight_files,
    resolve_model_folder,
    warn_random_init,
)

logger = logging.getLogger(__name__)

HOW_TO_PROVIDE_WEIGHTS = (
    "Provide CLIP weights in one of these ways: (1) clip.pretrained=<tag> (e.g. openai, laion2b_s34b_b79k for "
    "ViT-B-32) on a machine that can download once, the file is cached for later offline runs; "
    "(2) clip.pretrained=/path/to/open_clip_pytorch_model.bin or .safetensors; "
    "(3) clip.model=local-dir:/folder holding open_clip_config.json and the weights. "
    "See docs/encoders.md. (Tests only: clip.allow_random_init=true.)"
)


class OpenClipEncoder(ItemEncoder):
    """Both CLIP towers of one open_clip model; the model loads on first use."""

    supports_text = True
    supports_images = True

    def __init__(self, model: str = "ViT-B-32", pretrained: str | None = None, allow_random_init: bool = False,
                 seed: int = 0, device: str = "cpu", normalize: bool = True,
                 weights_cache_dir: str | None = None) -> None:
        super().__init__()
        import open_clip  # optional heavy dependency, loaded when a CLIP encoder is built

        self._open_clip = open_clip
        self.model_ref, self.pretrained, self.seed = model, pretrained, seed
        self.device = resolve_device(device)
        self.normalize = normalize
        self.weights_cache_dir = weights_cache_dir
        self._model = self._preprocess = self._tokenizer = None
        self._create_name, self._create_pretrained, self._weights_fp, has_weights = self._resolve_weights()
        self._random = not has_weights
        if self._random:
            if not allow_random_init:
                raise WeightsNotFoundError(f"open_clip model {model!r} has no weights (pretrained: {pretrained!r}). "
                                           + HOW_TO_PROVIDE_WEIGHTS)
            warn_random_init(f"open_clip {model!r}")

    # -- weights ---------------------------------------------------------------------------------------
    def _resolve_weights(self) -> tuple[str, str | None, str, bool]:
        """``(name for create_model, its pretrained argument, weights fingerprint, weights found)``."""
        ref = self.model_ref
        if ref.startswith("hf-hub:"):
            ref = "local-dir:" + str(resolve_model_folder(ref[len("hf-hub:"):], "clip.model"))
        if ref.startswith("local-dir:"):
            folder = Path(ref[len("local-dir:"):]).expanduser()
            config = folder / "open_clip_config.json"
            if not config.is_file():
                raise WeightsNotFoundError(f"clip.model {self.model_ref!r}: {config} not found. "
                                           + HOW_TO_PROVIDE_WEIGHTS)
            if self.pretrained is not None:
                raise ValueError(f"clip.pretrained={self.pretrained!r} is ignored with a local-dir: model; "
                                 "set it to null")
            if has_weight_files(folder):
                return f"local-dir:{folder}", None, folder_fingerprint(folder), True
            return f"local-dir:{folder}", None, self._random_fingerprint(config.read_bytes()), False
        name = ref.replace("/", "-")
        if name not in self._open_clip.list_models():
            raise ValueError(f"clip.model {ref!r} is not an open_clip architecture; see open_clip.list_models() "
                             "or use local-dir:/folder")
        if self.pretrained is None:
            config = json.dumps(self._open_clip.get_model_config(name), sort_keys=True).encode()
            return name, None, self._random_fingerprint(config), False
        path = Path(self.pretrained).expanduser()
        if path.is_file():
            return name, str(path), file_sha256(path), True
        tag_cfg = self._open_clip.get_pretrained_cfg(name, self.pretrained)
        if not tag_cfg:
            tags = self._open_clip.list_pretrained_tags_by_model(name)
            raise WeightsNotFoundError(f"clip.pretrained {self.pretrained!r} is neither a file nor a known tag of "
                                       f"{name} (tags: {tags}). " + HOW_TO_PROVIDE_WEIGHTS)
        try:
            checkpoint = self._open_clip.download_pretrained(tag_cfg, cache_dir=self.weights_cache_dir)
        except Exception as err:  # noqa: BLE001 - offline, no cache, network error: all mean "no weights"
            raise WeightsNotFoundError(f"open_clip weights {name}/{self.pretrained} are not cached here and could "
                                       f"not be downloaded ({type(err).__name__}: {str(err)[:200]}). "
                                       + HOW_TO_PROVIDE_WEIGHTS) from None
        if not checkpoint:
            raise WeightsNotFoundError(f"open_clip tag {self.pretrained!r} of {name} resolved to no file. "
                                       + HOW_TO_PROVIDE_WEIGHTS)
        return name, self.pretrained, file_sha256(checkpoint), True

    def _random_fingerprint(self, config: bytes) -> str:
        return f"random-init:seed{self.seed}:{hashlib.sha256(config).hexdigest()[:16]}"

    # -- ItemEncoder -----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        label = self.model_ref if not self.model_ref.startswith("local-dir:") else Path(self.model_ref[10:]).name
        return f"open_clip:{label}" + (f"/{Path(self.pretrained).name}" if self.pretrained else "")

    @property
    def random_init(self) -> bool:
        return self._random

    @property
    def dim(self) -> int:
        model = self._load()
        with torch.inference_mode():
            return int(model.encode_text(self._tokenizer(["x"]).to(self.device)).shape[-1])

    def describe(self) -> dict[str, Any]:
        return {"kind": "open_clip", "model": self.model_ref, "pretrained": self.pretrained,
                "random_init": self._random, "seed": self.seed if self._random else None, "normalize": self.normalize}

    def weights_fingerprint(self) -> str:
        return self._weights_fp

    def _load(self):
        if self._model is None:
            logger.info("building open_clip %s (pretrained=%s) on %s", self._create_name, self._create_pretrained,
                        self.device)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model, _, preprocess = self._open_clip.create_model_and_transforms(
                    self._create_name, pretrained=self._create_pretrained, device=self.device,
                    cache_dir=self.weights_cache_dir, weights_only=True,
                )
            self._model, self._preprocess = model.eval(), preprocess
            self._tokenizer = self._open_clip.get_tokenizer(self._create_name)
        return self._model

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        model = self._load()
        with torch.inference_mode():
            out = model.encode_text(self._tokenizer(texts).to(self.device)).float()
        return l2_normalize(out) if self.normalize else out

    def _encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        model = self._load()
        batch = torch.stack([self._preprocess(img) for img in images]).to(self.device)
        with torch.inference_mode():
            out = model.encode_image(batch).float()
        return l2_normalize(out) if self.normalize else out
