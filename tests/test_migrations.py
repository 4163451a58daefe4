"""The Alembic migrations (migrations/versions), in one place: every step up and down with rows in every table, the
data each migration rewrites, and the schema they build against the models.

Every revision step is read from Alembic's ScriptDirectory, so a new migration is covered by the step test the day
it is added: the step test only needs a row for a new table in ROWS (it says so when one is missing). Each test
runs on a SQLite file and, where a PostgreSQL server is at hand (tests/postgres.py), on PostgreSQL too: the batch
migrations SQLite needs and the plain ALTERs PostgreSQL gets are different code paths of the same files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Connection, Engine, Integer, MetaData, inspect, select, text

from search.records import REFINED_DIR
from service import refinements
from service import repository as repo
from service.db import (
    alembic_config,
    check_schema,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    session_factory,
    upgrade,
)
from service.models import Base
from supernet.config import SubNetworkConfig
from supernet.settings import RefineConfig

TABLES = {"searches", "trials", "front_points", "fronts", "exports", "api_tokens", "datasets", "refinements",
          "compressions", "shares"}
OLD = datetime(2026, 1, 1)  # naive: SQLite's DATETIME binds no time zone (the service stores UTC)

# A valid row for every table, with a value for each column the table has at any revision: a row is inserted with
# the columns its table has at the revision under test, so columns a later migration adds (or drops) are covered.
# Ids are given so rows read back the same; the rows reference each other (token t1 owns search s1, ...).
ROWS: dict[str, dict[str, Any]] = {
    "api_tokens": {"id": "t1", "name": "ci", "token_hash": "h" * 64, "created_at": OLD, "last_used_at": OLD},
    "searches": {"id": "s1", "status": "succeeded", "request": {"run": {"model": "tiny"}}, "idempotency_key": "k1",
                 "attempts": 1, "worker_id": "w1", "created_at": OLD, "finished_at": OLD, "stage": "exporting",
                 "evaluations_done": 2, "evaluations_total": 2, "hypervolume": 0.5, "folder": "/data/searches/s1",
                 "owner_id": "t1", "request_digest": "d" * 64},
    "datasets": {"id": "d1", "owner_id": "t1", "name": "toy", "filename": "toy.csv", "format": "csv",
                 "path": "/data/datasets/d1/toy.csv", "size_bytes": 10, "num_rows": 2, "columns": ["text", "label"],
                 "created_at": OLD, "label_column": "label", "task_type": "classification",
                 "label_counts": {"a": 1, "b": 1}, "profile": {"label": {"distinct": 2}}},
    "trials": {"id": 1, "search_id": "s1", "index": 0, "config": {"layers": [0]}, "config_key": "k",
               "objectives": {"error": 0.2}, "validation": {"accuracy": 0.8}, "params": {"encoder": 500}, "macs": 7,
               "latency_ms": 1.5, "elapsed_s": 0.25, "dynamics": {"expected_macs": 5.5}},
    "front_points": {"id": 1, "search_id": "s1", "position": 0, "trial_index": 0, "config": {"layers": [0]},
                     "objectives": {"error": 0.2}, "validation": {"accuracy": 0.8}, "test": {"accuracy": 0.75},
                     "params": {"encoder": 500}, "macs": 7, "latency_ms": 1.5, "refined": {"kept": True},
                     "dynamics": {"expected_macs": 5.5}},
    "fronts": {"search_id": "s1", "data": {"hypervolume": 0.5, "reference": {}}, "created_at": OLD},
    "exports": {"id": 1, "search_id": "s1", "position": 0, "format": "hf", "path": "/data/searches/s1/0-hf.tar.gz",
                "created_at": OLD, "refined": False, "status": "succeeded", "attempts": 1, "finished_at": OLD},
    "refinements": {"id": "r1", "search_id": "s1", "position": 0, "settings": {"epochs": 0.5}, "status": "queued",
                    "created_at": OLD, "owner_id": "t1"},
    "compressions": {"id": "c1", "search_id": "s1", "position": 0, "settings": {"protocol": "tucker", "rank": 8},
                     "settings_key": "0123456789abcdef", "status": "succeeded", "step": 4, "total_steps": 4,
                     "result": {"params": {"encoder": 100}}, "path": "/data/searches/s1/compressed/0/k.tar.gz",
                     "created_at": OLD, "finished_at": OLD, "owner_id": "t1", "device": "cpu"},
    "shares": {"id": "h1", "request": {"run": {"model": "minilm", "share": {"groups": 1}}},
               "settings_key": "fedcba9876543210", "status": "succeeded", "stage": "evaluation", "step": 9,
               "total_steps": 9, "result": {"params": {"encoder": 100}}, "path": "/data/shares/k/model.tar.gz",
               "created_at": OLD, "finished_at": OLD, "owner_id": "t1", "device": "cpu"},
}


def _steps() -> list[Any]:
    """(revision before, revision) for every migration, oldest first, read from the migrations folder."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    steps = []
    for revision in reversed(list(script.walk_revisions("base", "heads"))):
        if not isinstance(revision.down_revision, str | None):
            raise AssertionError(f"migration {revision.revision} merges branches: the step test assumes one line")
        steps.append(pytest.param(revision.down_revision or "base", revision.revision, id=revision.revision))
    return steps


