"""The ``llmrec`` command: one sub-command per pipeline stage.

Each command is a ``main(argv) -> int`` function named ``module:function``; this file only dispatches,
importing the command's module when it runs, so ``llmrec --help`` stays fast (no torch import).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "data": ("llmrec.data.cli:main", "prepare a dataset: splits, frozen candidates, statistics"),
    "encode": ("llmrec.encoders.cli:main", "text / image embedding tables for a catalog"),
    "fit-graph": ("graph_encoders.cli:main", "train a sequential recommender, evaluate, export embeddings"),
    "train": ("llmrec.pipeline.commands:train_main", "fine-tune TMF (LoRA + adaptors) with the curriculum"),
    "infer": ("llmrec.pipeline.commands:infer_main", "generate or rank candidates for test users"),
    "evaluate": ("llmrec.eval.report:main", "HitRate@1, ValidRatio and ranking metrics from predictions"),
    "pipeline": ("llmrec.pipeline.run:main", "run every stage of a recipe in order (the quickstart)"),
    "recommend": ("llmrec.pipeline.recommend:recommend_main", "recommend for new histories (JSONL), resumable"),
}


def _usage() -> str:
    lines = ["usage: llmrec <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines.append("\nRun 'llmrec <command> --help' for a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"llmrec: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, function = COMMANDS[name][0].split(":")
    return int(getattr(importlib.import_module(module), function)(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
