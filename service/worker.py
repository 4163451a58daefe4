"""The worker: claim a job (an export, a search, a refinement, a compression or a share), run it, persist what it
produces.

    loop: recover_stale (every job table) -> claim (exports, searches, refinements, compressions, shares) -> run
          -> finish

Every kind of job runs in a `JobRunner` subclass, which adds only what its job does (`execute`) and how it is
claimed; the rest is written once in `JobRunner`:
  * a heartbeat thread stamps the row every `Settings.heartbeat_s`. A thread rather than the job's callbacks,
    because some stages call no callback for a long time (loading the model, latency calibration, the test
    re-evaluation of the front, an ONNX export) and a long silence would make the job look dead. When the
    heartbeat says the job is no longer ours (cancel requested, or taken over after we looked dead) the thread
    sets a flag that `should_stop` returns, and the run stops at its next training step, trial or point;
  * stopping early ends a cancelled job as cancelled, gives a job back to the queue when this worker shuts down
    (`release`, no attempt counted), and leaves alone a job taken over by another worker;
  * any exception marks the job failed (`failure_reason`: out of memory and a full disk are named as such) and
    the worker goes on with the next job;
  * the job's log goes to its search's worker.log (a FileHandler on the root logger while it runs), which a user
    reads through the API: its records carry no traceback and name server paths as the user knows them
    (service/redact.py). The traceback goes to the worker's own stderr, the server log. A job's stored
    `error` is likewise one line without server paths.

The kinds, in the order they are claimed (`RUNNERS`):
  * `ExportRunner`: builds a front point's download archive (service/exports.py) that a download route is
    waiting for: short, and a user waits, so it goes first;
  * `SearchRunner`: `search.job.run_search_job` with a `DbStore` (service/store.py): trials, the front and the
    refined entries go to the database only; progress (training steps, trials, refining) to the search's row;
  * `RefinementRunner`: `search.job.refine_points` on one point of a succeeded search, with the same store;
  * `CompressionRunner`: `search.compression.compress_point` on one point of a succeeded search (decomposition,
    recovery by distillation, validation and test), then the archive a download serves; its figures go to the
    compression's row;
  * `ShareRunner`: `supernet.share.share_run` (nasprune share: fine-tune, tie, recover) in the share's own folder,
    then its archive; a search names the model it made as "share:<id>", which `SearchRunner` reads from there.

Resuming: a job whose worker died goes back to the queue (`JobTable.recover_stale`) and the next worker runs it
again: a search resumes from checkpoint.pt and its stored trials (a trial stored is never evaluated again), a
compression from its recovery's checkpoint, a share from its folder (the fine-tuning's checkpoint, the tying, the
recovery's checkpoint).

On a disk below `Settings.min_free_mb` the worker takes no job until space is freed, rather than fail every
queued job in turn.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from supernet import confine

from . import compressions, queue, refinements, shares
from . import repository as repo
from .config import LOG_FILE, Settings
from .db import check_schema, make_engine, session_factory
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
from .redact import Redactor
from .startup import low_disk
from .store import DbStore
from .supervisor import PINNED_GPU

if TYPE_CHECKING:
    from search.runner import SearchResult, Trial
    from supernet.settings import Compute
    from supernet.training import TrainState

log = logging.getLogger(__name__)

__all__ = ["LOG_FILE", "CompressionRunner", "ExportRunner", "JobRunner", "RefinementRunner", "SearchRunner",
           "ShareRunner", "run_worker"]

PROGRESS_EVERY_S = 1.0  # at most one progress write per second from the training loop
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class _JobState:
    """What the callbacks of one search share."""

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
    sets `lost` and `stop`."""

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


