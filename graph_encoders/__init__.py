"""Sequential recommenders on one interface: the graph modality of TMF and its baselines.

``build_model(name, params, DatasetSpec.from_dataset(ds))`` builds a registered model
(sasrec, gru4rec, bert4rec, mbht, dreamrec, mdsrec, m3bsr, bivrec); ``llmrec fit-graph`` trains, evaluates and
exports it.
See docs/graph_encoders.md.
"""

from graph_encoders.base import (
                                 MODELS,
                                 DatasetSpec,
                                 ModelConfig,
                                 SeqBatch,
                                 SequentialRecommender,
                                 build_model,
                                 get_model_class,
                                 register_model,
)

__all__ = [
    "MODELS", "DatasetSpec", "ModelConfig", "SeqBatch", "SequentialRecommender", "build_model", "get_model_class",
    "register_model",
]
