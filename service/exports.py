"""Build (once) and cache the downloadable archive of a front point: the code an export job runs in a worker
(service/worker.py's ExportRunner; the download route only queues the job and serves what it built, so the API
process never loads torch or a supernet).

    <search folder>/exports/<stem>/         the exported model folder (HF folder; + model.onnx)
    <search folder>/exports/<stem>.tar.gz   the archive served, built from that folder only

where <stem> is "<point>-<format>" for the sub-network sliced from the supernet, and "<point>-<format>-refined"
for a point refined after the search (its stored front point has a "refined" entry and the job wrote its model
to <search folder>/refined/<point>/): the archive is then built from that model folder instead. Refined or not is
part of the cache key, so an archive built from the slice is never served for a refined point, nor the reverse;
the exports table keeps one job per (point, format, kind), whose archive the route serves once it succeeded. The
refined folder's path is never read from JSON: it is derived from the search folder and the position, and used
only if it resolves to a folder inside the search folder.

A refined model replaced by a later refine of the point (other settings) makes its cached refined exports stale:
`remove_refined_exports` deletes them, under the same locks as a build, so the next download rebuilds them.

Both are written under a temporary name (starting with ".<stem>.", supernet.files.atomic_path) and renamed into
place, so a crash never leaves a half-written export where a download would serve it. A build holds a file lock
per stem (`filelock`: an flock on .<stem>.lock, which every thread and process honours and the kernel releases
when its holder dies). Holding it, a build first removes the temporaries of an earlier build that was killed
halfway, so they do not pile up in the cache.

The archive holds the export folder's regular files and folders only, as relative members under one top folder:
a symlink, a hard link (a file with more than one link), a device or a pipe found there is left out, never
followed, so nothing planted in the folder can pull a file from elsewhere into a download. Members carry no
owner and plain modes. A cached archive is served only if it is a plain file where the server wrote it. (The
archive is written member by member rather than with `TarFile.add(filter=...)`: a filter sees neither a file's
link count nor the file as opened, and `add` opens by name, following a symlink swapped in after the check; here
each file is opened with O_NOFOLLOW and checked as opened.) The gzip header names no file and no time
(`_gzip_writer`): the temporary name an archive is built under never reaches a download.

Torch-free at import (the API imports the names and checks); the build imports supernet lazily.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from filelock import FileLock

from search.records import COMPRESSED_DIR, REFINED_DIR, SUBNETWORK_FILE, serves_refined
from supernet.files import atomic_path

from .shares import MODEL_DIR

log = logging.getLogger(__name__)

FORMATS = ("hf", "onnx")
EXPORTS_DIR = "exports"
REFINED_SUFFIX = "-refined"


def _build_lock(exports: Path, stem: str) -> FileLock:
    """The lock of one export's build and removal (a new FileLock each time: its flock conflicts with every other
    holder, in this process or another)."""
    return FileLock(exports / f".{stem}.lock")


def archive_name(search_id: str, position: int, format: str, *, refined: bool = False) -> str:
    """The name of the archive's top folder and of the downloaded file (without .tar.gz)."""
    return f"nasprune-{search_id[:8]}-point{position}-{format}" + (REFINED_SUFFIX if refined else "")


def export_stem(position: int, format: str, *, refined: bool = False) -> str:
    """The cache key of an export under <search folder>/exports: refined or sliced is part of it."""
    return f"{int(position)}-{format}" + (REFINED_SUFFIX if refined else "")


def archive_path(folder: Path, position: int, format: str, *, refined: bool = False) -> Path:
    """Where the archive of this point, format and kind is cached."""
    return folder / EXPORTS_DIR / f"{export_stem(position, format, refined=refined)}.tar.gz"


