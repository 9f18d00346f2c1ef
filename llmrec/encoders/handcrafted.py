"""``HandcraftedImageFeatures``: a weight-free image featurizer (color + texture statistics).

This is **not** a pretrained encoder and not what TMF uses (TMF's
``F_visual`` in Eq. 1 is CLIP's image tower). It exists so that the offline
quickstart has a meaningful image modality without CLIP weights: the synthetic
shop draws products in a color with a solid / striped / dotted / checked
pattern, and these statistics tell colors and patterns apart.

For an image resized to ``size x size`` (area averaging), the *foreground* is
every pixel that differs from a uniform border color (product photos sit on
a plain background; with no uniform border the whole image is foreground).
The vector is two blocks, each L2-normalised, the color block weighted by
``color_weight``, the whole vector L2-normalised:

* **color** (``color_bins**3`` dims): a soft joint RGB histogram of the
  foreground; every pixel spreads its unit mass over the 8 surrounding bin
  centres (trilinear weights), so nearby shades share mass instead of falling
  into disjoint bins.
* **texture** (12 dims), on the luminance inside the foreground eroded by 2
  pixels (so the product's outline is not mistaken for a pattern), all scaled
  by the texture strength ``s = 1 - exp(-edge presence / 0.05)`` so that a
  flat (solid) product is ``[0, ..., 0, 1]``: shares of edge presence along x /
  y / the diagonals (3; stripes are one-sided, checks and dots are not), edge
  density (1), shares of spectral energy on the horizontal and vertical
  frequency axes and off them (3; stripes sit on one axis, gingham checks on
  both, dots off them), share of the 8 strongest frequencies (1;
  periodicity), radius of the strongest frequency (1), luminance contrast
  (1), autocorrelation peak along rows/columns (1), flatness ``1 - s`` (1).
  Outside the eroded foreground, the luminance is set to the foreground mean
  before the Fourier transform.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from llmrec.encoders.base import ItemEncoder

VERSION = 1  # bump when the statistics change: part of the cache key
TEXTURE_FEATURES = (
    "edge_x_share", "edge_y_share", "edge_diag_share", "edge_density",
    "spectrum_x_axis", "spectrum_y_axis", "spectrum_off_axis", "spectrum_peak_share",
    "dominant_radius", "contrast", "autocorrelation_peak", "flatness",
)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_EDGE_CLIP = 0.05  # a luminance step this large counts as a full edge
_STRENGTH_SCALE = 0.05  # summed edge presence at which texture strength is 1 - 1/e
_BACKGROUND_DISTANCE = 0.08  # max per-channel difference from the background color
_BORDER_UNIFORMITY = 0.8  # share of border pixels near the median border color


@dataclass
class HandcraftedImageFeatures(ItemEncoder):
    """Color histogram + texture/pattern statistics of an image; needs no weights."""

    size: int = 64
    color_bins: int = 4
    color_weight: float = 1.0
    normalize: bool = True
    supports_images = True

    def __post_init__(self) -> None:
        super().__init__()

    @property
    def name(self) -> str:
        return "handcrafted"

    @property
    def dim(self) -> int:
        return self.color_bins**3 + len(TEXTURE_FEATURES)

    @property
    def blocks(self) -> dict[str, slice]:
        """Column ranges of the two blocks in the output vector."""
        n_color = self.color_bins**3
        return {"color": slice(0, n_color), "texture": slice(n_color, self.dim)}

    def describe(self) -> dict[str, Any]:
        return {"kind": "handcrafted", "version": VERSION, "size": self.size, "color_bins": self.color_bins,
                "color_weight": self.color_weight, "normalize": self.normalize,
                "texture_features": list(TEXTURE_FEATURES)}

    def weights_fingerprint(self) -> str:
        return f"handcrafted-v{VERSION}"

    def _encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = np.stack([_resize(img, self.size) for img in images])  # [n, S, S, 3] in 0..1
        foreground = foreground_masks(pixels)
        color = _l2(self.color_histogram(pixels, foreground)) * self.color_weight
        texture = _l2(texture_statistics(pixels, foreground))
        features = np.concatenate([color, texture], axis=1)
        if self.normalize:
            features = _l2(features)
        return torch.from_numpy(features.astype(np.float32))

    def color_histogram(self, pixels: np.ndarray, foreground: np.ndarray) -> np.ndarray:
        """Soft joint RGB histogram of the foreground pixels, ``[n, bins**3]``, rows summing to 1."""
        n, bins = pixels.shape[0], self.color_bins
        pos = pixels.reshape(n, -1, 3) * (bins - 1)  # bin-centre coordinates
        low = np.clip(np.floor(pos).astype(np.int64), 0, bins - 2)
        frac = pos - low
        mask = foreground.reshape(n, -1).astype(np.float64)
        hist = np.zeros((n, bins**3), dtype=np.float64)
        rows = np.repeat(np.arange(n), pos.shape[1])
        for corner in range(8):
            offset = np.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
            weight = np.prod(np.where(offset == 1, frac, 1.0 - frac), axis=2) * mask
            idx = low + offset
            flat = (idx[..., 0] * bins + idx[..., 1]) * bins + idx[..., 2]
            np.add.at(hist, (rows, flat.ravel()), weight.ravel())
        return hist / np.maximum(mask.sum(1, keepdims=True), 1.0)


def foreground_masks(pixels: np.ndarray) -> np.ndarray:
    """Pixels that differ from a uniform border (the product-photo background), ``[n, S, S]`` bool.

    The background is the median border color when at least
    ``_BORDER_UNIFORMITY`` of the border pixels lie within ``_BACKGROUND_DISTANCE``
    of it; otherwise (or when under 2% of the pixels would remain) the whole
    image is foreground.
    """
    masks = np.ones(pixels.shape[:3], dtype=bool)
    for i, img in enumerate(pixels):
        border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
        background = np.median(border, axis=0)
        if (np.abs(border - background).max(1) < _BACKGROUND_DISTANCE).mean() < _BORDER_UNIFORMITY:
            continue
        fg = np.abs(img - background).max(2) >= _BACKGROUND_DISTANCE
        if fg.mean() >= 0.02:
            masks[i] = fg
    return masks


def texture_statistics(pixels: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """The statistics of :data:`TEXTURE_FEATURES` inside the eroded foreground, ``[n, 12]``."""
    luma = pixels @ _LUMA  # [n, S, S]
    interior = _erode(foreground, 2)
    out = np.zeros((len(luma), len(TEXTURE_FEATURES)))
    for i, (y, inside) in enumerate(zip(luma, interior, strict=True)):
        if inside.sum() < 16:  # too small to measure a texture: treat as flat
            inside = np.ones_like(inside)
        out[i] = _texture_of(y, inside)
    return out


def _texture_of(luma: np.ndarray, inside: np.ndarray) -> np.ndarray:
    gx = np.abs(np.diff(luma, axis=1))[:-1, :]
    gy = np.abs(np.diff(luma, axis=0))[:, :-1]
    gd = 0.5 * (np.abs(luma[1:, 1:] - luma[:-1, :-1]) + np.abs(luma[1:, :-1] - luma[:-1, 1:]))
    pair = inside[:-1, :-1] & inside[1:, 1:] & inside[:-1, 1:] & inside[1:, :-1]
    if not pair.any():
        pair = np.ones_like(pair)
    presence = [np.minimum(g[pair], _EDGE_CLIP).mean() / _EDGE_CLIP for g in (gx, gy, gd)]
    total = sum(presence) + 1e-12
    strength = 1.0 - np.exp(-total / _STRENGTH_SCALE)
    edge_density = (np.maximum(gx, gy)[pair] > _EDGE_CLIP).mean()

    filled = np.where(inside, luma, luma[inside].mean())  # outside the product: its mean, no edges
    spectrum = np.abs(np.fft.fft2(filled - filled.mean())) ** 2
    spectrum[0, 0] = 0.0
    energy = spectrum.sum() + 1e-12
    x_axis = spectrum[0, 1:].sum() / energy  # variation along x only (vertical stripes)
    y_axis = spectrum[1:, 0].sum() / energy  # variation along y only (horizontal stripes)
    peak_share = np.sort(spectrum.ravel())[-8:].sum() / energy
    freqs = np.fft.fftfreq(luma.shape[0])
    radius = np.hypot(freqs[:, None], freqs[None, :]) / 0.5
    dominant_radius = radius.ravel()[np.argmax(spectrum)]
    acf = np.real(np.fft.ifft2(spectrum))
    half = luma.shape[0] // 2
    autocorr = np.clip(max(acf[0, 2:half].max(), acf[2:half, 0].max()) / (acf[0, 0] + 1e-12), 0.0, 1.0)
    contrast = min(1.0, 4.0 * luma[inside].std())
    stats = np.array([
        presence[0] / total, presence[1] / total, presence[2] / total, edge_density,
        x_axis, y_axis, 1.0 - x_axis - y_axis, peak_share, dominant_radius, contrast, autocorr,
    ]) * strength
    return np.append(stats, 1.0 - strength)


def _erode(masks: np.ndarray, steps: int) -> np.ndarray:
    """Binary erosion with a 3x3 square, ``steps`` times (outside the image counts as inside)."""
    out = masks.copy()
    for _ in range(steps):
        padded = np.pad(out, ((0, 0), (1, 1), (1, 1)), mode="edge")
        eroded = np.ones_like(out)
        for dy in range(3):
            for dx in range(3):
                eroded &= padded[:, dy:dy + out.shape[1], dx:dx + out.shape[2]]
        out = eroded
    return out


def _resize(image: Image.Image, size: int) -> np.ndarray:
    rgb = image.convert("RGB").resize((size, size), Image.Resampling.BOX)
    return np.asarray(rgb, dtype=np.float32) / 255.0


def _l2(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)
