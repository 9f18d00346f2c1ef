"""``F_text`` of TMF Eq. 2 with sentence-transformers (default: the bundled all-MiniLM-L6-v2).

TMF uses CLIP's text tower (see :mod:`llmrec.encoders.open_clip_encoder`); a
sentence encoder is this toolkit's offline default because its weights ship
with the package. Embeddings are mean-pooled (the model's own pooling) and, by
default, L2-normalised.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer

from llmrec.encoders.base import ItemEncoder, l2_normalize, resolve_device
from llmrec.encoders.weights import bundled_minilm_folder, folder_fingerprint, resolve_model_folder

logger = logging.getLogger(__name__)


class SentenceTransformerTextEncoder(ItemEncoder):
    """A sentence-transformers model loaded offline from a folder (or a cached hub name)."""

    supports_text = True

    def __init__(self, model: str | None = None, device: str = "cpu", normalize: bool = True,
                 max_length: int | None = None) -> None:
        super().__init__()
        self.model_ref = model
        self.folder: Path = bundled_minilm_folder() if model is None else resolve_model_folder(model, "text.model")
        self.device = resolve_device(device)
        self.normalize = normalize
        self.max_length = max_length
        self._model = None
        self._fingerprint: str | None = None

    @property
    def name(self) -> str:
        label = "all-MiniLM-L6-v2" if self.model_ref is None else Path(self.model_ref).name or self.model_ref
        return f"sentence_transformer:{label}"

    @property
    def dim(self) -> int:
        model = self._load()
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def describe(self) -> dict[str, Any]:
        return {"kind": "sentence_transformer", "model": self.model_ref or "bundled:all-MiniLM-L6-v2",
                "normalize": self.normalize, "max_length": self.max_length}

    def weights_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = folder_fingerprint(self.folder)
        return self._fingerprint

    def _load(self):
        if self._model is None:
            logger.info("loading sentence-transformers model from %s on %s", self.folder, self.device)
            self._model = SentenceTransformer(str(self.folder), device=str(self.device), local_files_only=True)
            if self.max_length is not None:
                self._model.max_seq_length = self.max_length
            self._model.eval()
        return self._model

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        model = self._load()
        with torch.inference_mode():
            out = model.encode(texts, batch_size=len(texts), convert_to_tensor=True, show_progress_bar=False)
        out = out.float()
        return l2_normalize(out) if self.normalize else out
