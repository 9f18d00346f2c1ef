"""``llmrec train`` and ``llmrec infer`` (and ``train.py`` / ``infer.py``): build the inputs, then run.

The training loop and inference receive their dataset and modality tables; building or reusing them
(data preparation, encoders, the graph encoder) is this package's job (:mod:`llmrec.pipeline.stages`).
"""

from __future__ import annotations

import argparse
from typing import Any

from llmrec.cli_common import add_config_arguments, fail, load_or_exit, print_config, setup_logging
from llmrec.config import ConfigError
from llmrec.eval.infer import InferConfig, load_infer_config, resolve_checkpoint, resolve_train_config, run_inference
from llmrec.eval.rerank import run_rerank
from llmrec.pipeline.stages import ensure_dataset, ensure_inputs, ensure_retrieval
from llmrec.tmf.model import ModalityTables
from llmrec.train.config import load_train_config
from llmrec.train.loop import train


def train_main(argv: list[str] | None = None) -> int:
    """``llmrec train --config FILE [--config PROFILE ...] [key=value ...] [--resume auto|latest|DIR]
    [--stop-after N]``."""
    parser = argparse.ArgumentParser(prog="llmrec train", description="Fine-tune TMF (LoRA + adaptors).")
    add_config_arguments(parser, config_help="a configs/tmf_*.yaml recipe", print_config=True, layered=True,
                         overrides_example="optimizer.lr=1e-4 max_steps=50")
    parser.add_argument("--resume", default=None,
                        help="'auto' (the run's latest checkpoint, or a fresh start if it has none), "
                        "'latest' (the latest checkpoint, which must exist) or a checkpoint folder")
    parser.add_argument("--stop-after", type=int, default=None, help="stop (and save) after this step")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_or_exit(parser, load_train_config, args)
    if args.print_config:
        return print_config(cfg)
    dataset, tables = ensure_inputs(cfg)
    train(cfg, dataset, tables, resume=args.resume, stop_after=args.stop_after)
    return 0


def inference_inputs(cfg: InferConfig) -> tuple[Any, ModalityTables]:
    """The dataset and tables of the recipe an inference run reads; a zero-shot (text-only) run builds no tables."""
    checkpoint = resolve_checkpoint(cfg.checkpoint) if cfg.checkpoint is not None else None
    train_cfg = resolve_train_config(cfg, checkpoint)
    if checkpoint is not None:
        return ensure_inputs(train_cfg)
    if not train_cfg.data_config:
        raise ConfigError("the recipe has no data_config: it must name a configs/data/*.yaml file")
    return ensure_dataset(train_cfg.data_config, list(train_cfg.data_overrides)), ModalityTables()


def run_predictions(cfg: InferConfig, progress: bool = True) -> Any:
    """Build the inputs of ``cfg`` and run it: the frozen sampled candidates, or retrieve-then-rerank."""
    retriever = rerank_retriever(cfg) if cfg.protocol == "rerank" else None  # checked before the inputs are built
    dataset, tables = inference_inputs(cfg)
    if retriever is None:
        return run_inference(cfg, dataset, tables, progress=progress)
    retrieval = ensure_retrieval(retriever, dataset, cfg.split, cfg.rerank.k, progress)
    return run_rerank(cfg, dataset, tables, retrieval, progress=progress)


def rerank_retriever(cfg: InferConfig) -> str:
    """``rerank.retriever``, else the recipe's own graph_config; an error when neither names one."""
    if cfg.rerank.retriever:
        return cfg.rerank.retriever
    checkpoint = resolve_checkpoint(cfg.checkpoint) if cfg.checkpoint is not None else None
    recipe_graph = resolve_train_config(cfg, checkpoint).graph_config
    if not recipe_graph:
        raise ConfigError("rerank.retriever is null and the recipe has no graph_config: name a configs/graph/*.yaml "
                          "file whose model retrieves")
    return str(recipe_graph)


def infer_main(argv: list[str] | None = None) -> int:
    """``llmrec infer [--config FILE] [key=value ...]``."""
    parser = argparse.ArgumentParser(prog="llmrec infer", description="Predict for test users: generate and/or "
                                     "rank the frozen candidates with a TMF checkpoint (or a zero-shot LLM), or "
                                     "re-rank a recommender's top K of the catalog (protocol=rerank).")
    add_config_arguments(parser, config_help="a configs/infer/*.yaml file (optional)", required=False,
                         print_config=True, overrides_example="checkpoint=runs/x mode=generate")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_or_exit(parser, load_infer_config, args)
    if args.print_config:
        return print_config(cfg)
    try:
        path = run_predictions(cfg)
    except (ConfigError, FileNotFoundError) as err:
        return fail(parser.prog, err)
    print(path)
    return 0
