"""Build (or reuse) the inputs a TMF recipe needs: prepared data, text/image tables, graph tables.

Each stage has its own cache, so calling these functions again is cheap:

* data   -> ``llmrec.data.prepare`` (Arrow cache keyed by input bytes + config);
* encode -> ``llmrec.encoders.run_encoding`` (tables keyed by encoder, weights, catalog, template);
* graph  -> ``graph_encoders.cli.fit_graph``; a finished run folder is reused when its
  ``embeddings.safetensors`` was written for the same dataset fingerprint, its saved
  config equals the requested one (missing predictions files are then written from its
  best weights), otherwise the model is trained again (:func:`ensure_graph_run`; the pipeline's
  baselines go through it too).

Every stage logs what it builds or reuses, so ``python train.py --config ...`` on a fresh
checkout says why it takes longer the first time.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from graph_encoders.batching import SequenceBatcher
from graph_encoders.cli import FitGraphConfig, fit_graph, load_run
from graph_encoders.predictions import baseline_prediction_records, predictions_path
from graph_encoders.retrieval import Retrieval, retrieve
from graph_encoders.trainer import CHECKPOINT_DIR, StaleCheckpointError
from llmrec.config import ConfigError, load_config, to_dict
from llmrec.data import load_data_config, prepare
from llmrec.data.types import SequenceDataset
from llmrec.encoders.config import load_encode_config
from llmrec.encoders.pipeline import run_encoding
from llmrec.io import write_jsonl
from llmrec.tables import EmbeddingTable, load_table
from llmrec.tmf.model import ModalityTables

log = logging.getLogger(__name__)


def ensure_dataset(data_config: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SequenceDataset:
    """Prepare (or load from cache) the dataset of a data config."""
    log.info("stage data: %s %s", data_config, " ".join(overrides))
    return prepare(load_data_config(data_config, overrides))


def ensure_item_tables(encode_config: str | Path, dataset: SequenceDataset) -> dict[str, EmbeddingTable]:
    """Text / image tables of ``dataset`` under an encode config (absent modalities are left out)."""
    cfg = load_encode_config(encode_config)
    run = run_encoding(cfg, dataset)
    for name, result in run.results.items():
        log.info("stage encode: %s table %s (%s)", name, tuple(result.table.item.shape),
                 "cache hit" if result.cache_hit else f"encoded in {result.seconds:.1f} s")
    for name, why in run.absent.items():
        log.info("stage encode: no %s table: %s", name, why)
    return run.tables


def ensure_graph_run(graph_config: str | Path, dataset: SequenceDataset,
                     predictions: tuple[tuple[str, str], ...] = ()) -> Path:
    """The run folder of a graph encoder / baseline trained on ``dataset``: reused when it matches, else trained.

    A finished run is reused when its ``embeddings.safetensors`` was written for the same dataset
    fingerprint and its saved config equals the requested one; the per-row predictions files named by
    ``predictions`` (``(split, protocol)`` pairs) that it lacks are then written from its best weights
    without training. A folder holding a run on another version of the dataset is left alone: this
    version trains into ``<folder>-<fingerprint[:12]>`` (e.g. a recipe's ``max_history=10`` split next
    to ``llmrec fit-graph``'s default one). A folder trained with another config is cleared (metrics,
    tables, predictions, checkpoints) and trained from scratch; an unfinished run of this config
    continues from its checkpoint (from scratch if the checkpoint is of other data).
    So the pipeline's MBHT baseline and the recipe's MBHT graph stage are one run, and a second
    pipeline run trains no baseline again.
    """
    cfg = load_config(FitGraphConfig, graph_config)
    run_dir = Path(cfg.output_dir.format(model=cfg.model_name, dataset=dataset.name))
    state = _graph_run_state(run_dir, cfg, dataset)
    if state == "other data":  # keep that run; this dataset version gets a folder of its own
        versioned = run_dir.with_name(f"{run_dir.name}-{dataset.fingerprint[:12]}")
        log.info("stage graph: %s holds a run on another version of %s; using %s for this one",
                 run_dir, dataset.name, versioned)
        run_dir, cfg = versioned, replace(cfg, output_dir=str(versioned))
        state = _graph_run_state(run_dir, cfg, dataset)
    if state == "reuse":
        log.info("stage graph: reusing the %s run in %s", cfg.model_name, run_dir)
    else:
        log.info("stage graph: training %s on %s into %s (first use; reused afterwards)", cfg.model_name,
                 dataset.name, run_dir)
        _train_graph_run(cfg, dataset, run_dir, resume=state == "resume")
    # asked for, but not written by the run (its config's write_predictions, or other protocols)
    missing = [(split, protocol) for split, protocol in predictions
               if not predictions_path(run_dir, split, protocol).is_file()]
    if missing:
        _write_missing_predictions(run_dir, dataset, missing)
    return run_dir


def _train_graph_run(cfg: Any, dataset: SequenceDataset, run_dir: Path, resume: bool) -> None:
    """Continue an unfinished run of this config (``resume``) or start over in a cleared folder."""
    if resume:
        try:
            fit_graph(cfg, dataset=dataset)
            return
        except StaleCheckpointError as err:  # its checkpoint is of other data
            log.info("stage graph: %s; training from scratch", err)
    _clear_run_outputs(run_dir)
    fit_graph(cfg, dataset=dataset, resume=False)


def _clear_run_outputs(run_dir: Path) -> None:
    """Remove what an earlier run of other data or another config left (so none of it is taken for this run's)."""
    stale = [run_dir / n for n in ("metrics.json", "embeddings.safetensors", "embeddings.json")]
    stale += sorted(run_dir.glob("predictions-*.jsonl"))
    stale += [run_dir / CHECKPOINT_DIR, run_dir / (CHECKPOINT_DIR + ".old")]
    removed = [path for path in stale if path.exists()]
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if removed:
        log.info("stage graph: removed the earlier run's %s from %s", ", ".join(p.name for p in removed), run_dir)


def _write_missing_predictions(run_dir: Path, dataset: SequenceDataset, wanted: list[tuple[str, str]]) -> None:
    """Predictions files of a finished run that lacks them, from its restored best weights (no training)."""
    model, dataset, config = load_run(run_dir, dataset=dataset)
    protocols = {p.name: p for p in config.eval.protocols}
    batcher = SequenceBatcher(dataset, model.config.max_len, config.sequence)
    for split, name in wanted:
        if name not in protocols:
            raise KeyError(f"{run_dir / 'config.yaml'}: eval.protocols has no {name!r}; known: {sorted(protocols)}")
        records = baseline_prediction_records(model, batcher, split, protocols[name], config.eval)
        log.info("stage graph: wrote %s from the run's best weights", write_jsonl(
            predictions_path(run_dir, split, name), records))


def ensure_retrieval(retriever_config: str | Path, dataset: SequenceDataset, split: str, k: int,
                     progress: bool = True) -> Retrieval:
    """The top ``k`` of the whole catalog for every ``split`` row, by the recommender of ``retriever_config``
    (a configs/graph/*.yaml file; its run on ``dataset`` is trained on first use and reused afterwards)."""
    run_dir = ensure_graph_run(retriever_config, dataset)
    model, dataset, config = load_run(run_dir, dataset=dataset)
    batcher = SequenceBatcher(dataset, model.config.max_len, config.sequence)
    retrieval = retrieve(model, batcher, split, k, config.eval.batch_size, progress)
    log.info("stage retrieve: %s top %d for %d %s rows (recall@%d %.3f)", retrieval.model, k, len(retrieval.targets),
             split, k, float(retrieval.hit.mean()) if len(retrieval.targets) else float("nan"))
    return retrieval


def ensure_graph_table(graph_config: str | Path, dataset: SequenceDataset) -> EmbeddingTable:
    """Item + behavior embeddings of a graph encoder trained on ``dataset`` (trained once, then reused)."""
    table_path = ensure_graph_run(graph_config, dataset) / "embeddings.safetensors"
    if not table_path.is_file():
        raise RuntimeError(f"{graph_config}: export is off, so the graph run wrote no embedding table")
    return load_table(table_path)


def _graph_run_state(run_dir: Path, cfg: Any, dataset: SequenceDataset) -> str:
    """What to do with ``run_dir``: ``"reuse"`` (finished on this dataset version with this config),
    ``"other data"`` (its table was written for another dataset version), ``"fresh"`` (another config:
    start over) or ``"resume"`` (absent or unfinished: train, continuing its checkpoint)."""
    table_path, saved_config = run_dir / "embeddings.safetensors", run_dir / "config.yaml"
    meta_path = table_path.with_suffix(".json")
    if meta_path.is_file():
        meta = yaml.safe_load(meta_path.read_text(encoding="utf-8")) or {}
        if meta.get("dataset_fingerprint") != dataset.fingerprint:
            return "other data"
    if saved_config.is_file() and _saved_graph_config(saved_config) != to_dict(cfg):
        log.info("stage graph: %s was trained with another config; training again", run_dir)
        return "fresh"
    if table_path.is_file() and meta_path.is_file() and saved_config.is_file() and (run_dir / "metrics.json").is_file():
        return "reuse"
    return "resume"


def _saved_graph_config(path: Path) -> Any:
    """A run's saved config as the current :class:`FitGraphConfig` reads it: keys added to the config since the
    run was trained take their defaults (so a new key with a default does not make every finished run stale);
    a file the current config cannot read is returned raw (and so differs)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        return to_dict(load_config(FitGraphConfig, path))
    except (ConfigError, TypeError, ValueError):
        return raw


def with_behaviors_of(graph: EmbeddingTable | None, source: EmbeddingTable, behavior_config: str) -> EmbeddingTable:
    """``graph`` with ``source``'s behavior table (a recipe's ``behavior_config``); the origin goes into its
    metadata."""
    if graph is None:
        raise ConfigError(f"behavior_config: {behavior_config} gives behavior vectors for the graph modality, "
                          "but the recipe has no graph_config")
    if source.behavior is None:
        raise ConfigError(f"behavior_config: the {source.metadata.get('model')} run of {behavior_config} exported no "
                          "behavior table (MBHT and DreamRec do; "
                          "SASRec/GRU4Rec/BERT4Rec with model.use_behaviors=true)")
    if source.metadata.get("behaviors") != graph.metadata.get("behaviors"):
        raise ConfigError(f"behavior_config: {behavior_config} has behaviors {source.metadata.get('behaviors')}, the "
                          f"graph table {graph.metadata.get('behaviors')}")
    log.info("behavior vectors: %s table %s from %s (in place of the %s run's)", source.metadata.get("model"),
             tuple(source.behavior.shape), behavior_config, graph.metadata.get("model"))
    origin = {"config": str(behavior_config), "model": source.metadata.get("model")}
    return replace(graph, behavior=source.behavior, metadata={**graph.metadata, "behavior_source": origin})


def ensure_inputs(cfg: Any) -> tuple[SequenceDataset, Any]:
    """``(dataset, ModalityTables)`` for a TMF ``TrainConfig`` (its data/encode/graph config paths)."""
    if not cfg.data_config:
        raise ValueError("data_config is required: the recipe must name a configs/data/*.yaml file")
    dataset = ensure_dataset(cfg.data_config, list(cfg.data_overrides))
    item_tables = ensure_item_tables(cfg.encode_config, dataset) if cfg.encode_config else {}
    graph = ensure_graph_table(cfg.graph_config, dataset) if cfg.graph_config else None
    if cfg.behavior_config:
        graph = with_behaviors_of(graph, ensure_graph_table(cfg.behavior_config, dataset), cfg.behavior_config)
    tables = ModalityTables(text=item_tables.get("text"), image=item_tables.get("image"), graph=graph)
    for name in ("image", "text", "graph"):
        table = getattr(tables, name)
        log.info("modality %s: %s", name,
                 "absent (zero rows, mask False)" if table is None else tuple(table.item.shape))
    return dataset, tables