STEPS = _steps()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def empty_url(request, tmp_path: Path) -> str:
    """An empty, never migrated database: a SQLite file, then (same test again) a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'nasprune.db'}"
    return request.getfixturevalue("postgres").new_database()


@contextlib.contextmanager
def engine_for(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    with engine_for(url) as engine:
        return set(inspect(engine).get_table_names())


def columns(url: str, table: str) -> set[str]:
    with engine_for(url) as engine:
        return {c["name"] for c in inspect(engine).get_columns(table)}


def sql(connection: Connection, statement: str, **values: Any) -> None:
    connection.execute(text(statement), values)


def add_search(connection: Connection, search_id: str = "a", status: str = "succeeded") -> None:
    """A search row as every revision since 0001 accepts it (plain SQL: the models describe only the newest)."""
    sql(connection, "INSERT INTO searches (id, status, request, created_at) VALUES (:id, :status, '{}', :created)",
        id=search_id, status=status, created="2026-01-01 00:00:00")


def assert_intact(connection: Connection) -> None:
    """SQLite's own consistency checks (the file, then the foreign keys a migration's table copies could break).
    PostgreSQL checks foreign keys on every statement, and has no file-level check to ask for."""
    if connection.dialect.name == "sqlite":
        assert connection.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        assert connection.execute(text("PRAGMA foreign_key_check")).all() == []


# ------------------------------------------------------------------------------------------------ every step


def insert_rows(engine: Engine) -> None:
    """One row of ROWS in every table the database has now, parents first, with the columns it has now."""
    metadata = MetaData()
    metadata.reflect(engine)
    with engine.begin() as connection:
        for table in metadata.sorted_tables:
            if table.name == "alembic_version":
                continue
            assert table.name in ROWS, f"table {table.name!r} has no sample row: add one to ROWS in {__file__}"
            connection.execute(table.insert().values({k: v for k, v in ROWS[table.name].items() if k in table.c}))


def read_rows(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table (alembic_version aside), in a stable order, read through the reflected types."""
    metadata = MetaData()
    metadata.reflect(engine)
    with engine.connect() as connection:
        return {table.name: sorted((dict(row) for row in connection.execute(select(table)).mappings()), key=repr)
                for table in metadata.sorted_tables if table.name != "alembic_version"}


