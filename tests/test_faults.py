"""Faults, with real processes and a real SQLite file: workers and the API server killed with SIGKILL at the worst
moments (mid-search, mid-export, mid-build of a download's export, amid concurrent writes), jobs that fail late
(corrupt data, out of memory, a full disk) without blocking the queue, the retry limit, and a data root that cannot
be used.

Every test that kills a process ends with `PRAGMA integrity_check` on the database file.

The tiny model evaluates a sub-network in milliseconds, so where a kill must land inside a stage, the stage is
made long in an honest way: a large validation (or test) split evaluated one example at a time. Each such test
asserts that the kill did land where intended, with margins meant to hold on a machine twice as fast as the one
it was written on.
"""

from __future__ import annotations

import errno
import io
import json
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from conftest import HEARTBEAT_S, REPO, STALE_AFTER_S, service_env, start_worker, wait_for, write_csv
from sqlalchemy.orm import sessionmaker

from service import queue
from service import repository as repo
from service.config import Settings
from service.db import make_engine, session_factory, upgrade
from service.models import SearchStatus
from service.worker import failure_reason, run_worker

TERMINAL = ("succeeded", "failed", "cancelled")
BIG_ROWS = 4000  # a train file of 4000 rows has a validation split of 1200


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Data files for this module: a large train file (validation split of 1200 rows), a small and a large
    test file."""
    root = tmp_path_factory.mktemp("faults-data")
    write_csv(root / "train-big.csv", BIG_ROWS, seed=3)
    write_csv(root / "test-small.csv", 20, seed=4)
    write_csv(root / "test-big.csv", BIG_ROWS, seed=5)
    return root


@pytest.fixture(scope="module")
def settings(workspace, data, tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("faults")
    return Settings(data_root=root / "data", allowed_model_roots=[workspace, data],
                    allowed_data_roots=[workspace, data], heartbeat_s=HEARTBEAT_S, stale_after_s=STALE_AFTER_S,
                    max_attempts=3)


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    """Where the worker and server processes of this module write their stderr (read it when a test fails)."""
    return tmp_path_factory.mktemp("process-logs")


def body(ws: Path, data: Path, *, evaluations: int, test: str = "test-small.csv", **overrides) -> dict:
    """The tiny model on the big train file: 40 training examples (5 steps), the 1200-row validation split
    evaluated one example at a time for every sub-network."""
    return {"model": str(ws / "model"), "task": "custom/toy",
            "custom": {"train_file": str(data / "train-big.csv"), "test_file": str(data / test),
                       "text_columns": ["text"]},
            "training": {"epochs": 1}, "search": {"objectives": ["error", "params"], "evaluations": evaluations},
            "train_limit": 40, "max_length": 16, "batch_size": 8, "eval_batch_size": 1,
            "latency": {"batch_size": 2}} | overrides


def submit(client, payload: dict) -> str:
    response = client.post("/searches", json=payload)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def integrity(database: Path) -> str:
    with closing(sqlite3.connect(database)) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


def database_file(settings: Settings) -> Path:
    return Path(settings.url.removeprefix("sqlite:///"))


def stop(process: subprocess.Popen, timeout_s: float = 60.0) -> int:
    """SIGTERM (a clean stop), then SIGKILL if it does not come."""
    if process.poll() is None:
        process.terminate()
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def kill(process: subprocess.Popen) -> None:
    process.kill()  # SIGKILL: no handler runs, nothing is flushed or released
    process.wait()


def attempt_log(log: str, attempt: int) -> str:
    """The part of a search's worker.log written by its `attempt`-th run."""
    marker = f"(attempts {attempt - 1}:"  # the job's `attempts`: runs lost before this one
    assert marker in log, log
    return log[log.index(marker):]


# ------------------------------------------------------------------------------------------ workers killed


