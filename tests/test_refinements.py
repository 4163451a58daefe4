"""Refining single front points on demand through the service, over real SQLite files (and PostgreSQL for the
queue; migrations 0004 and 0005 are tested in tests/test_migrations.py): a real search and a real worker process
that refines only the point asked for, whose downloads then serve the refined model (and the slice with
?sliced=true), a second refine with other settings replacing it (stale cached archives dropped); the error paths;
cancel; the claim's exactly-once and one-running-per-search rules; recovery; ownership; delete while refining.

Top-level imports stay free of torch: the claim test's spawned processes import this module."""

from __future__ import annotations

import io
import json
import multiprocessing
import tarfile
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from service import queue, refinements
from service import repository as repo
from service.config import Settings
from service.db import make_engine, session_factory
from service.models import Refinement, RefinementStatus, Search, SearchStatus, utcnow

SETTINGS_A = {"epochs": 0.5, "learning_rate": 1e-3, "weight_decay": 0.01, "warmup_ratio": 0.06}
SETTINGS_B = {"epochs": 1.0, "learning_rate": 3e-4, "weight_decay": 0.01, "warmup_ratio": 0.06}


# ------------------------------------------------------------------------------------------------ the queue


@pytest.fixture
def factory(database_url: str):
    engine = make_engine(database_url)
    yield session_factory(engine)
    engine.dispose()


def finished_search(factory, status: SearchStatus = SearchStatus.SUCCEEDED, owner: str | None = None) -> str:
    with factory.begin() as session:
        search = repo.create_search(session, request={}, owner=owner)[0]
        search.status = status
        return search.id


def ask(factory, search_id: str, position: int = 0, settings: dict = SETTINGS_A) -> str:
    with factory.begin() as session:
        row = refinements.create(session, search_id=search_id, position=position, settings=settings)
        assert row is not None, f"point {position} of {search_id} already has an active refinement"
        return row.id


def load(factory, refinement_id: str) -> Refinement:
    with factory() as session:
        return session.get_one(Refinement, refinement_id)


def _claim_once(url: str, worker_id: str, start, results) -> None:
    """A worker process: one claim at the barrier, then claim until none is left; report what it got."""
    engine = make_engine(url)
    factory = session_factory(engine)
    start.wait(timeout=60)
    got = []
    while (row := refinements.claim_next(factory, worker_id)) is not None:
        got.append(row.id)
        refinements.finish(factory, row.id, "succeeded", worker_id=worker_id)  # frees its search for the next
    engine.dispose()
    results.put((worker_id, got))


@pytest.mark.slow
def test_each_refinement_is_claimed_exactly_once_by_concurrent_processes(factory, database_url: str) -> None:
    searches = [finished_search(factory) for _ in range(3)]
    ids = [ask(factory, searches[i % 3], position=i) for i in range(9)]
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_claim_once, args=(database_url, f"w{i}", start, results)) for i in range(2)]
    for process in workers:
        process.start()
    reports = dict(results.get(timeout=120) for _ in workers)
    for process in workers:
        process.join(timeout=30)
        assert process.exitcode == 0
    claims = Counter(rid for got in reports.values() for rid in got)
    assert sorted(claims) == sorted(ids) and set(claims.values()) == {1}
    for worker_id, got in reports.items():
        assert all(load(factory, rid).worker_id == worker_id for rid in got)


def test_claims_wait_for_a_finished_search_and_one_running_refinement_per_search(factory) -> None:
    busy, other = finished_search(factory), finished_search(factory)
    running = finished_search(factory, SearchStatus.SEARCHING)
    first, second = ask(factory, busy, 0), ask(factory, busy, 1)
    ask(factory, running, 0)  # its search has no front yet: never claimed
    third = ask(factory, other, 0)
    assert refinements.claim_next(factory, "w1").id == first
    assert refinements.claim_next(factory, "w2").id == third  # `second` waits: its search already has one running
    assert refinements.claim_next(factory, "w3") is None
    row = load(factory, first)
    assert (row.status, row.worker_id, row.attempts) == (RefinementStatus.RUNNING, "w1", 0)
    assert row.started_at is not None and row.heartbeat_at == row.started_at
    with factory() as session:  # the searches themselves are untouched
        assert session.get_one(Search, busy).status == SearchStatus.SUCCEEDED
    assert not refinements.finish(factory, first, "failed", "not yours", worker_id="w2")
    assert refinements.finish(factory, first, "succeeded", worker_id="w1")
    assert refinements.claim_next(factory, "w3").id == second


