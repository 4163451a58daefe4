"""Keep every file read on a user's behalf inside the folders the server allows.

A request may name a model folder or data files only inside allowed roots, but checking the folder it names is
not enough: a file inside it may be a symlink to anywhere (`RTE/train.tsv -> /etc/passwd`), and the folder may
change between the API's check and the worker's read (or while either reads). So the check runs on the files
themselves, twice: when the request is validated, and in the worker as it opens them. A data file is checked on
the opened descriptor (`/proc/self/fd`), so no swap between check and open can slip past; a model folder, which
transformers opens file by file, has every entry checked just before it is loaded.

A refusal (`OutsideRoots`) names the path as the user gave it and never the content of the file it refused to
read, nor the server's folders. Without a policy (the CLI, a user reading their own files) nothing is checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

__all__ = ["OutsideRoots", "Policy", "refusal", "policy", "current", "within", "check_file", "check_folder",
           "open_text", "model_source"]

# A model folder has a handful of files; a folder with thousands is not a model and is not walked whole.
MAX_MODEL_ENTRIES = 10_000
_FD_FOLDER = Path("/proc/self/fd")
ALIASES = ("minilm",)  # supernet.convert.MODEL_ALIASES: names of models the server ships, not paths


class OutsideRoots(PermissionError):
    """A path a request named that resolves outside the allowed folders (itself or a symlink inside it)."""


@dataclass(frozen=True)
class Policy:
    """The folders a process may read on a user's behalf: model folders under `models`, data under `data`."""

    models: tuple[Path, ...]
    data: tuple[Path, ...]

    @classmethod
    def of(cls, models: Sequence[str | Path], data: Sequence[str | Path]) -> Policy:
        return cls(tuple(_real(p) for p in models), tuple(_real(p) for p in data))


# A context variable, not a global: the API checks requests of different callers in concurrent threads, each
# under its own `with policy(...)` (Starlette copies the context into the thread that runs a sync route).
_policy: ContextVar[Policy | None] = ContextVar("nasprune_read_policy", default=None)


def current() -> Policy | None:
    """The policy the reads of this context are held to (None: nothing is checked)."""
    return _policy.get()


@contextmanager
def policy(value: Policy | None) -> Iterator[Policy | None]:
    """Hold this context's reads to `value` for the duration: a worker runs each job under the server's roots,
    the API validates each request under them."""
    token = _policy.set(value)
    try:
        yield value
    finally:
        _policy.reset(token)


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def within(path: str | Path, roots: Sequence[Path]) -> bool:
    """Whether `path`, symlinks and '..' resolved, lies inside one of `roots` (already resolved)."""
    real = _real(path)
    return any(real.is_relative_to(root) for root in roots)


def refusal(what: str, given: str, detail: str = "") -> OutsideRoots:
    """The one refusal: the path as given, where it points never (nor whether it exists)."""
    return OutsideRoots(f"{what} {given!r}{detail} is outside the allowed folders (the operator sets them "
                        "with NASPRUNE_ALLOWED_MODEL_ROOTS / NASPRUNE_ALLOWED_DATA_ROOTS)")


def check_file(path: str | Path, roots: Sequence[Path], *, what: str, given: str | None = None) -> Path:
    """The real path of `path` if it lies inside `roots`; else OutsideRoots naming `given` (default: `path`)."""
    if not within(path, roots):
        raise refusal(what, given or str(path))
    return _real(path)


def check_folder(folder: str | Path, roots: Sequence[Path], *, what: str, given: str | None = None) -> Path:
    """The real path of `folder` once it and every entry below it (symlinks included, not followed into) resolve
    inside `roots`; a link out of them is refused by the name the user gave plus its place in the folder."""
    given = given or str(folder)
    real = check_file(folder, roots, what=what, given=given)
    seen = 0
    for current_dir, dirs, files in os.walk(real, followlinks=False):
        for name in (*dirs, *files):
            seen += 1
            if seen > MAX_MODEL_ENTRIES:
                raise OutsideRoots(f"{what} {given!r}: more than {MAX_MODEL_ENTRIES} files; not a model folder")
            entry = Path(current_dir) / name
            if entry.is_symlink() and not within(entry, roots):
                raise refusal(what, given, f" (its entry {str(entry.relative_to(real))!r})")
    return real


def _opened_path(fd: int) -> Path | None:
    """The real path of an open descriptor, from the kernel (None where /proc is not there)."""
    try:
        return Path(os.readlink(_FD_FOLDER / str(fd)))
    except OSError:
        return None


def open_text(path: str | Path, *, what: str = "data file", given: str | None = None) -> TextIO:
    """Open a data file for csv reading (utf-8-sig drops a BOM) under the process's policy: the file actually
    opened must lie inside the data roots, checked on its descriptor, so a symlink swapped in after any earlier
    check is still refused, and nothing of a refused file is read."""
    rules = _policy.get()
    given = given or str(path)
    if rules is not None:
        check_file(path, rules.data, what=what, given=given)
    f = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - returned to the caller, who closes it
    if rules is not None:
        opened = _opened_path(f.fileno())
        if opened is not None and not any(opened.is_relative_to(root) for root in rules.data):
            f.close()
            raise refusal(what, given)
    return f


def model_source(name: str) -> str:
    """`name` unchanged, once a local model folder it names has passed the process's policy (checked just before
    transformers reads it). Aliases and hub ids are not paths a user can point at server files: they pass."""
    rules = _policy.get()
    if rules is None or name in ALIASES:
        return name
    if Path(name).is_absolute():
        check_folder(name, rules.models, what="model")
    elif os.path.exists(name):  # transformers would load a hub id that is also a folder here as that folder
        raise refusal("model", name, " (a hub id that names a folder on the server)")
    return name
