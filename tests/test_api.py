"""The HTTP API over a real SQLite file, with real worker processes (`python -m service.cli worker`): a search
submitted, run, read, downloaded and loaded (the download an export job a worker builds while the request waits);
a search that refines its front, whose downloads are the refined models; ten concurrent first downloads that
queue one export; a download that outwaits its wait (202); the validation errors; 404s; idempotency; cancel;
delete; a worker killed with SIGKILL whose job another worker finishes."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import (
    REPO,
    STALE_AFTER_S,
    run_worker_once,
    search_body,
    service_settings,
    start_worker,
    wait_for,
    worker_thread,
)
from fastapi.testclient import TestClient

from service import queue
from service.api import create_app
from service.db import current_revision, head_revision, make_engine, session_factory
from service.models import Search
from supernet.settings import DEFAULT_SEARCH_EXAMPLES, DEFAULT_VALIDATION_LIMIT

EVALUATIONS = 5
REFINE_EPOCHS = 0.5


def body(ws: Path, **overrides) -> dict:
    return search_body(ws, ["error", "params", "latency"], EVALUATIONS, **overrides)


def dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


@pytest.fixture(scope="module")
def ran(client, workspace, worker_env, tmp_path_factory) -> dict[str, str]:
    """Two searches run to the end, one after the other, by one worker process (its start, mostly imports, is paid
    once): "plain", and "refined", which refines its front points after the search."""
    budgets = {"plain": {}, "refined": {"search": {"evaluations": 3}, "refine": {"epochs": REFINE_EPOCHS}}}
    ids = {}
    for name, budget in budgets.items():
        response = client.post("/searches", json=body(workspace, **budget))
        assert response.status_code == 201, response.text
        ids[name] = response.json()["id"]
    log = tmp_path_factory.mktemp("worker") / "worker.err"
    worker = start_worker(worker_env, once=False, log=log)
    try:
        for search_id in ids.values():
            wait_for(client, search_id, lambda s: s["status"] in ("succeeded", "failed", "cancelled")
                     or worker.poll() is not None, timeout_s=120, what=f"search {search_id} to end")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, log.read_text()
    return ids


@pytest.fixture(scope="module")
def finished(ran) -> str:
    """One search run to the end by a worker process."""
    return ran["plain"]


# ------------------------------------------------------------------------------------------ the happy path


@pytest.mark.slow
def test_a_search_runs_in_a_worker_process(client, finished, settings, tmp_path) -> None:
    search = client.get(f"/searches/{finished}").json()
    assert search["status"] == "succeeded", search["error"]
    progress = search["progress"]
    assert progress["evaluations_done"] == progress["evaluations_total"] == EVALUATIONS
    assert progress["step"] == progress["total_steps"] > 0 and progress["hypervolume"] > 0
    assert progress["elapsed_s"] > 0 and progress["eta_s"] is None
    assert search["links"]["pareto"] == f"/searches/{finished}/pareto"
    listed = client.get("/searches", params={"status": "succeeded"}).json()
    assert finished in [s["id"] for s in listed["items"]]

    trials = client.get(f"/searches/{finished}/trials").json()
    assert trials["total"] == EVALUATIONS and [t["index"] for t in trials["items"]] == list(range(EVALUATIONS))
    assert len({json.dumps(t["config"], sort_keys=True) for t in trials["items"]}) == EVALUATIONS
    # the database is the one store of record: no trials.jsonl or front.json beside it
    folder = settings.search_folder(finished)
    assert not (folder / "trials.jsonl").exists() and not (folder / "front.json").exists()

    pareto = client.get(f"/searches/{finished}/pareto").json()
    assert pareto["objectives"] == ["error", "params", "latency"]
    assert pareto["hypervolume"] == progress["hypervolume"] and pareto["evaluations"] == EVALUATIONS
    assert set(pareto["reference"]) >= {"config", "objectives", "validation", "test", "params"}
    values = [[p["objectives"][n] for n in pareto["objectives"]] for p in pareto["points"]]
    assert values and not any(dominates(a, b) for a in values for b in values)
    all_values = [[t["objectives"][n] for n in pareto["objectives"]] for t in trials["items"]]
    assert not any(dominates(t, p) for t in all_values for p in values)  # nothing evaluated beats the front

    log = client.get(f"/searches/{finished}/logs").text
    assert "running search" in log and "succeeded" in log


@pytest.mark.slow
def test_download_an_hf_archive_and_load_it(client, finished, settings, tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification

    point = client.get(f"/searches/{finished}/pareto").json()["points"][0]
    with worker_thread(settings):  # builds the export job the download queues
        response = client.get(point["downloads"]["hf"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    (folder,) = tmp_path.iterdir()
    assert {"config.json", "model.safetensors", "subnetwork.json", "tokenizer.json"} <= {p.name for p in
                                                                                         folder.iterdir()}
    assert json.loads((folder / "subnetwork.json").read_text())["config"] == point["config"]
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    assert sum(p.numel() for p in model.parameters()) == point["params"]["total"]
    # the second request is served from the cache
    archive = settings.search_folder(finished) / "exports" / "0-hf.tar.gz"
    stamp = archive.stat().st_mtime_ns
    again = client.get(point["downloads"]["hf"])
    assert again.content == response.content and archive.stat().st_mtime_ns == stamp
    assert client.get(f"/searches/{finished}/pareto/99/download").status_code == 404
    assert client.get(f"/searches/{finished}/pareto/0/download", params={"format": "zip"}).status_code == 422


# ------------------------------------------------------------------------------------------ refining the front


@pytest.fixture(scope="module")
def refined(ran) -> str:
    """A search that refines its front points (refine.epochs), run to the end by a worker process."""
    return ran["refined"]


def _extract(content: bytes, into: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
        tar.extractall(into, filter="data")
    (folder,) = into.iterdir()
    return folder


def _logits(folder: Path, inputs: dict):
    import torch

    from supernet.extract import load_exported

    with torch.no_grad():
        return load_exported(folder)(**inputs).logits


@pytest.mark.slow
def test_a_refined_search_lists_and_serves_the_refined_models(client, refined, settings, tmp_path) -> None:
    import torch
    from conftest import random_inputs

    from search.records import REFINED_DIR
    from supernet.config import SubNetworkConfig
    from supernet.extract import extract
    from supernet.run import Run

    search = client.get(f"/searches/{refined}").json()
    assert search["status"] == "succeeded", search["error"]
    assert search["progress"]["stage"] == "done" and search["request"]["job"]["refine"]["epochs"] == REFINE_EPOCHS
    log = client.get(f"/searches/{refined}/logs").text
    assert "refining front point 1 of" in log and "front point(s) refined" in log

    run_folder = settings.search_folder(refined)
    response = client.get(f"/searches/{refined}/pareto")
    assert str(settings.data_root) not in response.text  # no server path, e.g. the refined folder, is shown
    points = response.json()["points"]
    assert len(points) >= 1 and not (run_folder / "front.json").exists()
    for point in points:
        assert set(point["refined"]) == {"validation", "test", "train_s", "kept", "settings"}
        assert point["refined"]["settings"]["epochs"] == REFINE_EPOCHS and point["refined"]["train_s"] > 0
        record = json.loads((run_folder / REFINED_DIR / str(point["position"]) / "subnetwork.json").read_text())
        assert point["refined"]["test"] == record["metrics"]["refined"]["test"]
        assert (run_folder / REFINED_DIR / str(point["position"]) / "model.safetensors").is_file()

    point = points[0]
    with worker_thread(settings):
        download = client.get(point["downloads"]["hf"])
    assert download.status_code == 200, download.text
    assert "point0-hf-refined.tar.gz" in download.headers["content-disposition"]
    assert (run_folder / "exports" / "0-hf-refined.tar.gz").is_file()
    folder = _extract(download.content, tmp_path / "download")
    record = json.loads((folder / "subnetwork.json").read_text())
    assert record["config"] == point["config"] and record["metrics"]["refined"]["test"] == point["refined"]["test"]

    run = Run(run_folder)
    inputs = random_inputs(vocab_size=run.tokenizer.vocab_size)
    served = _logits(folder, inputs)
    assert torch_equal(served, _logits(run_folder / REFINED_DIR / "0", inputs))  # the refined model, exactly
    sliced = extract(run.load_supernet(), SubNetworkConfig.from_dict(point["config"])).eval()
    with torch.no_grad():
        assert not torch_equal(served, sliced(**inputs).logits)  # not the supernet's slice


def torch_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))


@pytest.mark.slow
def test_a_sliced_export_is_never_served_for_a_refined_point(client, refined, settings, tmp_path) -> None:
    """Refined or sliced is part of the export job's key: the slice, asked for, is its own job and archive, never
    served in place of the refined model, nor the reverse; without its refined folder the point is not served at
    all by default (never the slice in place of the refined model the listing describes)."""
    from sqlalchemy import select

    from search.records import REFINED_DIR
    from service.models import Export

    run_folder = settings.search_folder(refined)
    point = client.get(f"/searches/{refined}/pareto").json()["points"][-1]
    position, url = point["position"], point["downloads"]["hf"]
    with worker_thread(settings):
        sliced = client.get(url, params={"sliced": "true"})
        served = client.get(url)
    assert f"point{position}-hf.tar.gz" in sliced.headers["content-disposition"]
    assert "refined" not in json.loads((_extract(sliced.content, tmp_path / "s") / "subnetwork.json").read_text())[
        "metrics"]
    refined_folder = _extract(served.content, tmp_path / "refined")
    assert refined_folder.name.endswith("-refined")
    assert "refined" in json.loads((refined_folder / "subnetwork.json").read_text())["metrics"]
    engine = make_engine(settings.url)
    try:
        with session_factory(engine)() as session:
            rows = session.scalars(select(Export).where(Export.search_id == refined, Export.position == position,
                                                        Export.format == "hf")).all()
        assert sorted((r.refined, Path(r.path).name, r.status.value) for r in rows) == [
            (False, f"{position}-hf.tar.gz", "succeeded"), (True, f"{position}-hf-refined.tar.gz", "succeeded")]
    finally:
        engine.dispose()
    aside = run_folder / "aside"
    (run_folder / REFINED_DIR / str(position)).rename(aside)
    try:
        response = client.get(url)
        assert response.status_code == 409 and "sliced=true" in response.json()["detail"]
        assert client.get(url, params={"sliced": "true"}).content == sliced.content  # from the cache, no worker
    finally:
        aside.rename(run_folder / REFINED_DIR / str(position))
    assert client.get(url).content == served.content


@pytest.mark.slow
def test_ten_concurrent_first_downloads_queue_one_export_and_all_get_it(client, finished, settings) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import select

    from service.models import Export

    point = client.get(f"/searches/{finished}/pareto").json()["points"][-1]
    url = point["downloads"]["hf"] + "&sliced=true"
    with worker_thread(settings), ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: client.get(url), range(10)))
    assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses if r.status_code != 200]
    assert len({r.content for r in responses}) == 1
    engine = make_engine(settings.url)
    try:
        with session_factory(engine)() as session:
            rows = session.scalars(select(Export).where(Export.search_id == finished,
                                                        Export.position == point["position"])).all()
        assert [(r.format, r.refined, r.status.value, r.attempts) for r in rows] == [("hf", False, "succeeded", 0)]
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_download_that_outwaits_its_export_answers_202_then_gets_it(finished, settings, workspace) -> None:
    """With no worker about, the download answers 202 with Retry-After and the job's state once export_wait_s has
    passed; the job stays queued, and a worker builds it for the next request."""
    impatient = service_settings(workspace, settings.data_root.parent, export_wait_s=0.3)
    with TestClient(create_app(impatient)) as client:
        point = client.get(f"/searches/{finished}/pareto").json()["points"][-1]
        url = point["downloads"]["onnx"]
        started = time.monotonic()
        response = client.get(url)
        assert response.status_code == 202, response.text
        assert 0.3 <= time.monotonic() - started < 10 and int(response.headers["retry-after"]) > 0
        job = response.json()
        assert (job["status"], job["format"], job["position"], job["error"]) == ("queued", "onnx", point["position"],
                                                                                 None)
        assert client.get(url).json()["id"] == job["id"]  # asked again: the same job
        with worker_thread(impatient):
            deadline = time.monotonic() + 120
            while (response := client.get(url)).status_code == 202 and time.monotonic() < deadline:
                time.sleep(0.2)
        assert response.status_code == 200 and response.headers["content-type"] == "application/gzip"
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
            assert any(name.endswith("/model.onnx") for name in tar.getnames())


@pytest.mark.slow
def test_a_refined_model_worse_than_its_slice_is_not_served(client, refined, settings, tmp_path) -> None:
    """A point whose refined model lost to its slice on validation ("kept": false) downloads as the slice."""
    from sqlalchemy import select

    from service.models import FrontPoint

    point = client.get(f"/searches/{refined}/pareto").json()["points"][0]
    engine = make_engine(settings.url)
    try:
        with session_factory(engine).begin() as session:
            row = session.scalars(select(FrontPoint).where(FrontPoint.search_id == refined,
                                                           FrontPoint.position == point["position"])).one()
            row.refined = row.refined | {"kept": False}
        assert client.get(f"/searches/{refined}/pareto").json()["points"][0]["refined"]["kept"] is False
        with worker_thread(settings):
            response = client.get(point["downloads"]["hf"])
        assert response.status_code == 200, response.text
        assert f"point{point['position']}-hf.tar.gz" in response.headers["content-disposition"]  # the slice
        served = _extract(response.content, tmp_path / "slice")
        assert "refined" not in json.loads((served / "subnetwork.json").read_text())["metrics"]
    finally:
        with session_factory(engine).begin() as session:
            row = session.scalars(select(FrontPoint).where(FrontPoint.search_id == refined,
                                                           FrontPoint.position == point["position"])).one()
            row.refined = row.refined | {"kept": True}
        engine.dispose()


# ------------------------------------------------------------------------------------------ compressing a point


@pytest.mark.slow
def test_compress_a_front_point_through_the_api(client, refined, settings, worker_env, tmp_path) -> None:
    """POST .../compress refuses what cannot fit (422 naming the field) and queues a compression once per point and
    settings; a worker process runs it from the point's refined model; its figures are listed under the point and
    its archive loads with and without remote code, every parameter counted."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from supernet.extract import load_exported

    point = client.get(f"/searches/{refined}/pareto").json()["points"][0]
    url = f"/searches/{refined}/pareto/{point['position']}/compress"
    wanted = {"protocol": "tucker", "rank": 4, "bank": 2, "epochs": 0.5}
    for bad, field, words in [({"rank": 100}, "rank", "at most the hidden size 32"),
                              ({"bank": 100_000}, "bank", "at most the number of matrix blocks"),
                              ({"embedding_rank": 40}, "embedding_rank", "at most the hidden size"),
                              ({"rank": 0}, "rank", "greater than or equal to 1"),
                              ({"protocol": "lowrank", "bank": 2}, None, "bank is the tucker protocol's"),
                              ({"protocol": "svd"}, "protocol", "Input should be")]:
        response = client.post(url, json=wanted | bad)
        assert response.status_code == 422, (bad, response.text)
        assert words in response.json()["detail"], response.text
        if field:
            assert response.json()["errors"][0]["loc"][-1] == field, response.text
    assert client.post(f"/searches/{refined}/pareto/99/compress", json=wanted).status_code == 404

    first = client.post(url, json=wanted)
    assert first.status_code == 202, first.text
    again = client.post(url, json=wanted)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]  # idempotent per settings
    other = client.post(url, json=wanted | {"rank": 3})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    cancelled = client.post(f"/searches/{refined}/compressions/{other.json()['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    asked_again = client.post(url, json=wanted | {"rank": 3})  # a cancelled one does not stand in the way
    assert asked_again.status_code == 202 and asked_again.json()["id"] != other.json()["id"]
    client.post(f"/searches/{refined}/compressions/{asked_again.json()['id']}/cancel")

    job_id = first.json()["id"]
    assert client.get(f"/searches/{refined}/compressions/{job_id}/download").status_code == 409  # not done yet
    run_worker_once(worker_env)
    job = client.get(f"/searches/{refined}/compressions/{job_id}").json()
    assert job["status"] == "succeeded", job["error"]
    assert job["step"] == job["total_steps"] > 0 and job["device"].startswith("cpu")
    result = job["result"]
    assert result["source"] == "refined" and result["train_s"] > 0
    assert result["params"]["encoder"] < result["point_params"]["encoder"] == point["params"]["encoder"]
    assert set(result["validation"]) == set(point["validation"])
    listed = client.get(f"/searches/{refined}/pareto").json()["points"][0]["compressions"]
    assert [c["id"] for c in listed if c["status"] == "succeeded"] == [job_id]
    assert job_id in [c["id"] for c in client.get(f"/searches/{refined}/compressions").json()]
    assert str(settings.data_root) not in json.dumps(listed)

    response = client.get(job["download"])
    assert response.status_code == 200, response.text
    assert f"point{point['position']}-tucker-" in response.headers["content-disposition"]
    folder = _extract(response.content, tmp_path / "compressed")
    record = json.loads((folder / "subnetwork.json").read_text())
    assert record["params"] == result["params"] and record["metrics"]["validation"] == result["validation"]
    remote = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    assert sum(p.numel() for p in remote.parameters()) == result["params"]["total"]
    inputs = {"input_ids": torch.tensor([[101, 2023, 2003, 102]]), "attention_mask": torch.tensor([[1, 1, 1, 1]])}
    with torch.no_grad():
        assert torch.allclose(remote(**inputs).logits, load_exported(folder)(**inputs).logits, atol=1e-6)


@pytest.mark.slow
def test_a_cancelled_compression_keeps_its_checkpoint_and_resumes_when_asked_again(client, finished,
                                                                                    settings) -> None:
    from search.records import compressed_folder

    url = f"/searches/{finished}/pareto/0/compress"
    wanted = {"protocol": "lowrank", "rank": 2, "epochs": 100}
    job_id = client.post(url, json=wanted).json()["id"]
    path = f"/searches/{finished}/compressions/{job_id}"
    with worker_thread(settings):
        deadline = time.monotonic() + 60
        while (job := client.get(path).json())["step"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job["status"] == "running" and job["step"] > 0, job
        client.post(f"{path}/cancel")
        while (job := client.get(path).json())["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
    assert job["status"] == "cancelled", job
    config = client.get(path).json()["settings"]
    checkpoint = compressed_folder(settings.search_folder(finished), 0, config, 0).with_suffix(".pt")
    assert checkpoint.is_file()  # what the next run resumes from
    again = client.post(url, json=wanted)
    assert again.status_code == 202 and again.json()["id"] != job_id
    with worker_thread(settings):
        deadline = time.monotonic() + 120
        while client.get(f"/searches/{finished}/compressions/{again.json()['id']}").json()["status"] in (
                "queued", "running") and time.monotonic() < deadline:
            time.sleep(0.1)
    done = client.get(f"/searches/{finished}/compressions/{again.json()['id']}").json()
    assert done["status"] == "succeeded" and done["step"] == done["total_steps"], done
    assert not checkpoint.exists()
    assert "resum" in client.get(f"/searches/{finished}/logs").text


# ------------------------------------------------------------------------------------------ validation


def _bad_bodies(ws: Path, outside: Path) -> dict[str, tuple[dict, str]]:
    custom = body(ws)["custom"]
    return {
        "model outside the roots": (body(ws, model=str(outside / "model")), "outside the allowed folders"),
        "model path with ..": (body(ws, model=str(ws / "model" / ".." / "model")), "'..'"),
        "unsupported architecture": (body(ws, model=str(ws / "gpt2")), "gpt2"),
        "unknown GLUE task": (body(ws, task="glue/nope"), "unknown task"),
        "missing custom file": (body(ws, custom=custom | {"train_file": str(ws / "missing.csv")}), "no such file"),
        "custom file outside roots": (body(ws, custom=custom | {"test_file": str(outside / "t.csv")}), "outside"),
        "glue data_dir outside roots": (body(ws, task="glue/rte", data_dir=str(outside)), "outside"),
        "glue data_dir without the files": (body(ws, task="glue/rte", data_dir=str(ws)), "RTE/train.tsv"),
        "zero evaluations": (body(ws, search={"evaluations": 0}), "search.evaluations: Input should be greater"),
        "negative epochs": (body(ws, training={"epochs": -1}), "training.epochs: Input should be greater than 0"),
        "negative refine epochs": (body(ws, refine={"epochs": -0.5}), "refine.epochs: Input should be greater"),
        "too many refine epochs": (body(ws, refine={"epochs": 101}), "refine.epochs: Input should be less than or "
                                                                     "equal to 100"),
        "refine budget over the full model": (body(ws, refine={"epochs": 1, "budgets": [0.5, 1.2]}),
                                              "refine.budgets.1: Input should be less than or equal to 1"),
        "refine budgets without refining": (body(ws, refine={"budgets": [0.5]}), "need refine epochs > 0"),
        "refine budget not a number": (body(ws, refine={"epochs": 1, "budgets": ["half"]}), "refine.budgets.0"),
        "custom task without its data": (body(ws, custom=None), "needs its data"),
        "custom data for another task": (body(ws, task="custom/other", custom=custom | {"name": "toy"}),
                                         "custom describes task custom/toy"),
        "huge max_length": (body(ws, max_length=100_000), "max_length"),
        "max_length over the model's positions": (body(ws, max_length=128), "positions"),
        "bad batch size": (body(ws, batch_size=0), "batch_size"),
        "unknown optimizer": (body(ws, search={"optimizer": "annealing"}), "search.optimizer: Input should be 'nsga2'"),
        "unknown objective": (body(ws, search={"objectives": ["error", "speed"]}), "search.objectives.1: Input should"),
        "one objective": (body(ws, search={"objectives": ["error"]}), "search.objectives: List should have at least 2"),
        "objectives twice": (body(ws, search={"objectives": "error,error"}), "objectives must be distinct"),
        "unknown space": (body(ws, space="galaxy"), "space: Input should be 'uniform'"),
        "unknown field": (body(ws, epochs=3), "epochs: Extra inputs are not permitted"),
        "the old budget section": (body(ws, budget={"evaluations": 3}), "budget: Extra inputs are not permitted"),
        "bad params kind": (body(ws, params_kind="all"), "params_kind: Input should be 'encoder' or 'total'"),
        "bad latency device": (body(ws, latency={"device": "tpu"}), "latency.device"),
        "search seed out of range": (body(ws, search={"seed": -1}), "search.seed"),
    }


@pytest.fixture(scope="module")
def bad_inputs(workspace, tmp_path_factory) -> Path:
    (workspace / "gpt2").mkdir(exist_ok=True)
    (workspace / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    outside = tmp_path_factory.mktemp("outside")
    (outside / "model").mkdir()
    (outside / "model" / "config.json").write_text((workspace / "model" / "config.json").read_text())
    (outside / "t.csv").write_text("text,label\na,pos\n")
    return outside


@pytest.mark.parametrize("case", list(_bad_bodies(Path("/w"), Path("/o"))))
def test_bad_requests_are_refused_with_a_message(client, workspace, bad_inputs, case) -> None:
    payload, message = _bad_bodies(workspace, bad_inputs)[case]
    response = client.post("/searches", json=payload)
    assert response.status_code in (400, 422), response.text
    assert message in response.json()["detail"]


def test_refine_epochs_are_accepted_and_stored(client, workspace) -> None:
    response = client.post("/searches", json=body(workspace, search={"evaluations": 2}, refine={"epochs": 0.25}))
    assert response.status_code == 201, response.text
    assert response.json()["request"]["job"]["refine"] == {"epochs": 0.25, "learning_rate": 1e-4,
                                                           "weight_decay": 0.01, "warmup_ratio": 0.06, "budgets": []}
    picks = client.post("/searches", json=body(workspace, search={"evaluations": 2},
                                               refine={"epochs": 1, "budgets": "0.33,0.5"}))
    assert picks.status_code == 201, picks.text
    assert picks.json()["request"]["job"]["refine"]["budgets"] == [0.5, 0.33]
    off = client.post("/searches", json=body(workspace))
    assert off.json()["request"]["job"]["refine"]["epochs"] == 0
    for search in (response, picks, off):
        assert client.post(f"/searches/{search.json()['id']}/cancel").json()["status"] == "cancelled"


@pytest.mark.parametrize(("field", "part", "default"), [("validation_limit", "run", DEFAULT_VALIDATION_LIMIT),
                                                          ("search_examples", "job", DEFAULT_SEARCH_EXAMPLES)])
def test_a_validation_budget_defaults_and_null_means_the_whole_split(client, workspace, field, part, default) -> None:
    """validation_limit (the split's cap) and search_examples (the search's subset of it)."""
    searches = {value: client.post("/searches", json=body(workspace, **budget))
                for value, budget in ((default, {}), (None, {field: None}), (7, {field: 7}))}
    for value, response in searches.items():
        assert response.status_code == 201, response.text
        assert response.json()["request"][part][field] == value
        assert client.post(f"/searches/{response.json()['id']}/cancel").json()["status"] == "cancelled"
    refused = client.post("/searches", json=body(workspace, **{field: 0}))
    assert refused.status_code == 422 and field in refused.json()["detail"]


def test_ehvi_without_botorch_says_how_to_install(client, workspace, monkeypatch) -> None:
    from service.api import validation

    monkeypatch.setattr(validation, "botorch_available", lambda: False)
    response = client.post("/searches", json=body(workspace, search={"optimizer": "ehvi"}))
    assert response.status_code == 422 and "nasprune[ehvi]" in response.json()["detail"]


def test_unknown_ids_are_404_on_every_route(client) -> None:
    routes = [("get", "/searches/nope"), ("get", "/searches/nope/trials"), ("get", "/searches/nope/pareto"),
              ("get", "/searches/nope/pareto/0/download"), ("post", "/searches/nope/cancel"),
              ("delete", "/searches/nope"), ("get", "/searches/nope/logs"),
              ("post", "/searches/nope/pareto/0/compress"), ("get", "/searches/nope/compressions"),
              ("get", "/searches/nope/compressions/c"), ("post", "/searches/nope/compressions/c/cancel"),
              ("get", "/searches/nope/compressions/c/download")]
    for method, url in routes:
        response = getattr(client, method)(url)
        assert response.status_code == 404, (method, url, response.text)
        assert "nope" in response.json()["detail"]


def test_health_docs_page_and_migrations_at_start(client, settings) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok", "schema_revision": head_revision()}
    assert current_revision(make_engine(settings.url)) == head_revision()
    assert "/searches/{search_id}/pareto" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="plot"' in page.text and "/pareto" in page.text and "/trials" in page.text
    assert client.get("/favicon.svg").headers["content-type"].startswith("image/svg+xml")  # no 404 in the console


# ------------------------------------------------------------------------------------------ queue operations


def test_idempotency_key(client, workspace) -> None:
    first = client.post("/searches", json=body(workspace), headers={"Idempotency-Key": "k-1"})
    again = client.post("/searches", json=body(workspace), headers={"Idempotency-Key": "k-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    in_body = client.post("/searches", json=body(workspace, idempotency_key="k-1"))
    assert in_body.status_code == 200 and in_body.json()["id"] == first.json()["id"]
    other = client.post("/searches", json=body(workspace, training={"seed": 7}), headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 409 and "different request" in other.json()["detail"]
    assert client.post(f"/searches/{first.json()['id']}/cancel").json()["status"] == "cancelled"


def test_an_idempotent_retry_is_the_same_request_when_the_server_defaults_changed(client, workspace,
                                                                                   settings) -> None:
    """The stored request has the server's defaults filled in; a retry of the same body after those defaults changed
    (an upgrade, or two servers of different versions behind one address) is the same search, not a 409. A search
    stored before the body's digest existed keeps the old comparison."""
    first = client.post("/searches", json=body(workspace), headers={"Idempotency-Key": "k-2"}).json()
    engine = make_engine(settings.url)
    factory = session_factory(engine)
    with factory() as session:
        row = session.get(Search, first["id"])
        assert row.request_digest is not None
        # as an older server with another validation cap would have stored it
        row.request = {**row.request, "run": {**row.request["run"], "validation_limit": DEFAULT_VALIDATION_LIMIT + 1}}
        session.commit()
    again = client.post("/searches", json=body(workspace), headers={"Idempotency-Key": "k-2"})
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    other = client.post("/searches", json=body(workspace, training={"seed": 7}), headers={"Idempotency-Key": "k-2"})
    assert other.status_code == 409
    with factory() as session:
        session.get(Search, first["id"]).request_digest = None  # stored before migration 0006
        session.commit()
    old = client.post("/searches", json=body(workspace), headers={"Idempotency-Key": "k-2"})
    assert old.status_code == 409 and "different request" in old.json()["detail"]
    engine.dispose()
    assert client.post(f"/searches/{first['id']}/cancel").json()["status"] == "cancelled"


def test_an_idempotent_retry_gets_its_search_even_if_the_body_no_longer_resolves(client, workspace) -> None:
    """The client timed out and retries; meanwhile the training file moved. The search exists, so the retry learns
    its id (200) rather than a 422 about the file; a new request with the same key still has to resolve."""
    moving = workspace / "retry-train.csv"
    moving.write_bytes((workspace / "train.csv").read_bytes())
    sent = body(workspace)
    sent["custom"] = {**sent["custom"], "train_file": str(moving)}
    first = client.post("/searches", json=sent, headers={"Idempotency-Key": "k-3"})
    assert first.status_code == 201
    moving.unlink()
    again = client.post("/searches", json=sent, headers={"Idempotency-Key": "k-3"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = client.post("/searches", json=sent | {"training": {"epochs": 1, "seed": 7}},
                        headers={"Idempotency-Key": "k-3"})
    assert other.status_code == 422 and "retry-train.csv" in other.json()["detail"]
    fresh = client.post("/searches", json=sent, headers={"Idempotency-Key": "k-4"})
    assert fresh.status_code == 422
    assert client.post(f"/searches/{first.json()['id']}/cancel").json()["status"] == "cancelled"


def test_cancel_a_queued_search_then_delete_it(client, workspace, settings) -> None:
    search_id = client.post("/searches", json=body(workspace)).json()["id"]
    folder = settings.search_folder(search_id)
    folder.mkdir(parents=True)
    (folder / "worker.log").write_text("hello\n")
    assert client.get(f"/searches/{search_id}/logs").text == "hello\n"
    cancelled = client.post(f"/searches/{search_id}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["cancel_requested"]
    assert client.get(f"/searches/{search_id}/pareto").status_code == 409
    assert client.delete(f"/searches/{search_id}").status_code == 204
    assert not folder.exists()
    assert client.get(f"/searches/{search_id}").status_code == 404


def test_delete_a_running_search_is_refused(client, workspace, settings) -> None:
    search_id = client.post("/searches", json=body(workspace)).json()["id"]
    engine = make_engine(settings.url)
    factory = session_factory(engine)
    claimed = queue.claim_next(factory, "test-worker")  # this test pretends to be the worker
    assert claimed is not None and claimed.id == search_id
    response = client.delete(f"/searches/{search_id}")
    assert response.status_code == 409 and "cancel" in response.json()["detail"]
    assert queue.finish(factory, search_id, "failed", "test over", worker_id="test-worker")
    assert client.delete(f"/searches/{search_id}").status_code == 204
    engine.dispose()


def test_list_is_paged_and_filtered(client, workspace) -> None:
    ids = [client.post("/searches", json=body(workspace)).json()["id"] for _ in range(3)]
    page = client.get("/searches", params={"limit": 2, "status": "queued"}).json()
    assert page["limit"] == 2 and len(page["items"]) == 2 and page["total"] >= 3
    assert all(item["status"] == "queued" for item in page["items"])
    assert client.get("/searches", params={"status": "bogus"}).status_code == 422
    assert client.get("/searches", params={"limit": 0}).status_code == 422
    for search_id in ids:
        client.post(f"/searches/{search_id}/cancel")


# ------------------------------------------------------------------------------------------ running workers


@pytest.mark.slow
def test_cancel_a_running_search(client, workspace, worker_env) -> None:
    sent = body(workspace, training={"epochs": 40}, search={"evaluations": 5})
    search_id = client.post("/searches", json=sent).json()["id"]
    worker = start_worker(worker_env, once=True)
    try:
        wait_for(client, search_id, lambda s: s["status"] == "training" and (s["progress"]["step"] or 0) >= 1,
                 what="training")
        asked = time.monotonic()
        client.post(f"/searches/{search_id}/cancel")
        data = wait_for(client, search_id, lambda s: s["status"] == "cancelled", timeout_s=15, what="cancelled")
        assert time.monotonic() - asked < 10
        assert data["progress"]["step"] < data["progress"]["total_steps"]
        assert worker.wait(timeout=30) == 0
        assert client.get(f"/searches/{search_id}/trials").json()["total"] == data["progress"]["evaluations_done"]
        assert "cancelled" in client.get(f"/searches/{search_id}/logs").text
    finally:
        worker.kill()


def _stale(client: TestClient, search_id: str) -> bool:
    beat = client.get(f"/searches/{search_id}").json()["heartbeat_at"]
    return beat is None or (datetime.now(UTC) - datetime.fromisoformat(beat)).total_seconds() > STALE_AFTER_S + 0.5


@pytest.mark.slow
def test_a_killed_workers_job_is_finished_by_another(client, workspace, worker_env, settings) -> None:
    # 40 epochs of 6 steps: progress is written at most once a second, so the kill must land well before the
    # end of training even on a fast machine (a tiny step takes ~25 ms here)
    sent = body(workspace, training={"epochs": 40}, search={"evaluations": 6})
    search_id = client.post("/searches", json=sent).json()["id"]
    worker = start_worker(worker_env, once=False)
    try:
        # past the end of epoch 1 (6 steps), where a checkpoint is written
        wait_for(client, search_id, lambda s: (s["progress"]["step"] or 0) >= 8, what="step 8")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    killed_at = client.get(f"/searches/{search_id}").json()
    assert killed_at["status"] == "training" and killed_at["attempts"] == 0
    deadline = time.monotonic() + 30
    while not _stale(client, search_id):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    run_worker_once(worker_env)
    data = client.get(f"/searches/{search_id}").json()
    assert data["status"] == "succeeded", data["error"]
    assert data["attempts"] == 1 and data["worker_id"] != killed_at["worker_id"]
    trials = client.get(f"/searches/{search_id}/trials").json()["items"]
    configs = [json.dumps(t["config"], sort_keys=True) for t in trials]
    assert len(trials) == 6 and len(set(configs)) == 6
    assert not (settings.search_folder(search_id) / "trials.jsonl").exists()  # the rows are the one record
    resumed = re.search(r"resuming from step (\d+) of (\d+)", client.get(f"/searches/{search_id}/logs").text)
    assert resumed, "the second worker did not resume from the checkpoint"
    assert 6 <= int(resumed[1]) < int(resumed[2]) == 240


@pytest.mark.slow
def test_serve_starts_workers_and_stops_them(worker_env, tmp_path) -> None:
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in worker_env.items() if k != "NASPRUNE_DATABASE_URL"}
    env["NASPRUNE_DATA_ROOT"] = str(tmp_path / "data")
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", "1"],
                              env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        assert response.json()["status"] == "ok"
        assert (tmp_path / "data" / "nasprune.db").is_file()
        workers = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 1
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=40)
        assert not Path(f"/proc/{workers[0]}").exists()  # stopped and reaped by serve
    finally:
        server.kill()
