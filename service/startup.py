"""What `nasprune serve`, `nasprune worker` and `nasprune db upgrade` check before anything else: a data root (and
SQLite folder) they can write, on a disk with at least `Settings.min_free_mb` free.

A failure is a `StartupError` with a one-line message, which the CLI prints (exit code 2) instead of a traceback
from deep inside SQLite or Alembic; `serve` checks before it starts any worker, so no worker is started only to
die of the same cause. Workers also look at the free space before each claim (`low_disk`): on a full disk they
wait rather than fail every queued job in turn.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .config import Settings
from .db import sqlite_file


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
