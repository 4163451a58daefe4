"""The service on PostgreSQL: the API and two real worker processes share a PostgreSQL database (what a
cluster of machines would do) and run searches to the end. Skipped, with the reason, where no PostgreSQL server
can be started (tests/postgres.py)."""

from __future__ import annotations

import json
import time

import pytest
from conftest import run_worker_once, service_env, start_worker
from fastapi.testclient import TestClient
from sqlalchemy import text
from test_api import body

from search.records import TRIALS_FILE
from service.api import create_app
from service.config import Settings
from service.db import make_engine


@pytest.mark.slow
def test_two_workers_run_searches_on_postgres(postgres, workspace, tmp_path) -> None:
    url = postgres.new_database()
    settings = Settings(data_root=tmp_path / "data", database_url=url, allowed_model_roots=[workspace],
                        allowed_data_roots=[workspace], heartbeat_s=1.0, stale_after_s=3.0)
    env = service_env(settings, tmp_path / "cache")
    with TestClient(create_app(settings)) as client:  # the app applies the migrations to the empty database
        assert client.get("/healthz").json()["status"] == "ok"
        ids = [client.post("/searches", json=body(workspace, training={"seed": seed})).json()["id"] for seed in (0, 1)]
        again = client.post("/searches", json=body(workspace, idempotency_key="k")).json()["id"]
        assert client.post("/searches", json=body(workspace, idempotency_key="k")).json()["id"] == again
        ids.append(again)
        other = start_worker(env, once=False)  # claims concurrently with the --once workers below
        try:
            for _ in range(len(ids)):
                if all(client.get(f"/searches/{i}").json()["status"] == "succeeded" for i in ids):
                    break
                run_worker_once(env)
            deadline = time.monotonic() + 120
            while not all(client.get(f"/searches/{i}").json()["status"] in ("succeeded", "failed") for i in ids):
                assert time.monotonic() < deadline, "searches did not finish"
                time.sleep(0.5)
        finally:
            other.terminate()
            other.wait(timeout=60)
        for search_id in ids:
            data = client.get(f"/searches/{search_id}").json()
            assert data["status"] == "succeeded", data["error"]
            trials = client.get(f"/searches/{search_id}/trials").json()["items"]
            assert len({json.dumps(t["config"], sort_keys=True) for t in trials}) == len(trials) > 0
            assert [t["index"] for t in trials] == list(range(len(trials)))  # none lost, none twice
            assert not (settings.search_folder(search_id) / TRIALS_FILE).exists()  # the database is the one record
            assert client.get(f"/searches/{search_id}/pareto").json()["points"]
        assert client.get("/searches", params={"status": "succeeded"}).json()["total"] == 3
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM searches")).scalar() == 3
    finally:
        engine.dispose()
