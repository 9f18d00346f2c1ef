"""Fixtures of the pipeline tests: the TMF test kit's tokenizer, tiny random-init Llamas, shop and tables."""

from __future__ import annotations

import tmf_testkit as kit  # registered by tests/conftest.py

tokenizer, tiny_lm_dir, peaked_lm_dir, shop, tables = (kit.tokenizer, kit.tiny_lm_dir, kit.peaked_lm_dir, kit.shop,
                                                       kit.tables)
