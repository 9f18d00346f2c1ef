"""Helpers for the data tests: tiny interaction logs written to real files, and configs for them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmrec.data import DataConfig, load_data_config

HEADER = "user_id,item_id,behavior,timestamp"


def write_log(path: Path, rows: list[tuple], header: str = HEADER, encoding: str = "utf-8") -> Path:
    """Write ``rows`` as a CSV file with ``header``."""
    lines = [header] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding=encoding)
    return path


def generic_config(tmp_path: Path, log: Path, *overrides: str, behaviors=("view", "cart", "buy")) -> DataConfig:
    """A csv-source config for ``log`` caching under ``tmp_path/cache``; no candidates unless overridden."""
    base = [
        "name=tiny", "source=csv", f"path={log}", f"cache_dir={tmp_path / 'cache'}",
        f"behaviors=[{', '.join(behaviors)}]", f"target_behavior={behaviors[-1]}", "candidates=[]",
    ]
    return load_data_config(None, [*base, *overrides])


def random_log(n_users: int = 40, n_items: int = 60, per_user: int = 25, seed: int = 0) -> list[tuple]:
    """A random multi-behavior log (Zipf-ish item popularity) with every user buying >= 3 times."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items + 1)
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=per_user, p=weights / weights.sum())
        behaviors = rng.choice(["view", "cart", "buy"], size=per_user, p=[0.6, 0.2, 0.2])
        behaviors[[per_user // 4, per_user // 2, 3 * per_user // 4]] = "buy"
        for t, (i, b) in enumerate(zip(items, behaviors, strict=True)):
            rows.append((f"u{u}", f"i{i}", b, 1000 + 10 * t))
    return rows


@pytest.fixture
def random_log_config(tmp_path):
    """(config factory, log path) for a random log in ``tmp_path``."""
    log = write_log(tmp_path / "log.csv", random_log())

    def make(*overrides: str) -> DataConfig:
        return generic_config(tmp_path, log, "k_core=2", *overrides)

    return make, log
