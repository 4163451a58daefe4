"""What `nasprune serve`, `nasprune worker` and `nasprune db upgrade` check before anything else: a data root (and
SQLite folder) they can write, on a disk with at least `Settings.min_free_mb` free.

They also make what they write private (`private_files`): the process umask becomes 0o077, so every file the
service creates under the data root (the database, uploads, checkpoints, logs, exports) is 0600 and every folder
0700, whoever else has an account on the machine; the folders only the service writes (searches/, datasets/) and
the SQLite file are tightened to that too, so files an older release left readable stop being reachable.

A failure is a `StartupError` with a one-line message, which the CLI prints (exit code 2) instead of a traceback
from deep inside SQLite or Alembic; `serve` checks before it starts any worker, so no worker is started only to
die of the same cause. Workers also look at the free space before each claim (`low_disk`): on a full disk they
wait rather than fail every queued job in turn.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

from .config import Settings
from .db import sqlite_file

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077  # files 0600, folders 0700


class StartupError(RuntimeError):
    """The service cannot start here; the message says why and which setting to change."""


def free_mb(path: Path) -> float:
    """Free megabytes on the file system of `path`, or of its nearest existing ancestor."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free / 2**20
    return float("inf")  # unreachable: "/" exists


def low_disk(settings: Settings) -> str | None:
    """Why the data root's disk is too full to work on, or None."""
    free = free_mb(settings.data_root)
    if free >= settings.min_free_mb:
        return None
    return (f"disk full: only {free:.0f} MB free under {settings.data_root}, below NASPRUNE_MIN_FREE_MB="
            f"{settings.min_free_mb} (checkpoints, exports and the database need room)")


def _check_writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StartupError(f"{what} {folder} is not a folder this user can write ({reason}); "
                           f"set NASPRUNE_DATA_ROOT (or NASPRUNE_DATABASE_URL) to one that is") from None


def check_startup(settings: Settings) -> None:
    """Raise StartupError unless the data root and the SQLite database's folder are writable and have room."""
    _check_writable(settings.data_root, "data root")
    database = sqlite_file(settings.url)
    if database is not None and not database.parent.resolve().is_relative_to(settings.data_root):
        _check_writable(database.parent, "database folder")
    if reason := low_disk(settings):
        raise StartupError(reason)


def _tighten(path: Path, mode: int) -> None:
    """chmod `path` to `mode` if it is ours and more open than that; a path that is not there is left alone."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid() or not st.st_mode & PRIVATE_UMASK:
            return
        os.chmod(path, mode)
        log.info("made %s private (mode %o)", path, mode)
    except OSError as exc:  # not there yet, or not ours to change: the umask still covers what is created
        if not isinstance(exc, (FileNotFoundError, NotADirectoryError)):  # an unusable data root: check_startup says
            log.warning("could not make %s private: %s", path, exc)


def private_files(settings: Settings) -> int:
    """Set the process umask to 0o077 and tighten the service's own folders and SQLite file; the previous umask
    (for a caller that restores it, e.g. an app started inside a test process)."""
    previous = os.umask(PRIVATE_UMASK)
    for folder in (settings.searches_root, settings.datasets_root):
        _tighten(folder, 0o700)
    database = sqlite_file(settings.url)
    if database is not None:
        for path in (database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")):
            _tighten(path, 0o600)
    return previous
