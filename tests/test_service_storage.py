"""Service storage over real SQLite files: settings, the schema check, pragmas, and the repository functions (the
migrations themselves are tested in tests/test_migrations.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import insert, inspect, text
from sqlalchemy.exc import IntegrityError, StatementError

from search.job import SearchJob
from search.runner import SearchConfig, Trial
from search.settings import LatencyShape
from service import repository as repo
from service.config import Settings, get_settings
from service.db import SchemaError, check_schema, make_engine, session_factory
from service.models import ExportStatus, SearchStatus, TrialRow
from supernet.config import SubNetworkConfig
from supernet.confine import within
from supernet.settings import RunSpec


@pytest.fixture
def url(database_url: str) -> str:
    """A migrated database: every test that uses it runs on SQLite and on PostgreSQL (conftest.database_url)."""
    return database_url


@pytest.fixture
def engine(url: str):
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def factory(engine):
    return session_factory(engine)


def sub(*heads: int) -> SubNetworkConfig:
    return SubNetworkConfig(layers=tuple(i for i, h in enumerate(heads) if h), heads=heads, units=(8,) * len(heads))


def trial(index: int, config: SubNetworkConfig) -> Trial:
    return Trial(index=index, config=config, objectives={"error": 0.1 * index, "params": 100.0 - index},
                 validation={"accuracy": 0.9 - 0.01 * index}, params={"encoder": 1000 + index, "total": 2000},
                 macs=3 * 10**10 + index, latency_ms=1.5 + index, elapsed_s=0.25 * index)


def point(config: SubNetworkConfig, **extra) -> dict:
    return {"config": config.to_dict(), "objectives": {"error": 0.2, "params": 50.0}, "validation": {"accuracy": 0.8},
            "params": {"encoder": 500}, "macs": 123, "latency_ms": 2.0, "test": {"accuracy": 0.75}} | extra


def count(factory, table: str) -> int:
    with factory() as session:
        return session.scalar(text(f"SELECT count(*) FROM {table}"))


# ------------------------------------------------------------------------------------------------ settings


def test_settings_from_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NASPRUNE_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("NASPRUNE_WORKERS", "3")
    monkeypatch.setenv("NASPRUNE_PORT", "9001")
    monkeypatch.setenv("NASPRUNE_ALLOWED_MODEL_ROOTS", f'["{tmp_path / "models"}"]')
    monkeypatch.setenv("NASPRUNE_ALLOWED_DATA_ROOTS", f"{tmp_path / 'a'},{tmp_path / 'b'}")
    settings = Settings()
    assert settings.data_root == (tmp_path / "data").resolve()
    assert settings.url == f"sqlite:///{(tmp_path / 'data').resolve() / 'nasprune.db'}"
    assert (settings.workers, settings.port, settings.host) == (3, 9001, "127.0.0.1")
    assert settings.model_roots == [(tmp_path / "models").resolve()]
    assert settings.data_roots == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]
    assert settings.search_folder("abc") == settings.data_root / "searches" / "abc"
    monkeypatch.setenv("NASPRUNE_DATABASE_URL", "sqlite:////elsewhere.db")
    assert Settings().url == "sqlite:////elsewhere.db"


def test_settings_defaults_and_checks(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("DATA_ROOT", "DATABASE_URL", "ALLOWED_MODEL_ROOTS", "ALLOWED_DATA_ROOTS", "HEARTBEAT_S"):
        monkeypatch.delenv(f"NASPRUNE_{name}", raising=False)
    settings = Settings()
    assert settings.data_root == tmp_path.resolve() / "nasprune-data"
    assert settings.model_roots == settings.data_roots == []  # the data root is the service's, never named
    assert (settings.workers, settings.heartbeat_s, settings.stale_after_s, settings.max_attempts) == (1, 10, 60, 3)
    monkeypatch.setenv("NASPRUNE_HEARTBEAT_S", "90")
    with pytest.raises(ValidationError, match="stale_after_s"):
        Settings()
    with pytest.raises(ValidationError):
        Settings(workers=-1, heartbeat_s=1)


def test_get_settings_reads_once(monkeypatch, tmp_path: Path) -> None:
    get_settings.cache_clear()
    monkeypatch.setenv("NASPRUNE_DATA_ROOT", str(tmp_path / "one"))
    try:
        first = get_settings()
        monkeypatch.setenv("NASPRUNE_DATA_ROOT", str(tmp_path / "two"))
        assert get_settings() is first and first.data_root.name == "one"
        get_settings.cache_clear()
        assert get_settings().data_root.name == "two"
    finally:
        get_settings.cache_clear()


def test_within_roots_resolves_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "model").mkdir(parents=True)
    (root / "link").symlink_to(tmp_path)
    assert within(root / "model", [root])
    assert not within(root / ".." / "other", [root])
    assert not within(root / "link" / "x", [root])


# ------------------------------------------------------------------------------------------------ schema and pragmas


def test_schema_check_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'new' / 'empty.db'}")  # the folder is created
    try:
        with pytest.raises(SchemaError, match="nasprune db upgrade"):
            check_schema(engine)
    finally:
        engine.dispose()


def test_sqlite_connections_use_wal_foreign_keys_and_busy_timeout(engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite pragmas")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    assert inspect(engine).get_foreign_keys("trials")[0]["options"] == {"ondelete": "CASCADE"}


# ------------------------------------------------------------------------------------------------ searches


def test_create_get_and_list_with_paging_and_status_filter(factory) -> None:
    with factory.begin() as session:
        ids = [repo.create_search(session, request={"n": i}, folder_root="/data/searches")[0].id for i in range(5)]
    with factory.begin() as session:
        repo.get_search(session, ids[1]).status = SearchStatus.FAILED
        repo.get_search(session, ids[3]).status = SearchStatus.FAILED
    with factory() as session:
        search = repo.get_search(session, ids[0])
        assert (search.status, search.request, search.attempts, search.cancel_requested) == ("queued", {"n": 0}, 0,
                                                                                               False)
        assert search.folder == f"/data/searches/{ids[0]}" and len(search.id) == 32
        assert search.created_at.tzinfo is UTC
        rows, total = repo.list_searches(session, limit=2)
        assert total == 5 and [r.id for r in rows] == ids[::-1][:2]  # newest first
        rows, total = repo.list_searches(session, offset=4, limit=2)
        assert total == 5 and [r.id for r in rows] == [ids[0]]
        rows, total = repo.list_searches(session, status="failed")
        assert total == 2 and {r.id for r in rows} == {ids[1], ids[3]}
        rows, total = repo.list_searches(session, status=[SearchStatus.QUEUED, "failed"], limit=10)
        assert total == 5
        with pytest.raises(repo.SearchNotFound, match="nope"):
            repo.get_search(session, "nope")
        with pytest.raises(repo.InvalidArgument, match="unknown status"):
            repo.list_searches(session, status="running")
        with pytest.raises(repo.InvalidArgument, match="limit"):
            repo.list_searches(session, limit=0)


def test_idempotency_key_returns_the_existing_search(factory) -> None:
    with factory.begin() as session:
        first, created = repo.create_search(session, request={"a": 1}, idempotency_key="key-1")
        assert created
    with factory.begin() as session:
        again, created = repo.create_search(session, request={"a": 2}, idempotency_key="key-1")
        assert not created and again.id == first.id and again.request == {"a": 1}
        other, created = repo.create_search(session, request={"a": 3}, idempotency_key="key-2")
        assert created and other.id != first.id
    assert count(factory, "searches") == 2


def test_idempotency_key_race_is_settled_by_the_unique_constraint(factory, monkeypatch) -> None:
    """The second of two racing clients passes the first lookup before the winner commits: its INSERT finds the
    key taken and it gets the winner's search."""
    with factory.begin() as session:
        winner, _ = repo.create_search(session, request={"a": 1}, idempotency_key="race")
    with factory.begin() as session:
        real_scalar, calls = session.scalar, []

        def late_lookup(statement, *args, **kwargs):
            calls.append(statement)
            return None if len(calls) == 1 else real_scalar(statement, *args, **kwargs)

        monkeypatch.setattr(session, "scalar", late_lookup)
        loser, created = repo.create_search(session, request={"a": 2}, idempotency_key="race")
    assert not created and loser.id == winner.id and len(calls) == 2
    assert count(factory, "searches") == 1


