"""What every ``llmrec`` sub-command shares.

* the config arguments: ``--config FILE`` plus dotted ``key=value`` overrides (and, where asked,
  ``--print-config``);
* one log format;
* one way to fail: ``<prog>: error: <message>`` on stderr; exit status 2 for a bad command line or
  config (argparse's convention; ``data``, ``fit-graph`` and ``pipeline`` also for a config or input
  file found wrong or missing while running), 1 for a run that failed.

Import-light on purpose (no torch): ``llmrec --help`` and config errors stay fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import yaml

from llmrec.config import ConfigError, to_dict

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
T = TypeVar("T")


def add_config_arguments(parser: argparse.ArgumentParser, *, config_help: str, overrides_example: str,
                         required: bool = True, print_config: bool = False, layered: bool = False) -> None:
    """``--config FILE`` (repeatable when ``layered``: the files merge in order, ``llmrec.config.merge_layers``),
    optional ``--print-config``, and the positional ``key=value`` overrides."""
    if layered:
        parser.add_argument("--config", required=required, default=None, action="append",
                            help=f"{config_help}; give it again to layer more files over it in order (a later "
                            "file's sections merge key by key, its values replace), e.g. a hardware profile")
    else:
        parser.add_argument("--config", required=required, default=None, help=config_help)
    if print_config:
        parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help=f"dotted overrides, e.g. {overrides_example}")


def setup_logging(level: str | int = "INFO") -> None:
    """The shared log format (a no-op where the caller, a test or a notebook, configured logging already)."""
    logging.basicConfig(level=level, format=LOG_FORMAT)


def load_or_exit(parser: argparse.ArgumentParser, load: Callable[[str | None, Sequence[str]], T],
                 args: argparse.Namespace) -> T:
    """``load(args.config, args.overrides)``; a :class:`ConfigError` exits with the usage line and status 2."""
    try:
        return load(args.config, args.overrides)
    except ConfigError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


def print_config(cfg: Any) -> int:
    """Print the resolved config as YAML (``--print-config``); returns exit status 0."""
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def fail(prog: str, err: BaseException | str, status: int = EXIT_FAILED) -> int:
    """Report ``err`` on stderr as ``<prog>: error: <message>`` and return ``status``."""
    message = err.args[0] if isinstance(err, KeyError) and err.args else err  # KeyError repr adds quotes
    print(f"{prog}: error: {message}", file=sys.stderr)
    return status
