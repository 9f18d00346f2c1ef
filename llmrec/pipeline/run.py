"""``llmrec pipeline``: every stage of a recipe in order; ``make quickstart`` runs it on the synthetic shop.

    llmrec pipeline --config configs/quickstart.yaml [key=value ...]

Stages (each reuses its cache, so a second run is fast):

1. data      prepare the dataset, print its statistics;
2. inputs    text / image tables and the graph encoder's item + behavior tables (``llmrec.pipeline.stages``);
3. baselines conventional sequential recommenders on the same frozen candidates; each run
             writes per-row predictions (``graph_encoders.predictions``) into its config's own
             ``output_dir`` and is reused when it matches (``llmrec.pipeline.stages.ensure_graph_run``), so
             a baseline with the recipe's graph config (MBHT) is the graph stage's run, not a second one;
4. train     TMF fine-tuning (LoRA + adaptors, curriculum) for the recipe's steps;
5. evaluate  TMF candidate ranking on every user of the split (or ``rank_users`` of them) and
             greedy generation on a seeded subset (HitRate@1, ValidRatio);
6. report    the baselines' predictions restricted to the rows TMF ranked (``<output_dir>/eval/``),
             then ``llmrec.eval.report.evaluate_files`` over them and TMF's predictions: one table
             (markdown + JSON) and a PNG bar chart, every ranking row on identical rows.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graph_encoders.cli import FitGraphConfig
from graph_encoders.predictions import MAX_PREDICTION_CANDIDATES, predictions_path
from llmrec.cli_common import EXIT_BAD_INPUT, add_config_arguments, fail, load_or_exit, setup_logging
from llmrec.config import ConfigError, load_config, save_config
from llmrec.data.stats import format_stats
from llmrec.eval.infer import InferConfig, run_inference
from llmrec.eval.report import PredictionsError, bar_chart, evaluate_files, markdown_table, read_predictions
from llmrec.eval.rules import rule_scores
from llmrec.io import write_json, write_jsonl, write_text
from llmrec.metrics import target_ranks
from llmrec.pipeline.stages import ensure_graph_run, ensure_inputs
from llmrec.train.checkpoint import load_trainer_state
from llmrec.train.config import evaluation_task, load_train_config
from llmrec.train.loop import train
from llmrec.train.memory import release_freed_memory

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    recipe: str
    """TMF train recipe (configs/tmf_*.yaml); it names the data, encode and graph configs."""
    recipe_overrides: list[str] = field(default_factory=list)
    """Dotted overrides of the recipe, e.g. ``max_steps=30``."""
    baselines: list[str] = field(default_factory=list)
    """Graph-encoder configs (configs/graph/*.yaml) trained and scored as baseline rows."""
    baseline_protocol: str = "uni10"
    """The baselines' evaluation protocol whose candidates equal the recipe's eval candidates."""
    split: str = "test"
    generate_users: int | None = 50
    """Users (seeded subset) for the generation metrics; null: all."""
    rank_users: int | None = None
    """Users (seeded subset) for candidate ranking; null: all. The baselines are scored on the same rows."""
    rank_batch_size: int = 40
    text_only: bool = False
    """Also fine-tune the recipe's LLM on text-only prompts (the easy task, same steps) and rank the same users:
    the "fine-tuned text-only LLM" row of TMF Table 3."""
    output_dir: str = "runs/quickstart"

    def validate(self) -> None:
        if self.split not in ("valid", "test"):
            raise ConfigError(f"split must be valid or test, got {self.split!r}")
        for key in ("generate_users", "rank_users"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be >= 1 or null, got {value}")


def _stage(name: str) -> None:
    print(f"\n=== {name} " + "=" * max(0, 70 - len(name)), flush=True)


def _train_and_rank(cfg: PipelineConfig, train_cfg: Any, dataset: Any, tables: Any, name: str,
                    out: Path) -> tuple[Path, Path, dict[str, Any]]:
    """Train one LLM row, rank the split's (seeded subset of) users; ``(checkpoint, predictions, training)``."""
    checkpoint = train(train_cfg, dataset, tables)
    release_freed_memory(collect=True)  # the trainer's model, optimizer and freed activations, before ranking loads one
    print(f"{name} checkpoint: {checkpoint}")
    state = load_trainer_state(checkpoint)
    samples_per_step = train_cfg.batch_size * train_cfg.gradient_accumulation_steps * state.get("world_size", 1)
    training = {"steps": state["step"], "samples": state["step"] * samples_per_step,
                "epochs": state["step"] / state["steps_per_epoch"], "task": evaluation_task(train_cfg),
                "curriculum": "fixed: " + train_cfg.curriculum.fixed_task if train_cfg.curriculum.fixed_task
                else "easy -> medium -> hard (Eq. 12-14)"}
    ranked = run_inference(load_config(InferConfig, None, [
        f"checkpoint={checkpoint}", f"split={cfg.split}", "mode=rank", f"rank_batch_size={cfg.rank_batch_size}",
        f"n_users={_yaml(cfg.rank_users)}", f"output={out / f'predictions-rank-{name}.jsonl'}"]),
        dataset=dataset, tables=tables)
    release_freed_memory(collect=True)
    return checkpoint, ranked, training


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Run every stage; return the report (also written to ``<output_dir>/report.json``)."""
    started = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "pipeline.yaml")
    train_cfg = load_train_config(cfg.recipe, [*cfg.recipe_overrides, f"output_dir={out / 'tmf'}"])
    text_cfg = (load_train_config(cfg.recipe, [*cfg.recipe_overrides, f"output_dir={out / 'text_only'}",
                                               "curriculum.fixed_task=easy", "eval.task=easy"])
                if cfg.text_only else None)

    graph_cfgs = [load_config(FitGraphConfig, path) for path in cfg.baselines]
    for path, graph_cfg in zip(cfg.baselines, graph_cfgs, strict=True):
        check_baseline_config(graph_cfg, path, cfg.split, cfg.baseline_protocol)

    _stage("1. data + 2. modality inputs (text, image, graph)")
    dataset, tables = ensure_inputs(train_cfg)
    print(format_stats(dataset.stats))

    _stage("3. baselines on the same frozen candidates")
    baseline_files: dict[str, Path] = {}
    for path, graph_cfg in zip(cfg.baselines, graph_cfgs, strict=True):
        # the configs' own run folders: a baseline that is also the recipe's graph encoder is one run
        run_dir = ensure_graph_run(path, dataset, predictions=((cfg.split, cfg.baseline_protocol),))
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        prefix = f"{cfg.baseline_protocol}/"
        baseline_files[graph_cfg.model_name] = predictions_path(run_dir, cfg.split, cfg.baseline_protocol)
        print(f"{graph_cfg.model_name}: {cfg.split} {prefix}HR@1 {metrics[cfg.split][prefix + 'HR@1']:.4f} "
              f"(every row; predictions in {baseline_files[graph_cfg.model_name]})")
    release_freed_memory(collect=True)  # what the encoders and graph models left in the allocator

    _stage("4. TMF training + 5. evaluation (candidate ranking, then generation)")
    checkpoint, ranked, training = _train_and_rank(cfg, train_cfg, dataset, tables, "TMF", out)
    generated = run_inference(load_config(InferConfig, None, [
        f"checkpoint={checkpoint}", f"split={cfg.split}", "mode=generate", f"n_users={_yaml(cfg.generate_users)}",
        f"output={out / 'predictions-generate.jsonl'}"]), dataset=dataset, tables=tables)
    release_freed_memory(collect=True)
    llm_rows = {"TMF": ranked}
    trained = {"TMF": training}
    if text_cfg is not None:
        _stage("4b. the same LLM fine-tuned on text-only prompts (the easy task), ranked on the same users")
        _, llm_rows[TEXT_ONLY], trained[TEXT_ONLY] = _train_and_rank(cfg, text_cfg, dataset, tables, "text-only", out)

    _stage("6. report")
    aligned = {name: restrict_to_rows(path, ranked, out / "eval" / f"{name}-{cfg.split}-{cfg.baseline_protocol}.jsonl")
               for name, path in baseline_files.items()}
    ranked_files = {**aligned, **llm_rows}
    evaluation = evaluate_files([*ranked_files.values(), generated], out / "eval",
                                names=[*ranked_files, "TMF (generate)"], ks=(1, 3))
    runs = evaluation["runs"]
    n_candidates = runs["TMF"]["n_candidates"][0]
    rows: dict[str, dict[str, float]] = {
        name: {"HitRate@1 (rank)": runs[name]["HR@1"], "HR@3 (rank)": runs[name].get("HR@3", float("nan"))}
        for name in ranked_files}
    rows["TMF"].update({"HitRate@1 (generate)": runs["TMF (generate)"]["HitRate@1"],
                        "ValidRatio (generate)": runs["TMF (generate)"]["ValidRatio"]})
    rows.update(rule_rows(dataset, cfg.split, ranked))
    rows["chance"] = {"HitRate@1 (rank)": 1 / n_candidates, "HR@3 (rank)": min(1.0, 3 / n_candidates),
                      "HitRate@1 (generate)": 1 / n_candidates}
    report = {
        "dataset": dataset.name,
        "split": cfg.split,
        "n_candidates": n_candidates,
        "n_users_ranked": runs["TMF"]["n"],
        "n_users_generated": runs["TMF (generate)"]["n"],
        "n_rows_ranked": {name: runs[name]["n"] for name in ranked_files},
        "llm_training": trained,
        "rows": rows,
        "checkpoint": str(checkpoint),
        "wall_seconds": time.perf_counter() - started,
    }
    write_json(out / "report.json", report, indent=1)
    table = markdown_table(rows, [c for c in REPORT_COLUMNS if any(c in row for row in rows.values())], first="model")
    notes = report_notes(report)
    write_text(out / "report.md", table + "\n" + notes)
    bar_chart(rows, ["HitRate@1 (rank)", "HR@3 (rank)"], out / "report.png",
              title=f"Same frozen candidates, same {report['n_users_ranked']} users; "
                    + ", ".join(f"{n} {t['steps']} steps ({t['epochs']:.2f} epoch)" for n, t in trained.items()))
    print(table)
    print(notes)
    print(f"Written to {out}/report.{{md,json,png}}")
    print(f"pipeline finished in {report['wall_seconds'] / 60:.1f} min")
    return report


def rule_rows(dataset: Any, split: str, ranked: Path) -> dict[str, dict[str, float]]:
    """The rule rows (``llmrec.eval.rules``) on the very users and candidates of the ranked predictions file."""
    records = read_predictions(ranked).records
    by_id = {item_id: k for k, item_id in enumerate(dataset.item_ids)}
    items = np.array([[by_id[c["item_id"]] for c in r["candidates"]] for r in records], dtype=np.int64)
    target = np.array([r["target_index"] for r in records], dtype=np.int64)
    rows = np.array([r["row"] for r in records], dtype=np.int64)
    out = {}
    for name, scores in rule_scores(dataset, split, items, rows).items():
        ranks = target_ranks(scores, target)
        out[f"rule: {name}"] = {"HitRate@1 (rank)": float((ranks <= 1).mean()),
                                "HR@3 (rank)": float((ranks <= 3).mean())}
    return out


def report_notes(report: dict[str, Any]) -> str:
    """What the table shows: rows, users, how long each LLM trained, chance, and where the real results are."""
    lines = [f"Ranking: every row on the same {report['n_users_ranked']} {report['split']} users and frozen "
             f"{report['n_candidates']}-candidate sets; generation (greedy, parsed): {report['n_users_generated']} "
             f"users. chance = a random pick among the {report['n_candidates']} candidates; rule rows "
             f"(llmrec/eval/rules.py): the most popular candidate, a candidate seen in the history, a candidate of "
             f"the current session's category (where items have categories)."]
    for name, t in report["llm_training"].items():
        lines.append(f"{name}: fine-tuned {t['steps']} optimizer steps, {t['samples']} prompts = {t['epochs']:.2f} "
                     f"epoch of the training split ({t['curriculum']}; evaluated on the {t['task']} task).")
    lines.append("This is a smoke-scale run that shows every stage working, not the model's quality: TMF's results "
                 "at the scale this CPU allows, with the commands that produce them, are in docs/RESULTS.md "
                 "(\"TMF that learns\").")
    return "\n".join(lines) + "\n"


def check_baseline_config(graph_cfg: Any, path: str, split: str, protocol: str) -> None:
    """Fail before any training when a baseline config cannot write the predictions the report needs."""
    if not graph_cfg.write_predictions:
        raise ConfigError(f"{path}: write_predictions is false; the report needs the baseline's per-row predictions")
    if split not in graph_cfg.splits:
        raise ConfigError(f"{path}: splits {graph_cfg.splits} lacks {split!r} (the pipeline's split)")
    sizes = {p.name: p.size for p in graph_cfg.eval.protocols}
    if protocol not in sizes:
        raise ConfigError(f"{path}: eval.protocols has no {protocol!r} (baseline_protocol); has {sorted(sizes)}")
    if sizes[protocol] > MAX_PREDICTION_CANDIDATES:
        raise ConfigError(f"{path}: protocol {protocol!r} has {sizes[protocol]} candidates; fit-graph writes "
                          f"predictions only for protocols of <= {MAX_PREDICTION_CANDIDATES}")


def restrict_to_rows(path: str | Path, reference: str | Path, output: str | Path) -> Path:
    """Write to ``output`` the lines of predictions file ``path`` for the rows of ``reference``, in its order.

    Rows are matched on ``(split, row, user)``; every reference row must be in ``path`` with
    the same candidate item ids and target index (the same frozen candidate set), else a
    ``PredictionsError`` names both files and the row.
    """
    source, wanted = read_predictions(path), read_predictions(reference)
    by_key = {}
    for record, line in zip(source.records, source.line_numbers, strict=True):
        key = _row_key(record, f"{source.path}:{line}")
        if key in by_key:
            raise PredictionsError(f"{source.path}:{line}: row {key} appears twice")
        by_key[key] = record
    kept = []
    for record, line in zip(wanted.records, wanted.line_numbers, strict=True):
        key = _row_key(record, f"{wanted.path}:{line}")
        found = by_key.get(key)
        if found is None:
            raise PredictionsError(f"{wanted.path}:{line}: (split, row, user) {key} is not in {source.path}")
        same = ([c.get("item_id") for c in found["candidates"]] == [c.get("item_id") for c in record["candidates"]]
                and found["target_index"] == record["target_index"])
        if not same:
            raise PredictionsError(f"{wanted.path}:{line}: row {key} has other candidates (or target index) in "
                                   f"{source.path}; the two files are not on the same frozen candidate set")
        kept.append(found)
    return write_jsonl(output, kept)


def _row_key(record: dict[str, Any], where: str) -> tuple[str, int, str]:
    if "split" not in record or "row" not in record:
        raise PredictionsError(f"{where}: missing key 'split' or 'row' (needed to match rows across files)")
    return str(record["split"]), int(record["row"]), str(record["user"])


def _yaml(value: int | None) -> str:
    return "null" if value is None else str(value)


TEXT_ONLY = "LLM text-only"
REPORT_COLUMNS = ("HitRate@1 (rank)", "HR@3 (rank)", "HitRate@1 (generate)", "ValidRatio (generate)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmrec pipeline", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, config_help="pipeline YAML, e.g. configs/quickstart.yaml",
                         overrides_example="recipe_overrides=[max_steps=10]")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_or_exit(parser, functools.partial(load_config, PipelineConfig), args)
    try:
        run_pipeline(cfg)
    except (ConfigError, FileNotFoundError) as err:
        return fail(parser.prog, err, EXIT_BAD_INPUT)
    return 0
