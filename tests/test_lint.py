"""The repository passes its own linter (`make lint`): ruff, pinned in requirements/cpu.lock, with the rules of
pyproject.toml's [tool.ruff.lint]. Run with the tests so a finding fails CI where it is made."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None,
                    reason="ruff is not installed (make venv installs it from requirements/cpu.lock)")
def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"ruff check . found problems (fix them or run `ruff check --fix .`):\n" \
                                   f"{result.stdout}{result.stderr}"
