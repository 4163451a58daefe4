"""The service's store of record for a search job: its database rows (search/store.py's `Store` protocol).

Trials are `trials` rows (UNIQUE(search_id, config_key): a sub-network is stored once), the front is `front_points`
rows plus the search's `fronts` row, and a point's "refined" entry is a column of its row, so concurrent refines of
two points update two rows and never each other's. Every call is its own committed transaction: `add_trial`
returns once the trial is durable, which is the resume guarantee (acknowledged, never evaluated again). Nothing
is written to trials.jsonl or front.json; the run folder holds only artifacts (checkpoints, refined models,
exports, the log). A search of an older release is imported once on first use (service/legacy.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from search.store import FrontChanged

from . import legacy
from . import repository as repo

if TYPE_CHECKING:
    from search.runner import Trial


class DbStore:
    """The records of search `search_id` in the database; `folder` is its run folder, read only by the legacy
    import of a search an older release wrote."""

    def __init__(self, factory: sessionmaker[Session], search_id: str, folder: Path | None = None) -> None:
        self.factory, self.search_id, self.folder = factory, search_id, folder

    def load_trials(self) -> list[Trial]:
        if self.folder is not None:
            legacy.import_trials(self.factory, self.search_id, self.folder)
        with self.factory() as session:
            return repo.load_trials(session, self.search_id)

    def add_trial(self, trial: Trial) -> None:
        with self.factory.begin() as session:
            repo.add_trial(session, self.search_id, trial)

    def load_front(self) -> dict[str, Any] | None:
        with self.factory.begin() as session:
            if self.folder is not None:
                return legacy.import_front(session, self.search_id, self.folder)
            return repo.load_front(session, self.search_id)

    def save_front(self, front: dict[str, Any]) -> None:
        with self.factory.begin() as session:
            repo.save_front(session, self.search_id, front)

    def set_refined(self, position: int, config: dict[str, Any], refined: dict[str, Any]) -> None:
        """The point's refined entry, after its refined archives are deleted (files and export jobs): they were
        built from the model this refine replaced, and the next download builds them from the new one."""
        from .exports import remove_refined_exports

        if self.folder is not None:
            remove_refined_exports(self.folder, position)
        try:
            with self.factory.begin() as session:
                repo.forget_exports(session, search_id=self.search_id, position=position, refined=True)
                repo.set_refined(session, self.search_id, position, {"config": config, "refined": refined})
        except repo.InvalidArgument as exc:
            raise FrontChanged(str(exc)) from None
