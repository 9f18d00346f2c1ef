"""``llmrec evaluate`` / ``evaluate.py``: metrics of one or more predictions files, as a table and a chart.

    llmrec evaluate --predictions runs/a/predictions-test-hard.jsonl --predictions zero_shot.jsonl \\
        --names TMF zero-shot --out runs/eval

For each file (the JSONL written by ``llmrec infer``; fields in docs/inference.md):

* lines with a ``generation``: HitRate@1 = correct / total (the main number, TMF §5.1),
  HitRate@1_valid = correct / valid and ValidRatio = valid / total (LLaRA's valid ratio). The
  generation is parsed again here with DESIGN's rules (``llmrec.metrics.parse_generation``) against
  the candidate titles in the file; a stored ``parsed_index`` that disagrees is counted and logged;
* lines with ``scores``: HR@K, NDCG@K and MRR@K of the target among the frozen candidates
  (``llmrec.metrics.candidate_ranking_metrics``; ties count against the target). A K of at least the
  number of candidates C is left out (HR@C is 1 by construction) and the log says so.

Writes ``metrics.json``, ``metrics.md`` (the table also printed) and ``metrics.png`` (a bar chart
comparing the runs) into ``--out``. A malformed line is an error naming the file and line number.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from llmrec.cli_common import fail, setup_logging
from llmrec.metrics import DEFAULT_KS, candidate_ranking_metrics, generative_metrics, parse_generation

logger = logging.getLogger(__name__)

GENERATIVE_KEYS = ("HitRate@1", "HitRate@1_valid", "ValidRatio")


class PredictionsError(ValueError):
    """A predictions file is malformed; the message names the file and line."""


@dataclass
class Predictions:
    """The parsed lines of one predictions file."""

    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    line_numbers: list[int] = field(default_factory=list)


def _check_record(record: Any, where: str) -> None:
    if not isinstance(record, dict):
        raise PredictionsError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("user", "candidates", "target_index"):
        if key not in record:
            raise PredictionsError(f"{where}: missing key '{key}'")
    candidates = record["candidates"]
    if not isinstance(candidates, list) or not candidates:
        raise PredictionsError(f"{where}: 'candidates' must be a non-empty list")
    for k, cand in enumerate(candidates):
        if not isinstance(cand, dict) or not isinstance(cand.get("title"), str):
            raise PredictionsError(f"{where}: candidates[{k}] must be an object with a string 'title'")
    target = record["target_index"]
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(candidates):
        raise PredictionsError(f"{where}: 'target_index' must be an integer in 0..{len(candidates) - 1}, "
                               f"got {target!r}")
    if "generation" in record and not isinstance(record["generation"], str):
        raise PredictionsError(f"{where}: 'generation' must be a string, got {type(record['generation']).__name__}")
    if "scores" in record:
        scores = record["scores"]
        if not isinstance(scores, list) or len(scores) != len(candidates) or not all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores):
            raise PredictionsError(f"{where}: 'scores' must be {len(candidates)} finite numbers (one per candidate)")


def read_predictions(path: str | Path) -> Predictions:
    """Read and check a predictions JSONL file (blank lines are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    out = Predictions(path)
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PredictionsError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            _check_record(record, where)
            out.records.append(record)
            out.line_numbers.append(number)
    if not out.records:
        raise PredictionsError(f"{path}: no predictions (the file is empty)")
    return out


def _all_or_none(preds: Predictions, key: str) -> bool:
    """True if every line has ``key``, False if none has; an error naming the first odd line otherwise."""
    has = [key in r for r in preds.records]
    if all(has) or not any(has):
        return all(has)
    odd = preds.line_numbers[has.index(not has[0])]
    raise PredictionsError(f"{preds.path}:{odd}: some lines have '{key}' and some do not (line "
                           f"{preds.line_numbers[0]} {'has' if has[0] else 'has not'}); one run writes one kind")


def generation_metrics(preds: Predictions) -> dict[str, float]:
    """HitRate@1, HitRate@1_valid, ValidRatio and the counts, parsing every generation again."""
    names = [[c["title"] for c in record["candidates"]] for record in preds.records]
    result = generative_metrics([r["generation"] for r in preds.records], names,
                                [r["target_index"] for r in preds.records])
    disagreements = sum("parsed_index" in record and record["parsed_index"] != parse_generation(
        record["generation"], titles) for record, titles in zip(preds.records, names, strict=True))
    if disagreements:
        logger.warning("%s: %d stored parsed_index values differ from parsing the generation again (the "
                       "re-parsed ones are used)", preds.path, disagreements)
    return {**result, "parse_disagreements": disagreements}


def ranking_metrics(preds: Predictions, ks: Sequence[int]) -> dict[str, float]:
    """HR@K / NDCG@K / MRR@K from the stored candidate scores (needs one candidate count)."""
    sizes = {len(r["candidates"]) for r in preds.records}
    if len(sizes) != 1:
        raise PredictionsError(f"{preds.path}: ranking metrics need the same number of candidates on every line, "
                               f"found {sorted(sizes)}")
    n_candidates = sizes.pop()
    usable = [k for k in ks if k < n_candidates]
    if len(usable) < len(ks):
        logger.info("%s: K=%s left out (%d candidates per user: HR@%d is 1 by construction)", preds.path,
                    [k for k in ks if k >= n_candidates], n_candidates, n_candidates)
    if not usable:
        return {}
    scores = np.array([r["scores"] for r in preds.records], dtype=np.float64)
    targets = np.array([r["target_index"] for r in preds.records], dtype=np.int64)
    return candidate_ranking_metrics(scores, targets, usable)


def evaluate_predictions(preds: Predictions, ks: Sequence[int] = DEFAULT_KS) -> dict[str, Any]:
    """Every metric the file supports, plus ``n`` and ``n_candidates``."""
    has_generation = _all_or_none(preds, "generation")
    has_scores = _all_or_none(preds, "scores")
    if not (has_generation or has_scores):
        raise PredictionsError(f"{preds.path}: lines have neither 'generation' nor 'scores'; nothing to evaluate")
    result: dict[str, Any] = {"path": str(preds.path), "n": len(preds.records),
                              "n_candidates": sorted({len(r["candidates"]) for r in preds.records})}
    if has_generation:
        result.update(generation_metrics(preds))
    if has_scores:
        result.update(ranking_metrics(preds, ks))
    return result


def run_names(paths: Sequence[Path], names: Sequence[str] | None) -> list[str]:
    """``names`` as given (one per file, unique), else the file stems (with the folder when they clash)."""
    if names:
        if len(names) != len(paths):
            raise ValueError(f"--names: got {len(names)} names for {len(paths)} predictions files")
        chosen = list(names)
    else:
        chosen = [p.stem for p in paths]
        if len(set(chosen)) != len(chosen):
            chosen = [f"{p.parent.name}/{p.stem}" for p in paths]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"run names must be unique, got {chosen}; pass --names")
    return chosen


