"""Fixtures of the TMFModel tests: defined in tmf_testkit.py, shared with tests/train, tests/generation and
tests/eval."""

from __future__ import annotations

import tmf_testkit as kit  # registered by tests/conftest.py

tokenizer, tiny_lm_dir, shop, tables = kit.tokenizer, kit.tiny_lm_dir, kit.shop, kit.tables
