"""Fixtures of the inference and report tests: the testkit's tokenizer, shop, tables and peaked tiny Llama."""

from __future__ import annotations

import tmf_testkit as kit  # registered by tests/conftest.py

tokenizer, shop, tables, peaked_lm_dir = kit.tokenizer, kit.shop, kit.tables, kit.peaked_lm_dir
