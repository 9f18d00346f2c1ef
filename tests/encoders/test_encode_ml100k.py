"""``llmrec encode`` on the real ML-100k titles (needs LLMREC_DATA_DIR; about 30 s on one CPU core)."""

import re
from pathlib import Path

import pytest

from llmrec.pipeline.cli import main as llmrec_main
from llmrec.tables import load_table

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # configs name their data config relative to the repository root


@pytest.mark.slow
def test_ml100k_titles_and_toy_story_neighbours(llmrec_data_dir, tmp_path, capsys, in_repo):
    args = ["encode", "--config", "configs/encode/ml100k_text.yaml", "--show-neighbors", "Toy Story (1995)",
            # data: the shared content-addressed cache
            f"cache_dir={tmp_path / 'emb'}", "progress=false", "batch_size=128"]
    assert llmrec_main(args) == 0
    out = capsys.readouterr().out
    table = load_table(next((tmp_path / "emb").glob("text-*.safetensors")))
    assert table.dim == 384 and table.item_mask.all() and table.n_items > 1000
    block = out[out.index("nearest neighbours of 'Toy Story (1995)'"):]
    neighbours = re.findall(r"^\s*\d+\. -?[\d.]+  (.+)$", block, flags=re.MULTILINE)
    assert len(neighbours) == 10 and "Toy Story (1995)" not in neighbours
    # Children's / animated films, not arbitrary titles (the k-nearest by MiniLM of "title. Genres: ...").
    family = ("Goofy Movie", "Babe", "Balto", "Gumby", "Swan Princess", "Aladdin", "Lion King", "Pinocchio")
    assert sum(any(f in n for f in family) for n in neighbours) >= 3
