"""The worker: claim a queued search, run it with `search.job.run_search_job`, persist what it produces.

    loop: recover_stale -> claim_next -> run the job -> store front -> finish (succeeded | failed | cancelled)

With no search to claim, it claims a refinement (service/refinements.py: one front point of a finished search to
refine on demand) and runs `search.job.refine_points` on it (`RefinementRunner`): the same heartbeat, cancel,
release and failure rules, logged to the search's worker.log; on success only that point's row is updated
(`repository.set_refined`) and its cached refined exports, built from the model just replaced, are deleted.

One job at a time per process; run several processes for parallel jobs (`nasprune serve --workers N` or several
`nasprune worker`). While a job runs:
  * a heartbeat thread stamps the row every `Settings.heartbeat_s`. A thread rather than the training or search
    callbacks, because some stages call no callback for a long time (loading the model, latency calibration,
    the test re-evaluation of the front) and a long silence would make the job look dead. When the heartbeat
    says the job is no longer ours (cancel requested, or taken over after we looked dead) the thread sets a
    flag that `should_stop` returns, and the run stops at its next training step or trial;
  * `on_train_step` writes progress (epoch, step, total_steps, eta), throttled;
  * `on_trial` stores each trial (`repository.add_trial`, idempotent) and the search progress, and moves the
    status to searching on the first trial and to exporting (test re-evaluation, front) after the last;
  * `on_refine` (only for a job that refines its front: SearchJob.refine) reports the refining of the front
    points as stage "refining <done>/<total>" with an eta; the status stays exporting.

Resuming: a job whose worker died goes back to the queue (`queue.recover_stale`) and the next worker calls
`run_search_job` on the same folder, which resumes from checkpoint.pt and trials.jsonl. trials.jsonl is the
source of truth (a trial is appended there before `on_trial` stores it), so before running, the worker copies
any trial of trials.jsonl the database lacks; the search never re-evaluates a trial in trials.jsonl.

Failures: any exception in a job marks that job failed (its `error` and worker.log say why) and the worker goes on
with the next job. Out of memory (MemoryError, torch's allocator errors) and a full disk (ENOSPC) get a reason that
says so (`failure_reason`). On a disk below `Settings.min_free_mb` the worker takes no job until space is freed,
rather than fail every queued job in turn.

Each job's log goes to <search folder>/worker.log (a FileHandler on the root logger while the job runs).
"""

from __future__ import annotations

import errno
import json
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import queue, refinements
from . import repository as repo
from .config import Settings
from .db import check_schema, make_engine, session_factory
from .models import RUNNING_STATUSES, Refinement, RefinementStatus, Search, SearchStatus
from .startup import low_disk

if TYPE_CHECKING:
    from search.runner import SearchResult, Trial
    from supernet.training import TrainState

log = logging.getLogger(__name__)

LOG_FILE = "worker.log"
PROGRESS_EVERY_S = 1.0  # at most one progress write per second from the training loop
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class _JobState:
    """What the callbacks of one job share."""

    search_id: str
    worker_id: str
    evaluations_total: int
    time_limit_s: float | None
    stop: threading.Event = field(default_factory=threading.Event)  # set: the run must stop
    lost: threading.Event = field(default_factory=threading.Event)  # set: no longer our job (or cancel asked)
    train_start: float | None = None
    train_start_step: int = 0
    last_progress: float = 0.0
    search_start: float | None = None
    search_start_done: int = 0
    evaluations_done: int = 0
    refine_start: float | None = None
    refine_start_done: int = 0
    status: SearchStatus = SearchStatus.TRAINING


class Heartbeat(threading.Thread):
    """Calls `beat` every `interval_s`; once it returns False (the job is not ours any more, or a cancel was asked)
    sets `lost` and `stop`. Searches and refinements share it, each with its queue's heartbeat."""

    def __init__(self, beat: Callable[[], bool], lost: threading.Event, stop: threading.Event, interval_s: float,
                 what: str) -> None:
        super().__init__(name=f"heartbeat-{what}", daemon=True)
        self.beat, self.lost, self.stop, self.interval_s, self.what = beat, lost, stop, interval_s, what
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval_s):
            try:
                alive = self.beat()
            except Exception:  # a database hiccup: try again next time rather than kill the job
                log.exception("heartbeat of %s failed", self.what)
                continue
            if not alive:
                self.lost.set()
                self.stop.set()
                return


