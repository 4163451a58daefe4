"""Running queued jobs on a Ray cluster (`NASPRUNE_EXECUTOR=ray`): one Ray job per queued job.

The database stays the store of record, exactly as with local workers: a Ray job runs `nasprune worker --job
KIND:ID`, which claims that one job in the database (atomically: a job submitted twice still runs once),
heartbeats while it runs, honours cancels, checkpoints and ends it. The dispatcher (`RayDispatcher.tick`, run in a
loop by `nasprune serve`) only decides what to submit and what to stop:

* every queued job without a live Ray job gets one, with the resources it needs (a GPU for a job that asks for
  `cuda`, else CPUs; memory for searches, refinements, compressions and shares), under the submission id
  `nasprune-<kind>-<job id>-a<attempts>-<n>`, so `ray job list` shows which job each Ray job runs;
* a job whose cancel was requested, that was deleted, or that was taken back after its worker went silent (a killed
  Ray worker: `recover_stale` requeues it with attempts + 1, and its old Ray job is stopped) has its live Ray jobs
  stopped; the requeued job is then submitted afresh and resumes from its checkpoints.

The dispatcher keeps no state of its own: what runs is read back from Ray (`list_jobs`) every tick, so a restarted
server neither loses nor doubles a submission.
"""

from __future__ import annotations

import logging
import re
import shlex
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import select

from . import compressions, queue, refinements, shares
from . import repository as repo
from .config import Settings
from .models import (
    Compression,
    CompressionStatus,
    Export,
    ExportStatus,
    Refinement,
    RefinementStatus,
    Search,
    SearchStatus,
    Share,
    ShareStatus,
)

log = logging.getLogger(__name__)

PREFIX = "nasprune"
SUBMISSION = re.compile(rf"^{PREFIX}-(search|refinement|compression|share|export)-([A-Za-z0-9]+)-a(\d+)-(\d+)$")
LIVE = ("PENDING", "RUNNING")
TABLES: dict[str, queue.JobTable] = {"export": queue.EXPORTS, "search": queue.SEARCHES,
                                     "refinement": refinements.REFINEMENTS,
                                     "compression": compressions.COMPRESSIONS, "share": shares.SHARES}


class JobClient(Protocol):
    """The part of `ray.job_submission.JobSubmissionClient` the dispatcher uses (tests pass a fake)."""

    def submit_job(self, *, entrypoint: str, submission_id: str, runtime_env: dict[str, Any] | None = None,
                   entrypoint_num_cpus: float | None = None, entrypoint_num_gpus: float | None = None,
                   entrypoint_memory: int | None = None) -> str: ...

    def list_jobs(self) -> list[Any]: ...

    def stop_job(self, job_id: str) -> bool: ...


def submission_id(kind: str, job_id: Any, attempts: int, n: int) -> str:
    return f"{PREFIX}-{kind}-{job_id}-a{attempts}-{n}"


@dataclass(frozen=True)
class Submission:
    id: str
    kind: str
    job_id: str
    attempts: int
    n: int
    status: str

    @property
    def live(self) -> bool:
        return self.status in LIVE


def read_submissions(client: JobClient) -> list[Submission]:
    """nasprune's Ray jobs, with their status ('PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'STOPPED')."""
    found = []
    for details in client.list_jobs():
        match = SUBMISSION.match(getattr(details, "submission_id", None) or "")
        if match:
            status = getattr(details.status, "value", details.status)
            found.append(Submission(match.group(0), match.group(1), match.group(2), int(match.group(3)),
                                    int(match.group(4)), str(status)))
    return found


@dataclass(frozen=True)
class QueuedJob:
    kind: str
    id: str
    attempts: int
    wants_gpu: bool


def _wants_gpu(request: dict[str, Any] | None) -> bool:
    """A search (or a refinement of it) that asked for CUDA explicitly; `auto` runs where Ray puts it."""
    device = repo.parse_compute(request or {}).device
    return device.startswith("cuda")


def queued_jobs(factory: queue.SessionFactory) -> list[QueuedJob]:
    with factory() as session:
        jobs = [QueuedJob("export", str(e.id), e.attempts, False)
                for e in session.scalars(select(Export).where(Export.status == ExportStatus.QUEUED))]
        jobs += [QueuedJob("search", s.id, s.attempts, _wants_gpu(s.request))
                 for s in session.scalars(select(Search).where(Search.status == SearchStatus.QUEUED))]
        for r in session.scalars(select(Refinement).where(Refinement.status == RefinementStatus.QUEUED)):
            search = session.get(Search, r.search_id)
            jobs.append(QueuedJob("refinement", r.id, r.attempts, _wants_gpu(search.request if search else None)))
        for c in session.scalars(select(Compression).where(Compression.status == CompressionStatus.QUEUED)):
            search = session.get(Search, c.search_id)
            jobs.append(QueuedJob("compression", c.id, c.attempts, _wants_gpu(search.request if search else None)))
        jobs += [QueuedJob("share", s.id, s.attempts, _wants_gpu(s.request))
                 for s in session.scalars(select(Share).where(Share.status == ShareStatus.QUEUED))]
    return jobs


def _job_state(factory: queue.SessionFactory, kind: str, job_id: str) -> tuple[Any, int, bool] | None:
    """(status, attempts, cancel_requested) of a job; None once it is deleted."""
    table = TABLES[kind]
    with factory() as session:
        row = session.get(table.model, queue.job_key(kind, job_id))
        return None if row is None else (row.status, row.attempts, row.cancel_requested)


