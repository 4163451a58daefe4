"""Load test: one real server (`nasprune serve --workers 2`) on loopback, many concurrent clients for a few minutes.

Each client submits small searches (a tiny random BERT and a toy CSV task that this script writes into the data
root; 1 epoch, a few evaluations, max_length 16) with an Idempotency-Key, re-POSTs some with the same key (after
the first answer, or two at once, racing), polls the status of its searches, lists searches now and then and
cancels some. It keeps `--active` searches of its own unfinished at a time. The clients start over `--ramp`
seconds, after one warm-up request; the figures cover everything from the first client's start.

Afterwards it checks: no 5xx and no other unexpected status at any point; every key stored exactly once (in the
database), under the one id every answer for that key gave; every id a client got listed by GET /searches; no
search failed; PRAGMA integrity_check. Then it prints the figures (requests, statuses, p50/p95/p99 latency per
kind of request, throughput, searches completed by each worker) as Markdown to paste, and writes them as JSON.

    python bench/load_test.py [--duration 180 --clients 50 --workers 2 --json bench/out/load_test.json]

The script talks to the server over HTTP and reads the SQLite file; it imports nothing from the project, so it
tests the code the server runs (this checkout: PYTHONPATH is set to it). The server's log (workers included) is
kept in the temporary folder; its tail is printed when a check fails, and the folder is kept then (or --keep).
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
FINAL = {"succeeded", "failed", "cancelled"}
# What each kind of request may answer; anything else is reported (a 5xx fails the run).
EXPECTED = {"post": {200, 201}, "repost": {200}, "race": {200, 201}, "status": {200}, "cancel": {200},
            "list": {200}}

POSITIVE = "good great fine lovely excellent happy nice".split()
NEGATIVE = "bad awful poor terrible sad nasty wrong".split()
FILLER = "the a movie film plot actor scene story was is really quite".split()


# ------------------------------------------------------------------------------------------------ inputs


def write_csv(path: Path, rows: int, seed: int) -> None:
    """A toy sentiment CSV (id, text, label in {pos, neg}) whose label words make the task learnable."""
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "label"])
        for i in range(rows):
            label = rng.choice(["pos", "neg"])
            words = rng.sample(FILLER, 4) + rng.sample(POSITIVE if label == "pos" else NEGATIVE, 2)
            rng.shuffle(words)
            writer.writerow([i, " ".join(words), label])


def write_inputs(folder: Path) -> dict[str, str]:
    """A tiny random BERT (2 layers, hidden 32, a WordPiece vocabulary of the CSV's words) and train/test CSVs."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(POSITIVE + NEGATIVE + FILLER))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    model_dir = folder / "model"
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(model_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(model_dir)
    write_csv(folder / "train.csv", 60, seed=1)
    write_csv(folder / "test.csv", 20, seed=2)
    return {"model": str(model_dir), "train": str(folder / "train.csv"), "test": str(folder / "test.csv")}


def search_body(inputs: dict[str, str], seed: int, evaluations: int) -> dict[str, Any]:
    return {"model": inputs["model"], "task": "custom/toy",
            "custom": {"train_file": inputs["train"], "test_file": inputs["test"], "text_columns": ["text"]},
            "training": {"epochs": 1, "seed": seed}, "search": {"objectives": ["error", "params"],
                                                                 "evaluations": evaluations},
            "max_length": 16, "batch_size": 8, "latency": {"batch_size": 2}}


# ------------------------------------------------------------------------------------------------ server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int, workers: int, log_path: Path) -> subprocess.Popen:
    env = os.environ | {
        "NASPRUNE_DATA_ROOT": str(root / "data"), "NASPRUNE_HEARTBEAT_S": "2", "NASPRUNE_STALE_AFTER_S": "30",
        "NASPRUNE_CACHE": str(root / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO),
        # the inputs' folder, beside the data root: a request names files only there, never in the data root
        "NASPRUNE_ALLOWED_MODEL_ROOTS": str(root / "inputs"), "NASPRUNE_ALLOWED_DATA_ROOTS": str(root / "inputs"),
    }
    env.pop("NASPRUNE_DATABASE_URL", None)
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", str(workers)]
    with log_path.open("w") as log:  # the workers inherit it: one log for the whole server
        return subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_healthy(base: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start (exit status {server.poll()})")
        time.sleep(0.2)


def warm_up(base: str, inputs: dict[str, str]) -> None:
    """Pay the server's first-request costs (lazy imports of the validation path) before the clock starts: a POST
    that reads the model's config, then is refused (max_length over its 64 positions), so it stores nothing."""
    body = search_body(inputs, 0, 1) | {"max_length": 128}
    response = httpx.post(f"{base}/searches", json=body, timeout=60)
    if response.status_code != 422 or "positions" not in response.text:
        raise RuntimeError(f"warm-up POST: expected a 422 about positions, got {response.status_code} {response.text}")
    httpx.get(f"{base}/searches", timeout=60).raise_for_status()


def stop_server(server: subprocess.Popen) -> int | None:
    """SIGTERM (serve stops its workers), then SIGKILL to the whole group if it hangs."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    return server.returncode


def tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else "(no log)"


# ------------------------------------------------------------------------------------------------ clients


@dataclass
class Stats:
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter = field(default_factory=Counter)  # (kind, status)
    transport_errors: Counter = field(default_factory=Counter)  # (kind, exception name)
    unexpected: list[dict[str, Any]] = field(default_factory=list)  # the first few bodies of unexpected answers
    ledger: dict[str, list[tuple[str, int, str | None]]] = field(default_factory=lambda: defaultdict(list))
    cancels_sent: int = 0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())


async def call(http: httpx.AsyncClient, stats: Stats, kind: str, method: str, url: str,
               **kwargs: Any) -> httpx.Response | None:
    """One request, timed; retried (up to 3 tries) on transport errors only: every request here is safe to repeat
    (POSTs carry their idempotency key)."""
    for _ in range(3):
        start = time.perf_counter()
        try:
            response = await http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            stats.transport_errors[(kind, type(exc).__name__)] += 1
            continue
        stats.latency[kind].append(time.perf_counter() - start)
        stats.statuses[(kind, response.status_code)] += 1
        if response.status_code not in EXPECTED[kind] and len(stats.unexpected) < 20:
            stats.unexpected.append({"kind": kind, "method": method, "url": url, "status": response.status_code,
                                     "body": response.text[:300]})
        return response
    return None


async def submit(http: httpx.AsyncClient, stats: Stats, kind: str, body: dict, key: str) -> str | None:
    response = await call(http, stats, kind, "POST", "/searches", json=body, headers={"Idempotency-Key": key})
    search_id = response.json().get("id") if response is not None and response.status_code in (200, 201) else None
    stats.ledger[key].append((kind, response.status_code if response is not None else 0, search_id))
    return search_id


async def client(index: int, base: str, deadline: float, args: argparse.Namespace, inputs: dict[str, str],
                 stats: Stats, run: str) -> None:
    rng = random.Random(args.seed * 1000 + index)
    active: list[str] = []
    n = 0
    async with httpx.AsyncClient(base_url=base, timeout=args.timeout) as http:
        await asyncio.sleep(args.ramp * index / args.clients)  # a ramp, not 2 x 50 POSTs in the first second
        while time.monotonic() < deadline:
            if len(active) < args.active:
                n += 1
                key, body = f"{run}-c{index}-{n}", search_body(inputs, index * 100_000 + n, args.evaluations)
                roll = rng.random()
                if roll < args.race:  # the same key twice at once: one row, one id, one 201
                    ids = await asyncio.gather(submit(http, stats, "race", body, key),
                                               submit(http, stats, "race", body, key))
                    search_id = ids[0] or ids[1]
                else:
                    search_id = await submit(http, stats, "post", body, key)
                    if search_id and roll < args.race + args.repost:  # a client retrying after a lost answer
                        await submit(http, stats, "repost", body, key)
                if search_id:
                    active.append(search_id)
            else:
                search_id = rng.choice(active)
                response = await call(http, stats, "status", "GET", f"/searches/{search_id}")
                state = response.json().get("status") if response is not None and response.is_success else None
                if state in FINAL:
                    active.remove(search_id)
                elif rng.random() < args.cancel:
                    stats.cancels_sent += 1
                    response = await call(http, stats, "cancel", "POST", f"/searches/{search_id}/cancel")
                    if response is not None and response.is_success and response.json()["status"] in FINAL:
                        active.remove(search_id)
            if rng.random() < args.list:
                await call(http, stats, "list", "GET", "/searches", params={"limit": 20})
            await asyncio.sleep(rng.uniform(0, 2 * args.think))


async def drive(base: str, args: argparse.Namespace, inputs: dict[str, str], stats: Stats, run: str) -> float:
    """Run the clients for --duration seconds (a progress bar ticks each second); the seconds it really took."""
    start = time.monotonic()
    deadline = start + args.duration
    tasks = [asyncio.create_task(client(i, base, deadline, args, inputs, stats, run)) for i in range(args.clients)]
    with tqdm(total=int(args.duration), unit="s", desc="load", leave=False) as bar:
        while not all(t.done() for t in tasks):
            await asyncio.sleep(1)
            bar.n = min(int(time.monotonic() - start), bar.total)
            five = sum(c for (_, s), c in stats.statuses.items() if s >= 500)
            bar.set_postfix(requests=stats.requests, searches=len(stats.ledger), server_errors=five, refresh=True)
    for task in tasks:
        task.result()  # a client that crashed is a bug of this script: raise it
    return time.monotonic() - start


# ------------------------------------------------------------------------------------------------ checks and figures


def list_all(base: str) -> list[dict[str, Any]]:
    items, offset = [], 0
    while True:
        page = httpx.get(f"{base}/searches", params={"offset": offset, "limit": 1000}, timeout=60).json()
        items += page["items"]
        offset += len(page["items"])
        if not page["items"] or offset >= page["total"]:
            return items


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ms = sorted(v * 1000 for v in values)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else [ms[0]] * 99
    return {"p50": q[49], "p95": q[94], "p99": q[98], "max": ms[-1], "mean": statistics.fmean(ms)}


def check_keys(stats: Stats, db_rows: dict[str, list[str]], listed: set[str]) -> dict[str, Any]:
    """Every key: answers agree on one id, at most one 201, one database row with that id, listed by the API."""
    problems: list[str] = []
    for key, answers in stats.ledger.items():
        ids = {search_id for _, _, search_id in answers if search_id}
        created = sum(1 for _, status, _ in answers if status == 201)
        rows = db_rows.get(key, [])
        if len(ids) != 1 or created > 1 or rows != list(ids) or not ids <= listed:
            problems.append(f"{key}: answers {answers}, database rows {rows}, listed {sorted(ids & listed)}")
    orphans = sorted(set(db_rows) - set(stats.ledger))
    return {"keys": len(stats.ledger), "rows": sum(len(r) for r in db_rows.values()), "problems": problems[:20],
            "problem_count": len(problems), "rows_without_a_client_key": orphans[:20]}


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                 platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_before": os.getloadavg()}


def print_summary(result: dict[str, Any]) -> None:
    a, f = result["args"], result["figures"]
    m = result["machine"]
    print(f"\n### Load test: {a['clients']} clients, {a['duration']:.0f} s, `serve --workers {a['workers']}`\n")
    print(f"`{result['command']}`\n")
    print(f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; load average before "
          f"{m['loadavg_before'][0]:.2f}, after {m['loadavg_after'][0]:.2f}.\n")
    print(f"- requests: **{f['requests']}** in {f['seconds']:.1f} s = **{f['throughput_rps']:.1f} req/s**; "
          f"transport errors: {f['transport_errors'] or 'none'}")
    print(f"- statuses: {f['statuses']}")
    print(f"- unexpected statuses: {f['unexpected_statuses'] or 'none'}; 5xx: **{f['server_errors']}**")
    print(f"- searches: {f['keys']} keys submitted ({f['reposts']} re-POSTs, {f['races']} racing pairs), "
          f"{f['rows']} rows stored; cancels sent: {f['cancels_sent']}")
    print(f"- search statuses at the end: {f['search_statuses']}")
    print(f"- completed by each worker: {f['completed_by_worker'] or 'none'}; "
          f"median queued-to-finished of succeeded ones: {f['median_turnaround_s']}")
    print("\n| request | count | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for kind, p in f["latency_ms"].items():
        print(f"| {kind} | {p['count']} | {p['p50']:.1f} | {p['p95']:.1f} | {p['p99']:.1f} | {p['max']:.1f} |")
    print("\n| check | result |")
    print("|---|---|")
    for name, ok in result["checks"].items():
        print(f"| {name} | {'ok' if ok else 'FAILED'} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=180, help="seconds of load")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the server")
    parser.add_argument("--active", type=int, default=2, help="unfinished searches each client keeps")
    parser.add_argument("--evaluations", type=int, default=3, help="evaluations per search")
    parser.add_argument("--ramp", type=float, default=10, help="seconds over which the clients start")
    parser.add_argument("--think", type=float, default=0.5, help="mean pause between a client's requests (s)")
    parser.add_argument("--repost", type=float, default=0.2, help="share of submissions re-POSTed after the answer")
    parser.add_argument("--race", type=float, default=0.1, help="share of submissions sent twice at once")
    parser.add_argument("--cancel", type=float, default=0.05, help="chance a status poll is followed by a cancel")
    parser.add_argument("--list", type=float, default=0.05, help="chance of a GET /searches after each step")
    parser.add_argument("--timeout", type=float, default=60, help="client timeout per request (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (data root, server log)")
    parser.add_argument("--json", type=Path, default=REPO / "bench/out/load_test.json")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="nasprune-load-"))
    log_path = root / "server.log"
    info = machine()
    print(f"data root and server log in {root}", flush=True)
    inputs = write_inputs(root / "inputs")  # an allowed root of the server (start_server)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(root, port, args.workers, log_path)
    ok = False
    try:
        wait_healthy(base, server)
        warm_up(base, inputs)
        stats = Stats()
        seconds = asyncio.run(drive(base, args, inputs, stats, run=f"load-{int(time.time())}"))
        listed = list_all(base)  # before the server stops: what the API says
        info["loadavg_after"] = os.getloadavg()
        exit_status = stop_server(server)
        with sqlite3.connect(root / "data" / "nasprune.db") as db:
            integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
            db_rows: dict[str, list[str]] = defaultdict(list)
            for key, search_id in db.execute("SELECT idempotency_key, id FROM searches"):
                db_rows[key].append(search_id)

        by_id = {s["id"]: s for s in listed}
        keys = check_keys(stats, db_rows, set(by_id))
        server_errors = sum(c for (_, s), c in stats.statuses.items() if s >= 500)
        unexpected = {f"{k} {s}": c for (k, s), c in sorted(stats.statuses.items()) if s not in EXPECTED[k]}
        succeeded = [s for s in listed if s["status"] == "succeeded"]
        turnaround = [seconds_between(s["created_at"], s["finished_at"]) for s in succeeded]
        figures = {
            "seconds": seconds, "requests": stats.requests, "throughput_rps": stats.requests / seconds,
            "statuses": {f"{k} {s}": c for (k, s), c in sorted(stats.statuses.items())},
            "unexpected_statuses": unexpected, "server_errors": server_errors,
            "transport_errors": {f"{k} {e}": c for (k, e), c in sorted(stats.transport_errors.items())},
            "latency_ms": {kind: {"count": len(v)} | percentiles(v) for kind, v in sorted(stats.latency.items())},
            "keys": keys["keys"], "rows": keys["rows"], "cancels_sent": stats.cancels_sent,
            "reposts": sum(1 for a in stats.ledger.values() if any(k == "repost" for k, _, _ in a)),
            "races": sum(1 for a in stats.ledger.values() if any(k == "race" for k, _, _ in a)),
            "search_statuses": dict(Counter(s["status"] for s in listed).most_common()),
            "completed_by_worker": dict(Counter(s["worker_id"] for s in succeeded).most_common()),
            "median_turnaround_s": round(statistics.median(turnaround), 1) if turnaround else None,
            "failed_errors": [s["error"] for s in listed if s["status"] == "failed"][:5],
            "server_exit_status": exit_status,
        }
        checks = {
            "no 5xx": server_errors == 0,
            "no unexpected status": not unexpected,
            "every key stored once, under the id its answers gave, and listed": keys["problem_count"] == 0,
            "no row without a client's key": not keys["rows_without_a_client_key"],
            "no search failed": not figures["failed_errors"],
            "PRAGMA integrity_check ok": integrity == "ok",
            "server stopped cleanly": exit_status == 0,
        }
        ok = all(checks.values())
        result = {"command": " ".join(["python bench/load_test.py", *(sys.argv[1:] if argv is None else argv)]),
                  "args": vars(args) | {"json": str(args.json)}, "machine": info, "figures": figures,
                  "checks": checks, "key_check": keys, "unexpected_examples": stats.unexpected,
                  "integrity_check": integrity}
        print_summary(result)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
        print(f"\nJSON: {args.json}")
        if not ok:
            print("\nproblems:", json.dumps({"keys": keys["problems"], "unexpected": stats.unexpected,
                                            "failed": figures["failed_errors"]}, indent=1, default=str))
    finally:
        if server.poll() is None:
            stop_server(server)
        if not ok:
            print(f"\nserver log ({log_path}), last lines:\n{tail(log_path)}")
        if ok and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