def _attach_log(folder: Path) -> tuple[logging.Handler, int]:
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / LOG_FILE, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    previous = root.level
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler, previous


def _detach_log(handler: logging.Handler, previous: int) -> None:
    root = logging.getLogger()
    root.removeHandler(handler)
    root.setLevel(previous)
    handler.close()


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# torch's CPU allocator fails with a plain RuntimeError ("DefaultCPUAllocator: can't allocate memory: ...")
TORCH_OOM_MESSAGES = ("can't allocate memory", "not enough memory", "out of memory")


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # loaded if the error can be torch's; never imported just to check
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in TORCH_OOM_MESSAGES)


def failure_reason(exc: BaseException, settings: Settings | None = None) -> str:
    """The `error` of a failed job: the exception, prefixed with "out of memory" or "disk full" (and what to do)
    when that is the cause, so a user can tell a bad request from a machine that ran out of room."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    causes = _causes(exc)
    if any(isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS for e in causes):
        return f"disk full: {text}; free some space on the data root's disk and submit the search again"
    if any(_out_of_memory(e) for e in causes):
        return (f"out of memory: {text}; try a smaller model, batch_size, eval_batch_size or max_length, or a "
                "worker with more memory")
    if settings is not None and (low := low_disk(settings)):  # e.g. torch.save's "file write failed"
        return f"{low}; the job failed with {text}"
    return text


def _sync_trials(factory: queue.SessionFactory, search_id: str, folder: Path) -> int:
    """Store the trials of trials.jsonl the database lacks (a worker killed between the two writes)."""
    from search.job import read_trials

    trials = read_trials(folder)
    added = 0
    with factory.begin() as session:
        for trial in trials:
            added += repo.add_trial(session, search_id, trial)
        if trials:
            repo.update_progress(session, search_id, evaluations_done=repo.count_trials(session, search_id))
    if added:
        log.info("search %s: copied %d trial(s) of trials.jsonl to the database", search_id, added)
    return len(trials)


class JobRunner:
    """Runs one claimed search to its end state."""

    def __init__(self, settings: Settings, factory: queue.SessionFactory, search: Search, worker_id: str,
                 shutdown: threading.Event) -> None:
        self.settings, self.factory, self.search, self.worker_id = settings, factory, search, worker_id
        self.shutdown = shutdown
        self.folder = Path(search.folder) if search.folder else settings.search_folder(search.id)

    # ------------------------------------------------------------------ callbacks

    def _progress(self, **fields: Any) -> None:
        with self.factory.begin() as session:
            repo.update_progress(session, self.search.id, **fields)

    def _advance(self, state: _JobState, status: SearchStatus) -> None:
        if state.status == status:
            return
        if queue.advance(self.factory, state.search_id, state.worker_id, status):
            state.status = status
        else:
            state.lost.set()
            state.stop.set()

    def on_train_step(self, state: _JobState, train: TrainState) -> None:
        now = time.monotonic()
        if state.train_start is None:
            state.train_start, state.train_start_step = now, train.step - 1
        last = train.step >= train.total_steps
        if not last and now - state.last_progress < min(PROGRESS_EVERY_S, self.settings.heartbeat_s):
            return
        state.last_progress = now
        done = train.step - state.train_start_step
        eta = (now - state.train_start) / done * (train.total_steps - train.step) if done > 0 else None
        self._progress(stage="training", epoch=train.epoch, step=train.step, total_steps=train.total_steps,
                       eta_s=eta)

    def on_trial(self, state: _JobState, trial: Trial, current: SearchResult) -> None:
        now = time.monotonic()
        with self.factory.begin() as session:
            repo.add_trial(session, state.search_id, trial)
            done = repo.count_trials(session, state.search_id)
            if state.search_start is None:
                state.search_start, state.search_start_done = now, done - 1
            per_trial = (now - state.search_start) / max(done - state.search_start_done, 1)
            eta = per_trial * max(state.evaluations_total - done, 0)
            if state.time_limit_s is not None:
                eta = min(eta, max(state.time_limit_s - trial.elapsed_s, 0.0))
            finished = done >= state.evaluations_total
            repo.update_progress(session, state.search_id, stage="test evaluation" if finished else "searching",
                                 evaluations_done=done, evaluations_total=state.evaluations_total,
                                 hypervolume=current.hypervolume, eta_s=None if finished else eta)
        state.evaluations_done = done
        self._advance(state, SearchStatus.EXPORTING if finished else SearchStatus.SEARCHING)

    def on_refine(self, state: _JobState, done: int, total: int) -> None:
        """Before each front point is refined, and once at the end (done == total)."""
        now = time.monotonic()
        if state.refine_start is None:
            state.refine_start, state.refine_start_done = now, done
        refined = done - state.refine_start_done  # points refined by this run (a resumed job skips earlier ones)
        eta = (now - state.refine_start) / refined * (total - done) if refined > 0 else None
        self._progress(stage=f"refining {done}/{total}", eta_s=eta)
        self._advance(state, SearchStatus.EXPORTING)
        if done < total:
            log.info("search %s: refining front point %d of %d", state.search_id, done + 1, total)
        else:
            log.info("search %s: %d front point(s) refined", state.search_id, total)

    def should_stop(self, state: _JobState) -> bool:
        if self.shutdown.is_set():
            state.stop.set()
        return state.stop.is_set()

    # ------------------------------------------------------------------ the job

    def run(self) -> SearchStatus | None:
        """Run the job; the status it ended with (None: it stopped without ending: released or taken over)."""
        handler, previous = _attach_log(self.folder)
        try:
            log.info("worker %s: running search %s (attempt %d) in %s", self.worker_id, self.search.id,
                     self.search.attempts + 1, self.folder)
            return self._run()
        finally:
            _detach_log(handler, previous)

    def _run(self) -> SearchStatus | None:
        from search.job import FRONT_FILE, run_search_job

        search_id = self.search.id
        try:
            spec, job = repo.parse_request(self.search.request)
        except repo.InvalidArgument as exc:
            log.error("search %s: %s", search_id, exc)
            return self._finish(SearchStatus.FAILED, str(exc))
        state = _JobState(search_id=search_id, worker_id=self.worker_id, evaluations_total=job.search.evaluations,
                          time_limit_s=job.search.time_limit_s)
        beat = Heartbeat(lambda: queue.heartbeat(self.factory, search_id, self.worker_id), state.lost, state.stop,
                         self.settings.heartbeat_s, f"search {search_id}")
        beat.start()
        try:
            self._progress(folder=str(self.folder), evaluations_total=job.search.evaluations, stage="training")
            done = _sync_trials(self.factory, search_id, self.folder)
            if done:
                log.info("search %s: resuming with %d trial(s) done", search_id, done)
            result = run_search_job(
                spec, job, folder=self.folder, progress=False,
                on_train_step=lambda train: self.on_train_step(state, train),
                on_trial=lambda trial, current: self.on_trial(state, trial, current),
                on_refine=lambda done, total: self.on_refine(state, done, total),
                should_stop=lambda: self.should_stop(state))
            if result is None:
                return self._stopped(state)
            self._advance(state, SearchStatus.EXPORTING)
            if state.lost.is_set():
                return self._stopped(state)
            front = json.loads((self.folder / FRONT_FILE).read_text())
            with self.factory.begin() as session:
                repo.replace_front(session, search_id, front["points"])
                repo.update_progress(session, search_id, stage="done", hypervolume=front.get("hypervolume"),
                                     evaluations_done=repo.count_trials(session, search_id))
            return self._finish(SearchStatus.SUCCEEDED)
        except Exception as exc:  # MemoryError included: one job out of memory must not take the worker down
            log.error("search %s failed:\n%s", search_id, traceback.format_exc())
            if state.lost.is_set():  # e.g. the search folder deleted under us after a takeover
                return self._stopped(state)
            return self._finish(SearchStatus.FAILED, failure_reason(exc, self.settings))
        finally:
            beat.done.set()
            beat.join()

    def _finish(self, status: SearchStatus, error: str | None = None) -> SearchStatus | None:
        ended = queue.finish(self.factory, self.search.id, status, error, worker_id=self.worker_id)
        return status if ended else None

    def _stopped(self, state: _JobState) -> SearchStatus | None:
        """The run stopped early: cancelled, taken over, or this worker is shutting down."""
        with self.factory() as session:
            row = repo.get_search(session, state.search_id)
            cancel, owner, status = row.cancel_requested, row.worker_id, row.status
        if cancel and owner == self.worker_id and status in RUNNING_STATUSES:
            log.info("search %s cancelled; %d trial(s) kept", state.search_id, state.evaluations_done)
            return self._finish(SearchStatus.CANCELLED)
        if self.shutdown.is_set() and not state.lost.is_set():
            if queue.release(self.factory, state.search_id, self.worker_id):
                log.info("search %s released to the queue (worker shutting down)", state.search_id)
            return None
        log.warning("search %s is no longer ours (status %s, owner %s); stopping", state.search_id, status, owner)
        return None


class RefinementRunner:
    """Runs one claimed refinement: `search.job.refine_points` on its point, then that point's row and the cached
    refined exports the new model makes stale. The search's own row is never changed."""

    def __init__(self, settings: Settings, factory: queue.SessionFactory, refinement: Refinement, worker_id: str,
                 shutdown: threading.Event) -> None:
        self.settings, self.factory, self.refinement, self.worker_id = settings, factory, refinement, worker_id
        self.shutdown = shutdown
        self.stop, self.lost = threading.Event(), threading.Event()

    def should_stop(self) -> bool:
        if self.shutdown.is_set():
            self.stop.set()
        return self.stop.is_set()

    def run(self) -> RefinementStatus | None:
        """Run it; the status it ended with (None: released, taken over, or its search deleted)."""
        r = self.refinement
        with self.factory() as session:
            search = session.get(Search, r.search_id)
            folder = None if search is None else Path(search.folder or self.settings.search_folder(search.id))
        if folder is None or not folder.is_dir():  # deleted meanwhile (the row went with it, or goes soon)
            log.warning("refinement %s: search %s or its folder is gone; nothing to refine", r.id, r.search_id)
            return self._finish(RefinementStatus.FAILED, f"search {r.search_id} or its folder is gone")
        handler, previous = _attach_log(folder)  # the search's log: where a user looks for what happened
        try:
            log.info("worker %s: refining front point %d of search %s with %s (refinement %s, attempt %d)",
                     self.worker_id, r.position, r.search_id, r.settings, r.id, r.attempts + 1)
            return self._run(folder)
        finally:
            _detach_log(handler, previous)

    def _run(self, folder: Path) -> RefinementStatus | None:
        from search.job import refine_points
        from supernet.settings import RefineConfig

        r = self.refinement
        beat = Heartbeat(lambda: refinements.heartbeat(self.factory, r.id, self.worker_id), self.lost, self.stop,
                         self.settings.heartbeat_s, f"refinement {r.id}")
        beat.start()
        try:
            front = refine_points(folder, [r.position], RefineConfig(**r.settings), progress=False,
                                  should_stop=self.should_stop)
            if front is None:
                return self._stopped()
            self._store(folder, front["points"][r.position])
            return self._finish(RefinementStatus.SUCCEEDED)
        except Exception as exc:  # MemoryError included, as for searches
            log.error("refinement %s failed:\n%s", r.id, traceback.format_exc())
            if self.lost.is_set():
                return self._stopped()
            return self._finish(RefinementStatus.FAILED, failure_reason(exc, self.settings))
        finally:
            beat.done.set()
            beat.join()

    def _store(self, folder: Path, point: dict[str, Any]) -> None:
        """The refined entry on the point's row, after the point's refined archives are deleted: they were built
        from the model this refine replaced (the next download rebuilds them from the new one)."""
        from .api.exports import remove_refined_exports

        r = self.refinement
        names = remove_refined_exports(folder, r.search_id, r.position)
        with self.factory.begin() as session:
            repo.forget_exports(session, search_id=r.search_id, position=r.position, names=names)
            repo.set_refined(session, r.search_id, r.position, point)
        refined = point["refined"]
        log.info("search %s: front point %d refined in %.1f s (test %s; %s)", r.search_id, r.position,
                 refined["train_s"], refined["test"],
                 "downloads serve it" if refined.get("kept", True) else "the slice stays: better on validation")

    def _finish(self, status: RefinementStatus, error: str | None = None) -> RefinementStatus | None:
        ended = refinements.finish(self.factory, self.refinement.id, status, error, worker_id=self.worker_id)
        return status if ended else None

    def _stopped(self) -> RefinementStatus | None:
        """Stopped early: cancelled, taken over, its search deleted, or this worker is shutting down."""
        r = self.refinement
        with self.factory() as session:
            row = session.get(Refinement, r.id)
            state = None if row is None else (row.cancel_requested, row.worker_id, row.status)
        if state is None:
            log.warning("refinement %s is gone (its search was deleted); stopping", r.id)
            return None
        cancel, owner, status = state
        if cancel and owner == self.worker_id and status == RefinementStatus.RUNNING:
            log.info("refinement %s of front point %d cancelled", r.id, r.position)
            return self._finish(RefinementStatus.CANCELLED)
        if self.shutdown.is_set() and not self.lost.is_set():
            if refinements.release(self.factory, r.id, self.worker_id):
                log.info("refinement %s released to the queue (worker shutting down)", r.id)
            return None
        log.warning("refinement %s is no longer ours (status %s, owner %s); stopping", r.id, status, owner)
        return None