def test_the_database_refuses_a_second_running_refinement_of_a_search(factory) -> None:
    search_id = finished_search(factory)
    first, second = ask(factory, search_id, 0), ask(factory, search_id, 1)
    assert refinements.claim_next(factory, "w1").id == first
    with pytest.raises(Exception, match="(?i)unique"), factory.begin() as session:
        session.execute(update(Refinement).where(Refinement.id == second).values(status=RefinementStatus.RUNNING))


def test_a_point_has_at_most_one_active_refinement(factory) -> None:
    search_id = finished_search(factory)
    first = ask(factory, search_id, 0)
    with factory.begin() as session:  # queued: a second one, whatever its settings, is not added
        assert refinements.create(session, search_id=search_id, position=0, settings=SETTINGS_B) is None
    assert refinements.claim_next(factory, "w1").id == first
    with factory.begin() as session:  # running: the same
        assert refinements.create(session, search_id=search_id, position=0, settings=SETTINGS_A) is None
        assert refinements.find_active(session, search_id, 0).id == first
    assert refinements.finish(factory, first, "succeeded", worker_id="w1")
    second = ask(factory, search_id, 0)  # ended: the point may be refined again
    with factory() as session:
        assert refinements.find_active(session, search_id, 0).id == second
        assert [r.id for r in refinements.list_for_search(session, search_id)] == [second, first]


def test_heartbeat_cancel_release_and_recovery(factory) -> None:
    search_id = finished_search(factory)
    rid = ask(factory, search_id)
    assert refinements.claim_next(factory, "w1").id == rid
    assert refinements.heartbeat(factory, rid, "w1") and not refinements.heartbeat(factory, rid, "w2")
    assert refinements.release(factory, rid, "w1") and load(factory, rid).status == RefinementStatus.QUEUED
    assert load(factory, rid).attempts == 0  # a clean release is not a lost attempt

    def stale() -> None:
        with factory.begin() as session:
            session.execute(update(Refinement).where(Refinement.id == rid)
                            .values(heartbeat_at=utcnow() - timedelta(seconds=120)))

    for attempt in (1, 2):
        assert refinements.claim_next(factory, "w1").id == rid
        stale()
        assert refinements.recover_stale(factory, 60, max_attempts=3).requeued == [rid]
        row = load(factory, rid)
        assert (row.status, row.attempts, row.worker_id) == (RefinementStatus.QUEUED, attempt, None)
        assert "heartbeats" in row.error
    assert refinements.claim_next(factory, "w1").id == rid
    stale()
    assert refinements.recover_stale(factory, 60, max_attempts=3).failed == [rid]
    assert load(factory, rid).status == RefinementStatus.FAILED and "giving up" in load(factory, rid).error

    cancelled = ask(factory, search_id, 1)
    assert refinements.claim_next(factory, "w1").id == cancelled
    with factory.begin() as session:
        refinements.request_cancel(session, search_id, cancelled)
    assert not refinements.heartbeat(factory, cancelled, "w1")  # the worker stops on its next beat
    with factory.begin() as session:
        session.execute(update(Refinement).where(Refinement.id == cancelled)
                        .values(heartbeat_at=utcnow() - timedelta(seconds=120)))
    assert refinements.recover_stale(factory, 60, max_attempts=3).cancelled == [cancelled]
    assert queue.recover_stale(factory, 60, 3).requeued == []  # the searches' pass leaves refinements alone


# ------------------------------------------------------------------------------------------------ end to end


def body(ws: Path, **overrides) -> dict:
    """Error, params and MACs over 10 evaluations: with this seed a front of two points (error and params alone
    give one)."""
    from conftest import search_body

    return search_body(ws, ["error", "params", "macs"], 10, **overrides)


@pytest.fixture(scope="module")
def searched(client, workspace, worker_env) -> str:
    """A search run to the end by a worker process (no refining); its front has two points (seeded)."""
    from conftest import run_worker_once

    response = client.post("/searches", json=body(workspace))
    assert response.status_code == 201, response.text
    run_worker_once(worker_env, timeout_s=240)
    search = client.get(f"/searches/{response.json()['id']}").json()
    assert search["status"] == "succeeded", search["error"]
    return search["id"]