@pytest.mark.slow
def test_a_worker_killed_mid_search_is_resumed_by_another(client, workspace, data, settings, worker_env, logs) -> None:
    evaluations = 12
    search_id = submit(client, body(workspace, data, evaluations=evaluations))
    folder = settings.search_folder(search_id)
    first = start_worker(worker_env, once=False, log=logs / "mid-search-1.log")
    second = None
    try:
        wait_for(client, search_id, lambda s: s["status"] != "queued", timeout_s=120, what="a claim")
        second = start_worker(worker_env, once=False, log=logs / "mid-search-2.log")  # stands by for the takeover
        # Each evaluation takes ~0.5 s here (1200 examples one at a time): after the 2nd, 10 remain, seconds of
        # margin for the kill even on a machine twice as fast.
        wait_for(client, search_id, lambda s: s["progress"]["evaluations_done"] >= 2 or s["status"] in TERMINAL,
                 timeout_s=180, what="2 evaluations")
        kill(first)
        killed = client.get(f"/searches/{search_id}").json()
        at_kill = [t["config"] for t in client.get(f"/searches/{search_id}/trials").json()["items"]]
        weights = folder / "supernet" / "model.safetensors"
        stamp = weights.stat().st_mtime_ns
        # the kill landed mid-search
        assert killed["status"] == "searching" and 0 < killed["progress"]["evaluations_done"] < evaluations, killed
        assert 0 < len(at_kill) < evaluations
        final = wait_for(client, search_id, lambda s: s["status"] in TERMINAL, timeout_s=180, what="the end")
    finally:
        kill(first)
        if second is not None:
            stop(second)
    assert final["status"] == "succeeded", final["error"]
    assert final["attempts"] == 1 and final["worker_id"] != killed["worker_id"]

    trials = client.get(f"/searches/{search_id}/trials").json()["items"]
    configs = [json.dumps(t["config"], sort_keys=True) for t in trials]
    assert len(trials) == evaluations == final["progress"]["evaluations_done"] and len(set(configs)) == evaluations
    assert [t["index"] for t in trials] == list(range(evaluations))
    assert not (folder / "trials.jsonl").exists()  # the rows are the one record of the trials
    assert [t["config"] for t in trials[:len(at_kill)]] == at_kill  # kept, not evaluated again

    log = client.get(f"/searches/{search_id}/logs").text
    resumed = re.search(r"resuming with (\d+) trial\(s\) done", log)
    assert resumed and int(resumed[1]) == len(at_kill) and 0 < int(resumed[1]) < evaluations, log
    second_run = attempt_log(log, 2)
    assert "training already finished" in second_run and "checkpoint at step" not in second_run
    assert weights.stat().st_mtime_ns == stamp  # the supernet was not retrained
    assert integrity(database_file(settings)) == "ok"


@pytest.fixture(scope="module")
def killed_while_exporting(client, workspace, data, settings, worker_env, logs) -> dict:
    """A search whose worker is killed in its exporting stage (the front re-evaluated on a 4000-row test file,
    one example at a time: seconds), then finished by another worker."""
    search_id = submit(client, body(workspace, data, evaluations=4, test="test-big.csv", validation_limit=40))
    first = start_worker(worker_env, once=False, log=logs / "exporting-1.log")
    second = None
    try:
        wait_for(client, search_id, lambda s: s["status"] != "queued", timeout_s=120, what="a claim")
        second = start_worker(worker_env, once=False, log=logs / "exporting-2.log")  # stands by for the takeover
        wait_for(client, search_id, lambda s: s["status"] in ("exporting", *TERMINAL), timeout_s=180,
                 what="the exporting stage")
        kill(first)
        killed = client.get(f"/searches/{search_id}").json()
        front_at_kill = client.get(f"/searches/{search_id}/pareto").status_code == 200
        final = wait_for(client, search_id, lambda s: s["status"] in TERMINAL, timeout_s=180, what="the end")
    finally:
        kill(first)
        if second is not None:
            stop(second)
    return {"id": search_id, "killed": killed, "front_at_kill": front_at_kill, "final": final}


