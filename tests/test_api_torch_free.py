"""The API process never imports torch: the app is created in a fresh interpreter and every route is served once
(through TestClient, against a real SQLite file holding a succeeded search with a built export), then
`'torch' not in sys.modules` is checked. Heavy work (training, refining, building an export) happens in workers
only; the API reads rows and files. The CPU time the API takes to start (create_app + its first request) is
printed for bench notes (`pytest -s`)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

from conftest import REPO, supernet_config

from service import repository as repo
from service.config import LOG_FILE, Settings
from service.db import make_engine, session_factory, upgrade
from service.exports import archive_path
from service.models import ExportStatus, SearchStatus
from supernet.config import SubNetworkConfig

SERVE = r"""
import json, sys, time, traceback
started = time.process_time()


class Spy:
    # records who imports torch first (a meta path finder that finds nothing)
    stack = None

    def find_spec(self, name, path=None, target=None):
        if name == "torch" and Spy.stack is None:
            Spy.stack = [frame.filename for frame in traceback.extract_stack()]
        return None


sys.meta_path.insert(0, Spy())
from fastapi.testclient import TestClient
from service.api import create_app
from service.config import Settings

search, data_root = sys.argv[1], sys.argv[2]
with TestClient(create_app(Settings(data_root=data_root, export_wait_s=0))) as client:
    codes = {"healthz": client.get("/healthz").status_code}
    start_cpu_s = time.process_time() - started
    base = f"/searches/{search}"
    for name, method, url in [
        ("index", "get", "/"), ("openapi", "get", "/openapi.json"), ("docs", "get", "/docs"),
        ("create", "post", "/searches"), ("list", "get", "/searches"), ("get", "get", base),
        ("trials", "get", f"{base}/trials"), ("pareto", "get", f"{base}/pareto"),
        ("download", "get", f"{base}/pareto/0/download"), ("knobs", "get", f"{base}/pareto/0/knobs"),
        ("download-queued", "get", f"{base}/pareto/0/download?format=onnx"),
        ("refine", "post", f"{base}/pareto/0/refine"), ("refinements", "get", f"{base}/refinements"),
        ("logs", "get", f"{base}/logs"), ("datasets", "get", "/datasets"), ("dataset", "get", "/datasets/nope"),
        ("dataset-delete", "delete", "/datasets/nope"), ("cancel", "post", f"{base}/cancel"),
        ("favicon", "get", "/favicon.svg"), ("plotly", "get", "/static/plotly.min.js"), ("options", "get", "/options"),
    ]:
        kwargs = {"json": {"model": "nowhere", "task": "glue/rte"}} if name == "create" else {}
        codes[name] = getattr(client, method)(url, **kwargs).status_code
    refinement = client.get(f"{base}/refinements").json()[0]["id"]
    codes["refinement-cancel"] = client.post(f"{base}/refinements/{refinement}/cancel").status_code
    codes["compress"] = client.post(f"{base}/pareto/0/compress", json={"rank": 4, "bank": 2}).status_code
    codes["compress-too-wide"] = client.post(f"{base}/pareto/0/compress", json={"rank": 100}).status_code
    compression = client.get(f"{base}/compressions").json()[0]["id"]
    for name, method, url in [("compression", "get", ""), ("compression-download", "get", "/download"),
                              ("compression-cancel", "post", "/cancel")]:
        codes[name] = getattr(client, method)(f"{base}/compressions/{compression}{url}").status_code
    upload = client.post("/datasets", files={"file": ("d.csv", b"text,label\na,0\nb,1\n")}, data={"name": "d"})
    codes["upload"] = upload.status_code
    data = {"train_dataset": upload.json()["id"], "test_dataset": upload.json()["id"], "text_columns": ["text"]}
    share = client.post("/shares", json={"model": "minilm", "task": "custom/d", "custom": data})
    codes["share"] = share.status_code
    codes["share-bad-groups"] = client.post("/shares", json={"model": "minilm", "task": "custom/d", "custom": data,
                                                             "share": {"groups": 4}}).status_code
    codes["share-search"] = client.post("/searches", json={"model": f"share:{share.json()['id']}",
                                                           "task": "custom/d", "custom": data}).status_code
    for name, method, url in [("shares", "get", ""), ("share-get", "get", f"/{share.json()['id']}"),
                              ("share-logs", "get", f"/{share.json()['id']}/logs"),
                              ("share-download", "get", f"/{share.json()['id']}/download"),
                              ("share-cancel", "post", f"/{share.json()['id']}/cancel")]:
        codes[name] = getattr(client, method)(f"/shares{url}").status_code
    codes["delete"] = client.delete(base).status_code
