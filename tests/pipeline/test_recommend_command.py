"""``llmrec recommend``: interrupted after N users (and with a torn last line), resumed, every user written once."""

from __future__ import annotations

import json

import pytest
import yaml
from tmf_testkit import save_checkpoint  # registered by tests/conftest.py

from llmrec.pipeline.cli import main as cli_main
from llmrec.pipeline.recommend import read_histories
from llmrec.pipeline.recommender import Recommender
from llmrec.tmf.model import ModalityTables


@pytest.fixture(scope="module")
def text_only_run(tmp_path_factory, shop, peaked_lm_dir):
    """A checkpoint whose train config names a data config (the CLI builds its inputs like ``llmrec infer``)."""
    folder = tmp_path_factory.mktemp("recommend-cli")
    data_config = folder / "data.yaml"
    data_config.write_text(yaml.safe_dump({
        "name": "tmf-test-shop", "source": "synthetic", "synthetic": {"n_users": 24, "n_items": 40},
        "max_history": 6, "cache_dir": str(shop.root.parent),
        "candidates": [{"splits": ["valid", "test"], "size": 5}]}))
    return save_checkpoint(folder / "ckpt", peaked_lm_dir, ModalityTables(), f"data_config={data_config}",
                           "curriculum.fixed_task=easy")


def write_histories(path, shop, n: int) -> list[dict]:
    rows = []
    for row in range(n):
        sample = shop.samples["test"][row]
        history = [[shop.item_ids[i], shop.behaviors[b]] for i, b in zip(sample["history_items"],
                                                                           sample["history_behaviors"], strict=True)]
        rows.append({"user": f"u{row}", "history": history, "candidates": list(shop.item_ids[row:row + 7])})
    rows[1]["history"].append(["not-in-catalog", "view"])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_interrupted_run_resumes_and_writes_each_user_once(tmp_path, text_only_run, shop):
    histories = tmp_path / "histories.jsonl"
    rows = write_histories(histories, shop, 5)
    out = tmp_path / "recs.jsonl"
    args = ["recommend", "--checkpoint", str(text_only_run), "--history-file", str(histories), "--out", str(out),
            "--k", "3", "--unknown", "skip", "--batch-size", "2", "--device", "cpu"]
    assert cli_main([*args, "--stop-after", "3"]) == 0  # the test hook: stop as if interrupted after 3 users
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["user"] for r in first] == ["u0", "u1", "u2"]
    with out.open("a") as handle:  # a crash in the middle of writing u3's line
        handle.write('{"user": "u3", "items": [{"item_id"')
    assert cli_main(args) == 0
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["user"] for r in records] == [r["user"] for r in rows]  # each once, in order
    assert records[:3] == first
    assert records[1]["skipped"] == ["not-in-catalog"] and records[0]["skipped"] == []
    assert all(len(r["items"]) == 3 and r["mode"] == "rank" for r in records)
    assert cli_main(args) == 0 and out.read_text().splitlines() == lines  # finished: nothing is added

    # the lines are what the Python API returns for the same histories
    rec = Recommender.from_pretrained(text_only_run, device="cpu")
    expected = rec.recommend_batch([r["history"] for r in rows], [r["candidates"] for r in rows], k=3, unknown="skip")
    for record, result in zip(records, expected, strict=True):
        assert [i["item_id"] for i in record["items"]] == [i.item_id for i in result.items]
        assert [i["score"] for i in record["items"]] == pytest.approx([i.score for i in result.items], abs=1e-5)


def test_resume_with_other_settings_is_refused(tmp_path, text_only_run, shop, capsys):
    histories = tmp_path / "histories.jsonl"
    write_histories(histories, shop, 3)
    out = tmp_path / "recs.jsonl"
    args = ["recommend", "--checkpoint", str(text_only_run), "--history-file", str(histories), "--out", str(out),
            "--unknown", "skip", "--device", "cpu"]
    assert cli_main([*args, "--stop-after", "1", "--k", "2"]) == 0
    assert cli_main([*args, "--k", "4"]) == 2
    assert "started with other settings (k: 2 then 4)" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 1


def test_history_file_errors_name_the_line(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text('{"user": "a", "history": []}\n{"user": "a", "history": []}\n')
    with pytest.raises(Exception, match=r"h.jsonl:2: user 'a' already on line 1"):
        read_histories(path)
    path.write_text('{"user": "a"}\n')
    with pytest.raises(Exception, match=r"h.jsonl:1: expected an object with 'user' and a 'history' list"):
        read_histories(path)