class UserLogFormatter(logging.Formatter):
    """The format of a search's worker.log, which its user reads: a record without the traceback or stack it
    may carry (those go to the server log only), server paths redacted."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__(LOG_FORMAT)
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        # a copy: the record goes on to the server log's handlers, traceback and all
        bare = logging.makeLogRecord(record.__dict__ | {"exc_info": None, "exc_text": None, "stack_info": None})
        return self.redactor.user_text(super().format(bare))


def _attach_log(folder: Path, redactor: Redactor) -> tuple[logging.Handler, int]:
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / LOG_FILE, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(UserLogFormatter(redactor))
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



# ------------------------------------------------------------------------------------------------ the base runner


class JobRunner:
    """Runs one claimed job of the table `table` to its end state: heartbeat, cancel, release, failure and log,
    written once. A subclass says how its jobs are claimed (`claim`), where its log goes (`log_folder`) and what
    the job does (`execute`, which returns `self.finish(...)` or `self.stopped()`)."""

    table: ClassVar[queue.JobTable]
    noun: ClassVar[str]

    def __init__(self, settings: Settings, factory: queue.SessionFactory, job: Any, worker_id: str,
                 shutdown: threading.Event) -> None:
        self.settings, self.factory, self.job, self.worker_id = settings, factory, job, worker_id
        self.shutdown = shutdown
        self.stop, self.lost = threading.Event(), threading.Event()
        self.redactor = Redactor.for_settings(settings)
        self._last_progress = 0.0  # when progress_due last said yes

    @classmethod
    def claim(cls, factory: queue.SessionFactory, worker_id: str) -> Any | None:
        raise NotImplementedError

    def log_folder(self) -> Path | None:
        """The folder of the job's worker.log; None: the job's search (or its folder) is gone."""
        raise NotImplementedError

    def execute(self, folder: Path) -> Any | None:
        raise NotImplementedError

    def should_stop(self) -> bool:
        if self.shutdown.is_set():
            self.stop.set()
        return self.stop.is_set()

    def run(self) -> Any | None:
        """Run the job; the status it ended with (None: it stopped without ending: released or taken over)."""
        folder = self.log_folder()
        if folder is None:  # deleted meanwhile (the row went with it, or goes soon)
            log.warning("%s %s: its search or the search's folder is gone", self.noun, self.job.id)
            return self.finish(self.table.status("failed"), f"search {self.job.search_id} or its folder is gone")
        handler, previous = _attach_log(folder, self.redactor)
        beat = Heartbeat(lambda: self.table.heartbeat(self.factory, self.job.id, self.worker_id), self.lost,
                         self.stop, self.settings.heartbeat_s, f"{self.noun} {self.job.id}")
        try:
            # the job's `attempts`, as the API shows it: runs of it lost to a dead worker before this one
            log.info("worker %s: running %s %s (attempts %d: earlier runs lost to a dead worker) in %s",
                     self.worker_id, self.noun, self.job.id, self.job.attempts, folder)
            beat.start()
            return self.execute(folder)
        except Exception as exc:  # MemoryError included: one job out of memory must not take the worker down
            reason = self.redactor.error(failure_reason(exc, self.settings))
            # the traceback reaches the server log only (UserLogFormatter leaves it out of worker.log)
            log.error("%s %s failed: %s", self.noun, self.job.id, reason, exc_info=True)
            if self.lost.is_set():  # e.g. the search folder deleted under us after a takeover
                return self.stopped()
            return self.finish(self.table.status("failed"), reason)
        finally:
            beat.done.set()
            if beat.is_alive():
                beat.join()
            _detach_log(handler, previous)

    def finish(self, status: Any, error: str | None = None, **values: Any) -> Any | None:
        """End the job as `status`; `error` is stored as its user reads it (one line, no server paths)."""
        error = self.redactor.error(error)
        ended = self.table.finish(self.factory, self.job.id, status, error, worker_id=self.worker_id, values=values)
        return status if ended else None

    def stopped(self) -> Any | None:
        """The run stopped early: cancelled, taken over, its search deleted, or this worker is shutting down."""
        with self.factory() as session:
            row = session.get(self.table.model, self.job.id)
            state = None if row is None else (row.cancel_requested, row.worker_id, row.status)
        if state is None:
            log.warning("%s %s is gone (its search was deleted); stopping", self.noun, self.job.id)
            return None
        cancel, owner, status = state
        if cancel and owner == self.worker_id and status in self.table.running:
            log.info("%s %s cancelled", self.noun, self.job.id)
            return self.finish(self.table.status("cancelled"))
        if self.shutdown.is_set() and not self.lost.is_set():
            if self.table.release(self.factory, self.job.id, self.worker_id):
                log.info("%s %s released to the queue (worker shutting down)", self.noun, self.job.id)
            return None
        log.warning("%s %s is no longer ours (status %s, owner %s); stopping", self.noun, self.job.id, status, owner)
        return None

    def progress_due(self, train: TrainState) -> bool:
        """Whether a training step's progress is worth a write: the last step always, else at most one write per
        PROGRESS_EVERY_S (and per heartbeat)."""
        now = time.monotonic()
        if train.step < train.total_steps and now - self._last_progress < min(PROGRESS_EVERY_S,
                                                                                self.settings.heartbeat_s):
            return False
        self._last_progress = now
        return True

    def place(self, compute: Compute) -> Compute:
        """Where this worker runs a job that asked for `compute`: resolved to a real device here (DeviceUnavailable,
        which fails the job with the reason, where it asked for a GPU this worker lacks) and recorded on the job's
        row, so a user sees where it ran (and, after a takeover, where it runs now)."""
        from supernet.devices import describe, resolve_device

        asked = compute.device
        if asked != "cpu" and os.environ.get(PINNED_GPU):
            asked = "cuda:0"  # the one GPU this worker sees
        device = resolve_device(asked)
        self.record_device(describe(device) + (f" [GPU {os.environ[PINNED_GPU]}]" if device.type == "cuda"
                                                and os.environ.get(PINNED_GPU) else ""))
        return compute.model_copy(update={"device": str(device)})

    def record_device(self, text: str) -> None:
        from sqlalchemy import update

        model = self.table.model
        with self.factory.begin() as session:
            session.execute(update(model).where(model.id == self.job.id).values(device=text)
                            .execution_options(synchronize_session=False))
        log.info("%s %s runs on %s", self.noun, self.job.id, text)

    def search_folder(self, search_id: str) -> Path | None:
        """The run folder of search `search_id` if the search and its folder are there."""
        with self.factory() as session:
            search = session.get(Search, search_id)
            folder = None if search is None else Path(search.folder or self.settings.search_folder(search.id))
        return folder if folder is not None and folder.is_dir() else None


# ------------------------------------------------------------------------------------------------ searches


class SearchRunner(JobRunner):
    """Runs one claimed search: `run_search_job` with the database as its store, progress on the search's row."""

    table = queue.SEARCHES
    noun = "search"

    def __init__(self, settings: Settings, factory: queue.SessionFactory, search: Search, worker_id: str,
                 shutdown: threading.Event) -> None:
        super().__init__(settings, factory, search, worker_id, shutdown)
        self.search = search
        self.folder = Path(search.folder) if search.folder else settings.search_folder(search.id)

    @classmethod
    def claim(cls, factory: queue.SessionFactory, worker_id: str) -> Search | None:
        return queue.claim_next(factory, worker_id)

    def log_folder(self) -> Path:
        return self.folder  # made by the first run

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
        """After the store has the trial: the search's progress."""
        now = time.monotonic()
        with self.factory.begin() as session:
            done = current.evaluations  # the budget's unit: one threshold search stores a trial per threshold
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

    # ------------------------------------------------------------------ the job

    def execute(self, folder: Path) -> SearchStatus | None:
        from search.job import run_search_job

        search_id = self.search.id
        try:
            spec, job = repo.parse_request(self.search.request)
            compute = repo.parse_compute(self.search.request)
        except repo.InvalidArgument as exc:
            log.error("search %s: %s", search_id, exc)
            return self.finish(SearchStatus.FAILED, str(exc))
        if spec.model.startswith(shares.MODEL_PREFIX):  # a shared model made by POST /shares: read from its folder
            try:
                with self.factory() as session:
                    model = shares.model_folder(session, spec.model, self.settings.shares_root)
            except (shares.ShareNotFound, shares.ShareNotReady) as exc:
                return self.finish(SearchStatus.FAILED, f"model {spec.model!r}: {exc}")
            spec = spec.model_copy(update={"model": str(model)})
        state = _JobState(search_id=search_id, worker_id=self.worker_id, evaluations_total=job.search.evaluations,
                          time_limit_s=job.search.time_limit_s, stop=self.stop, lost=self.lost)
        self._progress(folder=str(folder), evaluations_total=job.search.evaluations, stage="training")
        store = DbStore(self.factory, search_id, folder)
        done = len(store.load_trials())  # also imports the trials.jsonl of a search an older release began
        if done:
            log.info("search %s: resuming with %d trial(s) done", search_id, done)
        compute = self.place(compute)
        result = run_search_job(
            spec, job, folder=folder, progress=False, store=store,
            on_train_step=lambda train: self.on_train_step(state, train),
            on_trial=lambda trial, current: self.on_trial(state, trial, current),
            on_refine=lambda done, total: self.on_refine(state, done, total),
            should_stop=self.should_stop, compute=compute)
        if result is None:
            return self.stopped()
        self._advance(state, SearchStatus.EXPORTING)
        if state.lost.is_set():
            return self.stopped()
        with self.factory.begin() as session:
            repo.update_progress(session, search_id, stage="done", hypervolume=result.hypervolume,
                                 evaluations_done=result.evaluations)
        return self.finish(SearchStatus.SUCCEEDED)

    def stopped(self) -> SearchStatus | None:
        with self.factory() as session:
            kept = repo.count_trials(session, self.search.id)
        log.info("search %s stopped with %d trial(s) stored", self.search.id, kept)
        return super().stopped()