print(json.dumps({"torch": "torch" in sys.modules, "importers": Spy.stack or [], "codes": codes,
                  "start_cpu_s": start_cpu_s}))
"""


def _succeeded_search(settings: Settings) -> str:
    """A succeeded search as a worker leaves it: trials, its front (rows), a built hf export, a log."""
    upgrade(settings.url)
    engine = make_engine(settings.url)
    config = SubNetworkConfig(layers=(0,), heads=(1,), units=(8,)).to_dict()
    point = {"config": config, "objectives": {"error": 0.2, "params": 10.0}, "validation": {"accuracy": 0.8},
             "params": {"encoder": 10, "total": 20}, "macs": 100, "latency_ms": 1.0, "test": {"accuracy": 0.7}}
    try:
        factory = session_factory(engine)
        with factory.begin() as session:
            search, _ = repo.create_search(session, request={"run": {}, "job": {}}, folder_root=settings.searches_root)
            search.status = SearchStatus.SUCCEEDED
            search_id, folder = search.id, Path(search.folder)
            session.flush()
            repo.save_front(session, search_id, {"objectives": ["error", "params"], "points": [point],
                                                 "reference": point, "hypervolume": 0.5})
            export = repo.request_export(session, search_id=search_id, position=0, format="hf", refined=False)
            archive = archive_path(folder, 0, "hf")
            archive.parent.mkdir(parents=True)
            with tarfile.open(archive, "w:gz"):
                pass
            export.status, export.path = ExportStatus.SUCCEEDED, str(archive)
        (folder / LOG_FILE).write_text("a log line\n")
        (folder / "supernet").mkdir()  # what POST .../compress checks the ranks against
        (folder / "supernet" / "supernet_config.json").write_text(json.dumps(supernet_config(num_layers=1).to_dict()))
        return search_id
    finally:
        engine.dispose()


def test_the_api_serves_every_route_without_importing_torch(tmp_path: Path) -> None:
    settings = Settings(data_root=tmp_path / "data")
    search_id = _succeeded_search(settings)
    done = subprocess.run([sys.executable, "-c", SERVE, search_id, str(settings.data_root)], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    codes = result["codes"]
    assert codes["download"] == 200 and codes["download-queued"] == 202  # the archive built; one queued, no worker
    assert codes["pareto"] == 200 and codes["delete"] == 204 and codes["refine"] == 202, codes
    assert codes["knobs"] == 200, codes
    assert codes["compress"] == 202 and codes["compress-too-wide"] == 422 and codes["compression"] == 200, codes
    assert codes["compression-download"] == 409 and codes["compression-cancel"] == 200, codes
    assert codes["share"] == 202 and codes["share-bad-groups"] == 422 and codes["share-search"] == 422, codes
    assert codes["shares"] == codes["share-get"] == codes["share-logs"] == codes["share-cancel"] == 200, codes
    assert codes["share-download"] == 409 and codes["favicon"] == codes["plotly"] == codes["options"] == 200, codes
    assert all(code < 500 for code in codes.values()), codes
    print(f"API start (create_app + first request): {result['start_cpu_s']:.2f} s CPU")
    ours = [f for f in result["importers"] if f.startswith(str(REPO)) and "site-packages" not in f]
    assert not result["torch"], f"the API imported torch through {ours}"
