"""What the service tells a user never leaks the server's internals, over HTTP with real files: a failing job's
error and log (no traceback, no data root, no installation path), a search's stored request (an upload by its id,
not its server path), 422 details, an older log read back; no trailing-slash redirect that echoes the Host header;
the 409 on deleting a running search says what works; `attempts` reads the same in the API and the log; and, under
a real `nasprune serve`, files 0600 and folders 0700 under the data root and download archives whose gzip header
names no temporary file."""

from __future__ import annotations

import gzip
import io
import os
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest
from conftest import REPO, search_body, service_env, service_settings, wait_for, write_csv
from fastapi.testclient import TestClient

from service import queue
from service.api import create_app
from service.db import make_engine, session_factory
from service.redact import Redactor, one_line, strip_tracebacks
from service.worker import LOG_FILE, run_worker

TERMINAL = ("succeeded", "failed", "cancelled")
PYTHON_PATHS = (sys.prefix, sys.base_prefix, str(Path(pytest.__file__).parent.parent))  # the venv, site-packages


def body(ws: Path, **overrides) -> dict:
    return search_body(ws, ["error", "params"], 2, **overrides)


def upload(client, path: Path, name: str) -> str:
    response = client.post("/datasets", files={"file": (path.name, path.read_bytes())}, data={"name": name})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def assert_no_internals(text: str, settings, what: str = "") -> None:
    """No traceback, no data root, no installation or repository path in `text`."""
    assert "Traceback" not in text and 'File "' not in text, (what, text[-3000:])
    for path in (str(settings.data_root), *PYTHON_PATHS, str(REPO)):
        assert path not in text, (what, path, text[-3000:])


@pytest.fixture(scope="module")
def factory(client, settings):
    engine = make_engine(settings.url)
    yield session_factory(engine)
    engine.dispose()


# ------------------------------------------------------------------------------------------ the redaction itself


def test_server_paths_become_the_names_a_user_knows(tmp_path) -> None:
    root = tmp_path / "data"
    redactor = Redactor(root, root / "datasets")
    site_packages = str(Path(pytest.__file__).parent.parent)
    cases = {
        f"no such file ({root}/missing.csv)": "no such file (missing.csv)",
        f"'{root}/datasets/0123abcd/data.csv' is not UTF-8": "'dataset 0123abcd' is not UTF-8",
        f"only 3 MB free under {root}, below NASPRUNE_MIN_FREE_MB": "only 3 MB free under <data root>, below "
                                                                    "NASPRUNE_MIN_FREE_MB",
        f"{site_packages}/torch/nn/modules/module.py": "<site-packages>/torch/nn/modules/module.py",
        f"{REPO}/supernet/loading.py": "<nasprune>/supernet/loading.py",
        f"{root}2/other.csv": f"{root}2/other.csv",  # another folder whose name starts alike: not the data root
        f"/elsewhere{root}/x": f"/elsewhere{root}/x",  # the data root's path inside a longer path: not it
    }
    for given, shown in cases.items():
        assert redactor.text(given) == shown, given
    request = {"run": {"model": f"{root}/models/m", "custom": {
        "name": "toy", "train_file": f"{root}/datasets/abc/data.csv", "test_file": "/shared/test.csv"}}, "job": {}}
    assert redactor.request(request) == {"run": {"model": "models/m", "custom": {
        "name": "toy", "train_dataset": "abc", "test_file": "/shared/test.csv"}}, "job": {}}


def test_tracebacks_are_left_out_and_an_error_is_one_line() -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError as exc:
            raise ValueError("what went wrong\nsecond line") from exc
    except ValueError:
        import traceback

        dump = "before\n" + traceback.format_exc() + "after\n"
    kept = strip_tracebacks(dump)
    assert "Traceback" not in kept and 'File "' not in kept and "direct cause" not in kept
    assert kept.startswith("before\n") and kept.endswith("after\n") and "ValueError: what went wrong" in kept
    assert one_line("a\n\n  b  \nc") == "a; b; c" and len(one_line("x" * 5000)) == 2000


# ------------------------------------------------------------------------------------------ the API


def test_a_trailing_slash_is_a_404_that_never_echoes_the_host(client, workspace) -> None:
    search_id = client.post("/searches", json=body(workspace)).json()["id"]
    try:
        for path in ("/searches/", f"/searches/{search_id}/", "/datasets/", "/healthz/"):
            response = client.get(path, headers={"Host": "evil.example"}, follow_redirects=False)
            assert response.status_code == 404 and "location" not in response.headers, (path, response.headers)
            assert "evil.example" not in response.text and "no route here ends with '/'" in response.text
    finally:
        client.post(f"/searches/{search_id}/cancel")


