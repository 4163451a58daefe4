"""Build (once) and cache the downloadable archive of a front point.

    <search folder>/exports/<point>-<format>/         the exported model folder (HF folder; + model.onnx)
    <search folder>/exports/<point>-<format>.tar.gz   the archive served, built from that folder only

Both are written under a temporary name and renamed into place, so a crash or a concurrent request never leaves
a half-written export where the next request would serve it. A lock per (search, point, format) keeps two
requests in this process from building the same export twice.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

FORMATS = ("hf", "onnx")
EXPORTS_DIR = "exports"

_locks: defaultdict[tuple[str, int, str], threading.Lock] = defaultdict(threading.Lock)
_locks_guard = threading.Lock()


def _lock(key: tuple[str, int, str]) -> threading.Lock:
    with _locks_guard:
        return _locks[key]


def archive_name(search_id: str, position: int, format: str) -> str:
    return f"nasprune-{search_id[:8]}-point{position}-{format}"


def build_export(folder: Path, search_id: str, position: int, format: str, point: dict[str, Any]) -> Path:
    """The .tar.gz of front point `position` in `format`, built if it is not there yet."""
    from supernet.config import SubNetworkConfig
    from supernet.extract import export_onnx, export_subnetwork, load_exported
    from supernet.run import Run

    exports = folder / EXPORTS_DIR
    out = exports / f"{position}-{format}"
    archive = exports / f"{position}-{format}.tar.gz"
    with _lock((search_id, position, format)):
        if archive.is_file():
            return archive
        exports.mkdir(parents=True, exist_ok=True)
        if not out.is_dir():
            run = Run(folder)
            supernet = run.load_supernet()
            sub = SubNetworkConfig.from_dict(point["config"]).validate(supernet.config)
            tmp = exports / f".{position}-{format}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
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
            with tarfile.open(tmp_archive, "w:gz") as tar:
                tar.add(out, arcname=archive_name(search_id, position, format))
            os.replace(tmp_archive, archive)
        finally:
            tmp_archive.unlink(missing_ok=True)
        return archive
