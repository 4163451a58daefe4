"""What a user reads names things as the user knows them, never where the server keeps them.

A job's error, a search's log and every API response pass through a `Redactor` on their way out:

    <data_root>/datasets/<id>/data.csv   ->  dataset <id>        (uploads are named by id, never by path)
    <data_root>/glue/RTE                  ->  glue/RTE            (a request's relative paths are taken under the
                                                                   data root: this is how the user names it)
    <data_root>                           ->  <data root>
    site-packages, the interpreter, this  ->  <site-packages>/..., <python>/..., <nasprune>/..., <hub cache>/...
    installation, the Hugging Face cache

Paths under the configured model and data roots are left as they are: a request names them by their absolute
path, so that is the path the user gave. Tracebacks never reach a user (`strip_tracebacks`): they stay in the
server log (the worker's stderr), and a job's error is one line (`one_line`).

Redaction is a boundary, applied where text leaves the server, rather than a rule every message must follow: a
message from deep inside torch, transformers or the file system names whatever path it likes.
"""

from __future__ import annotations

import re
import site
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Any

from .config import Settings

# How long a job's error may be: a message is for reading, not a dump of a tensor or a file.
MAX_ERROR_CHARS = 2000
DATA_ROOT = "<data root>"
# A character that may follow a root's path in text without being part of a longer file name.
_AFTER = r"(?![^\s/'\"`,;:()\[\]{}<>])"
# A character before a root's path that makes it part of a longer path or word (then it is not that root).
_BEFORE = r"(?<![\w./~-])"
# The rest of a path after a root: up to white space, a quote or a closing bracket.
_REST = r"(?P<rest>/[^\s'\"`,;()\[\]{}<>]*)?"
_DATASET_ID = re.compile(r"^/(?P<id>[\w-]+)")
_TRACEBACK_START = "Traceback (most recent call last)"
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")


def _install_paths() -> dict[str, str]:
    """The interpreter's and this installation's folders, by the name a user reads instead."""
    paths = sysconfig.get_paths()
    packages = [paths.get("purelib"), paths.get("platlib"), *getattr(site, "getsitepackages", list)(),
                getattr(site, "getusersitepackages", lambda: None)()]
    names = {p: "<python>" for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix) if p}
    names |= {p: "<site-packages>" for p in packages if p}
    # the repository (an editable install, a checkout); installed as a package, it is site-packages itself
    names.setdefault(str(Path(__file__).resolve().parents[1]), "<nasprune>")
    try:
        from huggingface_hub import constants  # torch-free; where a hub model's files land

        names[str(constants.HF_HUB_CACHE)] = "<hub cache>"
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        pass
    return names


def _variants(path: str | Path) -> set[str]:
    """A path as given and resolved (a symlinked /tmp or home reads either way), without a trailing slash."""
    text = str(path).rstrip("/") or "/"
    out = {text}
    try:
        out.add(str(Path(text).resolve()))
    except (OSError, RuntimeError):
        pass
    return {p for p in out if p not in ("", "/")}


class Redactor:
    """Maps the server's paths in a text to what a user reads (see the module docstring)."""

    def __init__(self, data_root: Path, datasets_root: Path, install: dict[str, str] | None = None) -> None:
        self.datasets_root = datasets_root
        self.names: dict[str, str] = {}  # a path prefix -> what it becomes: a name, or "" (relative to it)
        for path, name in (install if install is not None else _install_paths()).items():
            self.names.update(dict.fromkeys(_variants(path), name))
        self.names.update(dict.fromkeys(_variants(data_root), ""))
        self.names.update(dict.fromkeys(_variants(datasets_root), "dataset"))
        # longest first: a data root inside the repository is the data root, not <nasprune>/...
        prefixes = sorted(self.names, key=len, reverse=True)
        self.pattern = re.compile(_BEFORE + "(?P<root>" + "|".join(map(re.escape, prefixes)) + ")" + _AFTER + _REST)

    @classmethod
    def for_settings(cls, settings: Settings) -> Redactor:
        return _redactor(settings.data_root, settings.datasets_root)

    def _replace(self, match: re.Match[str]) -> str:
        name, rest = self.names[match["root"]], match["rest"] or ""
        if name == "dataset":  # <datasets>/<id>/<file>: the id is what the user named
            found = _DATASET_ID.match(rest)
            return f"dataset {found['id']}" if found else "datasets" + rest
        if name == "":  # under the data root: the relative path a request would name
            return rest.lstrip("/") or DATA_ROOT
        return name + rest

    def text(self, text: str) -> str:
        """`text` with the server's paths replaced."""
        return self.pattern.sub(self._replace, text) if text else text

    def user_text(self, text: str) -> str:
        """A log a user reads: no tracebacks, no server paths."""
        return self.text(strip_tracebacks(text))

    def user_log(self, path: Path, tail: int | None = None) -> str:
        """A job's worker.log as its user reads it (user_text), its last `tail` lines only if given; "" if there
        is none yet."""
        if not path.is_file():
            return ""
        content = self.user_text(path.read_text(encoding="utf-8", errors="replace"))
        return content if tail is None else "\n".join(content.splitlines()[-tail:]) + "\n"

    def error(self, error: str | None) -> str | None:
        """A job's error as stored and shown: one line, no server paths."""
        return None if error is None else self.text(one_line(error))

    def json(self, value: Any) -> Any:
        """Every string in a JSON value redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.json(v) for v in value]
        return value

    def dataset_id(self, path: str) -> str | None:
        """The id of the uploaded dataset whose file `path` is, or None (a file named by path)."""
        try:
            relative = Path(path).relative_to(self.datasets_root)
        except ValueError:
            return None
        return relative.parts[0] if len(relative.parts) >= 2 else None

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        """A search's stored request as the user gave it: an uploaded dataset as `<split>_dataset: <id>` (as it was
        named in the body) rather than the path of its file, and no server paths elsewhere."""
        run = request.get("run")
        custom = run.get("custom") if isinstance(run, dict) else None
        if isinstance(custom, dict):
            shown: dict[str, Any] = {}
            for key, value in custom.items():
                split = key.removesuffix("_file") if key in ("train_file", "test_file") else None
                dataset = self.dataset_id(value) if split and isinstance(value, str) else None
                if dataset is None:
                    shown[key] = value
                else:
                    shown[f"{split}_dataset"] = dataset
            request = request | {"run": run | {"custom": shown}}
        return self.json(request)


@lru_cache(maxsize=8)
def _redactor(data_root: Path, datasets_root: Path) -> Redactor:
    return Redactor(data_root, datasets_root)


def strip_tracebacks(text: str) -> str:
    """`text` without Python tracebacks: each "Traceback (most recent call last):" and the indented frames after
    it go, the exception's own line (what went wrong) stays. Logs written before tracebacks were kept out of
    them are read through this too."""
    if _TRACEBACK_START not in text:
        return text
    kept: list[str] = []
    in_traceback = False
    for line in text.splitlines(keepends=True):
        if line.startswith(_TRACEBACK_START):
            in_traceback = True
            continue
        if in_traceback and (line.startswith((" ", "\t")) or not line.strip()):
            continue
        in_traceback = False
        if line.startswith(_CHAINED):
            continue
        kept.append(line)
    return "".join(kept)


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """A message as one line: no traceback, its lines joined with "; ", at most `limit` characters."""
    lines = [line.strip() for line in strip_tracebacks(text).splitlines()]
    joined = "; ".join(line for line in lines if line)
    return joined if len(joined) <= limit else joined[: limit - 1] + "…"

