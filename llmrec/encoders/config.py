"""``EncodeConfig``: which encoders turn a catalog into text / image tables.

Loaded with :func:`load_encode_config` (YAML + dotted overrides, see
:mod:`llmrec.config`); every key is documented in ``docs/encoders.md`` and in
the comments of ``configs/encode/*.yaml``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmrec.config import ConfigError, load_config

CLIP_KINDS = ("open_clip", "hf_clip")
_DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?|mps)$")


@dataclass
class TextEncoderConfig:
    """Text modality (TMF Eq. 2): ``text_i`` rendered from catalog columns, then encoded."""

    kind: Literal["sentence_transformer", "open_clip", "hf_clip", "none"] = "sentence_transformer"
    # sentence_transformer only: a local folder or a cached hub name; null = the bundled all-MiniLM-L6-v2.
    # The CLIP kinds take their model from the `clip` section (one model for both towers).
    model: str | None = None
    # Segments joined by `separator`; each is a Python format string over catalog columns.
    # A segment whose columns are all missing/NaN/empty for an item is left out for that item.
    template: list[str] = field(default_factory=lambda: ["{title}"])
    separator: str = ". "
    normalize: bool = True  # L2-normalize the embeddings (cosine geometry)
    max_length: int | None = None  # tokens; null = the model's own limit

    def validate(self) -> None:
        if self.kind == "none":
            return
        if not self.template or not all(isinstance(s, str) and s.strip() for s in self.template):
            raise ConfigError(f"template: {self.template!r}; expected a non-empty list of format strings")
        if self.model is not None and self.kind != "sentence_transformer":
            raise ConfigError(f"model: only used by kind 'sentence_transformer'; kind {self.kind!r} reads clip.model")
        if self.max_length is not None and self.max_length < 1:
            raise ConfigError(f"max_length: {self.max_length} must be >= 1")


@dataclass
class HandcraftedConfig:
    """Settings of :class:`~llmrec.encoders.handcrafted.HandcraftedImageFeatures` (no weights)."""

    size: int = 64  # images are resized to size x size pixels before the statistics
    color_bins: int = 4  # soft RGB histogram with color_bins**3 cells
    color_weight: float = 1.0  # relative weight of the color block vs the texture block

    def validate(self) -> None:
        if not 16 <= self.size <= 512:
            raise ConfigError(f"size: {self.size}; expected 16..512 pixels")
        if not 2 <= self.color_bins <= 16:
            raise ConfigError(f"color_bins: {self.color_bins}; expected 2..16")
        if self.color_weight <= 0:
            raise ConfigError(f"color_weight: {self.color_weight} must be > 0")


@dataclass
class ImageEncoderConfig:
    """Image modality (TMF Eq. 1): one image per item, encoded; missing images are masked rows."""

    kind: Literal["handcrafted", "open_clip", "hf_clip", "none"] = "none"
    column: str = "image"  # catalog column holding a local path or URL
    image_root: str | None = None  # relative paths resolve here; null = the prepared dataset's folder
    allow_network: bool = False  # fetch http(s) URLs; off: URL images count as `url_skipped`
    timeout_s: float = 10.0  # per-URL download timeout
    max_download_mb: float = 20.0  # larger downloads count as `download_failed`
    normalize: bool = True  # L2-normalize the embeddings
    handcrafted: HandcraftedConfig = field(default_factory=HandcraftedConfig)

    def validate(self) -> None:
        if self.timeout_s <= 0 or self.max_download_mb <= 0:
            raise ConfigError("timeout_s and max_download_mb must be > 0")
        if not self.column:
            raise ConfigError("column: must name the catalog's image column")


@dataclass
class ClipConfig:
    """The CLIP model shared by the text and image towers (so the two spaces align)."""

    # open_clip: an architecture name from open_clip.list_models() (e.g. ViT-B-32) or 'local-dir:/folder'
    # holding open_clip_config.json + weights. hf_clip: a hub name (must be cached) or a local folder.
    model: str = "ViT-B-32"
    # open_clip only: a pretrained tag (e.g. openai, laion2b_s34b_b79k; downloaded or cached) or a
    # checkpoint file (.safetensors / .bin / .pt). null: no weights (refused unless allow_random_init).
    pretrained: str | None = None
    allow_random_init: bool = False  # tests only: run with random weights (warns loudly)
    seed: int = 0  # seeds the random initialisation
    weights_cache_dir: str | None = None  # where downloaded weights go; null = the library default


@dataclass
class EncodeConfig:
    """Everything ``llmrec encode`` needs (see docs/encoders.md)."""

    # The dataset: a data config path (relative to the working directory, else to this file)
    # or an inline data section with the keys of DataConfig.
    data: str | dict[str, Any] | None = None
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    batch_size: int = 64  # items per encoder call
    device: str = "cpu"  # cpu | cuda | cuda:N | mps | auto (cuda when available)
    cache_dir: str | None = None  # null = <prepared dataset folder>/embeddings
    output_dir: str | None = None  # if set, the tables are also written here as text/image.safetensors
    progress: bool = True  # tqdm progress bars
    neighbors_k: int = 10  # neighbours printed by --show-neighbors

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: {self.batch_size} must be >= 1")
        if self.neighbors_k < 1:
            raise ConfigError(f"neighbors_k: {self.neighbors_k} must be >= 1")
        if not _DEVICE.match(self.device):
            raise ConfigError(f"device: {self.device!r}; expected cpu, auto, cuda, cuda:N or mps")
        if self.text.kind == "none" and self.image.kind == "none":
            raise ConfigError("text.kind and image.kind are both 'none': nothing to encode")
        clip_kinds = {k for k in (self.text.kind, self.image.kind) if k in CLIP_KINDS}
        if len(clip_kinds) > 1:
            raise ConfigError(
                f"text.kind {self.text.kind!r} and image.kind {self.image.kind!r} are different CLIP "
                "implementations; use one so both towers come from the same model and their spaces align"
            )

    @property
    def modalities(self) -> list[str]:
        """The modalities this config encodes, in table order."""
        out = []
        if self.text.kind != "none":
            out.append("text")
        if self.image.kind != "none":
            out.append("image")
        return out


def load_encode_config(path: str | Path | None, overrides: Iterable[str] = ()) -> EncodeConfig:
    """Load an :class:`EncodeConfig` from YAML with dotted overrides."""
    return load_config(EncodeConfig, path, overrides)
