"""Image references end in exactly one status; nothing crashes, URLs only when allowed."""

import functools
import http.server
import threading

import numpy as np
import pytest
from PIL import Image

from llmrec.encoders.images import ImageSource, image_reference


@pytest.fixture
def image_dir(tmp_path):
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("L", (8, 8), 128).save(tmp_path / "gray.jpg")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # PNG signature, no image
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("RGB", (64, 64), (0, 90, 200)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    return tmp_path


@pytest.fixture
def http_root(image_dir):
    """A real HTTP server on localhost serving ``image_dir``."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(image_dir))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_local_statuses(image_dir):
    source = ImageSource(root=image_dir)
    img, status = source.load("red.png")
    assert status == "ok" and img.mode == "RGB" and img.size == (20, 10)
    assert np.asarray(img)[0, 0].tolist() == [255, 0, 0]
    assert source.load("gray.jpg")[1] == "ok" and source.load("gray.jpg")[0].mode == "RGB"
    assert source.load(str(image_dir / "red.png"))[1] == "ok"  # absolute paths ignore the root
    assert source.load("corrupt.png") == (None, "corrupt")
    assert source.load("empty.png") == (None, "corrupt")
    assert source.load("whole.png")[1] == "ok" and source.load("truncated.png") == (None, "corrupt")
    assert source.load("nope.png") == (None, "missing")
    assert source.load(None) == (None, "no_image")


@pytest.mark.parametrize("cell", [None, float("nan"), "", "   "])
def test_empty_catalog_cells_are_no_image(cell):
    assert image_reference(cell) is None


def test_urls_are_skipped_unless_the_network_is_allowed(http_root):
    assert ImageSource(allow_network=False).load(f"{http_root}/red.png") == (None, "url_skipped")
    online = ImageSource(allow_network=True, timeout_s=5)
    img, status = online.load(f"{http_root}/red.png")
    assert status == "ok" and img.size == (20, 10)
    assert online.load(f"{http_root}/corrupt.png") == (None, "corrupt")
    assert online.load(f"{http_root}/absent.png") == (None, "download_failed")  # HTTP 404


def test_oversized_downloads_fail(http_root):
    tiny_limit = ImageSource(allow_network=True, timeout_s=5, max_download_bytes=10)
    assert tiny_limit.load(f"{http_root}/red.png") == (None, "download_failed")


def test_stat_token_changes_when_the_file_changes(image_dir):
    source = ImageSource(root=image_dir)
    before = source.stat_token("red.png")
    Image.new("RGB", (21, 10), (255, 0, 0)).save(image_dir / "red.png")
    assert source.stat_token("red.png") != before
    assert source.stat_token("nope.png").startswith("absent:")