Job = Search | Refinement
JobStatus = SearchStatus | RefinementStatus


def _fail(factory: queue.SessionFactory, job: Job, worker_id: str, reason: str) -> JobStatus | None:
    finish, failed = ((refinements.finish, RefinementStatus.FAILED) if isinstance(job, Refinement)
                      else (queue.finish, SearchStatus.FAILED))
    try:
        return failed if finish(factory, job.id, failed, reason, worker_id=worker_id) else None
    except Exception:  # the database is unreachable too: recovery will take the job back later
        log.exception("worker %s: could not mark %s failed", worker_id, job)
        return None


def _claim(settings: Settings, factory: queue.SessionFactory, worker_id: str) -> Job | None:
    """Recover the jobs of dead workers, then claim a search, or else a refinement: a refine is short and only
    asked for on a finished search, so it waits for no search but never keeps one waiting either."""
    queue.recover_stale(factory, settings.stale_after_s, settings.max_attempts)
    refinements.recover_stale(factory, settings.stale_after_s, settings.max_attempts)
    return queue.claim_next(factory, worker_id) or refinements.claim_next(factory, worker_id)


def _run_job(settings: Settings, factory: queue.SessionFactory, job: Job, worker_id: str,
             shutdown: threading.Event) -> JobStatus | None:
    runner = (RefinementRunner(settings, factory, job, worker_id, shutdown) if isinstance(job, Refinement)
              else JobRunner(settings, factory, job, worker_id, shutdown))
    try:
        return runner.run()
    except Exception as exc:  # never let one job kill the loop, nor leave it running with no one on it
        log.exception("worker %s: %r crashed its runner", worker_id, job)
        return _fail(factory, job, worker_id, failure_reason(exc, settings))