@pytest.mark.slow
def test_a_worker_killed_while_exporting_is_finished_by_another(client, killed_while_exporting, settings) -> None:
    killed, final = killed_while_exporting["killed"], killed_while_exporting["final"]
    # the kill landed in the exporting stage, before the front was stored
    assert killed["status"] == "exporting" and not killed_while_exporting["front_at_kill"], killed
    assert killed["progress"]["evaluations_done"] == 4
    assert final["status"] == "succeeded", final["error"]
    assert final["attempts"] == 1 and final["progress"]["evaluations_done"] == 4
    search_id = killed_while_exporting["id"]
    assert client.get(f"/searches/{search_id}/trials").json()["total"] == 4
    pareto = client.get(f"/searches/{search_id}/pareto")
    assert pareto.status_code == 200 and pareto.json()["points"]
    assert "training already finished" in attempt_log(client.get(f"/searches/{search_id}/logs").text, 2)
    assert integrity(database_file(settings)) == "ok"


# ------------------------------------------------------------------------------------------ the server killed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """`nasprune serve --workers 0` on a free port, once it answers /healthz; (process, base URL)."""
    port = free_port()
    with open(log, "a") as stderr:
        server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--workers", "0", "--port", str(port)],
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
            kill(server)
            raise AssertionError(f"the server did not start: {log.read_text()[-3000:]}")
        time.sleep(0.1)


def temporaries(folder: Path) -> list[str]:
    """Entries of an exports folder that are not a finished export (those start with '.'; the lock file is
    not an export)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


@pytest.mark.slow
def test_a_worker_killed_while_building_an_export_leaves_the_download_a_whole_archive(
        killed_while_exporting, settings, worker_env, logs, tmp_path) -> None:
    """The download waits for its export job; the worker building it is killed mid-build (pieces left under
    temporary names); its job is taken back once stale and another worker builds it: the same waiting request
    gets a whole archive, and the killed build's pieces are gone."""
    from transformers import AutoModelForSequenceClassification

    search_id = killed_while_exporting["id"]
    assert killed_while_exporting["final"]["status"] == "succeeded"
    exports = settings.search_folder(search_id) / "exports"
    archive = exports / "0-hf.tar.gz"
    assert not archive.exists()
    server, url = start_server(worker_env, logs / "download-1.log")
    first = start_worker(worker_env, once=False, log=logs / "export-1.log")
    second = None
    got: dict = {}

    def download() -> None:
        try:
            got["response"] = httpx.get(f"{url}/searches/{search_id}/pareto/0/download", timeout=240)
        except httpx.TransportError as exc:
            got["error"] = exc

    thread = threading.Thread(target=download)
    try:
        thread.start()
        deadline = time.monotonic() + 120
        while not temporaries(exports):  # the build has written its first temporary file
            assert thread.is_alive() and time.monotonic() < deadline, f"no build seen: {got}"
            time.sleep(0.001)
        kill(first)
        # the kill landed mid-build: the archive was not finished, its pieces lie under temporary names
        assert not archive.exists() and temporaries(exports), sorted(p.name for p in exports.iterdir())
        assert thread.is_alive() and "response" not in got  # the request still waits for its job
        second = start_worker(worker_env, once=False, log=logs / "export-2.log")
        thread.join(timeout=240)
        point = httpx.get(f"{url}/searches/{search_id}/pareto").json()["points"][0]
    finally:
        kill(first)
        if second is not None:
            stop(second)
        stop(server)
    response = got["response"]
    assert response.status_code == 200, response.text
    assert response.content == archive.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    (model_folder,) = tmp_path.iterdir()
    assert {"config.json", "model.safetensors", "subnetwork.json", "tokenizer.json"} <= {
        p.name for p in model_folder.iterdir()}
    model = AutoModelForSequenceClassification.from_pretrained(model_folder, trust_remote_code=True)
    assert sum(p.numel() for p in model.parameters()) == point["params"]["total"]
    # the killed build's pieces are gone from the cache: only the finished export and archive are left
    assert temporaries(exports) == []
    assert {p.name for p in exports.iterdir() if not p.name.endswith(".lock")} == {"0-hf", "0-hf.tar.gz"}
    assert integrity(database_file(settings)) == "ok"


