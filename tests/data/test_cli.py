"""``llmrec data``: table on stdout, JSON file, exit code 2 with a message on bad input."""

from __future__ import annotations

import json

from llmrec.pipeline.cli import main as llmrec_main

from .conftest import random_log, write_log


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    log = write_log(tmp_path / "log.csv", random_log())
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"name: tiny\nsource: csv\npath: {log}\nbehaviors: [view, cart, buy]\ntarget_behavior: buy\n")
    out_json = tmp_path / "out" / "stats.json"
    code = llmrec_main(["data", "--config", str(cfg), "--json", str(out_json), f"cache_dir={tmp_path / 'c'}",
                        "k_core=2"])
    assert code == 0
    printed = capsys.readouterr().out
    stats = json.loads(out_json.read_text())
    assert "before" in printed and "after" in printed and f"{stats['raw']['interactions']:,}" in printed
    assert stats["config"]["k_core"] == 2 and stats["samples"]["test"] == stats["filtered"]["users"]
    assert (tmp_path / "c").is_dir()


def test_cli_reports_bad_input(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"name: bad\nsource: csv\npath: {tmp_path / 'missing.csv'}\nbehaviors: [buy]\n"
                   "target_behavior: buy\n")
    assert llmrec_main(["data", "--config", str(cfg), f"cache_dir={tmp_path}"]) == 2
    assert "missing.csv: file not found" in capsys.readouterr().err