def read_schema(engine: Engine) -> dict[str, dict[str, Any]]:
    """What a downgrade has to give back: each table's columns, keys, indexes and constraints, by name."""
    inspector = inspect(engine)
    schema = {}
    for name in sorted(set(inspector.get_table_names()) - {"alembic_version"}):
        schema[name] = {
            "columns": sorted((c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(name)),
            "primary_key": inspector.get_pk_constraint(name)["constrained_columns"],
            "foreign_keys": sorted((fk["name"], tuple(fk["constrained_columns"]), fk["referred_table"],
                                    tuple(fk["referred_columns"]), fk["options"].get("ondelete"))
                                   for fk in inspector.get_foreign_keys(name)),
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]),
                               sorted((k, str(v)) for k, v in i.get("dialect_options", {}).items()))
                              for i in inspector.get_indexes(name)),
            "unique": sorted((u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(name)),
            "checks": sorted(c["name"] for c in inspector.get_check_constraints(name)),
        }
    return schema


def assert_rows_kept(before: dict[str, list[dict]], after: dict[str, list[dict]]) -> None:
    """Every row of `before` is in `after` with the same values, in the columns both revisions have."""
    for table, rows in before.items():
        assert table in after, f"table {table} was dropped with its rows"
        shared = set(rows[0]) & set(after[table][0]) if rows and after[table] else set()
        assert [{k: r[k] for k in shared} for r in after[table]] == [{k: r[k] for k in shared} for r in rows], table


@pytest.mark.parametrize(("before", "revision"), STEPS)
def test_each_migration_keeps_every_row_up_and_down(empty_url: str, before: str, revision: str) -> None:
    """A row in every table of the revision before survives the step up (in the columns both revisions have) and
    the step back down (whole), and the step down restores the schema it started from."""
    if before != "base":
        upgrade(empty_url, before)
    with engine_for(empty_url) as engine:
        insert_rows(engine)
        rows, schema = read_rows(engine), read_schema(engine)
        assert all(len(table_rows) == 1 for table_rows in rows.values())
        upgrade(empty_url, revision)
        assert current_revision(engine) == revision
        assert_rows_kept(rows, read_rows(engine))
        with engine.connect() as connection:
            assert_intact(connection)
        downgrade(empty_url, before)
        assert current_revision(engine) == (None if before == "base" else before)
        assert read_rows(engine) == rows
        assert read_schema(engine) == schema
        with engine.connect() as connection:
            assert_intact(connection)


def test_the_steps_end_at_the_head_and_the_sample_rows_name_real_columns() -> None:
    assert [p.values[1] for p in STEPS][-1] == head_revision() and STEPS[0].values[0] == "base"
    assert set(ROWS) == set(Base.metadata.tables) == TABLES
    for name, row in ROWS.items():
        # a column only an older revision had would be named here; no migration has dropped one so far
        assert set(row) - set(Base.metadata.tables[name].c.keys()) == set(), name


# ------------------------------------------------------------------------------------------------ the head


def _schema_diff(engine: Engine, metadata: MetaData) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
        return compare_metadata(context, metadata)


def test_migrations_create_exactly_the_models(database_url: str) -> None:
    assert tables(database_url) == TABLES | {"alembic_version"}
    with engine_for(database_url) as engine:
        assert _schema_diff(engine, Base.metadata) == []
        check_schema(engine)
        # The comparison can fail: a column the migrations lack is reported (as the operation that would add it).
        changed = MetaData()
        for table in Base.metadata.tables.values():
            table.to_metadata(changed)
        changed.tables["searches"].append_column(Column("extra", Integer))
        assert [d[0] for d in _schema_diff(engine, changed)] == ["add_column"]


def test_downgrade_to_base_then_upgrade_again(database_url: str) -> None:
    downgrade(database_url, "base")
    assert tables(database_url) - {"alembic_version"} == set()
    upgrade(database_url)
    assert tables(database_url) == TABLES | {"alembic_version"}


