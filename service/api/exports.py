"""Build (once) and cache the downloadable archive of a front point.

    <search folder>/exports/<point>-<format>/         the exported model folder (HF folder; + model.onnx)
    <search folder>/exports/<point>-<format>.tar.gz   the archive served, built from that folder only

Both are written under a temporary name (starting with ".<point>-<format>.") and renamed into place, so a crash or
a concurrent request never leaves a half-written export where the next request would serve it. A build holds a
lock per (search, point, format): a thread lock, and an flock on .<point>-<format>.lock that other server processes
honour and the kernel releases when its holder dies. Holding it, a build first removes the temporaries of an
earlier build that was killed halfway, so they do not pile up in the cache.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tarfile
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FORMATS = ("hf", "onnx")
EXPORTS_DIR = "exports"

_locks: defaultdict[tuple[str, int, str], threading.Lock] = defaultdict(threading.Lock)
_locks_guard = threading.Lock()


def _lock(key: tuple[str, int, str]) -> threading.Lock:
    with _locks_guard:
        return _locks[key]


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def archive_name(search_id: str, position: int, format: str) -> str:
    return f"nasprune-{search_id[:8]}-point{position}-{format}"


def leftovers(exports: Path, position: int, format: str) -> list[Path]:
    """Temporaries of a build of this point and format (".0-hf.tmp", "..0-hf.tmp.x1y2", ".0-hf.tar.gz.tmp"; not
    the lock file): what a build killed halfway leaves behind."""
    stem = f"{position}-{format}."
    lock = f".{position}-{format}.lock"
    if not exports.is_dir():
        return []
    return [p for p in exports.iterdir()
            if p.name.startswith(".") and p.name.lstrip(".").startswith(stem) and p.name != lock]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def build_export(folder: Path, search_id: str, position: int, format: str, point: dict[str, Any]) -> Path:
    """The .tar.gz of front point `position` in `format`, built if it is not there yet."""
    exports = folder / EXPORTS_DIR
    archive = exports / f"{position}-{format}.tar.gz"
    with _lock((search_id, position, format)):
        if archive.is_file():
            return archive
        exports.mkdir(parents=True, exist_ok=True)
        with _file_lock(exports / f".{position}-{format}.lock"):
            if archive.is_file():  # another process built it while we waited
                return archive
            for path in leftovers(exports, position, format):
                _remove(path)
            return _build(exports, archive, search_id, position, format, point)


def _build(exports: Path, archive: Path, search_id: str, position: int, format: str, point: dict[str, Any]) -> Path:
    from supernet.config import SubNetworkConfig
    from supernet.extract import export_onnx, export_subnetwork, load_exported
    from supernet.run import Run

    out = exports / f"{position}-{format}"
    if not out.is_dir():
        run = Run(exports.parent)
        supernet = run.load_supernet()
        sub = SubNetworkConfig.from_dict(point["config"]).validate(supernet.config)
        tmp = exports / f".{position}-{format}.tmp"
        try:
            export_subnetwork(supernet, sub, tmp, tokenizer=run.tokenizer, seq_len=run.spec.max_length,
                              metrics={"validation": point["validation"], "test": point["test"]})
            if format == "onnx":
                export_onnx(load_exported(tmp), tmp / "model.onnx", seq_len=run.spec.max_length)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    tmp_archive = exports / f".{archive.name}.tmp"
    try:
        with open(tmp_archive, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz") as tar:
                tar.add(out, arcname=archive_name(search_id, position, format))
            raw.flush()
            os.fsync(raw.fileno())  # the archive's bytes are on disk before its name is
        os.replace(tmp_archive, archive)
    finally:
        tmp_archive.unlink(missing_ok=True)
    return archive
