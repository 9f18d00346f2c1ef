"""Item text and image encoders (TMF Eq. 1-2): catalog -> cached embedding tables.

Library use::

    from llmrec.encoders import EncodeConfig, encode_items
    tables = encode_items(cfg, dataset)   # {"text": EmbeddingTable, "image": EmbeddingTable}

Command line: ``llmrec encode --config configs/encode/ml100k_text.yaml``. See docs/encoders.md.
"""

from llmrec.encoders.config import (
                                    ClipConfig,
                                    EncodeConfig,
                                    HandcraftedConfig,
                                    ImageEncoderConfig,
                                    TextEncoderConfig,
                                    load_encode_config,
)
from llmrec.encoders.factory import build_encoders
from llmrec.encoders.pipeline import EncodeRun, ModalityResult, cache_folder, encode_items, run_encoding
from llmrec.encoders.weights import WeightsNotFoundError

__all__ = [
    "ClipConfig", "EncodeConfig", "EncodeRun", "HandcraftedConfig", "ImageEncoderConfig", "ModalityResult",
    "TextEncoderConfig", "WeightsNotFoundError", "build_encoders", "cache_folder", "encode_items",
    "load_encode_config", "run_encoding",
]