# The column each of these revisions adds: there at the head, gone one step below it, back at the head again.
ADDED_COLUMNS = [("0002", "searches", "owner_id"), ("0003", "front_points", "refined"),
                 ("0006", "searches", "request_digest"), ("0007", "exports", "status"),
                 ("0009", "trials", "dynamics")]


@pytest.mark.parametrize(("revision", "table", "column"), ADDED_COLUMNS, ids=[r for r, _, _ in ADDED_COLUMNS])
def test_a_revision_adds_its_column_on_an_empty_database(empty_url: str, revision: str, table: str,
                                                         column: str) -> None:
    below = ScriptDirectory.from_config(alembic_config(empty_url)).get_revision(revision).down_revision
    upgrade(empty_url)
    assert column in columns(empty_url, table)
    downgrade(empty_url, below)
    assert column not in columns(empty_url, table)
    upgrade(empty_url)
    assert column in columns(empty_url, table)


# ------------------------------------------------------------------------------------------------ the data of each


def test_upgrade_from_0001_keeps_rows_and_downgrade_keeps_them_too(empty_url: str) -> None:
    """Searches stored before tokens existed survive 0001 -> 0002 (batch mode copies the table) and back."""
    upgrade(empty_url, "0001")
    with engine_for(empty_url) as engine:
        with engine.begin() as connection:
            add_search(connection, "a", "queued")
            sql(connection, "INSERT INTO trials (search_id, \"index\", config, config_key, objectives, validation, "
                            "params, macs, latency_ms, elapsed_s) VALUES "
                            "('a', 0, '{}', 'k', '{}', '{}', '{}', 1, 1.0, 1.0)")
        upgrade(empty_url)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT id, owner_id FROM searches")).all() == [("a", None)]
            assert connection.execute(text("SELECT count(*) FROM trials")).scalar() == 1
            assert_intact(connection)
        downgrade(empty_url, "0001")
        with engine.connect() as connection:
            assert connection.execute(text("SELECT id FROM searches")).all() == [("a",)]
            assert connection.execute(text("SELECT count(*) FROM trials")).scalar() == 1


REFINED = {"validation": {"accuracy": 0.9}, "test": {"accuracy": 0.85}, "train_s": 1.5, "kept": True,
           "settings": RefineConfig(epochs=0.5).to_dict() | {"seed": 0}, "folder": f"{REFINED_DIR}/0"}
REFINE_SETTINGS = {"epochs": 0.5, "learning_rate": 1e-3, "weight_decay": 0.01, "warmup_ratio": 0.06}


def test_migration_0003_keeps_front_rows_both_ways(empty_url: str) -> None:
    upgrade(empty_url, "0002")
    with engine_for(empty_url) as engine:
        with engine.begin() as connection:
            add_search(connection)
            sql(connection, "INSERT INTO front_points (search_id, position, config, objectives, validation, test, "
                            "params, macs, latency_ms) VALUES ('a', 0, '{}', '{}', '{}', '{}', '{}', 1, 1.0)")
        upgrade(empty_url)
        assert current_revision(engine) == head_revision()
        with session_factory(engine)() as session:
            (row,) = repo.list_front(session, "a")
            assert row.position == 0 and row.refined is None  # stored before refining existed
        config = SubNetworkConfig(layers=(0,), heads=(2,), units=(8,)).to_dict()
        point = {"config": config, "objectives": {"error": 0.2, "params": 50.0}, "validation": {"accuracy": 0.8},
                 "params": {"encoder": 500}, "macs": 123, "latency_ms": 2.0, "test": {"accuracy": 0.75},
                 "refined": REFINED}
        with session_factory(engine).begin() as session:
            repo.replace_front(session, "a", [point])
        downgrade(empty_url, "0002")
        assert "refined" not in columns(empty_url, "front_points")
        with engine.connect() as connection:
            assert connection.execute(text("SELECT search_id, position FROM front_points")).all() == [("a", 0)]
            assert_intact(connection)


