"""The service end to end on embedded defaults: start `nasprune serve`, submit a small search of the offline
MiniLM on SST-2, watch its progress, print the front as a table, download the best point within half the full
model's params, load it with plain transformers, stop the server.

    python examples/service_demo.py [--glue-dir ../shared/data/glue --data-root runs/service --port 8765]

SST-2 with a capped training set is the demo's task because its trade-off shows within minutes on a 2-core CPU:
after one short epoch the full model is well above the majority class and the front runs from the full model
down to sub-networks that have visibly lost accuracy. (On RTE this model stays near chance at any size, so every
point looks alike.)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from search.report import front_table

# The demo's default budget: a capped SST-2 training set and a short search that show a real trade-off in a few
# minutes on a 2-core CPU (Makefile's `run` target passes the same values).
TASK = "glue/sst2"
TRAIN_LIMIT = 3000
VALIDATION_LIMIT = 1000
EPOCHS = 1.0
EVALUATIONS = 30
# The download: the front point best on validation within this share of the full model's encoder params.
DOWNLOAD_BUDGET = 0.5


def call(base: str, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"content-type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def download(base: str, path: str, patience_s: float = 600) -> bytes:
    """GET a front point's archive. A worker builds it on the first request; past the server's wait the answer is
    202 with Retry-After, so ask again until it is there."""
    deadline = time.monotonic() + patience_s
    while True:
        request = urllib.request.Request(base + path)
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                if response.status == 200:
                    return response.read()
                retry = float(response.headers.get("Retry-After") or 5)
                print(f"  the export is being built ({response.read().decode()[:200]}); retry in {retry:.0f} s")
        except urllib.error.HTTPError as exc:
            raise SystemExit(f"download failed: {exc.code} {exc.read().decode()}") from exc
        if time.monotonic() + retry > deadline:
            raise SystemExit(f"the export of {path} was not ready within {patience_s:.0f} s")
        time.sleep(retry)


def pick_point(front: dict[str, Any], budget: float) -> int:
    """The index of the front point best on validation within `budget` of the full model's encoder params (the
    smallest point if none is), the one a user after a model half the size would download."""
    full, metric = front["reference"]["params"]["encoder"], front["main_metric"]
    points = front["points"]
    within = [k for k, p in enumerate(points) if p["params"]["encoder"] <= budget * full] or \
        [min(range(len(points)), key=lambda k: points[k]["params"]["encoder"])]
    return max(within, key=lambda k: (points[k]["validation"][metric], -points[k]["params"]["encoder"]))


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port; a second demo there would poll the first demo's server."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--glue-dir", default="../shared/data/glue")
    parser.add_argument("--data-root", default="runs/service")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--task", default=TASK, help="a GLUE task under --glue-dir, e.g. glue/sst2")
    parser.add_argument("--train-limit", type=int, default=TRAIN_LIMIT, help="cap on training examples")
    parser.add_argument("--validation-limit", type=int, default=VALIDATION_LIMIT,
                        help="cap on validation examples the front is measured on")
    parser.add_argument("--epochs", type=float, default=EPOCHS, help="supernet training epochs")
    parser.add_argument("--evaluations", type=int, default=EVALUATIONS, help="sub-networks the search evaluates")
    args = parser.parse_args()
    glue = Path(args.glue_dir).resolve()
    root = Path(args.data_root).resolve()
    env = os.environ | {"NASPRUNE_DATA_ROOT": str(root), "NASPRUNE_ALLOWED_DATA_ROOTS": str(glue),
                        "HF_HUB_OFFLINE": "1"}
    base = f"http://127.0.0.1:{args.port}"
    if not port_is_free(args.port):
        raise SystemExit(f"port {args.port} is in use (another demo or server?): stop it or pass --port")
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(args.port),
                               "--workers", "1"], env=env)
    try:
        for _ in range(120):
            if server.poll() is not None:
                raise SystemExit(f"the server exited with code {server.returncode} before it answered")
            try:
                if call(base, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(1)
        else:
            raise SystemExit("the server did not start")
        print(f"server up at {base} (web page: {base}/, API docs: {base}/docs)")
        request = {"model": "minilm", "task": args.task, "data_dir": str(glue),
                   "train_limit": args.train_limit, "validation_limit": args.validation_limit,
                   "training": {"epochs": args.epochs},
                   "search": {"evaluations": args.evaluations, "objectives": ["error", "params", "latency"],
                              "optimizer": "nsga2"}}
        status, body = call(base, "POST", "/searches", request)
        if status not in (200, 201):
            raise SystemExit(f"submit failed: {status} {body.decode()}")
        search = json.loads(body)
        print(f"submitted search {search['id']}")
        start = time.perf_counter()
        while True:
            search = json.loads(call(base, "GET", f"/searches/{search['id']}")[1])
            p = search["progress"]
            print(f"  {time.perf_counter() - start:5.0f} s  {search['status']:10s} step {p['step']}/{p['total_steps']}"
                  f"  evaluations {p['evaluations_done']}/{p['evaluations_total']}  hypervolume {p['hypervolume']}",
                  flush=True)
            if search["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(10)
        if search["status"] != "succeeded":
            raise SystemExit(f"search {search['status']}: {search.get('error')}")
        front = json.loads(call(base, "GET", f"/searches/{search['id']}/pareto")[1])
        print(front_table(front))
        point = pick_point(front, DOWNLOAD_BUDGET)
        print(f"downloading point {point}: the best on validation within {DOWNLOAD_BUDGET:.0%} of the full "
              f"model's encoder params")
        archive = download(base, f"/searches/{search['id']}/pareto/{point}/download?format=hf")
        target = root / f"point-{point}"
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
        folder = next(p.parent for p in target.rglob("config.json"))
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
        print(f"downloaded point {point} to {folder}: {type(model).__name__}, "
              f"{sum(p.numel() for p in model.parameters()):,} parameters, heads per layer {model.config.layer_heads}")
        print(f"done in {time.perf_counter() - start:.0f} s")
        return 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