def run_worker(settings: Settings, *, worker_id: str | None = None, once: bool = False, poll_s: float = 1.0,
               shutdown: threading.Event | None = None,
               on_job: Callable[[str, JobStatus | None], None] | None = None) -> int:
    """Claim and run jobs until `shutdown` is set; the number of jobs run.

    `once`: run at most one job and return (also when nothing is queued). Stale jobs of dead workers are
    recovered before every claim, so any worker takes over a dead worker's job.
    """
    shutdown = shutdown or threading.Event()
    worker_id = worker_id or queue.default_worker_id()
    # The pipeline (torch, transformers: seconds of imports that hold the GIL) is imported before the first claim:
    # imported inside a job it would starve that job's heartbeat thread, and the job would look dead.
    import search.job  # noqa: F401

    engine = make_engine(settings.url)
    try:
        check_schema(engine)
        factory = session_factory(engine)
        log.info("worker %s started (database %s, data root %s)", worker_id,
                 engine.url.render_as_string(hide_password=True), settings.data_root)
        jobs, paused = 0, False
        while not shutdown.is_set():
            if full := low_disk(settings):
                if not paused:
                    log.warning("worker %s: %s; taking no job until space is freed", worker_id, full)
                paused = True
                if once:
                    break
                shutdown.wait(poll_s)
                continue
            if paused:
                log.info("worker %s: disk space is back; taking jobs again", worker_id)
                paused = False
            try:
                job = _claim(settings, factory, worker_id)
            except Exception:
                log.exception("worker %s: could not reach the queue; retrying in %g s", worker_id, poll_s)
                job = None
            if job is None:
                if once:
                    break
                shutdown.wait(poll_s)
                continue
            status = _run_job(settings, factory, job, worker_id, shutdown)
            jobs += 1
            if on_job is not None:
                on_job(job.id, status)
            if once:
                break
        log.info("worker %s stopped after %d job(s)", worker_id, jobs)
        return jobs
    finally:
        engine.dispose()
