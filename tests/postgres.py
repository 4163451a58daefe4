"""A throwaway PostgreSQL server for the storage and queue tests (the `postgres` fixture in conftest.py).

The service promises "any SQLAlchemy URL"; the dialect-specific parts (INSERT ... ON CONFLICT, UPDATE ...
RETURNING, the batch migrations, timestamps with time zone) are checked against a real server when the machine
has one (`initdb` on PATH or under /usr/lib/postgresql) and psycopg is installed (`pip install
'nasprune[postgres]'`); otherwise those test variants are skipped with the reason. The cluster lives in a temporary
folder, listens on a Unix socket only, and is stopped at the end of the session.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class PostgresServer:
    """initdb + pg_ctl start in a temporary folder; `new_database()` gives each test a fresh database."""

    USER = "nasprune"

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        self.folder = Path(tempfile.mkdtemp(prefix="nasprune-pg-"))
        self.run_as: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root: use the system's postgres account
            runuser = shutil.which("runuser")
            if runuser is None:
                raise RuntimeError("running as root and no runuser to start postgres as another user")
            shutil.chown(self.folder, user="postgres")
            self.run_as = [runuser, "-u", "postgres", "--"]
        self.data = self.folder / "data"
        self.port = 54000 + uuid.uuid4().int % 1000

    @classmethod
    def unavailable(cls) -> str | None:
        """Why no server can be started here (None: it can)."""
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "psycopg is not installed (pip install 'nasprune[postgres]')"
        if _pg_bin("initdb") is None or _pg_bin("pg_ctl") is None:
            return "no PostgreSQL server binaries (initdb, pg_ctl) on this machine"
        if os.geteuid() == 0:
            try:
                import pwd

                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root and there is no 'postgres' user to run the server"
        return None

    def _run(self, *args: str) -> None:
        subprocess.run([*self.run_as, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        self._run(self.initdb, "-D", str(self.data), "-A", "trust", "-U", self.USER, "--no-sync")
        options = f"-k {self.folder} -p {self.port} -c listen_addresses= -c fsync=off"
        self._run(self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start")
        return self

    def stop(self) -> None:
        try:
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.USER}@/{database}?host={self.folder}&port={self.port}"

    def new_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        engine = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)
