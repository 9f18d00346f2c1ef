"""llmrec: LLM-based generative recommendation (TMF) and the sequential recommenders it is measured against.

The public Python API is one class, :class:`llmrec.Recommender` (``llmrec/pipeline/recommender.py``,
docs/recommend.md)::

    from llmrec import Recommender
    rec = Recommender.from_pretrained("runs/tmf_smollm2_shop")
    rec.recommend([("p17", "view"), ("p3", "purchase")], k=5)

The rest of the toolkit is reached through its packages (docs/ARCHITECTURE.md) and the ``llmrec`` command.

``Recommender`` lives on the top floor and this file is also the parent of the foundations, which every floor
imports (``llmrec.config``, ``llmrec.io``, ...): importing it here eagerly would make every ``import llmrec.x``
load torch, transformers and the whole pipeline (``llmrec --help`` included), and would close a circle
(``graph_encoders.cli`` -> ``llmrec.config`` -> this file -> ``llmrec.pipeline.stages`` -> ``graph_encoders.cli``).
So it is loaded on first access (PEP 562 module ``__getattr__``); tests/layout/test_layering.py allows this one
deferred import and no other.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Recommender"]


def __getattr__(name: str) -> Any:
    if name == "Recommender":
        # the front door's one deferred import (module docstring): the top floor, loaded on first use
        from llmrec.pipeline.recommender import Recommender

        return Recommender
    raise AttributeError(f"module 'llmrec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