# ------------------------------------------------------------------------------------------------ refinements


class RefinementRunner(JobRunner):
    """Runs one claimed refinement: `search.job.refine_points` on its point, with the database as its store (which
    sets that point's refined entry and drops the refined exports the new model makes stale). The search's own
    row is never changed."""

    table = refinements.REFINEMENTS
    noun = "refinement"

    @classmethod
    def claim(cls, factory: queue.SessionFactory, worker_id: str) -> Refinement | None:
        return refinements.claim_next(factory, worker_id)

    def log_folder(self) -> Path | None:
        return self.search_folder(self.job.search_id)  # the search's log: where a user looks for what happened

    def execute(self, folder: Path) -> RefinementStatus | None:
        from search.job import refine_points
        from search.records import serves_refined
        from supernet.evaluation import NonFiniteLogits
        from supernet.settings import RefineConfig
        from supernet.training import TrainingDiverged

        r: Refinement = self.job
        config = RefineConfig(**r.settings)
        with self.factory() as session:  # a refinement runs where its search asked to run
            search = session.get(Search, r.search_id)
            request = dict(search.request) if search is not None else {}
        compute = self.place(repo.parse_compute(request))
        log.info("refining front point %d of search %s with %s", r.position, r.search_id, r.settings)
        try:
            front = refine_points(folder, [r.position], config, progress=False, should_stop=self.should_stop,
                                  store=DbStore(self.factory, r.search_id, folder), compute=compute)
        except (TrainingDiverged, NonFiniteLogits) as exc:
            # A failed job rather than a finished one that is not kept: the user asked for a model and gets none,
            # and the reason is the refinement's error. Nothing was stored, so downloads serve what they did.
            reason = diverged_reason(exc, config)
            log.error("search %s: front point %d not refined: %s", r.search_id, r.position, reason)
            return self.finish(RefinementStatus.FAILED, reason)
        if front is None:
            return self.stopped()
        point = front["points"][r.position]
        log.info("search %s: front point %d refined in %.1f s (test %s; %s)", r.search_id, r.position,
                 point["refined"]["train_s"], point["refined"]["test"],
                 "downloads serve it" if serves_refined(point) else "the slice stays: better on validation")
        return self.finish(RefinementStatus.SUCCEEDED)


