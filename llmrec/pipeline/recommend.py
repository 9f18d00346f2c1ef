"""``llmrec recommend``: recommendations of a TMF checkpoint for every history of a JSONL file, resumable.

    llmrec recommend --checkpoint runs/tmf_smollm2_shop --history-file histories.jsonl --out recs.jsonl --k 10

Each input line is one user: ``{"user": "u1", "history": [["p17", "view"], ["p3", "purchase", 1700000000]],
"candidates": ["p5", "p9"]}`` (``candidates`` optional: the whole catalog minus the history; history entries as
:class:`llmrec.Recommender` takes them, lists or ``{"item_id", "behavior", "timestamp"}`` objects). ``user`` is the
key: it must be unique in the file.

Each output line is ``{"user": ..., "items": [{"item_id", "title", "score"}, ...], "mode", "skipped",
"generations"}``, appended once the user's batch is done, one ``write`` + ``fsync`` per line
(:func:`llmrec.io.append_jsonl`). Resuming: run the same command again. Users whose key is already in ``--out``
are skipped, a line torn by a crash is cut off (:func:`llmrec.io.complete_jsonl`), so every user is written
exactly once. ``<out>.meta.json`` holds the settings; a rerun with other settings (checkpoint, mode, k, ...)
is refused rather than mixed into the same file.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from llmrec.cli_common import EXIT_BAD_INPUT, fail, setup_logging
from llmrec.config import ConfigError
from llmrec.io import append_jsonl, complete_jsonl, write_json
from llmrec.pipeline.recommender import MODES, Recommender, UnknownItemError

logger = logging.getLogger(__name__)

KEY = "user"
SETTINGS = ("checkpoint", "recipe", "task", "mode", "k", "unknown", "chunk_size", "history_file")


def read_histories(path: str | Path) -> list[dict[str, Any]]:
    """The input lines, checked: a JSON object with a unique ``user`` and a ``history`` list on every line."""
    rows, seen = [], {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{number}: not JSON ({err})") from None
        if not isinstance(row, dict) or KEY not in row or not isinstance(row.get("history"), list):
            raise ConfigError(f"{path}:{number}: expected an object with '{KEY}' and a 'history' list")
        key = str(row[KEY])
        if key in seen:
            raise ConfigError(f"{path}:{number}: {KEY} {key!r} already on line {seen[key]} (keys must be unique)")
        seen[key] = number
        rows.append(row)
    return rows


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {name: (str(getattr(args, name)) if name in ("checkpoint", "history_file") else getattr(args, name))
            for name in SETTINGS}


def _check_resume(meta_path: Path, settings: dict[str, Any], n_done: int) -> None:
    """Refuse to append to an output started with other settings (nothing written yet: start afresh)."""
    if not meta_path.is_file() or not n_done:
        if n_done:
            raise ConfigError(f"{meta_path.with_suffix('')} holds {n_done} lines but no {meta_path.name}: not an "
                              "output of llmrec recommend; choose another --out")
        return
    saved = json.loads(meta_path.read_text(encoding="utf-8"))["settings"]
    changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
    if changed:
        raise ConfigError(f"{meta_path.with_suffix('')} was started with other settings "
                          f"({', '.join(f'{k}: {a!r} then {b!r}' for k, (a, b) in changed.items())}); rerun with "
                          "the same ones to resume, or choose another --out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmrec recommend", description="Recommend for every history of a JSONL "
                                     "file with a TMF checkpoint; rerun the same command to resume.")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint folder or a run folder (its latest)")
    parser.add_argument("--history-file", required=True, help="JSONL: one {user, history[, candidates]} per line")
    parser.add_argument("--out", required=True, help="recommendations JSONL (appended to; resumable)")
    parser.add_argument("--mode", choices=MODES, default="rank")
    parser.add_argument("--k", type=int, default=10, help="items per user (rank mode)")
    parser.add_argument("--unknown", choices=("error", "skip"), default="error",
                        help="items outside the catalog: stop with an error naming one, or skip and count them")
    parser.add_argument("--recipe", default=None, help="train recipe, when the checkpoint has no train_config.yaml")
    parser.add_argument("--task", choices=("easy", "medium", "hard"), default=None,
                        help="prompt task (default: the one the recipe is evaluated on)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="candidates per prompt (default: the recipe's evaluation candidate-set size)")
    parser.add_argument("--batch-size", type=int, default=8, help="users per batch (each batch is then written)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="stop after writing this many users in this run (to test resuming)")
    return parser


def recommend_main(argv: list[str] | None = None) -> int:
    """``llmrec recommend --checkpoint DIR --history-file FILE --out FILE [...]``; see the module docstring."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    if args.batch_size < 1 or args.k < 1:
        parser.error("--batch-size and --k must be >= 1")
    out = Path(args.out)
    meta_path = out.with_name(out.name + ".meta.json")
    try:
        rows = read_histories(args.history_file)
        done = {str(r[KEY]) for r in complete_jsonl(out)}
        settings = _settings(args)
        _check_resume(meta_path, settings, len(done))
        todo = [r for r in rows if str(r[KEY]) not in done]
        if not todo:
            logger.info("%s: all %d users are done", out, len(rows))
            return 0
        recommender = Recommender.from_pretrained(args.checkpoint, recipe=args.recipe, task=args.task,
                                                  device=args.device, precision=args.precision,
                                                  chunk_size=args.chunk_size)
        if not done:
            write_json(meta_path, {"settings": settings, "n_users": len(rows), "dataset": recommender.dataset.name,
                                   "resolved_checkpoint": str(recommender.checkpoint), "task": recommender.task})
        written = _run(recommender, args, todo, out, len(done), len(rows))
    except (ConfigError, FileNotFoundError, UnknownItemError, ValueError) as err:
        return fail(parser.prog, err, EXIT_BAD_INPUT)
    logger.info("%s: wrote %d users this run, %d of %d done", out, written, len(done) + written, len(rows))
    return 0


def _run(recommender: Recommender, args: argparse.Namespace, todo: list[dict[str, Any]], out: Path, n_done: int,
         n_total: int) -> int:
    if args.stop_after is not None:
        todo = todo[:args.stop_after]
    written = skipped = 0
    with tqdm(total=n_total, initial=n_done, desc="recommend", unit="user") as bar:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start:start + args.batch_size]
            results = recommender.recommend_batch([r["history"] for r in batch], [r.get("candidates") for r in batch],
                                                  k=args.k, mode=args.mode, unknown=args.unknown)
            append_jsonl(out, ({KEY: r[KEY], **result.to_dict()} for r, result in zip(batch, results, strict=True)))
            written += len(batch)
            skipped += sum(len(result.skipped) for result in results)
            bar.update(len(batch))
    if skipped:
        logger.info("skipped %d unknown item ids (unknown=skip); each line lists its own", skipped)
    return written
