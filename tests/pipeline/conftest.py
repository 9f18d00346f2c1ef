"""Fixtures of the pipeline tests: the TMF test kit's tokenizer and tiny random-init Llama."""

from __future__ import annotations

import tmf_testkit as kit  # registered by tests/conftest.py

tokenizer, tiny_lm_dir = kit.tokenizer, kit.tiny_lm_dir
