"""Download MovieLens-100k / 1M from GroupLens with size and sha256 checks.

    python -m llmrec.data.download ml-100k /path/to/data

Without network the error says where to put the files by hand. The checksums are
those of the official zip files (as recorded in TensorFlow Datasets' checksum
list); the extracted ``u.data`` / ``u.item`` of ML-100k are checked as well.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from llmrec.data.cache import file_sha256
from llmrec.data.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Archive:
    url: str
    size: int
    sha256: str
    folder: str  # top-level folder inside the zip
    files: dict[str, str] = field(default_factory=dict)  # extracted file -> sha256 (checked when known)


ARCHIVES = {
    "ml-100k": Archive(
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        size=4924029,
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        folder="ml-100k",
        files={
            "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
        },
    ),
    "ml-1m": Archive(
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        size=5917549,
        sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        folder="ml-1m",
        files={"ratings.dat": "", "movies.dat": ""},
    ),
}


def _manual_hint(name: str, archive: Archive, dest: Path) -> str:
    files = ", ".join(archive.files)
    return (
        f"download {archive.url} by hand (sha256 {archive.sha256}) and unzip it so that "
        f"{dest / archive.folder} holds {files}; then point the data config's `path` there"
    )


def _fetch(url: str, target: Path, size: int, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as out:
        with tqdm(total=size, unit="B", unit_scale=True, desc=f"download {Path(url).name}") as bar:
            while chunk := response.read(1 << 16):
                out.write(chunk)
                bar.update(len(chunk))


def verify(path: Path, size: int, sha256: str) -> None:
    """Raise :class:`DataError` unless ``path`` has the expected size and sha256."""
    actual_size = path.stat().st_size
    if actual_size != size:
        raise DataError(f"{path}: {actual_size} bytes, expected {size}; "
                        "the download is incomplete or not the official file")
    digest = file_sha256(path)
    if digest != sha256:
        raise DataError(f"{path}: sha256 {digest}, expected {sha256}; not the official file")


def download(name: str, dest: str | Path, timeout: float = 60.0) -> Path:
    """Download and unpack dataset ``name`` into ``dest``; return the dataset folder.

    An already complete folder (checksums of the known files match) is returned as is.
    """
    if name not in ARCHIVES:
        raise DataError(f"unknown dataset {name!r}; downloadable: {sorted(ARCHIVES)}")
    archive, dest = ARCHIVES[name], Path(dest)
    folder = dest / archive.folder
    if all((folder / f).is_file() and (not h or file_sha256(folder / f) == h) for f, h in archive.files.items()):
        log.info("%s already present in %s", name, folder)
        return folder
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        zip_path = Path(tmp) / Path(archive.url).name
        try:
            _fetch(archive.url, zip_path, archive.size, timeout)
        except OSError as err:  # URLError, timeouts and refused connections are all OSErrors
            raise DataError(f"cannot download {name} ({err}); offline? {_manual_hint(name, archive, dest)}") from None
        verify(zip_path, archive.size, archive.sha256)
        with zipfile.ZipFile(zip_path) as zipped:
            zipped.extractall(tmp)
        for file_name, expected in archive.files.items():
            got = Path(tmp) / archive.folder / file_name
            if not got.is_file():
                raise DataError(f"{archive.url}: the archive has no {archive.folder}/{file_name}")
            if expected and file_sha256(got) != expected:
                raise DataError(f"{got.name} from {archive.url}: sha256 differs from the official file")
        if folder.exists():
            shutil.rmtree(folder)
        shutil.move(str(Path(tmp) / archive.folder), folder)
    log.info("%s downloaded and verified into %s", name, folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="download MovieLens with checksum verification")
    parser.add_argument("name", choices=sorted(ARCHIVES))
    parser.add_argument("dest", type=Path, help="folder to unpack into (e.g. $LLMREC_DATA_DIR)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        print(download(args.name, args.dest))
    except DataError as err:
        print(f"error: {err}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
