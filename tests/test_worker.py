"""service.worker in this process, over a real SQLite file: a failing job is marked failed with a one-line reason
in worker.log (its traceback in the server log only) and the loop goes on; the trials.jsonl of a search an older
release began is imported once, on resume; a worker shutting down gives its job back; `nasprune db upgrade`."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from conftest import cli

from search.job import SearchJob
from search.runner import SearchConfig, Trial
from search.settings import LatencyShape
from service import queue
from service import repository as repo
from service.config import Settings, get_settings
from service.db import current_revision, head_revision, make_engine, session_factory, upgrade
from service.models import SearchStatus
from service.store import DbStore
from service.worker import LOG_FILE, run_worker
from supernet.config import SubNetworkConfig
from supernet.settings import RunSpec


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(data_root=tmp_path / "data", heartbeat_s=1, stale_after_s=3)
    upgrade(settings.url)
    return settings


@pytest.fixture
def factory(settings):
    engine = make_engine(settings.url)
    yield session_factory(engine)
    engine.dispose()


def request(model: str, **run: object) -> dict:
    spec = RunSpec(**({"model": model, "task": "custom/toy"} | run))
    return repo.request_dict(spec, SearchJob(search=SearchConfig(evaluations=2), latency=LatencyShape()))


def test_a_failing_job_is_marked_failed_and_the_loop_goes_on(settings, factory, caplog) -> None:
    # a GLUE folder under the data root that is gone when the job runs: the error names it as a request would
    missing = settings.data_root / "glue-gone"
    bad = queue.enqueue(factory, request=request("minilm", task="glue/rte", data_dir=str(missing)),
                        folder_root=settings.searches_root)[0]
    malformed = queue.enqueue(factory, request={"run": {"nope": 1}}, folder_root=settings.searches_root)[0]
    seen: list[tuple[str, SearchStatus | None]] = []
    assert run_worker(settings, poll_s=0.1, shutdown=_stop_after(2, seen), on_job=lambda i, s: seen.append((i, s))) == 2
    with factory() as session:
        for search_id in (bad.id, malformed.id):
            search = repo.get_search(session, search_id)
            assert search.status == SearchStatus.FAILED and search.error
            assert search.finished_at is not None
    assert seen == [(bad.id, SearchStatus.FAILED), (malformed.id, SearchStatus.FAILED)]
    log = (settings.search_folder(bad.id) / LOG_FILE).read_text()
    with factory() as session:
        error = repo.get_search(session, bad.id).error
    assert f"search {bad.id} failed: {error}" in log and "glue-gone" in error
    for text in (log, error):  # the user's: no traceback, no server path
        assert "Traceback" not in text and str(settings.data_root) not in text and 'File "' not in text, text
    assert "\n" not in error
    # the server log (the worker's stderr) has the traceback
    assert any(r.exc_info and f"search {bad.id} failed" in r.getMessage() for r in caplog.records)


def _stop_after(jobs: int, seen: list) -> threading.Event:
    """An Event that is set once `jobs` jobs were seen (checked by the worker loop between polls)."""

    class Stop(threading.Event):
        def is_set(self) -> bool:
            return len(seen) >= jobs or super().is_set()

    return Stop()


def test_once_returns_when_nothing_is_queued(settings) -> None:
    assert run_worker(settings, once=True) == 0


def _trial(index: int, heads: int) -> Trial:
    sub = SubNetworkConfig(layers=(0,), heads=(heads,), units=(8,))
    return Trial(index=index, config=sub, objectives={"error": 0.5, "params": 10.0 * heads},
                 validation={"accuracy": 0.5}, params={"encoder": 10, "total": 20}, macs=100, latency_ms=1.0,
                 elapsed_s=0.1 * index)


def test_trials_of_an_older_releases_file_missing_from_the_database_are_imported_once(settings, factory) -> None:
    """The legacy path: the release before kept trials in trials.jsonl and rows, and a worker killed between the two
    writes left the file ahead; the store of record imports the file once on resume, and never writes it."""
    search = queue.enqueue(factory, request=request("minilm"), folder_root=settings.searches_root)[0]
    folder = Path(search.folder)
    folder.mkdir(parents=True)
    trials = [_trial(0, 1), _trial(1, 2), _trial(2, 3)]
    (folder / "trials.jsonl").write_text("".join(json.dumps(t.to_dict()) + "\n" for t in trials) + '{"index": 3, "con')
    with factory.begin() as session:
        repo.add_trial(session, search.id, trials[0])  # the worker died after writing trials 1 and 2 to the file
    store = DbStore(factory, search.id, folder)
    assert [t.to_dict() for t in store.load_trials()] == [t.to_dict() for t in trials]  # the torn line skipped
    assert not (folder / "trials.jsonl").exists() and (folder / "trials.jsonl.imported").is_file()
    store.add_trial(_trial(3, 4))
    assert len(store.load_trials()) == 4 and not (folder / "trials.jsonl").exists()
    with factory() as session:
        assert repo.get_search(session, search.id).evaluations_done == 3


def test_release_gives_an_owned_job_back(settings, factory) -> None:
    search = queue.enqueue(factory, request=request("minilm"))[0]
    assert queue.claim_next(factory, "w1") is not None
    assert not queue.release(factory, search.id, "w2")
    assert queue.release(factory, search.id, "w1")
    with factory() as session:
        row = repo.get_search(session, search.id)
        assert row.status == SearchStatus.QUEUED and row.worker_id is None and row.attempts == 0


def test_db_upgrade_command(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("NASPRUNE_DATA_ROOT", str(tmp_path / "fresh"))
    get_settings.cache_clear()
    try:
        assert cli(["db", "upgrade"]) == 0
        assert (tmp_path / "fresh" / "nasprune.db").is_file()
        assert current_revision(make_engine(get_settings().url)) == head_revision()
    finally:
        get_settings.cache_clear()


def test_an_export_that_fails_says_why_and_a_new_request_retries_it(settings, factory) -> None:
    """A succeeded search whose folder has no supernet: its export job fails with the reason, the waiting download
    answers 500 with it, and asking again queues the same job again (and it fails again, for the same reason)."""
    from conftest import worker_thread
    from fastapi.testclient import TestClient

    from service.api import create_app

    config = SubNetworkConfig(layers=(0,), heads=(1,), units=(8,)).to_dict()
    point = {"config": config, "objectives": {"error": 0.5, "params": 1.0}, "validation": {"accuracy": 0.5},
             "params": {"encoder": 10, "total": 20}, "macs": 100, "latency_ms": 1.0, "test": {"accuracy": 0.5}}
    search = queue.enqueue(factory, request=request("minilm"), folder_root=settings.searches_root)[0]
    Path(search.folder).mkdir(parents=True)
    with factory.begin() as session:
        repo.get_search(session, search.id).status = SearchStatus.SUCCEEDED
        repo.save_front(session, search.id, {"objectives": ["error", "params"], "points": [point]})
    waiting = settings.model_copy(update={"export_wait_s": 60.0})
    url = f"/searches/{search.id}/pareto/0/download"
    with TestClient(create_app(waiting)) as client, worker_thread(waiting):
        first = client.get(url)
        assert first.status_code == 500, first.text
        job = first.json()
        assert job["status"] == "failed" and "not a run folder" in job["error"] and not job["refined"]
        again = client.get(url)
        assert again.status_code == 500 and again.json()["id"] == job["id"]
        assert again.json()["finished_at"] > job["finished_at"]  # built (and failed) a second time
    assert "export" in (Path(search.folder) / LOG_FILE).read_text()