def test_without_a_token_a_trailing_slash_is_no_redirect_and_the_route_a_401(workspace, tmp_path) -> None:
    from service import tokens

    settings = service_settings(workspace, tmp_path, auth="required")
    with TestClient(create_app(settings)) as client:
        engine = make_engine(settings.url)
        with session_factory(engine)() as session:
            tokens.create_token(session, "a")
            session.commit()
        engine.dispose()
        slash = client.get("/searches/", headers={"Host": "evil.example"}, follow_redirects=False)
        assert slash.status_code in (401, 404) and "location" not in slash.headers
        assert "evil.example" not in slash.text
        assert client.get("/searches", headers={"Host": "evil.example"}).status_code == 401


def test_a_422_names_the_path_as_given(client, workspace, settings) -> None:
    missing = client.post("/searches", json=body(workspace, custom={
        "train_file": "missing.csv", "test_file": str(workspace / "test.csv"), "text_columns": ["text"]}))
    assert missing.status_code == 422 and "'missing.csv'" in missing.json()["detail"], missing.text
    model = client.post("/searches", json=body(workspace, model="./models/none"))
    assert model.status_code == 422 and "models/none" in model.json()["detail"], model.text
    for response in (missing, model):
        assert_no_internals(response.text, settings)


def test_a_search_on_uploads_shows_their_ids_not_their_files(client, workspace, settings) -> None:
    train, test = upload(client, workspace / "train.csv", "train"), upload(client, workspace / "test.csv", "test")
    created = client.post("/searches", json=body(workspace, custom={
        "train_dataset": train, "test_dataset": test, "text_columns": ["text"]}))
    assert created.status_code == 201, created.text
    search_id = created.json()["id"]
    try:
        for response in (created, client.get(f"/searches/{search_id}"), client.get("/searches")):
            assert str(settings.datasets_root) not in response.text and str(settings.data_root) not in response.text
        custom = client.get(f"/searches/{search_id}").json()["request"]["run"]["custom"]
        assert custom["train_dataset"] == train and custom["test_dataset"] == test
        assert "train_file" not in custom and "test_file" not in custom
    finally:
        client.post(f"/searches/{search_id}/cancel")


def test_deleting_a_running_search_says_cancel_first(client, workspace, factory) -> None:
    search_id = client.post("/searches", json=body(workspace)).json()["id"]
    assert queue.claim_next(factory, "test-worker").id == search_id  # this test plays the worker
    refused = client.delete(f"/searches/{search_id}")
    detail = refused.json()["detail"]
    assert refused.status_code == 409 and "force" not in detail and f"/searches/{search_id}/cancel" in detail, detail
    # and what it says works: cancel, the worker stops (played here), delete
    assert client.post(f"/searches/{search_id}/cancel").json()["cancel_requested"]
    assert queue.finish(factory, search_id, "cancelled", worker_id="test-worker")
    assert client.delete(f"/searches/{search_id}").status_code == 204


def test_an_older_log_is_read_back_without_its_tracebacks_or_paths(client, workspace, settings) -> None:
    """A worker.log written before tracebacks were kept out of it is filtered when it is read."""
    search_id = client.post("/searches", json=body(workspace)).json()["id"]
    folder = settings.search_folder(search_id)
    folder.mkdir(parents=True)
    (folder / LOG_FILE).write_text(
        f"INFO running search {search_id} in {folder}\n"
        f"ERROR search {search_id} failed:\nTraceback (most recent call last):\n"
        f'  File "{sys.prefix}/lib/python3.11/site-packages/torch/serialization.py", line 1, in load\n'
        f"    raise ValueError\nValueError: cannot read {settings.data_root}/datasets/abc/data.csv\nINFO the end\n")
    log = client.get(f"/searches/{search_id}/logs").text
    assert_no_internals(log, settings)
    assert f"in searches/{search_id}" in log and "ValueError: cannot read dataset abc" in log
    assert client.get(f"/searches/{search_id}/logs", params={"tail": 1}).text == "INFO the end\n"
    client.post(f"/searches/{search_id}/cancel")


def test_a_failing_jobs_error_and_log_read_through_http_hold_no_internals(client, workspace, settings,
                                                                         factory) -> None:
    """A real job in a real worker loop, failing on a GLUE folder in an allowed root that is gone when it runs,
    after a first run lost to a dead worker: `attempts` reads alike in the API and the log."""
    given = workspace / "leaks" / "glue-gone"
    glue = given / "RTE"
    glue.mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (glue / name).write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    created = client.post("/searches", json=body(workspace, task="glue/rte", data_dir=str(given)))
    assert created.status_code == 201, created.text
    search_id = created.json()["id"]
    assert created.json()["request"]["run"]["data_dir"] == str(given)  # as given
    for name in ("train.tsv", "dev.tsv"):
        (glue / name).unlink()
    assert queue.claim_next(factory, "dies").id == search_id  # a worker that dies at once (this test plays it)
    time.sleep(settings.stale_after_s + 0.3)
    assert run_worker(settings, once=True) == 1  # takes the stale job back (attempts 1), runs it, and it fails
    search = client.get(f"/searches/{search_id}").json()
    log = client.get(f"/searches/{search_id}/logs").text
    assert search["status"] == "failed" and "glue-gone/RTE/train.tsv" in search["error"], search["error"]
    assert "\n" not in search["error"] and f"failed: {search['error']}" in log
    assert_no_internals(search["error"], settings, "error")
    assert_no_internals(log, settings, "log")
    assert search["attempts"] == 1 and "(attempts 1: earlier runs lost to a dead worker)" in log, log