def diverged_reason(exc: Exception, config: Any) -> str:
    """The error of a refinement whose training diverged (`TrainingDiverged`, which names the setting already) or
    whose refined model gives NaN or inf logits (`NonFiniteLogits`), in the user's terms."""
    from supernet.evaluation import NonFiniteLogits

    text = str(exc)
    if isinstance(exc, NonFiniteLogits):
        text = (f"refinement diverged: the refined model's {text}; lower refine.learning_rate "
                f"(now {config.learning_rate:g})")
    return f"{text}; nothing was stored: the point's downloads are unchanged"


# ------------------------------------------------------------------------------------------------ compressions


class CompressionRunner(JobRunner):
    """Runs one claimed compression: `search.compression.compress_point` on its point (on the device its search
    asked for), recovery progress on its row, then the archive a download serves (service/exports.py); the
    compressed model's figures go to the row as it ends. A stopped run leaves its recovery checkpoint for the
    next."""

    table = compressions.COMPRESSIONS
    noun = "compression"

    @classmethod
    def claim(cls, factory: queue.SessionFactory, worker_id: str) -> Compression | None:
        return compressions.claim_next(factory, worker_id)

    def log_folder(self) -> Path | None:
        return self.search_folder(self.job.search_id)

    def on_step(self, train: TrainState) -> None:
        if self.progress_due(train):
            compressions.report_progress(self.factory, self.job.id, self.worker_id, train.step, train.total_steps)

    def execute(self, folder: Path) -> CompressionStatus | None:
        from search.compression import compress_point
        from supernet.evaluation import NonFiniteLogits
        from supernet.factors import CompressionError
        from supernet.settings import CompressConfig
        from supernet.training import TrainingDiverged

        from .exports import build_compressed_archive

        c: Compression = self.job
        config = CompressConfig(**c.settings)
        with self.factory() as session:  # a compression runs where its search asked to run
            search = session.get(Search, c.search_id)
            request = dict(search.request) if search is not None else {}
        compute = self.place(repo.parse_compute(request))
        log.info("compressing front point %d of search %s with %s", c.position, c.search_id, c.settings)
        try:
            record = compress_point(folder, c.position, config, progress=False, should_stop=self.should_stop,
                                    on_step=self.on_step, compute=compute,
                                    store=DbStore(self.factory, c.search_id, folder))
        except (CompressionError, TrainingDiverged, NonFiniteLogits) as exc:
            reason = f"front point {c.position} not compressed: {exc}"
            log.error("search %s: %s", c.search_id, reason)
            return self.finish(CompressionStatus.FAILED, reason)
        if record is None:
            return self.stopped()
        archive = build_compressed_archive(folder, record["folder"], compressions.archive_name(c))
        result = {k: v for k, v in record.items() if k != "folder"}
        log.info("search %s: front point %d compressed in %.1f s to %d encoder parameters (validation %s)",
                 c.search_id, c.position, record["train_s"], record["params"]["encoder"],
                 record["metrics"]["validation"])
        return self.finish(CompressionStatus.SUCCEEDED, result=result, path=str(archive))