def test_update_progress_sets_known_fields_only(factory) -> None:
    with factory.begin() as session:
        search_id = repo.create_search(session, request={})[0].id
    with factory.begin() as session:
        repo.update_progress(session, search_id, stage="training", epoch=1, step=10, total_steps=40,
                             evaluations_total=30, hypervolume=0.5, eta_s=12.5)
    with factory() as session:
        search = repo.get_search(session, search_id)
        assert (search.stage, search.epoch, search.step, search.total_steps, search.evaluations_done,
                search.evaluations_total, search.hypervolume, search.eta_s) == ("training", 1, 10, 40, 0, 30, 0.5,
                                                                                 12.5)
        with pytest.raises(repo.InvalidArgument, match="status"):
            repo.update_progress(session, search_id, status="succeeded")
        with pytest.raises(repo.SearchNotFound):
            repo.update_progress(session, "missing", step=1)


def test_timestamps_are_aware_utc_and_naive_ones_are_refused(factory) -> None:
    with factory.begin() as session:
        search_id = repo.create_search(session, request={})[0].id
    with factory() as session:
        search = repo.get_search(session, search_id)
        assert search.created_at.tzinfo is UTC
        assert abs((datetime.now(UTC) - search.created_at).total_seconds()) < 60
        search.finished_at = datetime(2024, 1, 1, 12)
        with pytest.raises(StatementError, match="naive datetime"):
            session.flush()