def refine_once(client, worker_env, url: str, settings: dict) -> dict:
    """POST the refine, let one worker process run it; the refinement as it ended."""
    from conftest import run_worker_once

    asked = client.post(url, json=settings)
    assert asked.status_code == 202, asked.text
    run_worker_once(worker_env, timeout_s=240)
    search_id = asked.json()["search_id"]
    (done,) = [r for r in client.get(f"/searches/{search_id}/refinements").json() if r["id"] == asked.json()["id"]]
    assert done["status"] == "succeeded", done["error"]
    return done


def download(client, url: str, into: Path) -> tuple[str, Path]:
    """GET a download while a worker (a thread of this process) builds the export job it queues."""
    from conftest import worker_thread

    with worker_thread(client.app.state.settings):
        response = client.get(url)
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        tar.extractall(into, filter="data")
    (folder,) = into.iterdir()
    return response.headers["content-disposition"], folder


def export_record(settings: Settings, search_id: str, position: int):
    engine = make_engine(settings.url)
    try:
        with session_factory(engine)() as session:
            return repo.get_export(session, search_id=search_id, position=position, format="hf", refined=True)
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_point_refined_on_demand_is_listed_and_served(client, searched, settings, worker_env, tmp_path) -> None:
    from search.records import REFINED_DIR

    folder = settings.search_folder(searched)
    before = client.get(f"/searches/{searched}").json()
    points = client.get(f"/searches/{searched}/pareto").json()["points"]
    assert len(points) >= 2 and all(p["refined"] is None and p["refinement"] is None for p in points)
    position = len(points) - 1  # the smallest point: the one refining helps most
    url = f"/searches/{searched}/pareto/{position}/refine"
    hf = f"/searches/{searched}/pareto/{position}/download"
    _, sliced_before = download(client, hf, tmp_path / "before")  # cached as the slice, before refining

    asked = client.post(url, json=SETTINGS_A)
    assert asked.status_code == 202, asked.text
    created = asked.json()
    assert (created["search_id"], created["position"], created["status"]) == (searched, position, "queued")
    assert created["settings"] == SETTINGS_A and created["started_at"] is None
    again = client.post(url, json=SETTINGS_A)  # the same request while it is queued: the same refinement
    assert again.status_code == 200 and again.json()["id"] == created["id"]
    from conftest import run_worker_once

    run_worker_once(worker_env, timeout_s=240)

    (done,) = client.get(f"/searches/{searched}/refinements").json()
    assert done["id"] == created["id"] and done["status"] == "succeeded", done["error"]
    assert done["started_at"] is not None and done["finished_at"] >= done["started_at"]
    after = client.get(f"/searches/{searched}").json()
    assert {k: after[k] for k in ("status", "finished_at", "progress")} == {
        k: before[k] for k in ("status", "finished_at", "progress")}  # the search itself is untouched
    assert f"refining front point {position} of search {searched}" in client.get(f"/searches/{searched}/logs").text

    listed = client.get(f"/searches/{searched}/pareto").json()["points"]
    assert not (folder / "front.json").exists()  # the database is the one record of the refined entry
    record = json.loads((folder / REFINED_DIR / str(position) / "subnetwork.json").read_text())
    for point in listed:
        if point["position"] == position:
            assert point["refinement"] == {"id": created["id"], "status": "succeeded", "error": None}
            assert {k: point["refined"]["settings"][k] for k in SETTINGS_A} == SETTINGS_A
            assert point["refined"]["test"] == record["metrics"]["refined"]["test"]
        else:  # only the point asked for
            assert point["refined"] is None and point["refinement"] is None
    assert sorted(p.name for p in (folder / REFINED_DIR).iterdir()) == [str(position)]
    assert listed[position]["refined"]["kept"], "the refined model lost to its slice: pick other settings"

    name, sliced = download(client, f"{hf}?sliced=true", tmp_path / "sliced")  # from the cache of the slice
    assert "-refined" not in name
    assert (sliced / "model.safetensors").read_bytes() == (sliced_before / "model.safetensors").read_bytes()
    name, served = download(client, hf, tmp_path / "first")
    model_file = folder / REFINED_DIR / str(position) / "model.safetensors"
    first_weights = model_file.read_bytes()
    assert "-refined.tar.gz" in name and (served / "model.safetensors").read_bytes() == first_weights
    assert (sliced / "model.safetensors").read_bytes() != first_weights
    archive = folder / "exports" / f"{position}-hf-refined.tar.gz"
    assert archive.is_file() and Path(export_record(settings, searched, position).path) == archive

    # The same settings again: refused; other settings: the point is refined again and served anew.
    refused = client.post(url, json=SETTINGS_A)
    assert refused.status_code == 409 and "already refined with these settings" in refused.json()["detail"]
    refine_once(client, worker_env, url, SETTINGS_B)
    assert not archive.exists() and not (folder / "exports" / f"{position}-hf-refined").exists()  # stale: gone
    assert export_record(settings, searched, position) is None
    second = client.get(f"/searches/{searched}/pareto").json()["points"][position]
    assert second["refined"]["settings"]["epochs"] == 1.0 and second["refined"]["kept"]
    assert model_file.read_bytes() != first_weights
    name, served = download(client, hf, tmp_path / "second")
    assert "-refined.tar.gz" in name and (served / "model.safetensors").read_bytes() == model_file.read_bytes()
    assert [r["settings"] for r in client.get(f"/searches/{searched}/refinements").json()] == [SETTINGS_B, SETTINGS_A]


