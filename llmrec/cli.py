"""The ``llmrec`` command: one sub-command per pipeline stage.

Each stage lives in its own module and exposes ``main(argv) -> int``; this file
only dispatches, so ``llmrec --help`` stays fast (no torch import).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "data": ("llmrec.data.cli", "prepare a dataset: splits, frozen candidates, statistics"),
    "encode": ("llmrec.encoders.cli", "text / image embedding tables for a catalog"),
    "fit-graph": ("graph_encoders.cli", "train a sequential recommender, evaluate, export embeddings"),
    "train": ("llmrec.training", "fine-tune TMF (LoRA + adaptors) with the curriculum"),
    "infer": ("llmrec.inference", "generate or rank candidates for test users"),
    "evaluate": ("llmrec.evaluation", "HitRate@1, ValidRatio and ranking metrics from predictions"),
    "pipeline": ("llmrec.pipeline", "run every stage of a recipe in order (the quickstart)"),
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
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