class RayDispatcher:
    """Submits queued jobs to Ray and stops the Ray jobs that must not run on (see the module's docstring)."""

    def __init__(self, settings: Settings, factory: queue.SessionFactory, client: JobClient, *,
                 env: dict[str, str] | None = None) -> None:
        self.settings, self.factory, self.client = settings, factory, client
        self.env = env if env is not None else worker_environment(settings)

    def tick(self) -> dict[str, list[str]]:
        """One pass; what it submitted and stopped (submission ids)."""
        for table in TABLES.values():  # a killed Ray worker's job goes back to the queue (attempts + 1)
            table.recover_stale(self.factory, self.settings.stale_after_s, self.settings.max_attempts)
        submissions = read_submissions(self.client)
        stopped = self._stop_unwanted(submissions)
        live = {(s.kind, s.job_id, s.attempts) for s in submissions if s.live and s.id not in stopped}
        submitted = []
        for job in queued_jobs(self.factory):
            if (job.kind, job.id, job.attempts) in live:
                continue
            earlier = [s for s in submissions if (s.kind, s.job_id, s.attempts) == (job.kind, job.id, job.attempts)]
            failed = [s.id for s in earlier if s.status == "FAILED"]
            if len(failed) >= self.settings.max_attempts:  # its Ray jobs die before they claim it: a broken node
                TABLES[job.kind].finish(self.factory, queue.job_key(job.kind, job.id),
                                        TABLES[job.kind].status("failed"),
                                        f"its Ray jobs failed {len(failed)} times before starting it (see `ray job "
                                        f"logs {failed[-1]}`): the cluster's nodes cannot run nasprune")
                continue
            submitted.append(self._submit(job, max((s.n for s in earlier), default=-1) + 1))
        return {"submitted": submitted, "stopped": stopped}

    def _stop_unwanted(self, submissions: Iterable[Submission]) -> list[str]:
        """Live Ray jobs of jobs that were cancelled, deleted, or requeued under a later attempt. (A job that ended
        otherwise leaves its Ray job to end by itself: its worker exits right after.)"""
        stopped = []
        for s in submissions:
            if not s.live:
                continue
            state = _job_state(self.factory, s.kind, s.job_id)
            if state is None:
                reason = "its job was deleted"
            else:
                status, attempts, cancel = state
                table = TABLES[s.kind]
                if cancel:
                    reason = "its job's cancel was requested"
                elif attempts != s.attempts and status not in table.ended:
                    reason = f"its job was taken back and requeued (attempts {attempts})"
                else:
                    continue
            log.info("stopping Ray job %s: %s", s.id, reason)
            try:
                self.client.stop_job(s.id)
            except Exception as exc:  # noqa: BLE001 (already ended: nothing to stop)
                log.warning("could not stop Ray job %s: %s", s.id, exc)
            stopped.append(s.id)
        return stopped

    def _submit(self, job: QueuedJob, n: int) -> str:
        sid = submission_id(job.kind, job.id, job.attempts, n)
        heavy = job.kind != "export"
        options: dict[str, Any] = {"entrypoint_num_cpus": self.settings.ray_num_cpus if heavy else 1}
        if job.wants_gpu:
            options["entrypoint_num_gpus"] = 1
        if heavy and self.settings.ray_memory_mb:
            options["entrypoint_memory"] = self.settings.ray_memory_mb * 2**20
        entrypoint = f"{self.settings.ray_worker_command} worker --job {shlex.quote(f'{job.kind}:{job.id}')}"
        try:
            self.client.submit_job(entrypoint=entrypoint, submission_id=sid, runtime_env={"env_vars": self.env},
                                   **options)
            log.info("submitted %s %s to Ray as %s (%s)", job.kind, job.id, sid, options)
        except RuntimeError as exc:  # submitted by another dispatcher a moment ago: the claim keeps it to one run
            if "already exists" not in str(exc):
                raise
        return sid


def worker_environment(settings: Settings) -> dict[str, str]:
    """The NASPRUNE_* settings a Ray job's worker needs to reach the same database and data root."""
    import json

    env = {"NASPRUNE_DATA_ROOT": str(settings.data_root), "NASPRUNE_DATABASE_URL": settings.url,
           "NASPRUNE_ALLOWED_MODEL_ROOTS": json.dumps([str(p) for p in settings.allowed_model_roots]),
           "NASPRUNE_ALLOWED_DATA_ROOTS": json.dumps([str(p) for p in settings.allowed_data_roots]),
           "NASPRUNE_HEARTBEAT_S": str(settings.heartbeat_s), "NASPRUNE_STALE_AFTER_S": str(settings.stale_after_s),
           "NASPRUNE_MAX_ATTEMPTS": str(settings.max_attempts), "NASPRUNE_MIN_FREE_MB": str(settings.min_free_mb)}
    return env


def ray_client(settings: Settings) -> JobClient:
    """Ray's job submission client for `settings.ray_address` (`pip install 'nasprune[ray]'`)."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise RuntimeError("NASPRUNE_EXECUTOR=ray needs Ray: pip install 'nasprune[ray]'") from None
    return JobSubmissionClient(settings.ray_address)


class DispatchLoop(threading.Thread):
    """`RayDispatcher.tick` every `poll_s` until stopped; an error (Ray or the database unreachable) is logged and
    retried, never fatal: the jobs wait in the queue."""

    def __init__(self, dispatcher: RayDispatcher, poll_s: float = 2.0) -> None:
        super().__init__(name="ray-dispatcher", daemon=True)
        self.dispatcher, self.poll_s = dispatcher, poll_s
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.dispatcher.tick()
            except Exception:  # noqa: BLE001
                log.exception("Ray dispatcher: tick failed; retrying in %g s", self.poll_s)
            self.stopping.wait(self.poll_s)

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join()