def test_a_refinement_that_cannot_run_fails_with_its_reason(client, settings, tmp_path) -> None:
    """A front without its supernet checkpoint: the refinement fails, saying why; the search is untouched."""
    from service.worker import run_worker

    search_id = fake_search(settings)
    rid = client.post(f"/searches/{search_id}/pareto/0/refine", json={}).json()["id"]
    seen = []
    assert run_worker(settings, once=True, on_job=lambda i, s: seen.append((i, s))) == 1
    (row,) = client.get(f"/searches/{search_id}/refinements").json()
    assert seen == [(rid, "failed")] and row["status"] == "failed"
    assert row["error"].startswith("FileNotFoundError") and "not a run folder" in row["error"]
    first = client.get(f"/searches/{search_id}").json()
    assert first["status"] == "succeeded", first["error"]
    assert client.get(f"/searches/{search_id}/pareto").json()["points"][0]["refinement"]["status"] == "failed"


# ------------------------------------------------------------------------------------------------ the API alone


CONFIG = {"layers": [0], "heads": [2, 4, 4], "units": [8, 48, 48]}


def fake_point(**extra) -> dict:
    return {"config": CONFIG, "objectives": {"error": 0.2, "params": 0.5}, "validation": {"accuracy": 0.8},
            "params": {"encoder": 500, "total": 600}, "macs": 123, "latency_ms": 2.0,
            "test": {"accuracy": 0.75}} | extra


def fake_search(settings: Settings, owner: str | None = None, status=SearchStatus.SUCCEEDED) -> str:
    """A succeeded search with a two-point front in the database (no supernet: nothing runs)."""
    engine = make_engine(settings.url)
    try:
        with session_factory(engine).begin() as session:
            search = repo.create_search(session, request={}, folder_root=settings.searches_root, owner=owner)[0]
            search.status = status
            other = fake_point(config={"layers": [0, 1], "heads": [4, 4, 4], "units": [48, 48, 48]})
            repo.save_front(session, search.id, {"objectives": ["error", "params"], "points": [fake_point(), other]})
            folder = Path(search.folder)
        folder.mkdir(parents=True)
        return search.id
    finally:
        engine.dispose()