def test_migration_0004_keeps_the_rows_of_a_0003_database(empty_url: str) -> None:
    upgrade(empty_url, "0003")
    with engine_for(empty_url) as engine:
        with engine.begin() as connection:
            add_search(connection)
            sql(connection, "INSERT INTO front_points (search_id, position, config, objectives, validation, test, "
                            "params, macs, latency_ms, refined) VALUES "
                            "('a', 0, '{}', '{}', '{}', '{}', '{}', 1, 1.0, '{\"kept\": true}')")
            sql(connection, "INSERT INTO exports (search_id, position, format, path, created_at) VALUES "
                            "('a', 0, 'hf', '/x/0-hf.tar.gz', '2026-01-01 00:00:00')")
        assert "refinements" not in tables(empty_url)
        upgrade(empty_url)
        assert current_revision(engine) == head_revision() and "refinements" in tables(empty_url)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT id, status FROM searches")).all() == [("a", "succeeded")]
            # SQLite hands JSON back as the text stored, PostgreSQL as the value
            kept = '{"kept": true}' if engine.dialect.name == "sqlite" else {"kept": True}
            assert connection.execute(text("SELECT position, refined FROM front_points")).all() == [(0, kept)]
            assert connection.execute(text("SELECT path FROM exports")).all() == [("/x/0-hf.tar.gz",)]
        with session_factory(engine).begin() as session:
            refinements.create(session, search_id="a", position=0, settings=REFINE_SETTINGS)
        check = "CHECK constraint" if engine.dialect.name == "sqlite" else "violates check constraint"
        with engine.begin() as connection:  # the CHECK constraint holds the statuses
            with pytest.raises(Exception, match=check):
                sql(connection, "UPDATE refinements SET status = 'bogus'")
        downgrade(empty_url, "0003")
        assert "refinements" not in tables(empty_url)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM front_points")).scalar() == 1
            assert_intact(connection)


def test_migration_0005_cancels_duplicate_active_refinements_and_keeps_one_per_point(empty_url: str) -> None:
    upgrade(empty_url, "0004")
    rows = [("r1", 0, "queued", "2026-01-01 00:00:01"), ("r2", 0, "queued", "2026-01-01 00:00:02"),  # r2: dup
            ("r3", 1, "queued", "2026-01-01 00:00:01"), ("r4", 1, "running", "2026-01-01 00:00:02"),  # r3: dup
            ("r5", 2, "queued", "2026-01-01 00:00:03"), ("r6", 2, "succeeded", "2026-01-01 00:00:01"),
            ("r7", 3, "queued", "2026-01-01 00:00:05"), ("r8", 3, "queued", "2026-01-01 00:00:05")]  # r8: dup
    with engine_for(empty_url) as engine:
        with engine.begin() as connection:
            add_search(connection)
            for rid, position, status, created in rows:
                sql(connection, "INSERT INTO refinements (id, search_id, position, settings, status, created_at) "
                                "VALUES (:id, 'a', :position, '{}', :status, :created)",
                    id=rid, position=position, status=status, created=created)
        upgrade(empty_url)
        with engine.connect() as connection:
            after = dict(connection.execute(text("SELECT id, status FROM refinements")).all())
            reasons = connection.execute(text("SELECT error FROM refinements WHERE status = 'cancelled'")).scalars()
            assert all("duplicate" in reason for reason in reasons)
        assert after == {"r1": "queued", "r2": "cancelled", "r3": "cancelled", "r4": "running", "r5": "queued",
                         "r6": "succeeded", "r7": "queued", "r8": "cancelled"}
        with pytest.raises(Exception, match="(?i)unique"), engine.begin() as connection:
            sql(connection, "UPDATE refinements SET status = 'queued' WHERE id = 'r2'")
        downgrade(empty_url, "0004")
        with engine.begin() as connection:  # no index: a second active refinement of a point is possible again
            sql(connection, "UPDATE refinements SET status = 'queued' WHERE id = 'r2'")


