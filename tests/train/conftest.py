"""Fixtures of the training tests: the TMF test kit of tests/tmf plus a clean accelerate state."""

from __future__ import annotations

import socket

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def deepspeed_rendezvous(monkeypatch):
    """DeepSpeed in this one process: the torch.distributed rendezvous variables ``accelerate launch`` would
    set, and no shared-memory all-reduce op (DeepSpeed would JIT-compile it for minutes, for nothing)."""
    import torch

    deepspeed = pytest.importorskip("deepspeed")
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
                       "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(deepspeed.ops.__compatible_ops__, "deepspeed_shm_comm", False)
    yield
    if deepspeed.comm.is_initialized():  # releases DeepSpeed's cached groups too
        deepspeed.comm.destroy_process_group()
    elif torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
