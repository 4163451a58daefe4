"""The legacy path: searches written by the release before the database became their one store of record.

That release kept a service search's trials in trials.jsonl *and* in rows (a worker killed between the two writes
left the file ahead of the rows), and its front's extras (reference, hypervolume, normalisation, ...) only in
front.json, with the points in rows. Each is imported once, on first use, and never written again:
  * `import_trials`: the trials of trials.jsonl the rows lack, then the file renamed to trials.jsonl.imported, so
    the import runs once and nothing reads it again (a resumed search reads rows only);
  * `import_front`: a fronts row made from front.json for a search that has front points but no fronts row.
Trial keys are the canonical JSON of the sub-network either way, so the stored keys of old searches stay valid.
Torch-free (json only): the API calls `import_front`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from search.records import FRONT_FILE, TRIALS_FILE

from . import repository as repo
from .models import FrontRow, utcnow

log = logging.getLogger(__name__)

IMPORTED_SUFFIX = ".imported"


def import_trials(factory: sessionmaker[Session], search_id: str, folder: Path) -> int:
    """Store the trials of an old search's trials.jsonl that its rows lack; how many were added."""
    from search.store import parse_trials

    path = folder / TRIALS_FILE
    if not path.is_file():
        return 0
    trials, _ = parse_trials(path.read_text().splitlines(), str(path))
    added = 0
    with factory.begin() as session:
        for trial in trials:
            added += repo.add_trial(session, search_id, trial)
        repo.update_progress(session, search_id, evaluations_done=repo.count_trials(session, search_id))
    path.rename(path.with_name(path.name + IMPORTED_SUFFIX))
    log.info("search %s: imported trials.jsonl (%d trial(s) the database lacked) from an older release",
             search_id, added)
    return added


def import_front(session: Session, search_id: str, folder: Path) -> dict[str, Any] | None:
    """The front of an old search whose extras live only in front.json: a fronts row is made from the file (its
    points stay the rows', which hold the refined entries made since), then the front is loaded from the
    database. None if there is nothing to import (no front.json; an unreadable one is logged)."""
    if session.get(FrontRow, search_id) is not None:
        return repo.load_front(session, search_id)
    if not (folder / FRONT_FILE).exists():  # no front yet (a new search): nothing to import
        return None
    try:
        front = json.loads((folder / FRONT_FILE).read_text())
        points = list(front["points"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("search %s: front points stored but %s is unreadable (%s)", search_id, folder / FRONT_FILE, exc)
        return None
    extras = [{k: v for k, v in p.items() if k not in repo.POINT_COLUMNS} for p in points]
    data = {k: v for k, v in front.items() if k != "points"} | {"point_extras": extras}
    if repo.insert_ignoring_conflicts(session, FrontRow.__table__, {"search_id": search_id, "data": data,
                                                                     "created_at": utcnow()}):
        log.info("search %s: imported the extras of front.json from an older release", search_id)
    return repo.load_front(session, search_id)

