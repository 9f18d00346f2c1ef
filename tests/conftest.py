"""Fixtures shared by every test package."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest


def _register_tmf_testkit() -> None:
    """Make tests/tmf/tmf_testkit.py importable as ``tmf_testkit`` (the suite runs with
    --import-mode=importlib, so test folders cannot import each other's modules by path)."""
    if "tmf_testkit" not in sys.modules:
        path = Path(__file__).resolve().parent / "tmf" / "tmf_testkit.py"
        spec = importlib.util.spec_from_file_location("tmf_testkit", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["tmf_testkit"] = module
        spec.loader.exec_module(module)


_register_tmf_testkit()


@pytest.fixture
def llmrec_data_dir() -> Path:
    """``$LLMREC_DATA_DIR`` (the real datasets); skips the test when it is unset."""
    value = os.environ.get("LLMREC_DATA_DIR")
    if not value:
        pytest.skip("LLMREC_DATA_DIR is not set: point it at the folder holding ml-100k/, taobao-userbehavior-head/ ...")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"LLMREC_DATA_DIR={value} is not a folder")
    return path
