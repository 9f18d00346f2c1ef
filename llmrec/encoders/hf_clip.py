"""CLIP through transformers' ``CLIPModel``: the alternative to open_clip (TMF Eq. 1-2).

``clip.model`` is a local folder (``save_pretrained`` layout: ``config.json``,
``model.safetensors``, ``preprocessor_config.json``, tokenizer files) or a hub
name such as ``openai/clip-vit-base-patch32`` that is already in the local
hub cache: nothing is downloaded here. Text and image features are the
projected embeddings (``get_text_features`` / ``get_image_features``), so the
two towers share one space. No ``trust_remote_code``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

from llmrec.encoders.base import ItemEncoder, l2_normalize, resolve_device
from llmrec.encoders.weights import (
    WeightsNotFoundError,
    folder_fingerprint,
    has_weight_files,
    resolve_model_folder,
    warn_random_init,
)

logger = logging.getLogger(__name__)

HOW_TO_PROVIDE_HF_WEIGHTS = (
    "Provide weights with clip.model=<folder written by CLIPModel.save_pretrained (plus its processor)> or a hub "
    "name already downloaded once (`huggingface-cli download openai/clip-vit-base-patch32`). See docs/encoders.md. "
    "(Tests only: clip.allow_random_init=true with a folder holding config.json.)"
)


class HFClipEncoder(ItemEncoder):
    """Both towers of a transformers ``CLIPModel``; loads on first use."""

    supports_text = True
    supports_images = True

    def __init__(self, model: str, allow_random_init: bool = False, seed: int = 0, device: str = "cpu",
                 normalize: bool = True) -> None:
        super().__init__()
        self.model_ref, self.seed, self.normalize = model, seed, normalize
        self.device = resolve_device(device)
        try:
            self.folder = resolve_model_folder(model, "clip.model")
        except WeightsNotFoundError as err:
            raise WeightsNotFoundError(f"{err} {HOW_TO_PROVIDE_HF_WEIGHTS}") from None
        config = self.folder / "config.json"
        if not config.is_file():
            raise WeightsNotFoundError(f"clip.model {model!r}: {config} not found. {HOW_TO_PROVIDE_HF_WEIGHTS}")
        self._random = not has_weight_files(self.folder)
        if self._random:
            if not allow_random_init:
                raise WeightsNotFoundError(f"clip.model {model!r}: no weight files in {self.folder}. "
                                           + HOW_TO_PROVIDE_HF_WEIGHTS)
            warn_random_init(f"transformers CLIP {model!r}")
            self._weights_fp = f"random-init:seed{seed}:{hashlib.sha256(config.read_bytes()).hexdigest()[:16]}"
        else:
            self._weights_fp = folder_fingerprint(self.folder)
        self._model = self._tokenizer = self._image_processor = None

    @property
    def name(self) -> str:
        return f"hf_clip:{Path(self.model_ref).name or self.model_ref}"

    @property
    def random_init(self) -> bool:
        return self._random

    @property
    def dim(self) -> int:
        return int(self._load().config.projection_dim)

    def describe(self) -> dict[str, Any]:
        return {"kind": "hf_clip", "model": self.model_ref, "random_init": self._random,
                "seed": self.seed if self._random else None, "normalize": self.normalize}

    def weights_fingerprint(self) -> str:
        return self._weights_fp

    def _load(self):
        if self._model is None:
            logger.info("loading transformers CLIPModel from %s on %s", self.folder, self.device)
            if self._random:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.seed)
                    model = CLIPModel(CLIPConfig.from_pretrained(self.folder))
            else:
                model = CLIPModel.from_pretrained(self.folder, local_files_only=True)
            self._model = model.to(self.device).eval()
        return self._model

    def _processor(self, kind: str):
        try:
            if kind == "text":
                if self._tokenizer is None:
                    self._tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
                return self._tokenizer
            if self._image_processor is None:
                self._image_processor = CLIPImageProcessor.from_pretrained(self.folder, local_files_only=True)
            return self._image_processor
        except (OSError, ValueError) as err:
            what = "tokenizer files (vocab.json, merges.txt)" if kind == "text" else "preprocessor_config.json"
            raise WeightsNotFoundError(f"clip.model {self.model_ref!r}: cannot load the {kind} processor from "
                                       f"{self.folder}; expected {what} there ({err})") from None

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        model = self._load()
        tokenizer = self._processor("text")
        max_len = int(model.config.text_config.max_position_embeddings)
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        with torch.inference_mode():
            out = _features(model.get_text_features(**batch.to(self.device)))
        return l2_normalize(out) if self.normalize else out

    def _encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        model = self._load()
        pixels = self._processor("image")(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        with torch.inference_mode():
            out = _features(model.get_image_features(pixel_values=pixels))
        return l2_normalize(out) if self.normalize else out


def _features(output: Any) -> torch.Tensor:
    """Projected features: a tensor (transformers 4) or ``pooler_output`` of the output (transformers 5)."""
    return (output if isinstance(output, torch.Tensor) else output.pooler_output).float()