def test_refine_errors_say_what_is_wrong(client, settings) -> None:
    search_id = fake_search(settings)
    url = f"/searches/{search_id}/pareto/0/refine"
    unknown = client.post(f"/searches/{'f' * 32}/pareto/0/refine", json={})
    assert unknown.status_code == 404 and "no search with id" in unknown.json()["detail"]
    no_point = client.post(f"/searches/{search_id}/pareto/7/refine", json={})
    assert no_point.status_code == 404 and "has no front point 7 (it has 2: 0..1)" in no_point.json()["detail"]
    for status in (SearchStatus.CANCELLED, SearchStatus.FAILED):  # none a worker would take up
        other = fake_search(settings, status=status)
        refused = client.post(f"/searches/{other}/pareto/0/refine", json={})
        assert refused.status_code == 409, refused.text
        assert f"is {status.value}: its front points can be refined once it has succeeded" in refused.json()["detail"]
    cases = {"epochs": [0, -1, 100.5, "many"], "learning_rate": [0, -1e-4]}
    for field, values in cases.items():
        for value in values:
            response = client.post(url, json={field: value})
            assert response.status_code == 422 and field in response.json()["detail"], (field, value, response.text)
    extra = client.post(url, json={"epochs": 1, "lr": 1})
    assert extra.status_code == 422 and "lr" in extra.json()["detail"]
    assert client.get(f"/searches/{search_id}/refinements").json() == []  # nothing was queued by any of them
    missing = client.post(f"/searches/{search_id}/refinements/{'e' * 32}/cancel")
    assert missing.status_code == 404 and "has no refinement with id" in missing.json()["detail"]
    assert client.get(f"/searches/{'f' * 32}/refinements").status_code == 404


