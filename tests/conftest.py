"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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