# ------------------------------------------------------------------------------------------------ shares


class ShareRunner(JobRunner):
    """Runs one claimed share: `supernet.share.share_run` in the share's folder (on the device it asked for), its
    stage and training steps on its row, then the archive a download serves; the model's record goes to the row as
    it ends. A stopped run leaves its checkpoints for the next."""

    table = shares.SHARES
    noun = "share"

    @classmethod
    def claim(cls, factory: queue.SessionFactory, worker_id: str) -> Share | None:
        return shares.claim_next(factory, worker_id)

    def log_folder(self) -> Path:
        return shares.folder(self.settings.shares_root, self.job.settings_key)

    def on_stage(self, name: str) -> None:
        from supernet.share import TRAINING_STAGES

        log.info("share %s: %s", self.job.id, name)
        steps = {"step": None, "total_steps": None} if name in TRAINING_STAGES else {}  # a training starts afresh
        shares.report_progress(self.factory, self.job.id, self.worker_id, stage=name, **steps)

    def on_step(self, train: TrainState) -> None:
        if self.progress_due(train):
            shares.report_progress(self.factory, self.job.id, self.worker_id, step=train.step,
                                   total_steps=train.total_steps)

    def execute(self, folder: Path) -> ShareStatus | None:
        from supernet.evaluation import NonFiniteLogits
        from supernet.settings import ShareSpec
        from supernet.share import share_run
        from supernet.training import TrainingDiverged

        from .exports import build_share_archive

        row: Share = self.job
        spec = ShareSpec.model_validate(row.request["run"])
        compute = self.place(repo.parse_compute(row.request))
        log.info("share %s: tying %s into %d block(s) on %s", row.id, spec.model, spec.share.groups, spec.task)
        try:
            record = share_run(spec, folder, progress=False, on_step=self.on_step, should_stop=self.should_stop,
                               compute=compute, on_stage=self.on_stage)
        except (TrainingDiverged, NonFiniteLogits) as exc:
            reason = f"not shared: {exc}"
            log.error("share %s: %s", row.id, reason)
            return self.finish(ShareStatus.FAILED, reason)
        if record is None:
            return self.stopped()
        archive = build_share_archive(folder, shares.archive_name(row))
        log.info("share %s: %d shared block(s), %d parameters (unshared %d), validation %s, in %.1f s", row.id,
                 len(record["tying"]["sources"]), record["params"]["total"], record["teacher_params"]["total"],
                 record["metrics"]["validation"], record["train_s"])
        return self.finish(ShareStatus.SUCCEEDED, result=record, path=str(archive), stage="done")


