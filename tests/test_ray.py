"""NASPRUNE_EXECUTOR=ray: one Ray job per queued job, the database still the store of record (service/executors.py).

The dispatch rules against a fake job client (no processes), the same with a fake client that runs each
submission's entrypoint as a real `nasprune worker --job` process, and end to end against a real Ray head started
here on loopback (`pip install 'nasprune[ray]'`; skipped, saying so, without Ray).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO, search_body, wait_for

from service import repository as repo
from service.db import make_engine, session_factory
from service.executors import RayDispatcher, read_submissions, submission_id
from service.models import Search

TERMINAL = ("succeeded", "failed", "cancelled")


class FakeRay:
    """The job client's calls, recorded; with `run`, each submission's entrypoint runs as a real process."""

    def __init__(self, *, run: bool = False, env: dict[str, str] | None = None) -> None:
        self.jobs: dict[str, dict] = {}
        self.run, self.env = run, env or {}

    def submit_job(self, *, entrypoint, submission_id, runtime_env=None, **options) -> str:
        if submission_id in self.jobs:
            raise RuntimeError(f"Job with submission_id {submission_id} already exists")
        job = {"entrypoint": entrypoint, "options": options, "env": (runtime_env or {}).get("env_vars", {}),
               "status": "PENDING", "process": None}
        if self.run:
            job["process"] = subprocess.Popen(shlex.split(entrypoint), env=self.env | job["env"], cwd=REPO,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            job["status"] = "RUNNING"
        self.jobs[submission_id] = job
        return submission_id

    def list_jobs(self) -> list:
        for job in self.jobs.values():
            process = job["process"]
            if process is not None and job["status"] == "RUNNING" and process.poll() is not None:
                job["status"] = "SUCCEEDED" if process.returncode == 0 else "FAILED"
        return [SimpleNamespace(submission_id=sid, status=job["status"]) for sid, job in self.jobs.items()]

    def stop_job(self, job_id: str) -> bool:
        job = self.jobs[job_id]
        if job["process"] is not None and job["process"].poll() is None:
            job["process"].terminate()
            job["process"].wait(timeout=60)
        job["status"] = "STOPPED"
        return True


@pytest.fixture
def factory(settings):
    from service.db import upgrade

    upgrade(settings.url)
    return session_factory(make_engine(settings.url))


def queue_search(factory, settings, workspace, **compute) -> str:
    from search.settings import SearchSettings
    from supernet.settings import Compute

    body = search_body(workspace, ["error", "params"], 2)
    body["custom"]["name"] = "toy"
    spec, job = SearchSettings.model_validate(body).split()
    with factory.begin() as session:
        search, _ = repo.create_search(session, request=repo.request_dict(spec, job, Compute(**compute)),
                                       folder_root=settings.searches_root)
        return search.id


def test_submission_ids_name_the_job_and_read_back() -> None:
    fake = FakeRay()
    fake.submit_job(entrypoint="x", submission_id=submission_id("search", "ab12", 1, 0))
    fake.submit_job(entrypoint="x", submission_id="someone-elses-job")
    (found,) = read_submissions(fake)
    assert (found.kind, found.job_id, found.attempts, found.n, found.live) == ("search", "ab12", 1, 0, True)


def test_the_dispatcher_submits_each_queued_job_once_with_its_resources(settings, factory, workspace) -> None:
    cpu = queue_search(factory, settings, workspace, device="cpu")
    gpu = queue_search(factory, settings, workspace, device="cuda")
    fake = FakeRay()
    dispatcher = RayDispatcher(settings, factory, fake, env={"NASPRUNE_X": "1"})
    first = dispatcher.tick()
    assert sorted(first["submitted"]) == sorted([f"nasprune-search-{cpu}-a0-0", f"nasprune-search-{gpu}-a0-0"])
    assert dispatcher.tick()["submitted"] == []  # a live submission is not doubled
    job = fake.jobs[f"nasprune-search-{gpu}-a0-0"]
    assert job["options"] == {"entrypoint_num_cpus": 2.0, "entrypoint_num_gpus": 1,
                              "entrypoint_memory": 4096 * 2**20}
    assert job["entrypoint"] == f"nasprune worker --job search:{gpu}" and job["env"] == {"NASPRUNE_X": "1"}
    assert "entrypoint_num_gpus" not in fake.jobs[f"nasprune-search-{cpu}-a0-0"]["options"]

    # a Ray job that died before claiming its job: submitted again, until max_attempts of them failed
    for n in range(settings.max_attempts):
        fake.jobs[f"nasprune-search-{cpu}-a0-{n}"]["status"] = "FAILED"
        submitted = dispatcher.tick()["submitted"]
        if n + 1 < settings.max_attempts:
            assert submitted == [f"nasprune-search-{cpu}-a0-{n + 1}"]
    with factory() as session:
        failed = session.get(Search, cpu)
        assert failed.status.value == "failed" and "Ray jobs failed 3 times" in failed.error

    # a cancel stops the live Ray job; the search (queued) is cancelled at once by the API's rule
    with factory.begin() as session:
        repo.request_cancel(session, gpu)
    assert dispatcher.tick()["stopped"] == [f"nasprune-search-{gpu}-a0-0"]
    assert fake.jobs[f"nasprune-search-{gpu}-a0-0"]["status"] == "STOPPED"


def test_a_job_taken_back_from_a_silent_worker_gets_a_new_ray_job(settings, factory, workspace) -> None:
    from service import queue

    search_id = queue_search(factory, settings, workspace, device="cpu")
    fake = FakeRay()
    dispatcher = RayDispatcher(settings, factory, fake, env={})
    dispatcher.tick()
    assert queue.SEARCHES.claim(factory, "ray-worker", search_id) is not None  # the Ray job's worker took it
    fake.jobs[f"nasprune-search-{search_id}-a0-0"]["status"] = "RUNNING"
    assert dispatcher.tick() == {"submitted": [], "stopped": []}
    with factory.begin() as session:  # then it fell silent: no heartbeat for longer than stale_after_s
        row = session.get(Search, search_id)
        row.heartbeat_at = row.heartbeat_at.replace(year=2000)
    result = dispatcher.tick()
    assert result == {"submitted": [f"nasprune-search-{search_id}-a1-0"],
                      "stopped": [f"nasprune-search-{search_id}-a0-0"]}
    with factory.begin() as session:  # leaves the module's queue empty
        repo.request_cancel(session, search_id)


@pytest.mark.slow
def test_a_search_runs_through_ray_jobs_that_run_real_workers(client, settings, factory, workspace, worker_env) -> None:
    """The fake client runs each submission's entrypoint, `nasprune worker --job search:ID`, as a real process."""
    search_id = client.post("/searches", json=search_body(workspace, ["error", "params"], 3,
                                                          compute={"device": "cpu"})).json()["id"]
    fake = FakeRay(run=True, env=worker_env)
    dispatcher = RayDispatcher(settings.model_copy(update={"ray_worker_command": f"{sys.executable} -m service.cli"}),
                               factory, fake, env={})
    deadline = time.monotonic() + 180
    while (status := client.get(f"/searches/{search_id}").json())["status"] not in TERMINAL:
        dispatcher.tick()
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["status"] == "succeeded", status["error"]
    assert status["device"] == "cpu"
    assert [sid for sid in fake.jobs if search_id in sid] == [f"nasprune-search-{search_id}-a0-0"]
    fake.jobs[f"nasprune-search-{search_id}-a0-0"]["process"].wait(timeout=60)  # the worker exits after the job
    fake.list_jobs()
    assert fake.jobs[f"nasprune-search-{search_id}-a0-0"]["status"] == "SUCCEEDED"
    assert len(client.get(f"/searches/{search_id}/trials").json()["items"]) == 3


