"""The image, really built: the Dockerfile on a local base (docker/build-base.sh: no Docker Hub needed), then
docker-compose.yml's API and worker running a tiny search to success through HTTP and serving a point's download.

Marked `docker`: skipped, saying why, where no Docker daemon answers (`docker info`) or no Compose is installed.
`NASPRUNE_DOCKER_BASE` names a base image to build on instead (e.g. python:3.11-slim where Docker Hub is reachable).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import httpx
import pytest
from conftest import REPO, search_body

pytestmark = [pytest.mark.docker, pytest.mark.slow]
PROJECT = "nasprunetest"


def _docker_ready() -> str | None:
    """Why the test cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker command"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return "no Docker daemon answers `docker info` (start dockerd, or set DOCKER_HOST)"
    if _compose() is None:
        return "no Docker Compose (docker compose or docker-compose)"
    return None


def _compose() -> list[str] | None:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def _base_image() -> str:
    if os.environ.get("NASPRUNE_DOCKER_BASE"):
        return os.environ["NASPRUNE_DOCKER_BASE"]
    tag = "nasprune-python:3.11"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0:
        return tag
    if shutil.which("debootstrap") is None:
        pytest.skip("no base image: set NASPRUNE_DOCKER_BASE, or install debootstrap for docker/build-base.sh")
    subprocess.run(["bash", str(REPO / "docker" / "build-base.sh"), tag], check=True, timeout=1800)
    return tag


@pytest.fixture(scope="module")
def image() -> str:
    reason = _docker_ready()
    if reason:
        pytest.skip(reason)
    base = _base_image()
    torch = "torch==2.13.0" if base.startswith("nasprune-python") else "torch==2.13.0 --index-url " \
        "https://download.pytorch.org/whl/cpu"
    subprocess.run(["docker", "build", "-q", "--build-arg", f"BASE={base}", "--build-arg", f"TORCH={torch}",
                    "-t", "nasprune", str(REPO)], check=True, timeout=1800, capture_output=True)
    return "nasprune"


@pytest.fixture
def stack(image, workspace, tmp_path):
    """docker-compose.yml's api and worker, with the toy workspace mounted read-only as the allowed roots."""
    shared = tmp_path / "ws"
    shutil.copytree(workspace, shared)
    for path in [shared, *shared.rglob("*")]:  # the image runs as uid 1000
        path.chmod(0o755 if path.is_dir() else 0o644)
    tmp_path.chmod(0o755)
    roots = {"NASPRUNE_ALLOWED_MODEL_ROOTS": "/ws", "NASPRUNE_ALLOWED_DATA_ROOTS": "/ws",
             "NASPRUNE_HEARTBEAT_S": "1", "NASPRUNE_STALE_AFTER_S": "5"}
    override = tmp_path / "override.yml"
    service = {"environment": roots, "volumes": [f"{shared}:/ws:ro"]}
    override.write_text(json.dumps({"services": {"api": service, "worker": service}}))
    compose = [*_compose(), "-p", PROJECT, "-f", str(REPO / "docker-compose.yml"), "-f", str(override)]
    subprocess.run([*compose, "up", "-d", "--no-build"], check=True, timeout=300, capture_output=True)
    try:
        container = subprocess.run([*compose, "ps", "-q", "api"], check=True, capture_output=True,
                                   text=True).stdout.split()[0]
        ip = subprocess.run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                             container], check=True, capture_output=True, text=True).stdout.strip()
        client = httpx.Client(base_url=f"http://{ip}:8000", timeout=30)
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, subprocess.run([*compose, "logs"], capture_output=True,
                                                               text=True).stdout[-3000:]
            time.sleep(1)
        yield client, compose
    finally:
        subprocess.run([*compose, "down", "-v"], timeout=300, capture_output=True)


def test_the_image_runs_a_search_and_serves_a_point(stack) -> None:
    client, compose = stack
    body = search_body(Path("/ws"), ["error", "params"], 3)
    response = client.post("/searches", json=body)
    assert response.status_code == 201, response.text
    search_id = response.json()["id"]
    deadline = time.monotonic() + 600
    while (status := client.get(f"/searches/{search_id}").json())["status"] not in ("succeeded", "failed",
                                                                                    "cancelled"):
        assert time.monotonic() < deadline, status
        time.sleep(2)
    logs = subprocess.run([*compose, "logs", "--tail", "50"], capture_output=True, text=True).stdout
    assert status["status"] == "succeeded", (status["error"], logs[-3000:])
    assert status["device"] == "cpu"
    deadline = time.monotonic() + 300
    while (download := client.get(f"/searches/{search_id}/pareto/0/download")).status_code == 202:
        assert time.monotonic() < deadline
        time.sleep(2)
    assert download.status_code == 200, download.text
    names = tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz").getnames()
    assert any(name.endswith("config.json") for name in names) and any(name.endswith(".safetensors")
                                                                       for name in names)