def refined_source(folder: Path, position: int, point: Mapping[str, Any]) -> Path | None:
    """The refined model folder of front point `position` (<folder>/refined/<position>, resolved), or None: the
    point has no "refined" entry (slice it from the supernet), or the folder is not there, resolves outside the
    search folder (a symlink planted there) or holds another sub-network (the route refuses to serve it)."""
    if not serves_refined(point):
        return None  # not refined, or the refined model was worse on validation than the slice
    base = folder.resolve()
    candidate = folder / REFINED_DIR / str(int(position))  # never the entry's "folder" value
    try:
        resolved = candidate.resolve()
        if not resolved.is_relative_to(base):
            log.warning("%s resolves to %s, outside the search folder: not served", candidate, resolved)
            return None
        if not resolved.is_dir():
            log.warning("front point %d of %s was refined but %s is missing: not served",
                        position, folder, candidate)
            return None
        record = json.loads((resolved / SUBNETWORK_FILE).read_text())
    except (OSError, RuntimeError, ValueError) as exc:  # unreadable, a symlink loop, broken JSON
        log.warning("%s is not a usable refined model (%s): not served", candidate, exc)
        return None
    if not isinstance(record, dict) or record.get("config") != point.get("config"):
        log.warning("%s holds another sub-network than front point %d: not served",
                    candidate, position)
        return None
    return resolved


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


def _gzip_writer(raw: BinaryIO) -> gzip.GzipFile:
    """A gzip stream over `raw` whose header names no file and no time: `tarfile.open(path, "w:gz")` would store
    the temporary file's name (FNAME) and the build's time in every download."""
    return gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)


def leftovers(exports: Path, stem: str) -> list[Path]:
    """Temporaries of a build of export `stem` (".0-hf.<pid>.<random>.tmp", ".0-hf.tar.gz.<pid>.<random>.tmp"; not
    the lock file; not those of "0-hf-refined", whose names go on with "-" where these have "."): what a build
    killed halfway leaves behind."""
    lock = f".{stem}.lock"
    if not exports.is_dir():
        return []
    return [p for p in exports.iterdir()
            if p.name.startswith(".") and p.name.lstrip(".").startswith(f"{stem}.") and p.name != lock]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def build_export(folder: Path, search_id: str, position: int, format: str, point: dict[str, Any], *,
                 source: Path | None = None) -> Path:
    """The .tar.gz of front point `position` in `format`, built if it is not there yet: from the refined model
    folder `source` (see `refined_source`) if given, else sliced from the supernet."""
    refined = source is not None
    stem = export_stem(position, format, refined=refined)
    exports = folder / EXPORTS_DIR
    archive = archive_path(folder, position, format, refined=refined)
    if is_plain_file(archive):
        return archive
    exports.mkdir(parents=True, exist_ok=True)
    with _build_lock(exports, stem):
        if is_plain_file(archive):  # built by another job while we waited (e.g. before a requeue)
            return archive
        for path in leftovers(exports, stem):
            _remove(path)
        return _build(exports, archive, stem, archive_name(search_id, position, format, refined=refined),
                      format, point, source)


def remove_refined_exports(folder: Path, position: int) -> list[str]:
    """Delete the cached refined exports of point `position` in every format (archive, export folder,
    temporaries), each under its build lock so no build is cut in half; the archive names."""
    exports = folder / EXPORTS_DIR
    names = []
    for format in FORMATS:
        stem = export_stem(position, format, refined=True)
        archive = archive_path(folder, position, format, refined=True)
        names.append(archive.name)
        if not exports.is_dir():
            continue
        with _build_lock(exports, stem):
            for path in [archive, exports / stem, *leftovers(exports, stem)]:
                if path.is_symlink() or path.exists():
                    _remove(path)
    return names


def build_compressed_archive(folder: Path, model: str, top: str) -> Path:
    """The .tar.gz of a compressed model (the folder `model`, compressed/<point>/<key>, relative to the search folder
    `folder`) beside it, as <key>.tar.gz under the top folder `top`: built by the compression's own job, which
    alone writes there (one running compression per point and settings), after clearing what an earlier run of
    it killed halfway left."""
    source = (folder / model).resolve()
    if not source.is_relative_to((folder / COMPRESSED_DIR).resolve()) or not source.is_dir():
        raise ValueError(f"{model} is not a compressed model folder of this search")
    archive = source.with_name(f"{source.name}.tar.gz")
    for path in leftovers(source.parent, archive.name):
        _remove(path)
    return _write_archive(archive, source, top)


