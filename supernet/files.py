"""Write-then-rename: the one way this project puts a file or folder in place.

A reader (another process, or the same job resumed after a crash) sees either the old content or the new, never a
half-written file: the content goes to a temporary name beside the target (same file system, so the rename is
atomic) and is renamed over it only once it is complete.

Modes: a file or folder written through `atomic_path` gets what the process umask gives it (the service sets
0o077: files 0600, folders 0700; service/startup.py), and the rename keeps that mode. The records
`atomic_write_text` writes (settings, fronts, summaries) are created 0600 whatever the umask: they are the run's
own, and nothing needs them readable by other users.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temporary_sibling(path: Path) -> Path:
    """A hidden name beside `path` that no other writer picks (pid + random), so concurrent writers never share
    a temporary."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; write a file or a folder there. On a clean exit it replaces `path`
    (a folder already at `path` is removed first: os.replace cannot replace a non-empty folder); on an error the
    temporary is removed and `path` is left as it was. `fsync`: flush a written file to disk before the rename,
    so the name never points at bytes still in the page cache (for what must survive a power loss)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if fsync and tmp.is_file():
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        if tmp.is_dir() and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


PRIVATE_FILE_MODE = 0o600


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    with atomic_path(path, fsync=fsync) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    return Path(path)


def atomic_write_json(path: str | Path, data: Any, *, indent: int | None = 2, fsync: bool = False) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent), fsync=fsync)
