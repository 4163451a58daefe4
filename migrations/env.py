"""Alembic environment: the service's models are the target; SQLite gets batch mode and the migration engine.

Run through `service.db.upgrade(url)` (which passes the URL) or the Alembic CLI with migrations/alembic.ini
(the URL then comes from the service settings). A caller may also hand over an open connection in
`config.attributes["connection"]`; its transaction is then the caller's.
"""

from __future__ import annotations

import logging
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from service.db import make_engine
from service.models import Base, UTCDateTime

config = context.config
if config.config_file_name is not None:  # the CLI; programmatic runs have no ini and keep the caller's logging
    fileConfig(config.config_file_name, disable_existing_loggers=False)

log = logging.getLogger("migrations")
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from service.config import get_settings

    return get_settings().url


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Autogenerate writes UTCDateTime as the plain column type it stores, so migrations never import the models
    (a migration must keep meaning what it meant when it was written)."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(target_metadata=target_metadata, compare_type=True, render_item=_render_item, **kwargs)


def run_migrations_offline() -> None:
    """`alembic upgrade --sql`: print the SQL instead of running it."""
    url = _url()
    _configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"},
               render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    # transactional_ddl: Alembic assumes SQLite cannot roll DDL back; it can once BEGIN is ours (service.db).
    _configure(connection=connection, render_as_batch=sqlite, transactional_ddl=sqlite or None)
    with context.begin_transaction():
        context.run_migrations()
        if sqlite:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"migration left rows whose foreign keys point nowhere: {broken[:10]}")


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url(), for_migrations=True)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
