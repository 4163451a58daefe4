"""Where a search job keeps its records: the trials it evaluated and the front it wrote (with each point's
"refined" entry). One store of record per fact: the CLI keeps them in files of the run folder (`FileStore`), the
service in its database (service/store.py's `DbStore`); `search.job` talks to either through `Store`.

The crash guarantee both keep: a trial `add_trial` acknowledged is never lost, so a resumed search never
evaluates it again (search/runner.py replays the optimizer from `load_trials`). `set_refined` changes one
point's entry only, so refines of different points of one front may run at the same time without overwriting each
other. Torch-free (a Trial is imported only where one is read), like search/records.py.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from filelock import FileLock

from supernet.files import atomic_write_json, atomic_write_text

from .records import FRONT_FILE, TRIALS_FILE

if TYPE_CHECKING:
    from .runner import Trial

log = logging.getLogger(__name__)


class FrontChanged(RuntimeError):
    """The stored front holds another sub-network at the position being refined: it was rewritten meanwhile."""


class Store(Protocol):
    """The records of one search."""

    def load_trials(self) -> list[Trial]:
        """Every trial acknowledged so far, in any order."""

    def add_trial(self, trial: Trial) -> None:
        """Store a finished trial; durable when this returns. The same trial again is a no-op."""

    def load_front(self) -> dict[str, Any] | None:
        """The front as search.job.write_front made it (points, reference, hypervolume, normalisation, ...), with
        each point's "refined" entry; None before one is saved."""

    def save_front(self, front: dict[str, Any]) -> None:
        """Make `front` the search's front, whole."""

    def set_refined(self, position: int, config: dict[str, Any], refined: dict[str, Any]) -> None:
        """Set point `position`'s "refined" entry alone; FrontChanged if that point is no longer `config`."""


def parse_trials(lines: list[str], where: str) -> tuple[list[Trial], bool]:
    """Trials of trials.jsonl lines, each once; a line that does not parse (a line torn by a crash mid-write) is
    skipped. Also whether one was."""
    from .runner import Trial

    trials: dict[int, Trial] = {}
    torn = False
    for line in lines:
        try:
            trial = Trial.from_dict(json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("%s: skipping an unreadable line", where)
            torn = True
            continue
        if trial.index in trials:  # stored twice (a replayed callback): one trial
            if trials[trial.index].config != trial.config:
                raise ValueError(f"{where}: trial {trial.index} holds two sub-networks; the file was edited or mixed "
                                 "from two searches")
            continue
        trials[trial.index] = trial
    return list(trials.values()), torn


class FileStore:
    """The CLI's store: trials.jsonl (one line per trial, appended and fsynced) and front.json (written whole by
    write-then-rename) in the run folder. front.json changes under a file lock, so a job's refine stage and
    on-demand refines in other processes each change their own point."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.trials_file, self.front_file = self.folder / TRIALS_FILE, self.folder / FRONT_FILE

    def _lock(self) -> FileLock:
        return FileLock(self.folder / f".{FRONT_FILE}.lock")

    def load_trials(self) -> list[Trial]:
        """The trials of trials.jsonl; a torn line is dropped from the file too, so the next append starts on a
        clean line."""
        if not self.trials_file.is_file():
            return []
        trials, torn = parse_trials(self.trials_file.read_text().splitlines(), str(self.trials_file))
        if torn:
            atomic_write_text(self.trials_file, "".join(json.dumps(t.to_dict()) + "\n" for t in trials), fsync=True)
        return trials

    def add_trial(self, trial: Trial) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.trials_file, "a") as f:
            f.write(json.dumps(trial.to_dict()) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def load_front(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.front_file.read_text())
        except FileNotFoundError:
            return None

    def save_front(self, front: dict[str, Any]) -> None:
        with self._lock():
            atomic_write_json(self.front_file, front)

    def set_refined(self, position: int, config: dict[str, Any], refined: dict[str, Any]) -> None:
        with self._lock():  # read again under the lock: a concurrent refine of another point is kept
            try:
                stored = json.loads(self.front_file.read_text())
            except (OSError, json.JSONDecodeError):
                stored = None
            points = stored["points"] if stored is not None else []
            if position >= len(points) or points[position]["config"] != config:
                raise FrontChanged(f"{self.front_file} changed while point {position} was refined")
            points[position]["refined"] = refined
            atomic_write_json(self.front_file, stored)
