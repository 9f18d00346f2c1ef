"""Fixtures of the training tests: the TMF test kit of tests/tmf plus a clean accelerate state."""

from __future__ import annotations

import pytest
import tmf_testkit as kit  # registered by tests/conftest.py

tokenizer, tiny_lm_dir, shop, tables = kit.tokenizer, kit.tiny_lm_dir, kit.shop, kit.tables


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps process-wide singletons and ACCELERATE_* environment variables (an Accelerator
    given a DeepSpeed plugin sets ACCELERATE_USE_DEEPSPEED); each test starts from a clean process state."""
    import os

    from accelerate.state import AcceleratorState, GradientState

    environment = dict(os.environ)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    os.environ.clear()
    os.environ.update(environment)
