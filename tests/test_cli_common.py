"""Every config-driven ``llmrec`` command reports a bad config key the same way: usage, then the file and
the key on stderr, exit status 2, nothing run."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrec.cli_common import EXIT_FAILED, fail
from llmrec.pipeline.cli import main as llmrec_main

REPO = Path(__file__).resolve().parents[1]

COMMANDS = {
    "train": "configs/tmf_smollm2_shop.yaml",
    "infer": "configs/infer/shop.yaml",
    "fit-graph": "configs/graph/sasrec_shop.yaml",
    "pipeline": "configs/quickstart.yaml",
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_config_key_exits_2_with_the_key_on_stderr(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        llmrec_main([command, "--config", str(REPO / COMMANDS[command]), "no_such_key=1"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert f"llmrec {command}: error: {REPO / COMMANDS[command]}: unknown config key 'no_such_key'" in captured.err
    assert captured.out == ""


def test_fail_writes_prog_and_message_to_stderr(capsys):
    assert fail("llmrec x", KeyError("no item titled 'A'")) == EXIT_FAILED
    assert fail("llmrec x", "broken", 2) == 2
    assert capsys.readouterr().err.splitlines() == ["llmrec x: error: no item titled 'A'", "llmrec x: error: broken"]


def test_train_layers_a_second_config_over_the_first(capsys):
    """``llmrec train --config ROW --config PROFILE``: the printed recipe is the row with the profile's keys."""
    import yaml

    row, profile = REPO / "configs/ablations/text_only_ml100k.yaml", REPO / "configs/profiles/llama2_7b_gpu.yaml"
    assert llmrec_main(["train", "--config", str(row), "--config", str(profile), "output_dir=runs/gpu/t",
                        "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["lm"]["name_or_path"] == "meta-llama/Llama-2-7b-hf"  # the profile's
    assert printed["curriculum"]["fixed_task"] == "easy" and printed["eval"]["task"] == "easy"  # the row's
    assert printed["output_dir"] == "runs/gpu/t"  # the override, last
