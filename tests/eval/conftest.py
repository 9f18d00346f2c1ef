"""Fixtures of the inference and report tests: the testkit's tokenizer, shop, tables and peaked tiny Llama; and
``bench_script``, which loads a script of ``bench/`` as a module for the tests of its functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import tmf_testkit as kit  # registered by tests/conftest.py

tokenizer, shop, tables, peaked_lm_dir = kit.tokenizer, kit.shop, kit.tables, kit.peaked_lm_dir

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load_bench_script(name: str) -> ModuleType:
    """``bench/<name>.py`` as a module; bench/ is on the import path while it loads (scripts import their siblings,
    as when run from bench/)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.fixture(scope="session")
def bench_script():
    """The loader of ``bench/<name>.py`` scripts (:func:`_load_bench_script`)."""
    return _load_bench_script
