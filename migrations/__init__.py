"""Alembic migrations of the service database (a package so that it ships with, and is found through, the
installed distribution: `service.db.migrations_folder()`)."""
