"""Searches written by the release before the database became their one store of record keep working: an old
database (made at an older revision by the migrations themselves, then given rows as that release wrote them) with
old-style run folders (trials.jsonl + front.json from a real search) is upgraded, then lists, serves a download
built before, shows its front with the extras only front.json held (imported once), and a search whose worker died
is resumed: the trials.jsonl lines its rows lack are imported once and nothing is evaluated again."""

from __future__ import annotations

import json
import shutil
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import cli, task_args
from fastapi.testclient import TestClient
from sqlalchemy import text

from search.records import FRONT_FILE, TRIALS_FILE
from service.api import create_app
from service.config import Settings
from service.db import make_engine, session_factory, upgrade
from service.models import FrontRow
from service.repository import config_key
from service.worker import run_worker

OLD = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None).isoformat(sep=" ")


@pytest.fixture(scope="module")
def old_run(workspace, tmp_path_factory) -> Path:
    """A run folder as the release before wrote it for any search: trials.jsonl and front.json (the CLI's store)."""
    out = tmp_path_factory.mktemp("legacy") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NASPRUNE_CACHE", str(tmp_path_factory.mktemp("cache")))
        assert cli(["search", *task_args(workspace), "--epochs", "1", "--batch-size", "8", "--evaluations", "5",
                    "--latency-batch-size", "2", "--max-length", "16", "--evaluation-dtype", "float32",
                    "--out", str(out)]) == 0
    assert (out / TRIALS_FILE).is_file() and (out / FRONT_FILE).is_file()
    return out


def _insert(connection, table: str, values: dict) -> None:
    columns = ", ".join(f'"{k}"' for k in values)
    connection.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({', '.join(':' + k for k in values)})"),
                       {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in values.items()})


def old_database(url: str, revision: str, searches: dict[str, dict]) -> None:
    """A database at `revision` holding `searches` (id -> its row's values, its "trials" and "front" rows, and its
    "exports"), written with plain SQL as the release of that revision wrote them."""
    upgrade(url, revision)
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            for search_id, row in searches.items():
                _insert(connection, "searches", {"id": search_id, "created_at": OLD, **row["search"]})
                for trial in row["trials"]:
                    _insert(connection, "trials", {"search_id": search_id, **trial,
                                                   "config_key": config_key(trial["config"])})
                for position, point in enumerate(row["front"]):
                    _insert(connection, "front_points", {"search_id": search_id, "position": position, **point})
                for export in row["exports"]:
                    _insert(connection, "exports", {"search_id": search_id, "created_at": OLD, **export})
    finally:
        engine.dispose()


def _front_row(point: dict) -> dict:
    return {k: point[k] for k in ("config", "objectives", "validation", "test", "params", "macs", "latency_ms")}


@pytest.mark.slow
@pytest.mark.parametrize("revision", ["0003", "0006"])  # front_points.refined added; the release before this one
def test_an_old_database_and_run_folders_list_download_show_and_resume(old_run, workspace, tmp_path,
                                                                      revision) -> None:
    settings = Settings(data_root=tmp_path / "data", allowed_model_roots=[workspace], allowed_data_roots=[workspace],
                        heartbeat_s=1, stale_after_s=3)
    front = json.loads((old_run / FRONT_FILE).read_text())
    trials = [json.loads(line) for line in (old_run / TRIALS_FILE).read_text().splitlines()]
    request = {"run": json.loads((old_run / "run.json").read_text()),
               "job": json.loads((old_run / "search.json").read_text())}
    folders = {name: Path(shutil.copytree(old_run, settings.searches_root / name)) for name in ("done", "died")}
    archive = folders["done"] / "exports" / "0-hf.tar.gz"  # a download built by the old release
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folders["done"] / "run.json", arcname="old/run.json")
    common = {"request": request, "evaluations_total": len(trials)}
    old_database(settings.url, revision, {
        "done": {"search": common | {"status": "succeeded", "folder": str(folders["done"]), "finished_at": OLD,
                                     "evaluations_done": len(trials), "hypervolume": front["hypervolume"]},
                 "trials": trials, "front": [_front_row(p) for p in front["points"]],
                 "exports": [{"position": 0, "format": "hf", "path": str(archive)}]},
        # its worker died after appending the last two trials to trials.jsonl, before their rows
        "died": {"search": common | {"status": "searching", "folder": str(folders["died"]), "worker_id": "dead",
                                     "heartbeat_at": OLD, "evaluations_done": len(trials) - 2},
                 "trials": trials[:-2], "front": [], "exports": []},
    })
    upgrade(settings.url)  # 0007 and any later: the release of this code

    with TestClient(create_app(settings)) as client:
        listed = client.get("/searches").json()
        assert {s["id"]: s["status"] for s in listed["items"]} == {"done": "succeeded", "died": "searching"}
        download = client.get("/searches/done/pareto/0/download")  # the old archive, served with no worker
        assert download.status_code == 200 and download.content == archive.read_bytes()
        pareto = client.get("/searches/done/pareto").json()  # extras imported from front.json, once
        assert pareto["hypervolume"] == front["hypervolume"] and pareto["reference"] == front["reference"]
        assert [p["config"] for p in pareto["points"]] == [p["config"] for p in front["points"]]

        assert run_worker(settings, once=True) == 1  # takes the dead worker's search back and resumes it
        resumed = client.get("/searches/died").json()
        assert resumed["status"] == "succeeded", resumed["error"]
        stored = client.get("/searches/died/trials").json()["items"]
        assert [t["config"] for t in stored] == [t["config"] for t in trials]  # the file's two imported
        assert resumed["progress"]["evaluations_done"] == len(trials)  # and nothing evaluated again
        assert not (folders["died"] / TRIALS_FILE).exists() and (folders["died"] / "trials.jsonl.imported").is_file()
        assert client.get("/searches/died/pareto").json()["points"]
        log = client.get("/searches/died/logs").text
        assert f"resuming with {len(trials)} trial(s) done" in log and "training already finished" in log

    engine = make_engine(settings.url)
    try:
        with session_factory(engine)() as session:
            assert session.get(FrontRow, "done").data["hypervolume"] == front["hypervolume"]
            keys = session.execute(text('SELECT config_key FROM trials WHERE search_id = :id ORDER BY "index"'),
                                   {"id": "done"})
            assert [k for (k,) in keys] == [config_key(t["config"]) for t in trials]  # stored keys stay valid
    finally:
        engine.dispose()
