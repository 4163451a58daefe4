"""The service end to end on embedded defaults: start `nasprune serve`, submit a small search of the offline
MiniLM on RTE, watch its progress, download front point 0, load it with plain transformers, stop the server.

    python examples/service_demo.py [--glue-dir ../shared/data/glue --data-root runs/service --port 8765]
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


def call(base: str, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"content-type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port; a second demo there would poll the first demo's server."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--glue-dir", default="../shared/data/glue")
    parser.add_argument("--data-root", default="runs/service")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--evaluations", type=int, default=30)
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
        request = {"model": "minilm", "task": "glue/rte", "data_dir": str(glue), "training": {"epochs": args.epochs},
                   "search": {"objectives": ["error", "params", "latency"], "optimizer": "nsga2",
                              "evaluations": args.evaluations}}
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
        print(f"front: {len(front['points'])} points, hypervolume {front['hypervolume']:.4f}")
        status, archive = call(base, "GET", f"/searches/{search['id']}/pareto/0/download?format=hf")
        if status != 200:
            raise SystemExit(f"download failed: {status} {archive.decode()}")
        target = root / "point-0"
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
        folder = next(p.parent for p in target.rglob("config.json"))
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
        print(f"downloaded point 0 to {folder}: {type(model).__name__}, "
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