def test_cancel_request_depends_on_status(factory) -> None:
    with factory.begin() as session:
        queued, running, done = (repo.create_search(session, request={})[0].id for _ in range(3))
        repo.get_search(session, running).status = SearchStatus.SEARCHING
        repo.get_search(session, done).status = SearchStatus.SUCCEEDED
    with factory.begin() as session:
        search = repo.request_cancel(session, queued)
        assert search.status == SearchStatus.CANCELLED and search.finished_at is not None  # no worker to wait for
        search = repo.request_cancel(session, running)
        assert search.status == SearchStatus.SEARCHING and search.cancel_requested  # its worker stops
        search = repo.request_cancel(session, done)
        assert search.status == SearchStatus.SUCCEEDED and not search.cancel_requested
    with factory() as session:
        assert repo.get_search(session, running).cancel_requested
        with pytest.raises(repo.SearchNotFound):
            repo.request_cancel(session, "missing")


def test_request_round_trips_to_run_spec_and_search_job() -> None:
    spec = RunSpec(model="tiny", task="glue/rte", max_length=64)
    job = SearchJob(search=SearchConfig(objectives=["error", "latency"], evaluations=7, seed=3),
                    latency=LatencyShape(batch_size=4, seq_len=16))
    request = repo.request_dict(spec, job)
    assert repo.parse_request(request) == (spec, job)
    with pytest.raises(repo.InvalidArgument, match="malformed search request"):
        repo.parse_request({"run": {}, "job": {"search": {"evaluations": 0}, "latency": {}}})


# ------------------------------------------------------------------------------------------------ trials


