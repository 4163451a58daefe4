"""The job queue over a real SQLite file and a real PostgreSQL database: claim order, exactly-once claims
across worker processes, heartbeats, recovery of stale jobs, cancel and finish.

Kept free of torch imports: the spawned worker processes import this module and should start in well under a second.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import update

from service import queue
from service.db import make_engine, session_factory
from service.models import Search, SearchStatus, utcnow
from service.repository import get_search, request_cancel

STALE_S = 60.0


@pytest.fixture
def url(database_url: str) -> str:
    """A migrated database: every test runs on SQLite and on PostgreSQL (conftest.database_url)."""
    return database_url


@pytest.fixture
def factory(url: str):
    engine = make_engine(url)
    yield session_factory(engine)
    engine.dispose()


def enqueue(factory, n: int) -> list[str]:
    return [queue.enqueue(factory, request={"n": i})[0].id for i in range(n)]


def age_heartbeat(factory, search_id: str, seconds: float = 2 * STALE_S) -> None:
    """Make a job look silent for `seconds` (what a dead worker leaves behind)."""
    with factory.begin() as session:
        session.execute(update(Search).where(Search.id == search_id)
                        .values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


def load(factory, search_id: str) -> Search:
    with factory() as session:
        return get_search(session, search_id)


def test_claims_take_the_oldest_queued_job_first(factory) -> None:
    ids = enqueue(factory, 3)
    claimed = [queue.claim_next(factory, f"w{i}") for i in range(4)]
    assert [c.id for c in claimed[:3]] == ids and claimed[3] is None
    first = load(factory, ids[0])
    assert (first.status, first.worker_id, first.attempts) == (SearchStatus.TRAINING, "w0", 0)
    assert first.heartbeat_at is not None and first.started_at == first.heartbeat_at
    assert claimed[0].status == SearchStatus.TRAINING  # the returned row is the claimed state, usable detached


def test_cancelled_and_finished_jobs_are_not_claimed(factory) -> None:
    cancelled, finished, waiting = enqueue(factory, 3)
    with factory.begin() as session:
        request_cancel(session, cancelled)
    assert queue.finish(factory, finished, "failed", "bad request")
    assert queue.claim_next(factory, "w").id == waiting
    assert queue.claim_next(factory, "w") is None


def _claim_until_empty(url: str, worker_id: str, start: multiprocessing.synchronize.Barrier, results) -> None:
    """A worker process: claim until the queue is empty, report what it got."""
    engine = make_engine(url)
    factory = session_factory(engine)
    start.wait(timeout=60)
    got = []
    while (search := queue.claim_next(factory, worker_id)) is not None:
        got.append(search.id)
        queue.heartbeat(factory, search.id, worker_id)  # some writes between claims, as a real worker makes
    engine.dispose()
    results.put((worker_id, got))


@pytest.mark.slow
def test_each_job_is_claimed_exactly_once_by_concurrent_worker_processes(factory, url: str) -> None:
    ids = enqueue(factory, 20)
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(4), context.Queue()
    workers = [context.Process(target=_claim_until_empty, args=(url, f"worker-{i}", start, results))
               for i in range(4)]
    for process in workers:
        process.start()
    reports = dict(results.get(timeout=120) for _ in workers)
    for process in workers:
        process.join(timeout=30)
        assert process.exitcode == 0
    claims = Counter(search_id for got in reports.values() for search_id in got)
    assert sorted(claims) == sorted(ids) and set(claims.values()) == {1}
    for worker_id, got in reports.items():  # the database agrees on who holds what
        for search_id in got:
            assert load(factory, search_id).worker_id == worker_id


def test_heartbeat_stamps_only_the_owners_running_job(factory) -> None:
    (search_id,) = enqueue(factory, 1)
    assert not queue.heartbeat(factory, search_id, "w1")  # queued: nobody owns it yet
    queue.claim_next(factory, "w1")
    age_heartbeat(factory, search_id, 30)
    before = load(factory, search_id).heartbeat_at
    assert queue.heartbeat(factory, search_id, "w1")
    assert load(factory, search_id).heartbeat_at > before
    assert not queue.heartbeat(factory, search_id, "w2")
    assert not queue.heartbeat(factory, "missing", "w1")


def test_advance_moves_between_running_stages(factory) -> None:
    (search_id,) = enqueue(factory, 1)
    queue.claim_next(factory, "w1")
    assert queue.advance(factory, search_id, "w1", "searching")
    assert not queue.advance(factory, search_id, "w2", SearchStatus.EXPORTING)
    assert load(factory, search_id).status == SearchStatus.SEARCHING
    with pytest.raises(queue.QueueError, match="finish"):
        queue.advance(factory, search_id, "w1", "succeeded")


def test_stale_jobs_go_back_to_the_queue_then_fail_after_max_attempts(factory) -> None:
    stale, alive = enqueue(factory, 2)
    for attempt in range(1, 3):
        assert queue.claim_next(factory, f"w{attempt}").id == stale
        if attempt == 1:
            assert queue.claim_next(factory, "other").id == alive
        age_heartbeat(factory, stale)
        recovery = queue.recover_stale(factory, STALE_S, max_attempts=3)
        assert (recovery.requeued, recovery.failed, recovery.cancelled) == ([stale], [], [])
        search = load(factory, stale)
        assert (search.status, search.attempts, search.worker_id, search.heartbeat_at) == ("queued", attempt, None,
                                                                                           None)
        assert "heartbeats" in search.error
    assert queue.claim_next(factory, "w3").id == stale
    assert load(factory, stale).error is None
    age_heartbeat(factory, stale)
    recovery = queue.recover_stale(factory, STALE_S, max_attempts=3)
    assert recovery.failed == [stale] and not recovery.requeued
    search = load(factory, stale)
    assert (search.status, search.attempts) == (SearchStatus.FAILED, 3) and search.finished_at is not None
    assert "3 attempt(s)" in search.error
    assert load(factory, alive).status == SearchStatus.TRAINING  # its heartbeat is fresh
    assert not queue.recover_stale(factory, STALE_S, max_attempts=3)


def test_heartbeat_fails_after_takeover_and_the_old_worker_cannot_finish(factory) -> None:
    (search_id,) = enqueue(factory, 1)
    queue.claim_next(factory, "old")
    age_heartbeat(factory, search_id)
    queue.recover_stale(factory, STALE_S, max_attempts=3)
    assert not queue.heartbeat(factory, search_id, "old")  # requeued: the old worker must stop
    assert queue.claim_next(factory, "new").id == search_id
    assert not queue.heartbeat(factory, search_id, "old")
    assert queue.heartbeat(factory, search_id, "new")
    assert not queue.finish(factory, search_id, "failed", "old worker's view", worker_id="old")
    assert queue.finish(factory, search_id, "succeeded", worker_id="new")
    search = load(factory, search_id)
    assert (search.status, search.error, search.attempts) == (SearchStatus.SUCCEEDED, None, 1)


def test_cancel_stops_a_running_job(factory) -> None:
    running, stale = enqueue(factory, 2)
    queue.claim_next(factory, "w1")
    queue.claim_next(factory, "w2")
    with factory.begin() as session:
        request_cancel(session, running)
        request_cancel(session, stale)
    assert not queue.heartbeat(factory, running, "w1")
    assert not queue.advance(factory, running, "w1", "searching")
    assert queue.finish(factory, running, SearchStatus.CANCELLED, worker_id="w1")
    age_heartbeat(factory, stale)  # its worker died before it could honour the cancel
    assert queue.recover_stale(factory, STALE_S, max_attempts=3).cancelled == [stale]
    assert load(factory, running).status == load(factory, stale).status == SearchStatus.CANCELLED


def test_finish_ends_a_job_once(factory) -> None:
    (search_id,) = enqueue(factory, 1)
    queue.claim_next(factory, "w")
    with pytest.raises(queue.QueueError, match="succeeded"):
        queue.finish(factory, search_id, "training")
    assert queue.finish(factory, search_id, "failed", "CUDA out of memory")
    assert not queue.finish(factory, search_id, "succeeded")
    search = load(factory, search_id)
    assert (search.status, search.error) == (SearchStatus.FAILED, "CUDA out of memory")
    assert search.finished_at >= search.started_at


def test_enqueue_honours_idempotency_keys(factory) -> None:
    first, created = queue.enqueue(factory, request={}, idempotency_key="k", folder_root="/runs")
    again, created_again = queue.enqueue(factory, request={}, idempotency_key="k")
    assert created and not created_again and again.id == first.id and first.folder == f"/runs/{first.id}"


def test_worker_ids_are_unique_per_call() -> None:
    assert queue.default_worker_id() != queue.default_worker_id()