@pytest.mark.slow
def test_the_server_killed_amid_concurrent_writes_loses_and_duplicates_nothing(workspace, data, tmp_path,
                                                                                 logs) -> None:
    settings = Settings(data_root=tmp_path / "data", allowed_model_roots=[workspace], allowed_data_roots=[data])
    server_env = service_env(settings, tmp_path / "cache")
    payload = body(workspace, data, evaluations=3)
    keys = [f"key-{i}" for i in range(200)]
    created: dict[str, str] = {}  # key -> id, for every POST answered 201
    cancelled: set[str] = set()  # ids whose cancel was answered "cancelled"
    cancel_unanswered: set[str] = set()  # ids whose cancel got no answer: it may or may not have been stored
    problems: list[str] = []  # unexpected answers (an assert in a thread would go unseen)
    lock = threading.Lock()
    pending = iter(keys)
    in_flight = [0]
    killed = threading.Event()

    def post_many() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while True:
                with lock:
                    key = next(pending, None)
                    if key is None or killed.is_set():
                        return
                    in_flight[0] += 1
                try:
                    response = http.post("/searches", json=payload, headers={"Idempotency-Key": key})
                except httpx.TransportError:  # in flight at the kill, or refused after it
                    return
                finally:
                    with lock:
                        in_flight[0] -= 1
                if response.status_code != 201:
                    problems.append(f"POST {key}: {response.status_code} {response.text}")
                    return
                search_id = created[key] = response.json()["id"]
                if int(key.split("-")[1]) % 3 == 0:  # cancel every third search right away
                    try:
                        answer = http.post(f"/searches/{search_id}/cancel")
                    except httpx.TransportError:
                        cancel_unanswered.add(search_id)
                        return
                    if answer.status_code != 200 or answer.json()["status"] != "cancelled":
                        problems.append(f"cancel {search_id}: {answer.status_code} {answer.text}")
                        return
                    cancelled.add(search_id)

    server, url = start_server(server_env, logs / "writes-1.log")
    threads = [threading.Thread(target=post_many) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 120
        while len(created) < 40:
            assert time.monotonic() < deadline and any(t.is_alive() for t in threads), (len(created), problems)
            time.sleep(0.005)
        with lock:
            busy = in_flight[0]
            kill(server)
            killed.set()
    finally:
        kill(server)
        killed.set()
        for thread in threads:
            thread.join()
    assert not problems, problems
    assert busy > 0 and len(created) < len(keys), "the kill did not land amid the writes"
    database = database_file(settings)
    assert integrity(database) == "ok"

    server, url = start_server(server_env, logs / "writes-2.log")
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            for search_id in created.values():  # every 201 was stored
                stored = http.get(f"/searches/{search_id}")
                assert stored.status_code == 200 and stored.json()["request"]["job"]["search"]["evaluations"] == 3
                status = stored.json()["status"]
                if search_id in cancelled:
                    assert status == "cancelled"
                elif search_id not in cancel_unanswered:
                    assert status == "queued"
            answers = {key: http.post("/searches", json=payload, headers={"Idempotency-Key": key}) for key in keys}
    finally:
        stop(server)
    for key, answer in answers.items():
        if key in created:
            assert answer.status_code == 200 and answer.json()["id"] == created[key]
        else:  # stored before the kill (200) or never (201): either way now exactly once
            assert answer.status_code in (200, 201), answer.text
    with closing(sqlite3.connect(database)) as connection:
        rows = connection.execute("SELECT idempotency_key, id FROM searches").fetchall()
    assert sorted(key for key, _ in rows) == sorted(keys)  # one search per key, none twice, none without a key
    assert dict(rows) == {key: answer.json()["id"] for key, answer in answers.items()}
    assert integrity(database) == "ok"


# ------------------------------------------------------------------------------------------ jobs that fail late


@pytest.fixture(scope="module")
def huge_vocab_model(workspace, data) -> Path:
    """The tiny model declaring a vocabulary of 2**41 words, its word embeddings absent from the weights: loading
    it allocates 2**41 x 32 floats (256 TiB, beyond any machine and any address space), which fails at once like
    any allocation the machine cannot satisfy."""
    from safetensors.torch import load_file, save_file

    folder = data / "huge-vocab"
    shutil.copytree(workspace / "model", folder)
    weights = load_file(folder / "model.safetensors")
    del weights["bert.embeddings.word_embeddings.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"vocab_size": 2**41}))
    return folder


@pytest.mark.slow
def test_jobs_that_fail_late_are_marked_failed_and_the_next_job_runs(client, workspace, data, settings, worker_env,
                                                                     huge_vocab_model, logs) -> None:
    small = {"validation_limit": 20}
    # 1. a data file that is fine when queued and corrupt (not UTF-8) when the worker reads it
    late = data / "late-corrupt.csv"
    shutil.copyfile(workspace / "train.csv", late)
    corrupt = submit(client, body(workspace, data, evaluations=2, **small)
                     | {"custom": {"train_file": str(late), "test_file": str(data / "test-small.csv")}})
    late.write_bytes(b"text,label\n\x80\x81\x82 not utf-8,pos\n")
    # 2. a model too big for any memory
    oom = submit(client, body(workspace, data, evaluations=2, **small) | {"model": str(huge_vocab_model)})
    # 3. a disk that fills up mid-job: the search's settings file (search.json, written after training, as the
    #    search starts) leads to /dev/full, where every write fails with ENOSPC
    full = submit(client, body(workspace, data, evaluations=2, **small))
    settings.search_folder(full).mkdir(parents=True)
    (settings.search_folder(full) / "search.json").symlink_to("/dev/full")
    # 4. a good job, queued last
    good = submit(client, body(workspace, data, evaluations=2, **small))

    worker = start_worker(worker_env, once=False, log=logs / "late-failures.log")
    try:
        wait_for(client, good, lambda s: s["status"] in TERMINAL, timeout_s=240, what="the good job")
        assert worker.poll() is None  # still running: no failure took it down
    finally:
        assert stop(worker) == 0
    searches = {name: client.get(f"/searches/{i}").json()
                for name, i in (("corrupt", corrupt), ("oom", oom), ("full", full), ("good", good))}
    assert searches["good"]["status"] == "succeeded", searches["good"]["error"]
    expected = {"corrupt": "not UTF-8", "oom": "out of memory", "full": "disk full"}
    for name, words in expected.items():
        search = searches[name]
        assert search["status"] == "failed" and words in search["error"], (name, search["error"])
        log = client.get(f"/searches/{search['id']}/logs").text
        assert "Traceback" not in log and f"failed: {search['error']}" in log, (name, log[-2000:])
        assert str(settings.data_root) not in log + search["error"] and 'File "' not in log, (name, log[-2000:])
    assert searches["full"]["error"].startswith("disk full: OSError: [Errno 28]")
    assert searches["full"]["progress"]["step"] == searches["full"]["progress"]["total_steps"]  # failed mid-job
    assert len({s["worker_id"] for s in searches.values()}) == 1  # one worker process ran all four
    (settings.search_folder(full) / "search.json").unlink()  # nothing should ever read /dev/full (endless zeros)
    assert integrity(database_file(settings)) == "ok"


def test_failure_reasons_name_out_of_memory_and_a_full_disk() -> None:
    import torch

    assert failure_reason(MemoryError()).startswith("out of memory: MemoryError;")
    if hasattr(torch, "OutOfMemoryError"):
        assert failure_reason(torch.OutOfMemoryError("CUDA out of memory")).startswith("out of memory")
    with pytest.raises(RuntimeError) as allocation:  # torch's CPU allocator: a RuntimeError, not a MemoryError
        torch.empty(2**48, dtype=torch.uint8)  # 256 TiB: beyond any x86-64 or arm64 address space
    assert failure_reason(allocation.value).startswith("out of memory: RuntimeError")
    disk = OSError(errno.ENOSPC, "No space left on device")
    assert failure_reason(disk).startswith("disk full: OSError: [Errno 28]")
    try:
        try:
            raise disk
        except OSError as inner:
            raise RuntimeError("could not write the checkpoint") from inner
    except RuntimeError as outer:
        assert failure_reason(outer).startswith("disk full: RuntimeError: could not write the checkpoint")
    assert failure_reason(ValueError("bad")) == "ValueError: bad"


@pytest.fixture
def fresh(tmp_path) -> Iterator[tuple[Settings, sessionmaker]]:
    """A new data root and database: heartbeat 0.2 s, stale after 0.5 s, at most 2 attempts."""
    settings = Settings(data_root=tmp_path / "data", heartbeat_s=0.2, stale_after_s=0.5, max_attempts=2)
    upgrade(settings.url)
    engine = make_engine(settings.url)
    yield settings, session_factory(engine)
    engine.dispose()


def _request() -> dict:
    from search.job import SearchJob
    from search.runner import SearchConfig
    from search.settings import LatencyShape
    from supernet.settings import RunSpec

    return repo.request_dict(RunSpec(model="minilm", task="custom/toy"),
                             SearchJob(search=SearchConfig(evaluations=2), latency=LatencyShape()))


def test_memory_and_disk_errors_in_a_job_fail_it_and_the_worker_goes_on(fresh, monkeypatch) -> None:
    import search.job

    settings, factory = fresh
    ids = [queue.enqueue(factory, request=_request(), folder_root=settings.searches_root)[0].id for _ in range(2)]
    errors = iter([MemoryError(), OSError(errno.ENOSPC, "No space left on device")])

    def failing(*_args, **_kwargs):
        raise next(errors)

    monkeypatch.setattr(search.job, "run_search_job", failing)  # the job's own code, not the worker's handling
    seen: list = []
    stop_after_two = threading.Event()
    assert run_worker(settings, poll_s=0.05, shutdown=stop_after_two,
                      on_job=lambda i, s: (seen.append((i, s)), len(seen) == 2 and stop_after_two.set())) == 2
    assert seen == [(ids[0], SearchStatus.FAILED), (ids[1], SearchStatus.FAILED)]
    with factory() as session:
        first, second = (repo.get_search(session, i) for i in ids)
    assert first.error.startswith("out of memory: MemoryError") and second.error.startswith("disk full")


def test_a_worker_takes_no_job_on_a_full_disk(fresh) -> None:
    settings, factory = fresh
    search = queue.enqueue(factory, request=_request(), folder_root=settings.searches_root)[0]
    full = settings.model_copy(update={"min_free_mb": 10**12})  # more than any disk has free
    assert run_worker(full, once=True) == 0
    with factory() as session:
        assert repo.get_search(session, search.id).status == SearchStatus.QUEUED


# ------------------------------------------------------------------------------------------ retries


def test_a_job_whose_workers_die_twice_fails_and_never_runs_a_third_time(fresh) -> None:
    settings, factory = fresh
    search = queue.enqueue(factory, request=_request(), folder_root=settings.searches_root)[0]
    # two workers claim it in turn and die (no heartbeat, no finish): this test plays them
    for worker_id in ("dies-1", "dies-2"):
        assert queue.claim_next(factory, worker_id).id == search.id
        time.sleep(settings.stale_after_s + 0.2)
        if worker_id == "dies-1":
            assert queue.recover_stale(factory, settings.stale_after_s, settings.max_attempts).requeued == [search.id]
    # the next worker (max_attempts=2) finds it stale a second time: it fails the job and runs nothing
    assert run_worker(settings, once=True) == 0
    with factory() as session:
        row = repo.get_search(session, search.id)
    assert row.status == SearchStatus.FAILED and row.attempts == 2 and row.worker_id == "dies-2"
    assert "in each of 2 attempt(s); giving up" in row.error and "heartbeats" in row.error
    assert not (settings.search_folder(search.id) / "worker.log").exists()  # no third run began
    assert run_worker(settings, once=True) == 0 and queue.claim_next(factory, "another") is None
    assert integrity(database_file(settings)) == "ok"


# ------------------------------------------------------------------------------------------ startup


NOT_WRITABLE = "is not a folder this user can write ("
SAY_WHAT_TO_SET = "set NASPRUNE_DATA_ROOT (or NASPRUNE_DATABASE_URL) to one that is"


@pytest.mark.slow
def test_serve_with_an_unusable_data_root_exits_at_once_with_one_clear_line(tmp_path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    root = tmp_path / "a-file" / "data"  # its parent is a regular file: not even root can create it
    env = service_env(Settings(data_root=root), tmp_path / "cache")
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--workers", "2", "--port",
                               str(free_port())], env=env, cwd=REPO, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        _, err = server.communicate(timeout=120)  # it exits: no server left up, no workers started or restarted
    finally:
        server.kill()
    lines = err.strip().splitlines()
    assert server.returncode == 2 and len(lines) == 1, err  # one line: no traceback, no log spew
    assert lines[0].startswith(f"nasprune: error: data root {root} {NOT_WRITABLE}Not a directory)"), err
    assert lines[0].endswith(SAY_WHAT_TO_SET), err


@pytest.mark.parametrize("problem", ["parent is a file", "under /proc", "disk full"])
@pytest.mark.parametrize("argv", [["serve", "--workers", "1"], ["worker"], ["db", "upgrade"]], ids=" ".join)
def test_every_command_stops_on_an_unusable_data_root_with_one_clear_line(argv, problem, tmp_path, monkeypatch,
                                                                          capsys) -> None:
    """The same checks as the process above, through the CLI's main() in this process (no torch import to pay)."""
    from conftest import cli

    from service.config import get_settings

    (tmp_path / "a-file").write_text("not a folder")
    root = {"parent is a file": tmp_path / "a-file" / "data", "under /proc": Path("/proc/nasprune-data"),
            "disk full": tmp_path / "data"}[problem]
    monkeypatch.setenv("NASPRUNE_DATA_ROOT", str(root))
    monkeypatch.delenv("NASPRUNE_DATABASE_URL", raising=False)
    if problem == "disk full":
        monkeypatch.setenv("NASPRUNE_MIN_FREE_MB", str(10**12))  # more than any disk has free
    get_settings.cache_clear()
    try:
        assert cli(argv) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    if problem == "disk full":
        assert err[0].startswith("nasprune: error: disk full: only "), err
        assert f"MB free under {root}, below NASPRUNE_MIN_FREE_MB=1000000000000" in err[0], err
        assert not (root / "nasprune.db").exists()  # nothing was started
    else:
        assert err[0].startswith(f"nasprune: error: data root {root} {NOT_WRITABLE}") and err[0].endswith(
            SAY_WHAT_TO_SET), err


def _pool(code: str, **kwargs):
    from service.supervisor import WorkerPool

    return WorkerPool([sys.executable, "-c", code], {}, 2, poll_s=0.05, **kwargs)


def test_serve_does_not_restart_workers_that_die_at_startup() -> None:
    pool = _pool("import sys; sys.exit(3)", min_uptime_s=30, max_quick_exits=3).start()
    try:
        deadline = time.monotonic() + 30
        while any(p is not None for p in pool.processes):
            assert time.monotonic() < deadline, pool.processes
            time.sleep(0.05)
        time.sleep(0.3)  # a few more looks: nothing more is started
        assert pool.starts == 2 * 3 and pool.pids() == []
    finally:
        pool.stop()


def test_serve_replaces_a_worker_killed_while_running_and_stops_them_all() -> None:
    pool = _pool("import time; time.sleep(120)", min_uptime_s=0.2).start()
    try:
        time.sleep(0.3)
        first = pool.pids()
        assert len(first) == 2
        victim = pool.processes[0]
        victim.kill()  # SIGKILL, as the OOM killer would
        deadline = time.monotonic() + 30
        while len(set(pool.pids()) - set(first)) < 1:
            assert time.monotonic() < deadline, pool.pids()
            time.sleep(0.05)
        assert len(pool.pids()) == 2 and first[1] in pool.pids() and victim.pid not in pool.pids()
    finally:
        processes = [p for p in pool.processes if p is not None]
        pool.stop(timeout_s=5)
    assert all(p.returncode is not None for p in processes)  # stopped and reaped