def test_trials_are_unique_per_sub_network(factory) -> None:
    a, b = sub(4, 2, 0), sub(1, 1, 1)
    with factory.begin() as session:
        search_id = repo.create_search(session, request={})[0].id
    with factory.begin() as session:
        assert repo.add_trial(session, search_id, trial(0, a))
        assert repo.add_trial(session, search_id, trial(1, b))
    with factory.begin() as session:  # a resumed search replays its callback: ignored
        assert not repo.add_trial(session, search_id, trial(0, a))
        # SubNetworkConfig is canonical (a dropped layer's widths are zeroed): the same network, the same key
        same_a = SubNetworkConfig(layers=(1, 0), heads=(4, 2, 3), units=(8, 8, 5))
        assert repo.config_key(same_a) == repo.config_key(a) == repo.config_key(a.to_dict())
        assert not repo.add_trial(session, search_id, trial(0, same_a))
    with factory() as session:
        with pytest.raises(repo.TrialConflict, match="trial 2"):
            repo.add_trial(session, search_id, trial(2, a))  # a stored network under a new index
        with pytest.raises(repo.TrialConflict):
            repo.add_trial(session, search_id, trial(1, sub(2, 2, 2)))  # another network under a stored index
    assert count(factory, "trials") == 2
    with factory() as session:
        assert repo.load_trials(session, search_id) == [trial(0, a), trial(1, b)]
        assert [row.index for row in repo.list_trials(session, search_id, offset=1, limit=5)] == [1]
        assert repo.count_trials(session, search_id) == 2
        with pytest.raises(repo.SearchNotFound):
            repo.add_trial(session, "missing", trial(0, a))
    # The guarantee is the database's, not only the function's: a raw duplicate INSERT fails.
    with pytest.raises(IntegrityError, match="(?i)unique"), factory.begin() as session:
        values = repo.trial_values(trial(5, a)) | {"search_id": search_id}
        session.execute(insert(TrialRow).values(**values))


def test_the_same_sub_network_may_be_a_trial_of_two_searches(factory) -> None:
    with factory.begin() as session:
        first, second = (repo.create_search(session, request={})[0].id for _ in range(2))
        assert repo.add_trial(session, first, trial(0, sub(1, 1)))
        assert repo.add_trial(session, second, trial(0, sub(1, 1)))
    assert count(factory, "trials") == 2


# ------------------------------------------------------------------------------------------------ front, exports


def test_replace_front_links_points_to_trials(factory) -> None:
    a, b, c = sub(4, 4), sub(2, 0), sub(1, 1)
    with factory.begin() as session:
        search_id = repo.create_search(session, request={})[0].id
        repo.add_trial(session, search_id, trial(0, a))
        repo.add_trial(session, search_id, trial(1, b))
        repo.replace_front(session, search_id, [point(a), point(b), point(c)])
    with factory.begin() as session:
        front = repo.list_front(session, search_id)
        assert [(p.position, p.trial_index) for p in front] == [(0, 0), (1, 1), (2, None)]
        assert front[1].config == b.to_dict() and front[1].test == {"accuracy": 0.75} and front[1].macs == 123
        repo.replace_front(session, search_id, [point(b, macs=7)])
    with factory() as session:
        front = repo.list_front(session, search_id)
        assert [(p.position, p.trial_index, p.macs) for p in front] == [(0, 1, 7)]
        assert repo.get_front_point(session, search_id, 0).id == front[0].id
        assert repo.get_front_point(session, search_id, 1) is None
        with pytest.raises(repo.InvalidArgument, match="front point 0"):
            repo.replace_front(session, search_id, [{"config": a.to_dict()}])
    assert count(factory, "front_points") == 1


def test_an_export_job_is_queued_once_per_point_format_and_kind(factory) -> None:
    with factory.begin() as session:
        search_id = repo.create_search(session, request={})[0].id
        repo.replace_front(session, search_id, [point(sub(1, 1))])
    with factory.begin() as session:
        assert repo.get_export(session, search_id=search_id, position=0, format="hf", refined=False) is None
        first = repo.request_export(session, search_id=search_id, position=0, format="hf", refined=False)
        assert first.status == ExportStatus.QUEUED and first.path is None
        repo.request_export(session, search_id=search_id, position=0, format="onnx", refined=False)
        repo.request_export(session, search_id=search_id, position=0, format="hf", refined=True)
    with factory.begin() as session:
        again = repo.request_export(session, search_id=search_id, position=0, format="hf", refined=False)
        assert again.id == first.id
    assert count(factory, "exports") == 3
    # a failed job is queued again by a new request, once: the UPDATE is conditional on the status it had
    with factory.begin() as session:
        session.execute(text("UPDATE exports SET status = 'failed', error = 'boom' WHERE id = :id"), {"id": first.id})
    with factory.begin() as session:
        failed = repo.get_export(session, search_id=search_id, position=0, format="hf", refined=False)
        assert failed.status == ExportStatus.FAILED
        requeued = repo.requeue_export(session, failed, was=ExportStatus.FAILED)
        assert requeued.status == ExportStatus.QUEUED and requeued.error is None
        assert repo.requeue_export(session, requeued, was=ExportStatus.FAILED).status == ExportStatus.QUEUED
    with factory.begin() as session:  # a new refine makes the point's refined archives stale: their jobs go
        assert repo.forget_exports(session, search_id=search_id, position=0, refined=True) == 1
    assert count(factory, "exports") == 2