# ------------------------------------------------------------------------------------------------ exports


class ExportRunner(JobRunner):
    """Builds one claimed export: the archive of a front point in a format, from its refined model or sliced from
    the supernet (service/exports.py), then records its path on the job's row as it ends."""

    table = queue.EXPORTS
    noun = "export"

    @classmethod
    def claim(cls, factory: queue.SessionFactory, worker_id: str) -> Export | None:
        return queue.claim_export(factory, worker_id)

    def log_folder(self) -> Path | None:
        return self.search_folder(self.job.search_id)

    def execute(self, folder: Path) -> ExportStatus | None:
        from supernet.extract import ExportError

        from .exports import build_export, refined_source

        e: Export = self.job
        self.record_device("cpu")  # exports slice and save weights: nothing there a GPU would speed up
        with self.factory() as session:
            row = repo.get_front_point(session, e.search_id, e.position)
            point = None if row is None else {"config": row.config, "validation": row.validation, "test": row.test,
                                              "refined": row.refined}
        if point is None:
            return self.finish(ExportStatus.FAILED, f"search {e.search_id} has no front point {e.position} any more")
        source = refined_source(folder, e.position, point) if e.refined else None
        if e.refined and source is None:
            return self.finish(ExportStatus.FAILED, f"front point {e.position} of search {e.search_id} was refined, "
                                                    "but its refined model is missing or unusable on the server (the "
                                                    "search's log says why); add ?sliced=true to download the "
                                                    "sub-network sliced from the supernet instead")
        try:
            path = build_export(folder, e.search_id, e.position, e.format, point, source=source)
        except ExportError as exc:
            return self.finish(ExportStatus.FAILED, str(exc))
        log.info("search %s: front point %d exported as %s", e.search_id, e.position, path.name)
        return self.finish(ExportStatus.SUCCEEDED, path=str(path))


# ------------------------------------------------------------------------------------------------ the loop

# The kinds of job, in the order a worker claims them: exports first (short, and a user is waiting), then searches,
# then refinements and compressions (asked for only on a finished search, so they wait for no search but never keep
# one waiting), then shares (a search that names one is accepted only once it has succeeded).
RUNNERS: tuple[type[JobRunner], ...] = (ExportRunner, SearchRunner, RefinementRunner, CompressionRunner, ShareRunner)


def _fail(settings: Settings, factory: queue.SessionFactory, runner: type[JobRunner], job: Any, worker_id: str,
          reason: str) -> Any | None:
    failed = runner.table.status("failed")
    reason = Redactor.for_settings(settings).error(reason) or reason
    try:
        return failed if runner.table.finish(factory, job.id, failed, reason, worker_id=worker_id) else None
    except Exception:  # the database is unreachable too: recovery will take the job back later
        log.exception("worker %s: could not mark %r failed", worker_id, job)
        return None