def test_defaults_cancel_and_a_refinement_of_another_search(client, settings) -> None:
    search_id, other = fake_search(settings), fake_search(settings)
    asked = client.post(f"/searches/{search_id}/pareto/1/refine")  # no body: the defaults
    assert asked.status_code == 202 and asked.json()["settings"] == {"epochs": 1.0, "learning_rate": 1e-4,
                                                                  "weight_decay": 0.01, "warmup_ratio": 0.06}
    rid = asked.json()["id"]
    assert client.post(f"/searches/{other}/refinements/{rid}/cancel").status_code == 404  # not that search's
    cancelled = client.post(f"/searches/{search_id}/refinements/{rid}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    points = client.get(f"/searches/{search_id}/pareto").json()["points"]
    assert points[1]["refinement"] == {"id": rid, "status": "cancelled", "error": None}
    assert points[0]["refinement"] is None
    again = client.post(f"/searches/{search_id}/pareto/1/refine")  # a cancelled one is not returned: a new one
    assert again.status_code == 202 and again.json()["id"] != rid
    assert [r["id"] for r in client.get(f"/searches/{search_id}/refinements").json()] == [again.json()["id"], rid]
    client.post(f"/searches/{search_id}/refinements/{again.json()['id']}/cancel")


def test_already_refined_with_these_settings_is_409(client, settings) -> None:
    search_id = fake_search(settings)
    engine = make_engine(settings.url)
    try:
        with session_factory(engine).begin() as session:
            refined = {"validation": {}, "test": {}, "train_s": 1.0, "kept": True,
                       "settings": {"epochs": 1.0, "learning_rate": 1e-4, "weight_decay": 0.01,
                                    "warmup_ratio": 0.06, "seed": 0}}
            repo.set_refined(session, search_id, 0, fake_point(refined=refined))
    finally:
        engine.dispose()
    refused = client.post(f"/searches/{search_id}/pareto/0/refine", json={"epochs": 1})
    assert refused.status_code == 409
    assert refused.json()["detail"] == (f"front point 0 of search {search_id} is already refined with these "
                                        "settings (epochs 1, learning_rate 0.0001, weight_decay 0.01, warmup_ratio "
                                        "0.06); download it, or ask for other settings")
    other = client.post(f"/searches/{search_id}/pareto/0/refine", json={"epochs": 2})
    assert other.status_code == 202
    client.post(f"/searches/{search_id}/refinements/{other.json()['id']}/cancel")


def test_another_refinement_of_a_busy_point_is_409_until_it_ends(client, settings) -> None:
    search_id = fake_search(settings)
    url = f"/searches/{search_id}/pareto/0/refine"
    first = client.post(url, json=SETTINGS_A).json()
    busy = client.post(url, json=SETTINGS_B)
    assert busy.status_code == 409
    assert busy.json()["detail"] == (f"front point 0 of search {search_id} has refinement {first['id']} queued with "
                                     "other settings (epochs 0.5, learning_rate 0.001, weight_decay 0.01, "
                                     "warmup_ratio 0.06); wait for it to end or cancel it, then ask again")
    assert client.post(url, json=SETTINGS_A).status_code == 200
    client.post(f"/searches/{search_id}/refinements/{first['id']}/cancel")
    second = client.post(url, json=SETTINGS_B)
    assert second.status_code == 202, second.text
    client.post(f"/searches/{search_id}/refinements/{second.json()['id']}/cancel")


def test_two_requests_at_the_same_instant_queue_one_refinement(client, settings, monkeypatch) -> None:
    """The race the partial unique index closes: each request finds no active refinement, then both insert. Here
    another request's insert lands between this request's check and its own insert."""
    from service.api import routes

    search_id = fake_search(settings)
    engine = make_engine(settings.url)
    factory = session_factory(engine)
    real_find_active = routes.refinements.find_active
    rival: list[str] = []

    def find_active_then_lose_the_race(session, search_id_, position):
        found = real_find_active(session, search_id_, position)
        if not rival:  # the rival's whole request runs between this check and this request's insert
            rival.append(ask(factory, search_id_, position, settings=rival_settings))
        return found

    monkeypatch.setattr(routes.refinements, "find_active", find_active_then_lose_the_race)
    try:
        url = f"/searches/{search_id}/pareto/0/refine"
        rival_settings = SETTINGS_A  # the same request twice: both get the one refinement
        same = client.post(url, json=SETTINGS_A)
        assert same.status_code == 200 and same.json()["id"] == rival[0]
        rival_settings, url = SETTINGS_B, f"/searches/{search_id}/pareto/1/refine"
        rival.clear()
        other = client.post(url, json=SETTINGS_A)  # other settings: refused, as if asked a moment later
        assert other.status_code == 409 and f"has refinement {rival[0]} queued" in other.json()["detail"]
        listed = client.get(f"/searches/{search_id}/refinements").json()
        assert sorted((r["position"], r["status"]) for r in listed) == [(0, "queued"), (1, "queued")]
        for r in listed:
            client.post(f"/searches/{search_id}/refinements/{r['id']}/cancel")
    finally:
        engine.dispose()


def test_delete_while_a_refinement_runs_is_refused(client, settings) -> None:
    search_id = fake_search(settings)
    rid = client.post(f"/searches/{search_id}/pareto/0/refine").json()["id"]
    engine = make_engine(settings.url)
    factory = session_factory(engine)
    try:
        claimed = refinements.claim_next(factory, "test-worker")  # this test pretends to be the worker
        assert claimed is not None and claimed.id == rid
        refused = client.delete(f"/searches/{search_id}")
        assert refused.status_code == 409
        assert f"front point 0 of search {search_id} is being refined" in refused.json()["detail"]
        assert f"/refinements/{rid}/cancel" in refused.json()["detail"]
        assert client.post(f"/searches/{search_id}/refinements/{rid}/cancel").json()["status"] == "running"
        assert client.delete(f"/searches/{search_id}").status_code == 409  # until the worker stops
        assert refinements.finish(factory, rid, "cancelled", worker_id="test-worker")
        assert client.delete(f"/searches/{search_id}").status_code == 204
        with factory() as session:  # the refinements went with the search
            assert session.scalars(select(Refinement).where(Refinement.search_id == search_id)).all() == []
    finally:
        engine.dispose()


def test_a_refinement_of_another_tokens_search_is_404(workspace, tmp_path) -> None:
    from fastapi.testclient import TestClient

    from service import tokens
    from service.api import create_app

    settings = Settings(data_root=tmp_path / "data", allowed_model_roots=[workspace],
                        allowed_data_roots=[workspace])
    with TestClient(create_app(settings)) as client:
        engine = make_engine(settings.url)
        try:
            with session_factory(engine)() as session:
                (owner_a, token_a), (_, token_b) = [(row.id, token) for row, token in
                                                    (tokens.create_token(session, n) for n in ("a", "b"))]
                session.commit()
        finally:
            engine.dispose()
        a, b = ({"Authorization": f"Bearer {t}"} for t in (token_a, token_b))
        search_id = fake_search(settings, owner=owner_a)
        mine = client.post(f"/searches/{search_id}/pareto/0/refine", headers=a)
        assert mine.status_code == 202, mine.text
        rid = mine.json()["id"]
        for method, url in [("POST", f"/searches/{search_id}/pareto/0/refine"),
                            ("GET", f"/searches/{search_id}/refinements"),
                            ("POST", f"/searches/{search_id}/refinements/{rid}/cancel")]:
            theirs = client.request(method, url, headers=b)
            assert theirs.status_code == 404 and theirs.json()["detail"] == f"no search with id {search_id!r}"
        assert [r["status"] for r in client.get(f"/searches/{search_id}/refinements", headers=a).json()] == ["queued"]


# ------------------------------------------------------------------------------------------------ divergence


def _write_scores(path: Path, rows: int, seed: int, scale: float = 1.0) -> Path:
    """A toy regression CSV: the score is +1 for the positive words, -1 for the negative ones, times `scale`."""
    import csv
    import random

    from conftest import FILLER, NEGATIVE, POSITIVE

    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "score"])
        for _ in range(rows):
            positive = rng.random() < 0.5
            words = rng.sample(FILLER, 4) + rng.sample(POSITIVE if positive else NEGATIVE, 2)
            writer.writerow([" ".join(words), (1.0 if positive else -1.0) * scale])
    return path


