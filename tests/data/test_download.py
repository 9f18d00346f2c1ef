"""The MovieLens download helper: offline message, checksum checks, unpacking (no network used)."""

from __future__ import annotations

import hashlib
import urllib.error
import zipfile

import pytest

import llmrec.data.download as download
from llmrec.data import DataError


def test_offline_failure_says_where_to_put_the_files(monkeypatch, tmp_path):
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(download.urllib.request, "urlopen", unreachable)
    with pytest.raises(DataError) as err:
        download.download("ml-100k", tmp_path)
    msg = str(err.value)
    assert "offline?" in msg and "https://files.grouplens.org/datasets/movielens/ml-100k.zip" in msg
    assert str(tmp_path / "ml-100k") in msg and "u.data" in msg and download.ARCHIVES["ml-100k"].sha256 in msg


def _fake_archive(tmp_path, corrupt=False):
    zip_path = tmp_path / "src" / "fake.zip"
    zip_path.parent.mkdir()
    with zipfile.ZipFile(zip_path, "w") as zipped:
        zipped.writestr("fake/ratings.dat", "1::1::5::1\n")
    data = zip_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if corrupt:
        digest = "0" * 64
    return download.Archive(url=zip_path.as_uri(), size=len(data), sha256=digest, folder="fake",
                            files={"ratings.dat": hashlib.sha256(b"1::1::5::1\n").hexdigest()})


def test_download_verifies_and_unpacks(monkeypatch, tmp_path):
    monkeypatch.setitem(download.ARCHIVES, "fake", _fake_archive(tmp_path))
    folder = download.download("fake", tmp_path / "data")
    assert (folder / "ratings.dat").read_text() == "1::1::5::1\n"
    assert download.download("fake", tmp_path / "data") == folder  # already present: no second fetch


def test_checksum_mismatch_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setitem(download.ARCHIVES, "fake", _fake_archive(tmp_path, corrupt=True))
    with pytest.raises(DataError, match="sha256 .* expected 0{64}; not the official file"):
        download.download("fake", tmp_path / "data")
    assert not (tmp_path / "data" / "fake").exists()


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'ml-25m'"):
        download.download("ml-25m", "/nonexistent")
