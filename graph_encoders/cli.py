"""``llmrec fit-graph``: train a sequential recommender, evaluate it, export its embeddings.

    llmrec fit-graph --config configs/graph/sasrec_ml100k.yaml [key.path=value ...]

Steps: prepare the data (``llmrec.data.prepare(load_data_config(config.data))``), seed,
build the model from the registry, train with early stopping (:mod:`graph_encoders.trainer`),
evaluate the best weights on ``valid`` and ``test`` under every protocol, and write into
the run folder ``metrics.json`` (every metric, per-epoch history, wall time, seed,
resolved config), ``config.yaml``, ``embeddings.safetensors`` (+ ``.json``) and, with
``write_predictions``, ``predictions-<split>-<protocol>.jsonl``: one line per evaluated row
in ``llmrec infer``'s predictions format (:mod:`graph_encoders.predictions`), for every
split and every protocol with at most 20 candidates (``uni10`` yes, ``pop100`` no: those
files would be large); and ``target_ranks-<split>.npz``: the 1-based (pessimistic) rank of each
row's target under every candidate protocol, one int64 array per protocol name, so runs can be
compared row by row (paired bootstrap, ``bench/seed_models.py``) without re-scoring.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import platform
import resource
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file

from graph_encoders.base import (
    MODALITY_KINDS,
    DatasetSpec,
    SequentialRecommender,
    build_model,
    get_model_class,
    model_config,
)
from graph_encoders.batching import SequenceBatcher
from graph_encoders.evaluation import EvalConfig, SplitEvaluation, evaluate_split
from graph_encoders.export import export_embeddings
from graph_encoders.predictions import predictions_path, records_of, written_protocols
from graph_encoders.trainer import CHECKPOINT_DIR, TrainConfig, Trainer, seed_everything
from llmrec.cli_common import EXIT_BAD_INPUT, add_config_arguments, fail, load_or_exit, setup_logging
from llmrec.config import ConfigError, load_config, save_config, to_dict
from llmrec.data import load_data_config, prepare
from llmrec.devices import kernel_settings
from llmrec.encoders import encode_items, load_encode_config
from llmrec.io import atomic_write, write_json, write_jsonl
from llmrec.metrics import target_ranks

log = logging.getLogger(__name__)


@dataclass
class FitGraphConfig:
    data: str  # data config YAML (see configs/data/); relative paths are relative to the working directory
    model: dict[str, Any]  # {"name": <registered model>, <that model's config keys>...}
    data_overrides: list[str] = field(default_factory=list)  # dotted overrides applied to the data config
    # encode config (configs/encode/*.yaml) giving the text / image tables of models that read them (DreamRec,
    # MDSRec); its data key is ignored: the tables are built (or loaded from the encoder cache) for this run's data
    encode: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sequence: Literal["all", "target"] = "all"  # model inputs: every behavior, or target-behavior interactions only
    splits: list[str] = field(default_factory=lambda: ["valid", "test"])  # evaluated after training
    output_dir: str = "runs/graph/{model}_{dataset}"  # {model} and {dataset} are filled in
    export: bool = True  # write embeddings.safetensors
    write_predictions: bool = True  # predictions-<split>-<protocol>.jsonl for protocols of <= 20 candidates

    def validate(self) -> None:
        if "name" not in self.model:
            raise ConfigError("model.name is required (e.g. sasrec, gru4rec, bert4rec, mbht)")
        model_config(self.model_name, self.model_params)
        bad = [s for s in self.splits if s not in ("valid", "test")]
        if bad:
            raise ConfigError(f"splits: {bad} are not evaluation splits (valid, test)")

    @property
    def model_name(self) -> str:
        return str(self.model["name"])

    @property
    def model_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.model.items() if k != "name"}


@dataclass
class FitResult:
    run_dir: Path
    metrics: dict[str, Any]
    table_path: Path | None


def fit_graph(config: FitGraphConfig, dataset: Any = None, progress: bool = True,
              resume: bool | None = None) -> FitResult:
    """Run one fit-graph job; ``dataset`` (a prepared SequenceDataset) skips data preparation.

    ``resume`` overrides ``config.train.resume`` for this call only (the saved config keeps its value).
    """
    started = time.perf_counter()
    if dataset is None:
        dataset = prepare(load_data_config(config.data, config.data_overrides))
    run_dir = Path(config.output_dir.format(model=config.model_name, dataset=dataset.name))
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    spec = dataset_spec(config, dataset)
    seed_everything(config.train.seed)
    model = build_model(config.model_name, config.model_params, spec)
    batcher = SequenceBatcher(dataset, model.config.max_len, config.sequence)
    train = config.train if resume is None else replace(config.train, resume=resume)
    trainer = Trainer(model, batcher, train, config.eval, run_dir=run_dir, progress=progress)
    state = trainer.fit()
    results: dict[str, Any] = {}
    eval_seconds: dict[str, float] = {}
    keep = written_protocols(config.eval) if config.write_predictions else []
    every_protocol = [p.name for p in config.eval.protocols]
    for split in config.splits:
        t0 = time.perf_counter()
        evaluation = evaluate_split(model, batcher, split, config.eval, progress=progress, keep_scores=every_protocol)
        results[split] = evaluation.metrics
        eval_seconds[split] = time.perf_counter() - t0
        write_target_ranks(run_dir / f"target_ranks-{split}.npz", evaluation)
        for protocol in keep:
            path = predictions_path(run_dir, split, protocol)
            write_jsonl(path, records_of(evaluation, dataset, split, protocol, config.model_name))
            log.info("wrote %s", path)
    table_path = None
    if config.export:
        table_path = export_embeddings(model, dataset, run_dir,
                                       {"best_epoch": state.best_epoch, "seed": config.train.seed})
    metrics = {
        "model": config.model_name,
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "seed": config.train.seed,
        **results,
        "best_epoch": state.best_epoch,
        "epochs_trained": state.epoch,
        "stopped_early": state.stopped_early,
        f"best_valid_{config.train.monitor}": state.best_metric,
        "train_seconds": state.elapsed_seconds,
        "eval_seconds": eval_seconds,
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # this process, so far
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "n_training_windows": len(trainer.windows.rows),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "platform": platform.platform(),
        **kernel_settings(),  # the same seed gives other numbers under other kernels (docs/graph_encoders.md)
        "history": state.history,
        "config": to_dict(config),
    }
    write_json(run_dir / "metrics.json", metrics)
    log.info("wrote %s", run_dir / "metrics.json")
    return FitResult(run_dir, metrics, table_path)


def write_target_ranks(path: Path, evaluation: SplitEvaluation) -> None:
    """Per-row 1-based target ranks of every kept protocol (what the protocol's metrics are computed from)."""
    ranks = {name: target_ranks(scores, evaluation.candidates[name].target_index)
             for name, scores in evaluation.scores.items()}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez would add ".npz" to a temporary name
            np.savez(handle, **ranks)

    atomic_write(path, write)


def dataset_spec(config: FitGraphConfig, dataset: Any) -> DatasetSpec:
    """``dataset``'s :class:`DatasetSpec` with the text / image tables the model reads, from ``config.encode``.

    Models list them in ``inputs`` (required) or ``optional_inputs`` (read when present). The tables
    come from :func:`llmrec.encoders.encode_items` (cached by content, so a second run only loads them).
    """
    cls = get_model_class(config.model_name)
    wanted = [kind for kind in MODALITY_KINDS if kind in cls.inputs | cls.optional_inputs]
    if not wanted:
        return DatasetSpec.from_dataset(dataset)
    if config.encode is None:
        raise ConfigError(f"encode: model {config.model_name!r} reads {'/'.join(wanted)} item tables; set "
                          f"encode: configs/encode/<dataset>.yaml (the text / image encoders of its items)")
    tables = encode_items(load_encode_config(config.encode), dataset)
    missing = [kind for kind in wanted if kind in cls.inputs and kind not in tables]
    if missing:
        raise ConfigError(f"encode: {config.encode} gives no {'/'.join(missing)} table, which model "
                          f"{config.model_name!r} needs")
    for kind in wanted:
        log.info("%s input %s: %s", config.model_name, kind,
                 tuple(tables[kind].item.shape) if kind in tables else f"absent from {config.encode}")
    return DatasetSpec.from_dataset(dataset,
                                    **{f"{kind}_table": tables[kind].item for kind in wanted if kind in tables})


def load_run(run_dir: str | Path, dataset: Any = None) -> tuple[SequentialRecommender, Any, FitGraphConfig]:
    """A finished run's model (best weights, eval mode), its dataset and its config.

    ``dataset`` (a prepared SequenceDataset) skips data preparation; otherwise the run's
    data config is prepared again (a cache hit when nothing changed).
    """
    run_dir = Path(run_dir)
    config = load_config(FitGraphConfig, run_dir / "config.yaml")
    if dataset is None:
        dataset = prepare(load_data_config(config.data, config.data_overrides))
    checkpoint = run_dir / CHECKPOINT_DIR
    weights = next((checkpoint / f for f in ("best_model.safetensors", "model.safetensors")
                    if (checkpoint / f).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{run_dir}: no trained weights under {checkpoint} (was train.checkpoint false?)")
    model = build_model(config.model_name, config.model_params, dataset_spec(config, dataset))
    model.load_state_dict(load_file(str(weights)))
    return model.eval(), dataset, config


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="llmrec fit-graph", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, config_help="YAML file, e.g. configs/graph/sasrec_ml100k.yaml",
                         overrides_example="train.epochs=5 model.hidden_size=32")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    setup_logging()
    config = load_or_exit(parser, functools.partial(load_config, FitGraphConfig), args)
    try:
        result = fit_graph(config, progress=not args.quiet)
    except (ConfigError, FileNotFoundError) as err:
        return fail(parser.prog, err, EXIT_BAD_INPUT)
    summary = {split: result.metrics[split] for split in config.splits}
    print(json.dumps({"run_dir": str(result.run_dir), **summary}, indent=2))
    return 0