def test_a_front_saved_whole_loads_back_whole(factory) -> None:
    """The store of record of a front: its points as rows (refined entries included), the rest in its fronts row,
    extra point fields too."""
    a, b = sub(1, 1), sub(2, 0)
    front = {"task": "toy", "objectives": ["error", "params"], "hypervolume": 0.5, "reference": {"params": {}},
             "normalisation": {"lower": [0, 0], "upper": [1, 1], "reference_point": [1.1, 1.1]},
             "points": [point(a, search_validation={"accuracy": 0.7}), point(b)]}
    with factory.begin() as session:
        search_id = repo.create_search(session, request={})[0].id
        assert repo.load_front(session, search_id) is None
        repo.save_front(session, search_id, front)
    with factory.begin() as session:
        assert repo.load_front(session, search_id) == front
        repo.set_refined(session, search_id, 1, {"config": b.to_dict(), "refined": {"kept": True}})
    with factory() as session:
        loaded = repo.load_front(session, search_id)
    assert loaded["points"][1]["refined"] == {"kept": True} and "refined" not in loaded["points"][0]
    assert loaded["points"][0]["search_validation"] == {"accuracy": 0.7}
    with factory.begin() as session:  # saved again: replaced whole
        repo.save_front(session, search_id, front | {"points": [point(b)], "hypervolume": 0.25})
    with factory() as session:
        assert repo.load_front(session, search_id) == front | {"points": [point(b)], "hypervolume": 0.25}
    with pytest.raises(repo.InvalidArgument, match="list of points"), factory.begin() as session:
        repo.save_front(session, search_id, {"hypervolume": 1.0})


def test_deleting_a_search_cascades_to_its_rows(factory) -> None:
    with factory.begin() as session:
        keep, gone = (repo.create_search(session, request={})[0].id for _ in range(2))
        for search_id in (keep, gone):
            repo.add_trial(session, search_id, trial(0, sub(1, 1)))
            repo.save_front(session, search_id, {"points": [point(sub(1, 1))], "hypervolume": 0.5})
            repo.request_export(session, search_id=search_id, position=0, format="hf", refined=False)
    with factory.begin() as session:
        repo.delete_search(session, gone)
    tables = ("searches", "trials", "front_points", "fronts", "exports")
    assert [count(factory, t) for t in tables] == [1, 1, 1, 1, 1]
    with factory() as session:
        assert repo.get_search(session, keep).id == keep
        with pytest.raises(repo.SearchNotFound):
            repo.get_search(session, gone)


def test_deleting_a_running_search_needs_force(factory) -> None:
    with factory.begin() as session:
        search_id = repo.create_search(session, request={})[0].id
        repo.get_search(session, search_id).status = SearchStatus.TRAINING
    with pytest.raises(repo.SearchActive, match="cancel it"), factory.begin() as session:
        repo.delete_search(session, search_id)
    with factory.begin() as session:
        repo.delete_search(session, search_id, force=True)
    assert count(factory, "searches") == 0


def test_repository_errors_share_a_base() -> None:
    for error in (repo.SearchNotFound, repo.InvalidArgument, repo.TrialConflict, repo.SearchActive):
        assert issubclass(error, repo.RepositoryError)
    assert issubclass(repo.SearchNotFound, LookupError) and issubclass(repo.InvalidArgument, ValueError)
