"""Build the encoders an :class:`EncodeConfig` asks for (one CLIP instance for both towers)."""

from __future__ import annotations

from llmrec.encoders.base import ItemEncoder
from llmrec.encoders.config import CLIP_KINDS, EncodeConfig
from llmrec.encoders.handcrafted import HandcraftedImageFeatures
from llmrec.encoders.hf_clip import HFClipEncoder
from llmrec.encoders.open_clip_encoder import OpenClipEncoder
from llmrec.encoders.sentence_transformer import SentenceTransformerTextEncoder


def build_encoders(cfg: EncodeConfig) -> dict[str, ItemEncoder]:
    """``{"text": encoder, "image": encoder}`` for the configured modalities.

    Construction resolves and fingerprints the weights but loads no model.
    When both modalities use CLIP they share one encoder object (one model,
    one embedding space).
    """
    encoders: dict[str, ItemEncoder] = {}
    clip: ItemEncoder | None = None
    for modality, kind in (("text", cfg.text.kind), ("image", cfg.image.kind)):
        if kind == "none":
            continue
        normalize = cfg.text.normalize if modality == "text" else cfg.image.normalize
        if kind in CLIP_KINDS:
            if clip is None:
                clip = _build_clip(cfg, kind, normalize)
            elif normalize != clip.normalize:
                raise ValueError("text.normalize and image.normalize must agree when both use the same CLIP model")
            encoders[modality] = clip
        elif kind == "sentence_transformer":
            encoders[modality] = SentenceTransformerTextEncoder(
                cfg.text.model, device=cfg.device, normalize=normalize, max_length=cfg.text.max_length)
        elif kind == "handcrafted":
            hc = cfg.image.handcrafted
            encoders[modality] = HandcraftedImageFeatures(size=hc.size, color_bins=hc.color_bins,
                                                          color_weight=hc.color_weight, normalize=normalize)
        else:  # pragma: no cover - the config's Literal types exclude this
            raise ValueError(f"{modality}.kind: unknown encoder kind {kind!r}")
    return encoders


def _build_clip(cfg: EncodeConfig, kind: str, normalize: bool) -> ItemEncoder:
    c = cfg.clip
    if kind == "open_clip":
        return OpenClipEncoder(c.model, pretrained=c.pretrained, allow_random_init=c.allow_random_init, seed=c.seed,
                               device=cfg.device, normalize=normalize, weights_cache_dir=c.weights_cache_dir)

    if c.pretrained is not None:
        raise ValueError("clip.pretrained is an open_clip setting; "
                         "for hf_clip put the folder or hub name in clip.model")
    return HFClipEncoder(c.model, allow_random_init=c.allow_random_init, seed=c.seed, device=cfg.device,
                         normalize=normalize)
