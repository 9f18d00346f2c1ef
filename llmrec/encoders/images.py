"""Reading item images from local paths (or URLs, when allowed) without ever crashing.

Every catalog image reference ends in exactly one status, counted in the
table's metadata; only ``ok`` rows are encoded, the others become zero rows
with mask False:

* ``ok``               decoded to an RGB image
* ``no_image``         the catalog has no reference for the item (NaN / empty)
* ``missing``          a local path that does not exist
* ``corrupt``          the file (or download) exists but cannot be decoded
* ``url_skipped``      an http(s) URL while ``allow_network`` is false
* ``download_failed``  the URL could not be fetched (error, timeout, too large)
"""

from __future__ import annotations

import http.client
import io
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_STATUSES = ("ok", "no_image", "missing", "corrupt", "url_skipped", "download_failed")
_DOWNLOAD_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError, ValueError)


@dataclass(frozen=True)
class ImageSource:
    """Where image references point and whether the network may be used."""

    root: Path | None = None  # relative paths resolve here (else against the working directory)
    allow_network: bool = False
    timeout_s: float = 10.0
    max_download_bytes: int = 20_000_000

    def resolve(self, ref: str) -> str:
        """A URL unchanged, a path made absolute against ``root``."""
        if is_url(ref):
            return ref
        path = Path(os.path.expanduser(ref))
        if not path.is_absolute() and self.root is not None:
            path = self.root / path
        return str(path)

    def stat_token(self, ref: str | None) -> str:
        """A cheap token that changes when the referenced file changes (for cache keys)."""
        if ref is None:
            return "none"
        target = self.resolve(ref)
        if is_url(target):
            return f"url:{target}"
        try:
            st = os.stat(target)
        except OSError:
            return f"absent:{target}"
        return f"{target}:{st.st_size}:{st.st_mtime_ns}"

    def load(self, ref: str | None) -> tuple[Image.Image | None, str]:
        """``(image, status)``; the image is RGB and only set when status is ``ok``."""
        if ref is None:
            return None, "no_image"
        target = self.resolve(ref)
        if is_url(target):
            if not self.allow_network:
                return None, "url_skipped"
            data = self._download(target)
            if data is None:
                return None, "download_failed"
            return _decode(io.BytesIO(data), target)
        if not os.path.isfile(target):
            return None, "missing"
        return _decode(target, target)

    def _download(self, url: str) -> bytes | None:
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "llmrec-encoders"})
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                data = response.read(self.max_download_bytes + 1)
        except _DOWNLOAD_ERRORS as err:
            logger.debug("download failed for %s: %s", url, err)
            return None
        if len(data) > self.max_download_bytes:
            logger.debug("download of %s exceeds %d bytes", url, self.max_download_bytes)
            return None
        return data


def image_reference(value: Any) -> str | None:
    """A catalog cell as an image reference (``None`` for NaN / None / empty)."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def _decode(source: Any, name: str) -> tuple[Image.Image | None, str]:
    try:
        with Image.open(source) as image:
            image.load()
            return image.convert("RGB"), "ok"
    except Exception as err:  # noqa: BLE001 - PIL's decoders raise many types; all mean "cannot decode"
        logger.debug("cannot decode image %s: %s", name, err)
        return None, "corrupt"