def _exports(connection: Connection) -> list[tuple]:
    return connection.execute(text("SELECT position, format, path FROM exports ORDER BY position, format, path")).all()


def test_migration_0007_makes_built_archives_succeeded_jobs_and_keeps_one_archive_per_point_going_down(
        empty_url: str) -> None:
    """An exports row of 0006 is an archive already built: it becomes a succeeded job, refined where its archive's
    name says so (service/exports.py names refined archives "<point>-<format>-refined.tar.gz"), finished when it
    was made. Going down keeps only built archives, the refined one where a point has both."""
    upgrade(empty_url, "0006")
    built = [(0, "hf", "/x/0-hf.tar.gz"), (0, "onnx", "/x/0-onnx-refined.tar.gz"), (1, "hf", "/x/1-hf-refined.tar.gz")]
    with engine_for(empty_url) as engine:
        with engine.begin() as connection:
            add_search(connection)
            for position, format_, path in built:
                sql(connection, "INSERT INTO exports (search_id, position, format, path, created_at) VALUES "
                                "('a', :position, :format, :path, :created)",
                    position=position, format=format_, path=path, created=f"2026-01-01 00:00:0{position}")
        upgrade(empty_url, "0007")
        with engine.connect() as connection:
            jobs = connection.execute(text(
                "SELECT position, format, refined, status, error, attempts, cancel_requested, "
                "finished_at = created_at FROM exports ORDER BY position, format")).all()
            assert [tuple(job) for job in jobs] == [(0, "hf", False, "succeeded", None, 0, False, True),
                                                    (0, "onnx", True, "succeeded", None, 0, False, True),
                                                    (1, "hf", True, "succeeded", None, 0, False, True)]
            assert connection.execute(text("SELECT count(*) FROM fronts")).scalar() == 0
        # the status has no default any more: the application sets it, within the CHECK constraint
        with pytest.raises(Exception, match="(?i)not null|null value"), engine.begin() as connection:
            sql(connection, "INSERT INTO exports (search_id, position, format, created_at) "
                            "VALUES ('a', 2, 'hf', '2026-01-01 00:00:00')")
        with pytest.raises(Exception, match="(?i)check constraint"), engine.begin() as connection:
            sql(connection, "UPDATE exports SET status = 'bogus'")
        # one job per point, format and kind: the sliced and the refined archive of a point may both exist
        queued = ("INSERT INTO exports (search_id, position, format, refined, status, created_at) "
                  "VALUES ('a', 0, 'hf', true, 'queued', '2026-01-01 00:00:00')")
        with engine.begin() as connection:
            sql(connection, queued)
        with pytest.raises(Exception, match="(?i)unique"), engine.begin() as connection:
            sql(connection, queued)
        with engine.begin() as connection:
            for refined in (False, True):
                sql(connection, "INSERT INTO exports (search_id, position, format, refined, status, path, "
                                "created_at) VALUES ('a', 1, 'onnx', :refined, 'succeeded', :path, :created)",
                    refined=refined, path=f"/x/1-onnx{'-refined' if refined else ''}.tar.gz", created="2026-01-02")
            sql(connection, "INSERT INTO fronts (search_id, data, created_at) VALUES ('a', '{}', '2026-01-02')")
        downgrade(empty_url, "0006")
        assert "fronts" not in tables(empty_url) and "status" not in columns(empty_url, "exports")
        with engine.connect() as connection:
            # the queued job is gone (no archive), and point 1's ONNX keeps its refined archive only
            assert _exports(connection) == built + [(1, "onnx", "/x/1-onnx-refined.tar.gz")]
            assert_intact(connection)
        upgrade(empty_url)
        with engine.connect() as connection:
            assert _exports(connection) == built + [(1, "onnx", "/x/1-onnx-refined.tar.gz")]