def test_db_upgrade_tightens_what_an_older_release_left_readable(tmp_path, monkeypatch) -> None:
    """The database (token hashes), searches/ and datasets/ of an existing data root become the service user's
    only; a new database is 0600; main() called in-process leaves the caller's umask as it was."""
    from conftest import cli

    from service.config import get_settings

    root, old = tmp_path / "data", tmp_path / "old"
    for folder in (root / "searches" / "s1", root / "datasets" / "d1", old):
        folder.mkdir(parents=True)
    (old / "nasprune.db").touch()
    for path in (root / "searches", root / "datasets", old / "nasprune.db"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    monkeypatch.setenv("NASPRUNE_DATA_ROOT", str(root))
    monkeypatch.setenv("NASPRUNE_DATABASE_URL", f"sqlite:///{old / 'nasprune.db'}")
    before = os.umask(0o022)
    get_settings.cache_clear()
    try:
        assert cli(["db", "upgrade"]) == 0
        assert os.umask(0o022) == 0o022  # restored
    finally:
        os.umask(before)
        get_settings.cache_clear()
    for path, mode in ((root / "searches", 0o700), (root / "datasets", 0o700), (old / "nasprune.db", 0o600)):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


# ------------------------------------------------------------------------------------------ a real server


def start_serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """`nasprune serve --workers 1` on a free port, once it answers /healthz; (process, base URL)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "a") as stderr:
        server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--workers", "1", "--port", str(port)],
                                  env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError(f"the server did not start: {log.read_text()[-3000:]}")
        time.sleep(0.2)


def modes_open_to_others(root: Path) -> list[str]:
    """Every file or folder under `root` (itself included) that its group or others may read, write or enter."""
    found = []
    for folder, _dirs, files in os.walk(root):
        for path in [Path(folder)] + [Path(folder) / name for name in files]:
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & 0o077:
                found.append(f"{path.relative_to(root)} {stat.S_IMODE(mode):o}")
    return found


@pytest.mark.slow
def test_under_a_real_server_files_are_private_errors_plain_and_archives_nameless(workspace, tmp_path) -> None:
    settings = service_settings(workspace, tmp_path)
    server_log = tmp_path / "server.log"
    late = write_csv(tmp_path / "late.csv", 40, seed=5)
    server, url = start_serve(service_env(settings, tmp_path / "cache"), server_log)
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            train, test = upload(http, workspace / "train.csv", "train"), upload(http, workspace / "test.csv", "test")
            corrupt = upload(http, late, "late")
            custom = {"train_dataset": train, "test_dataset": test, "text_columns": ["text"]}
            # 1. an upload that turns corrupt once queued: its job fails, in the user's terms
            bad = http.post("/searches", json=body(workspace, custom=custom | {"train_dataset": corrupt}))
            (settings.dataset_folder(corrupt) / "data.csv").write_bytes(b"text,label\n\x80\x81 not utf-8,pos\n")
            # 2. a good search on the uploads
            good = http.post("/searches", json=body(workspace, custom=custom))
            assert bad.status_code == good.status_code == 201, (bad.text, good.text)
            searches = {}
            for name, response in (("bad", bad), ("good", good)):
                searches[name] = wait_for(http, response.json()["id"], lambda s: s["status"] in TERMINAL,
                                          timeout_s=240, what=name)
            failed, succeeded = searches["bad"], searches["good"]
            assert succeeded["status"] == "succeeded", succeeded["error"]
            assert failed["status"] == "failed" and "UTF-8" in failed["error"], failed["error"]
            for search in (failed, succeeded):
                log = http.get(f"/searches/{search['id']}/logs").text
                assert_no_internals(log, settings, "log")
                assert_no_internals(http.get(f"/searches/{search['id']}").text, settings, "search")
            assert_no_internals(failed["error"], settings, "error")
            # 3. the archive's gzip header: no file name (FNAME, flag 0x08), no time
            download = http.get(f"/searches/{succeeded['id']}/pareto/0/download")
            assert download.status_code == 200, download.text
            header = download.content[:10]
            assert header[:3] == b"\x1f\x8b\x08" and not header[3] & 0x08 and header[4:8] == b"\0\0\0\0", header
            with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as tar:
                assert all(m.name.startswith(f"nasprune-{succeeded['id'][:8]}-point0-hf") for m in tar.getmembers())
            assert gzip.decompress(download.content)  # a whole gzip stream
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    # 4. everything the server and its worker wrote: private
    assert (settings.data_root / "nasprune.db").is_file() and any(settings.searches_root.iterdir())
    assert modes_open_to_others(settings.data_root) == []
    # the tracebacks went to the server log (the worker's stderr), where the operator reads them
    assert "Traceback" in server_log.read_text()