def runner_for(kind: str) -> type[JobRunner]:
    """The runner of a kind of job by its noun: search, refinement, compression, share or export."""
    for runner in RUNNERS:
        if runner.noun == kind:
            return runner
    raise ValueError(f"unknown kind of job {kind!r}; one of {', '.join(r.noun for r in RUNNERS)}")


def claim_job(factory: queue.SessionFactory, worker_id: str, kind: str, job_id: str) -> Any | None:
    """Claim one named job if it is queued (what a Ray job does: it was submitted for that job); None if another
    worker has it, or it ended or was cancelled meanwhile: then there is nothing to do."""
    from sqlalchemy.exc import IntegrityError

    runner = runner_for(kind)
    try:
        return runner.table.claim(factory, worker_id, queue.job_key(kind, job_id))
    except IntegrityError:  # a refinement of the same point already running (the partial unique index)
        return None


def _claim(settings: Settings, factory: queue.SessionFactory, worker_id: str, only: tuple[str, str] | None = None
           ) -> tuple[type[JobRunner], Any] | None:
    """Recover the jobs of dead workers, then claim the first job of the first kind in `RUNNERS` that has one (or
    the job `only` names: (kind, id))."""
    for runner in RUNNERS:
        runner.table.recover_stale(factory, settings.stale_after_s, settings.max_attempts)
    if only is not None:
        job = claim_job(factory, worker_id, *only)
        return None if job is None else (runner_for(only[0]), job)
    for runner in RUNNERS:
        job = runner.claim(factory, worker_id)
        if job is not None:
            return runner, job
    return None


def _run_job(settings: Settings, factory: queue.SessionFactory, runner: type[JobRunner], job: Any, worker_id: str,
             shutdown: threading.Event) -> Any | None:
    try:
        with confine.policy(settings.read_policy):  # the files a job opens for its user: inside the allowed roots
            return runner(settings, factory, job, worker_id, shutdown).run()
    except Exception as exc:  # never let one job kill the loop, nor leave it running with no one on it
        log.exception("worker %s: %r crashed its runner", worker_id, job)
        return _fail(settings, factory, runner, job, worker_id, failure_reason(exc, settings))


def run_worker(settings: Settings, *, worker_id: str | None = None, once: bool = False, poll_s: float = 1.0,
               shutdown: threading.Event | None = None,
               on_job: Callable[[Any, Any | None], None] | None = None, only: tuple[str, str] | None = None) -> int:
    """Claim and run jobs until `shutdown` is set; the number of jobs run.

    `once`: run at most one job and return (also when nothing is queued). Stale jobs of dead workers are
    recovered before every claim, so any worker takes over a dead worker's job. `only`: (kind, id) of the one job
    to run, if it is still queued (with `once`: a Ray job's worker).
    """
    if only is not None:
        runner_for(only[0])  # an unknown kind is refused before anything starts
    shutdown = shutdown or threading.Event()
    worker_id = worker_id or queue.default_worker_id()
    # The pipeline (torch, transformers: seconds of imports that hold the GIL) is imported before the first claim:
    # imported inside a job it would starve that job's heartbeat thread, and the job would look dead.
    import search.job  # noqa: F401
    import supernet.extract  # noqa: F401

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
                claimed = _claim(settings, factory, worker_id, only)
            except Exception:
                log.exception("worker %s: could not reach the queue; retrying in %g s", worker_id, poll_s)
                claimed = None
            if claimed is None:
                if once:
                    break
                shutdown.wait(poll_s)
                continue
            runner, job = claimed
            status = _run_job(settings, factory, runner, job, worker_id, shutdown)
            jobs += 1
            if on_job is not None:
                on_job(job.id, status)
            if once:
                break
        log.info("worker %s stopped after %d job(s)", worker_id, jobs)
        return jobs
    finally:
        engine.dispose()