def _regression_model(workspace: Path, into: Path) -> Path:
    """The workspace's tiny model with a one-output head (regression), and its tokenizer."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(workspace / "model", num_labels=1,
                                                          ignore_mismatched_sizes=True)
    model.save_pretrained(into)
    AutoTokenizer.from_pretrained(workspace / "model").save_pretrained(into)
    return into


@pytest.mark.slow
def test_training_that_diverges_fails_its_job_and_never_replaces_a_download(client, workspace, settings,
                                                                            worker_env) -> None:
    """A regression search trained on sane scores; then its training file is rewritten with scores of 1e20 (the
    worker reads the file again when it refines). The refinement's loss overflows: the refinement fails with the
    reason and the setting to lower, the point keeps no refined entry, and its download is still the slice. A new
    search on those scores fails in supernet training the same way, instead of searching over NaN."""
    from conftest import run_worker_once, worker_thread

    folder = workspace / "diverging"
    folder.mkdir(exist_ok=True)
    train, test = _write_scores(folder / "train.csv", 60, seed=1), _write_scores(folder / "test.csv", 20, seed=2)
    custom = {"train_file": str(train), "test_file": str(test), "text_columns": ["text"], "label_column": "score",
              "task_type": "regression"}
    model = _regression_model(workspace, folder / "model")
    request = body(workspace, model=str(model), task="custom/scores", custom=custom, search={"evaluations": 4})
    created = client.post("/searches", json=request)
    assert created.status_code == 201, created.text
    search_id = created.json()["id"]
    run_worker_once(worker_env, timeout_s=240)
    first = client.get(f"/searches/{search_id}").json()
    assert first["status"] == "succeeded", first["error"]

    _write_scores(train, 60, seed=1, scale=1e20)
    asked = client.post(f"/searches/{search_id}/pareto/0/refine", json={"epochs": 1, "learning_rate": 1e-3})
    assert asked.status_code == 202, asked.text
    run_worker_once(worker_env, timeout_s=240)
    (refinement,) = client.get(f"/searches/{search_id}/refinements").json()
    assert refinement["status"] == "failed"
    assert refinement["error"].startswith("refinement diverged at step 1 of "), refinement["error"]
    assert "the loss is inf; lower refine.learning_rate (now 0.001)" in refinement["error"]
    assert "the point's downloads are unchanged" in refinement["error"]
    point = client.get(f"/searches/{search_id}/pareto").json()["points"][0]
    assert point["refined"] is None and point["refinement"]["status"] == "failed"
    assert not (settings.search_folder(search_id) / "refined" / "0").exists()
    with worker_thread(settings):
        download = client.get(f"/searches/{search_id}/pareto/0/download")
    assert download.status_code == 200 and "-refined" not in download.headers["content-disposition"]

    again = client.post("/searches", json=request | {"training": {"epochs": 1, "seed": 1}})
    assert again.status_code == 201, again.text
    run_worker_once(worker_env, timeout_s=240)
    failed = client.get(f"/searches/{again.json()['id']}").json()
    assert failed["status"] == "failed"
    assert "supernet training diverged at step 1 of " in failed["error"], failed["error"]
    assert "lower training.learning_rate (now 0.0001) or scale the task's regression labels down" in failed["error"]