# --------------------------------------------------------------------------------------------- a real Ray head


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head` on loopback, stopped (its whole process group) when the module ends."""
    pytest.importorskip("ray.job_submission", reason="Ray is not installed: pip install 'nasprune[ray]'")
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray is None:
        pytest.skip("the ray command is not on the PATH")
    temp = Path("/tmp") / f"ray-{os.getpid()}"  # Ray's socket paths must stay short
    port, dashboard = free_port(), free_port()
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen([ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
                             "--num-cpus", "4", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                             "--temp-dir", str(temp), "--disable-usage-stats", "--include-dashboard", "true"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + 120
    client = None
    while client is None:
        try:
            client = JobSubmissionClient(address)
            client.list_jobs()
        except Exception:  # noqa: BLE001 (not up yet)
            client = None
            if head.poll() is not None or time.monotonic() > deadline:
                head.kill()
                pytest.fail(f"the Ray head did not come up (exit {head.poll()})")
            time.sleep(1)
    try:
        yield SimpleNamespace(address=address, client=client)
    finally:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            try:
                os.killpg(head.pid, sig)
                head.wait(timeout=wait)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        # what the head started in sessions of its own: every process of this cluster names its temp dir
        subprocess.run(["pkill", "-KILL", "-f", str(temp)], capture_output=True, timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def ray_ended(head, sid: str, timeout_s: float = 60.0) -> str:
    """The Ray job's end status, once it has one (its worker exits a moment after it ended the job)."""
    deadline = time.monotonic() + timeout_s
    while (status := str(head.client.get_job_status(sid).value)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, f"{sid} still {status}"
        time.sleep(0.5)
    return status


@pytest.mark.slow
def test_searches_through_a_real_ray_cluster(ray_head, client, settings, factory, workspace, worker_env) -> None:
    """A tiny search succeeds through Ray, though its Ray worker is killed mid-job: the job is taken back and
    finished by a new Ray job, with no trial stored twice. A cancel stops its Ray job."""
    from service.executors import DispatchLoop

    ray_settings = settings.model_copy(update={"ray_worker_command": f"{sys.executable} -m service.cli",
                                               "ray_num_cpus": 1.0, "ray_memory_mb": 0})
    env = {k: v for k, v in worker_env.items() if k.startswith(("NASPRUNE_", "HF_", "OMP_", "TOKENIZERS"))}
    env["PYTHONPATH"] = str(REPO)
    loop = DispatchLoop(RayDispatcher(ray_settings, factory, ray_head.client, env=env), poll_s=0.5)
    loop.start()
    try:
        # 1. a search run by a Ray job named after it; its Ray worker killed mid-search: the job is taken back and
        # finished by a new Ray job
        evaluations = 40
        killed = client.post("/searches", json=search_body(workspace, ["error", "params"], evaluations,
                                                           compute={"device": "cpu"})).json()["id"]
        running = wait_for(client, killed, lambda s: s["progress"]["evaluations_done"] >= 1 or s["status"] in
                           TERMINAL, timeout_s=300, what="a trial")
        assert running["status"] not in TERMINAL, running
        os.kill(int(running["worker_id"].split(":")[1]), signal.SIGKILL)  # host:pid:random
        final = wait_for(client, killed, lambda s: s["status"] in TERMINAL, timeout_s=300, what="the takeover")
        assert final["status"] == "succeeded" and final["attempts"] == 1, final
        trials = client.get(f"/searches/{killed}/trials?limit=100").json()["items"]
        configs = {str(t["config"]) for t in trials}
        assert len(trials) == len(configs) == evaluations
        assert ray_ended(ray_head, f"nasprune-search-{killed}-a0-0") == "FAILED"  # its worker killed
        assert ray_ended(ray_head, f"nasprune-search-{killed}-a1-0") == "SUCCEEDED"

        # 2. a cancel stops the search and its Ray job
        cancelled = client.post("/searches", json=search_body(workspace, ["error", "params"], 400,
                                                              compute={"device": "cpu"})).json()["id"]
        wait_for(client, cancelled, lambda s: s["status"] not in ("queued",), timeout_s=300, what="a claim")
        client.post(f"/searches/{cancelled}/cancel")
        final = wait_for(client, cancelled, lambda s: s["status"] in TERMINAL, timeout_s=120, what="the cancel")
        assert final["status"] == "cancelled"
        assert ray_ended(ray_head, f"nasprune-search-{cancelled}-a0-0") in ("STOPPED", "SUCCEEDED")
    finally:
        loop.stop()