def build_share_archive(folder: Path, top: str) -> Path:
    """The .tar.gz of a shared model (the folder model/ of the share's folder `folder`) beside it, as model.tar.gz
    under the top folder `top`: built by the share's own job, which alone writes there, after clearing what an
    earlier run of it killed halfway left."""
    source = folder / MODEL_DIR
    if not source.is_dir():
        raise ValueError(f"{folder.name} holds no shared model")
    archive = source.with_name(f"{source.name}.tar.gz")
    for path in leftovers(source.parent, archive.name):
        _remove(path)
    return _write_archive(archive, source, top)


def servable_share(path: str | Path, shares_root: Path) -> bool:
    """Whether a shared model's archive path may be served: a plain file under the shares root."""
    path = Path(path)
    return is_plain_file(path) and path.resolve().is_relative_to(shares_root.resolve())


def servable_compressed(path: str | Path, folder: Path) -> bool:
    """Whether a compressed model's archive path may be served: a plain file under the search folder's
    compressed/."""
    path = Path(path)
    return is_plain_file(path) and path.resolve().is_relative_to((folder / COMPRESSED_DIR).resolve())


def _copy_plain_files(source: Path, dest: Path) -> None:
    """Copy the plain files at the top of `source` into the new folder `dest`; anything else (a symlink, a hard
    link, a folder, a pipe) is left out, never followed."""
    dest.mkdir()
    skipped = []
    with os.scandir(source) as entries:
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            if not (stat.S_ISREG(st.st_mode) and st.st_nlink == 1):
                skipped.append(entry.name)
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)  # swapped for a symlink since: fails
            with os.fdopen(fd, "rb") as src, open(dest / entry.name, "xb") as out:
                shutil.copyfileobj(src, out)
    if skipped:
        log.warning("refined model %s: left out what is not a plain file: %s", source, ", ".join(sorted(skipped)))


def _build(exports: Path, archive: Path, stem: str, top: str, format: str, point: dict[str, Any],
           source: Path | None) -> Path:
    from supernet.config import SubNetworkConfig
    from supernet.extract import export_onnx, export_subnetwork, load_exported
    from supernet.run import Run

    if archive.is_symlink() or archive.exists():
        archive.unlink()  # not a file the server wrote (a symlink, a hard link): build it again
    out = exports / stem
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        out.unlink()
    if not out.is_dir():
        run = Run(exports.parent)
        with atomic_path(out) as tmp:
            if source is not None:  # the refined model: already an exported folder
                _copy_plain_files(source, tmp)
            else:
                supernet = run.load_supernet()
                sub = SubNetworkConfig.from_dict(point["config"]).validate(supernet.config)
                export_subnetwork(supernet, sub, tmp, tokenizer=run.tokenizer, seq_len=run.spec.max_length,
                                  metrics={"validation": point["validation"], "test": point["test"]},
                                  token_lengths=run.token_lengths(sub))
            if format == "onnx":
                export_onnx(load_exported(tmp), tmp / "model.onnx", seq_len=run.spec.max_length)
    return _write_archive(archive, out, top)


def _write_archive(archive: Path, folder: Path, top: str) -> Path:
    """The .tar.gz of `folder` under the top folder `top`, written under a temporary name and renamed into place."""
    with atomic_path(archive, fsync=True) as tmp_archive:  # the archive's bytes are on disk before its name is
        with open(tmp_archive, "xb") as raw, _gzip_writer(raw) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
            skipped = _add_tree(tar, folder, top)
        if skipped:
            log.warning("%s: left out of its archive what is not a plain file or folder: %s", folder,
                        ", ".join(skipped))
    return archive
