"""Build (once) and cache the downloadable archive of a front point.

    <search folder>/exports/<point>-<format>/         the exported model folder (HF folder; + model.onnx)
    <search folder>/exports/<point>-<format>.tar.gz   the archive served, built from that folder only

Both are written under a temporary name (starting with ".<point>-<format>.") and renamed into place, so a crash or
a concurrent request never leaves a half-written export where the next request would serve it. A build holds a
lock per (search, point, format): a thread lock, and an flock on .<point>-<format>.lock that other server processes
honour and the kernel releases when its holder dies. Holding it, a build first removes the temporaries of an
earlier build that was killed halfway, so they do not pile up in the cache.

The archive holds the export folder's regular files and folders only, as relative members under one top folder:
a symlink, a hard link (a file with more than one link), a device or a pipe found there is left out, never
followed, so nothing planted in the folder can pull a file from elsewhere into a download. Members carry no
owner and plain modes. A cached archive is served only if it is a plain file where the server wrote it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
import tarfile
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

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


def is_plain_file(path: str | Path) -> bool:
    """A regular file with one link, the path itself not a symlink (what the server writes, nothing planted)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def servable(path: str | Path, folder: Path) -> bool:
    """Whether a cached archive path may be served: a plain file inside the search folder's exports."""
    path = Path(path)
    exports = (folder / EXPORTS_DIR).resolve()
    return is_plain_file(path) and path.resolve().parent == exports


def _add_tree(tar: tarfile.TarFile, folder: Path, arcname: str) -> list[str]:
    """Add `folder` as `arcname`: its folders and plain files, recursively; returns what was left out."""
    info = tarfile.TarInfo(arcname)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(os.lstat(folder).st_mtime)
    tar.addfile(info)
    skipped = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            name = f"{arcname}/{entry.name}"
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                skipped += _add_tree(tar, Path(entry.path), name)
            elif stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)  # swapped for a symlink since: fails
                with os.fdopen(fd, "rb") as f:
                    info = tarfile.TarInfo(name)
                    info.size, info.mode, info.mtime = os.fstat(fd).st_size, 0o644, int(st.st_mtime)
                    tar.addfile(info, f)
            else:
                skipped.append(name)
    return skipped


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
        if is_plain_file(archive):
            return archive
        exports.mkdir(parents=True, exist_ok=True)
        with _file_lock(exports / f".{position}-{format}.lock"):
            if is_plain_file(archive):  # another process built it while we waited
                return archive
            for path in leftovers(exports, position, format):
                _remove(path)
            return _build(exports, archive, search_id, position, format, point)


def _build(exports: Path, archive: Path, search_id: str, position: int, format: str, point: dict[str, Any]) -> Path:
    from supernet.config import SubNetworkConfig
    from supernet.extract import export_onnx, export_subnetwork, load_exported
    from supernet.run import Run

    if archive.is_symlink() or archive.exists():
        archive.unlink()  # not a file the server wrote (a symlink, a hard link): build it again
    out = exports / f"{position}-{format}"
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        out.unlink()
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
                skipped = _add_tree(tar, out, archive_name(search_id, position, format))
            raw.flush()
            os.fsync(raw.fileno())  # the archive's bytes are on disk before its name is
        if skipped:
            log.warning("export %s left out what is not a plain file or folder: %s", out, ", ".join(skipped))
        os.replace(tmp_archive, archive)
    finally:
        tmp_archive.unlink(missing_ok=True)
    return archive
