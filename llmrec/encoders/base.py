"""One interface for every item encoder (``F_text`` / ``F_visual`` of TMF Eq. 1-2).

An encoder is cheap to construct: it loads its model only when it first
encodes (or when ``dim`` is asked), so a cache hit never touches the weights.
``describe()`` and ``weights_fingerprint()`` must be computable without
loading the model; both go into the cache key.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image


class ItemEncoder(ABC):
    """Encodes texts and/or images into ``[n, dim]`` float tensors."""

    supports_text: bool = False
    supports_images: bool = False

    def __init__(self) -> None:
        self.batches_encoded = 0  # calls that ran the model (a cache hit leaves this at 0)
        self.items_encoded = 0

    @property
    @abstractmethod
    def name(self) -> str:
        """Short identifier recorded as the table's ``model``."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Embedding width (may load the model)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Settings that change the output (JSON-able; part of the cache key)."""

    @abstractmethod
    def weights_fingerprint(self) -> str:
        """Identifies the weights without loading them (content hash, tag, or a version)."""

    @property
    def random_init(self) -> bool:
        """True when the encoder runs on random weights (recorded in the metadata)."""
        return False

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        if not self.supports_text:
            raise TypeError(f"encoder {self.name!r} does not encode text")
        self._count(len(texts))
        return self._encode_texts(list(texts)).detach().float().cpu()

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        if not self.supports_images:
            raise TypeError(f"encoder {self.name!r} does not encode images")
        self._count(len(images))
        return self._encode_images(list(images)).detach().float().cpu()

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def _encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        raise NotImplementedError

    def _count(self, n: int) -> None:
        self.batches_encoded += 1
        self.items_encoded += n


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