def metric_columns(results: dict[str, dict[str, Any]], ks: Sequence[int]) -> list[str]:
    """Table columns: the generative metrics, then HR/NDCG/MRR per K, whichever some run has."""
    ordered = list(GENERATIVE_KEYS) + [f"{m}@{k}" for k in ks for m in ("HR", "NDCG", "MRR")]
    return [c for c in ordered if any(c in r for r in results.values())]


def markdown_table(results: dict[str, dict[str, Any]], columns: Sequence[str], first: str = "run") -> str:
    """One row per run, one column per key (floats with 4 decimals, integers as they are, — where absent)."""
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = [f"| {first} | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, result in results.items():
        lines.append(f"| {name} | " + " | ".join(cell(result[c]) if c in result else "—" for c in columns) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(results: dict[str, dict[str, Any]], columns: Sequence[str], path: Path,
              title: str = "llmrec evaluate") -> Path:
    """Grouped bars: one group per metric, one bar per run (matplotlib, Agg backend)."""
    names = list(results)
    width = 0.8 / max(1, len(names))
    x = np.arange(len(columns))
    fig = Figure(figsize=(max(6.0, 1.1 * len(columns) + 2), 4.0))  # no pyplot: no global backend state
    ax = fig.subplots()
    for k, name in enumerate(names):
        values = [results[name].get(c, np.nan) for c in columns]
        bars = ax.bar(x + (k - (len(names) - 1) / 2) * width, values, width, label=name)
        ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.2f}" for v in values], fontsize=7)
    ax.set_xticks(x, columns, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("value")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def evaluate_files(paths: Sequence[str | Path], out_dir: str | Path, names: Sequence[str] | None = None,
                   ks: Sequence[int] = DEFAULT_KS) -> dict[str, Any]:
    """Evaluate every file, write metrics.json / metrics.md / metrics.png into ``out_dir``; return the JSON."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no predictions files given")
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"every K must be >= 1, got {list(ks)}")
    results = {name: evaluate_predictions(read_predictions(p), ks)
               for name, p in zip(run_names(paths, names), paths, strict=True)}
    for name, result in results.items():
        logger.info("%s: %s", name, {k: v for k, v in result.items() if k not in ("path", "n_candidates")})
    columns = metric_columns(results, ks)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table({name: {"users": r["n"], **r} for name, r in results.items()}, ["users", *columns])
    payload = {"ks": list(ks), "columns": columns, "runs": results}
    (out_dir / "metrics.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    (out_dir / "metrics.md").write_text(table, encoding="utf-8")
    bar_chart(results, columns, out_dir / "metrics.png")
    print(table, end="")
    logger.info("wrote metrics.json, metrics.md and metrics.png to %s", out_dir)
    return payload


def main(argv: list[str] | None = None) -> int:
    """``llmrec evaluate --predictions P [--predictions Q ...] [--names A B ...] --out DIR [--ks 1 5 10]``."""
    parser = argparse.ArgumentParser(prog="llmrec evaluate", description="HitRate@1, ValidRatio and ranking "
                                     "metrics of predictions files, as a markdown table and a bar chart.")
    parser.add_argument("--predictions", action="append", required=True, help="a predictions JSONL (repeatable)")
    parser.add_argument("--names", nargs="+", default=None, help="one display name per predictions file")
    parser.add_argument("--out", required=True, help="folder for metrics.json, metrics.md and metrics.png")
    parser.add_argument("--ks", nargs="+", type=int, default=list(DEFAULT_KS), help="cut-offs of HR/NDCG/MRR")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        evaluate_files(args.predictions, args.out, args.names, args.ks)
    except (ValueError, FileNotFoundError) as err:
        return fail(parser.prog, err)
    return 0
