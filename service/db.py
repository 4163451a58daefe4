"""Engines, sessions and schema migrations.

SQLite (the default) is shared by the API server and several worker processes, so every connection gets:
  * WAL journal mode: readers never block the writer and the writer never blocks readers, which is what lets
    the API answer while workers store trials (WAL needs a local file system, not NFS);
  * foreign_keys=ON: SQLite ignores ON DELETE CASCADE unless asked on every connection;
  * busy_timeout: a writer waits up to 30 s for another writer instead of failing at once.

Transactions stay in the sqlite3 driver's default ("legacy") mode: BEGIN is sent just before the first write of
a transaction. In WAL mode that means a write transaction always starts by taking the write lock, so it waits
on busy_timeout and never fails with SQLITE_BUSY_SNAPSHOT (a read transaction that later wants to write, after
another process wrote). The price, reads before the first write not being isolated, is why the queue and the
repository make every read-then-write a single statement (UPDATE ... WHERE ... RETURNING, INSERT ... ON
CONFLICT): correct under any isolation level, and on PostgreSQL as well.

The schema is created and changed only by the Alembic migrations in the `migrations` package (`upgrade`).
Migrations run on their own engine: foreign keys OFF (SQLite's DROP TABLE, which batch migrations use to
rebuild a table, would otherwise fire ON DELETE CASCADE and empty the child tables), BEGIN sent explicitly so
the DDL is transactional, and `PRAGMA foreign_key_check` before commit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 30.0


class SchemaError(RuntimeError):
    """The database is not at the schema revision this code was written for."""


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_in_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or url.query.get("mode") == "memory" or database.startswith("file::memory:")


def sqlite_file(url: str | URL) -> Path | None:
    """The database file of a SQLite URL; None for another backend or an in-memory database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or _sqlite_in_memory(parsed) or not parsed.database:
        return None
    return Path(parsed.database).expanduser()


def make_engine(url: str | URL, *, for_migrations: bool = False, **kwargs: Any) -> Engine:
    """An engine for `url`; SQLite connections get the pragmas above and the file's folder is created.

    `for_migrations` gives the migration engine described in the module docstring; everything else uses the
    default. Extra keyword arguments go to `sqlalchemy.create_engine`.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True, **kwargs)
    in_memory = _sqlite_in_memory(parsed)
    if not in_memory and parsed.database:
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_S} | kwargs.pop("connect_args", {})
    engine = create_engine(parsed, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        if for_migrations:
            dbapi_connection.isolation_level = None  # the driver sends no BEGIN; the "begin" hook below does
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cursor.execute(f"PRAGMA foreign_keys = {'OFF' if for_migrations else 'ON'}")
            if not in_memory:
                mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    log.warning("%s: SQLite refused WAL mode (journal_mode=%s); concurrent workers will contend "
                                "for locks", parsed.database, mode)
                cursor.execute("PRAGMA synchronous = NORMAL")  # durable across application crashes in WAL mode
        finally:
            cursor.close()

    if for_migrations:
        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN")

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (the queue hands claimed rows to workers)."""
    return sessionmaker(engine, expire_on_commit=False)


# ------------------------------------------------------------------------------------------------ migrations


def migrations_folder() -> Path:
    """The Alembic script folder, found through the installed `migrations` package (works from any cwd)."""
    import migrations

    return Path(migrations.__file__).resolve().parent


def alembic_config(url: str | URL) -> Config:
    """An Alembic config for `url` without an ini file (so Alembic leaves the caller's logging alone)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_folder()))
    # ConfigParser interpolates '%': double it so URL-encoded passwords survive.
    rendered = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (creating it if it is a new SQLite file)."""
    log.info("upgrading the database schema to %s", revision)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | URL, revision: str) -> None:
    """Take the database at `url` back to `revision` ("base" drops every table)."""
    log.info("downgrading the database schema to %s", revision)
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    """The newest revision in the migrations folder."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def check_schema(engine: Engine) -> None:
    """Raise SchemaError unless the database is at the newest revision; servers and workers call this at start
    rather than fail later on a missing table or column."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise SchemaError(f"database schema is at revision {current or 'none'}, this version needs {head}; "
                          "run `nasprune db upgrade`")
