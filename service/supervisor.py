"""The worker processes of `nasprune serve`: started with the server, stopped with it, and replaced when one dies
while it runs (a kill -9, the kernel's OOM killer), so the queue does not stall with the API still answering.

A worker that exits cleanly (code 0: it was asked to stop, e.g. Ctrl-C sent to the process group) is not
restarted. A worker that dies soon after it starts (within `min_uptime_s`) is likely to die the same way again (a broken
install, a database it cannot open): after `max_quick_exits` such deaths in a row it is not restarted, and the log
says so, rather than being restarted in a loop. A job the dead worker held is recovered by `queue.recover_stale`
in another worker, as after any crash.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence

from supernet.hardware import visible_gpus

log = logging.getLogger(__name__)

# Set on each worker `worker_slots` pins to one GPU: the GPU's id as CUDA_VISIBLE_DEVICES names it (service/worker.py
# runs every job that does not ask for the CPU there, and records it).
PINNED_GPU = "NASPRUNE_WORKER_GPU"


def worker_slots(workers: int | str) -> list[dict[str, str]]:
    """The extra environment of each worker `nasprune serve` starts: `workers` plain workers, or for 'auto' one per
    visible GPU, each seeing only its own (CUDA_VISIBLE_DEVICES), and one CPU worker where there is no GPU."""
    if workers != "auto":
        return [{} for _ in range(int(workers))]
    gpus = visible_gpus()
    return [{"CUDA_VISIBLE_DEVICES": gpu, PINNED_GPU: gpu} for gpu in gpus] or [{}]


class WorkerPool:
    def __init__(self, command: Sequence[str], env: dict[str, str], count: int, *, min_uptime_s: float = 30.0,
                 max_quick_exits: int = 3, poll_s: float = 1.0,
                 slots: Sequence[Mapping[str, str]] | None = None) -> None:
        """`slots`: each worker's own additions to `env` (worker_slots); its length is then the count."""
        self.command, self.env = list(command), env
        self.slots = [dict(s) for s in slots] if slots is not None else [{} for _ in range(count)]
        self.count = count = len(self.slots)
        self.min_uptime_s, self.max_quick_exits, self.poll_s = min_uptime_s, max_quick_exits, poll_s
        self.processes: list[subprocess.Popen | None] = [None] * count  # None: not running (given up)
        self.started = [0.0] * count
        self.quick_exits = [0] * count
        self.starts = 0  # processes started in all (for the log and the tests)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-pool", daemon=True)

    def _spawn(self, slot: int) -> None:
        self.processes[slot] = subprocess.Popen(self.command, env=self.env | self.slots[slot])
        self.started[slot] = time.monotonic()
        self.starts += 1

    def start(self) -> WorkerPool:
        with self._lock:
            for slot in range(self.count):
                self._spawn(slot)
        if self.count:
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stopping.wait(self.poll_s):
            self.check()

    def check(self) -> None:
        """Restart each worker that exited, unless it keeps dying at startup."""
        with self._lock:
            if self._stopping.is_set():
                return
            for slot, process in enumerate(self.processes):
                if process is None or (code := process.poll()) is None:
                    continue
                if code == 0:  # a clean stop, which only a SIGTERM / Ctrl-C asks for (e.g. to the process group)
                    self.processes[slot] = None
                    log.info("worker %d (pid %d) stopped cleanly; not restarting it", slot, process.pid)
                    continue
                uptime = time.monotonic() - self.started[slot]
                self.quick_exits[slot] = self.quick_exits[slot] + 1 if uptime < self.min_uptime_s else 0
                if self.quick_exits[slot] >= self.max_quick_exits:
                    self.processes[slot] = None
                    log.error("worker %d (pid %d) exited with code %s %.1f s after starting, %d times in a row; "
                              "not restarting it: see its output above", slot, process.pid, code, uptime,
                              self.quick_exits[slot])
                    continue
                log.warning("worker %d (pid %d) exited with code %s after %.1f s; starting another", slot,
                            process.pid, code, uptime)
                self._spawn(slot)

    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self.processes if p is not None and p.poll() is None]

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every worker (each checkpoints and requeues its job), SIGKILL those still there after
        `timeout_s`."""
        with self._lock:
            self._stopping.set()
            processes = [p for p in self.processes if p is not None]
        for process in processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout_s
        for process in processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._thread.is_alive():
            self._thread.join()
