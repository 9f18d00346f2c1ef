"""TMF adaptors: modality fusion (AMSA + CMA) and the MLP projectors into the LLM embedding space."""

from adapters.fusion import FusionConfig, MaskedAttention, ModalityFusion, item_attention_mask
from adapters.projectors import MLPAdaptor, embedding_rms

__all__ = ["FusionConfig", "MaskedAttention", "ModalityFusion", "MLPAdaptor", "embedding_rms", "item_attention_mask"]
