"""POST /shares (issue 34): `nasprune share` as a worker job over HTTP and a real SQLite file, run by the worker's
loop in this process (worker processes are tested with the other jobs); its model downloaded and loaded, and a
search run on it by naming it "share:<id>"."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from conftest import search_body

pytestmark = pytest.mark.slow


def share_body(ws: Path, **share) -> dict:
    body = search_body(ws, ["error", "params"], 4)
    del body["search"], body["latency"]
    return body | {"share": {"groups": 1, "teacher_epochs": 1, "epochs": 1} | share}


def _extract(content: bytes, into: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as archive:
        archive.extractall(into, filter="data")
    (folder,) = into.iterdir()
    return folder


def test_bad_share_requests_name_the_field(client, workspace) -> None:
    for share, words in [({"groups": 2}, "share.groups: 2 shared blocks do not divide the model's 3 layers"),
                         ({"groups": 3}, "share.groups: 3 shared blocks for 3 layers share nothing")]:
        response = client.post("/shares", json=share_body(workspace, **share))
        assert response.status_code == 422 and words in response.json()["detail"], response.text
    for mapping, words in [([0, 0, 0, 1], "share.mapping: 4 entries for the model's 3 layers"),
                           ([0, 1, 2], "share.mapping: 3 shared blocks for 3 layers share nothing")]:
        body = share_body(workspace)
        body["share"] = {k: v for k, v in body["share"].items() if k != "groups"} | {"mapping": mapping}
        response = client.post("/shares", json=body)
        assert response.status_code == 422 and words in response.json()["detail"], response.text
    response = client.post("/shares", json=share_body(workspace, groups=2, mapping=[0, 1, 0]))
    assert response.status_code == 422 and response.json()["errors"][0]["loc"][-1] == "mapping", response.text
    response = client.post("/shares", json=share_body(workspace) | {"model": "share:abc"})
    assert response.status_code == 422 and "shares its layers already" in response.json()["detail"]
    response = client.post("/shares", json=share_body(workspace, groups=0))
    assert response.status_code == 422 and response.json()["errors"][0]["loc"][-1] == "groups"
    response = client.post("/searches", json=search_body(workspace, ["error", "params"], 4, model="share:nope"))
    assert response.status_code == 422 and "no share with id 'nope'" in response.json()["detail"], response.text
    for path in ("/shares/nope", "/shares/nope/download", "/shares/nope/logs"):
        assert client.get(path).status_code == 404
    assert client.post("/shares/nope/cancel").status_code == 404


def test_a_share_runs_in_a_worker_and_a_search_takes_its_model(client, workspace, settings, tmp_path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from service.worker import run_worker
    from supernet.config import SubNetworkConfig
    from supernet.extract import load_exported

    first = client.post("/shares", json=share_body(workspace))
    assert first.status_code == 202, first.text
    share_id = first.json()["id"]
    again = client.post("/shares", json=share_body(workspace))
    assert again.status_code == 200 and again.json()["id"] == share_id  # idempotent per settings
    other = client.post("/shares", json=share_body(workspace, epochs=2))
    assert other.status_code == 202 and other.json()["id"] != share_id
    assert client.post(f"/shares/{other.json()['id']}/cancel").json()["status"] == "cancelled"
    assert client.get(f"/shares/{share_id}/download").status_code == 409  # not done yet
    waiting = client.post("/searches", json=search_body(workspace, ["error", "params"], 4, model=f"share:{share_id}"))
    assert waiting.status_code == 422 and "is queued; a search can use it once it has succeeded" in waiting.text

    assert run_worker(settings, once=True, poll_s=0.05) == 1  # the worker's loop, in this process
    share = client.get(f"/shares/{share_id}").json()
    assert share["status"] == "succeeded", share["error"]
    assert share["stage"] == "done" and share["step"] == share["total_steps"] > 0 and share["device"] == "cpu"
    assert share["model"] == f"share:{share_id}"
    result = share["result"]
    assert result["params"]["total"] < result["teacher_params"]["total"]
    assert set(result["validation_by_ode_steps"]) == {"1", "2", "3"} and "test" in result["metrics"]
    assert [s["id"] for s in client.get("/shares").json()] == [other.json()["id"], share_id]
    assert str(settings.data_root) not in json.dumps(share)
    log = client.get(f"/shares/{share_id}/logs").text
    assert "tying the layers" in log and "recovery by distillation" in log and str(settings.data_root) not in log

    response = client.get(share["download"])
    assert response.status_code == 200, response.text
    folder = _extract(response.content, tmp_path / "shared")
    record = json.loads((folder / "subnetwork.json").read_text())
    assert record["params"] == result["params"] and record["tying"] == result["tying"]
    own = load_exported(folder).eval()
    assert sum(p.numel() for p in own.parameters()) == result["params"]["total"]
    remote = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    inputs = {"input_ids": torch.tensor([[101, 2023, 2003, 102]]), "attention_mask": torch.tensor([[1, 1, 1, 1]])}
    with torch.no_grad():
        torch.testing.assert_close(remote(**inputs).logits, own(**inputs).logits)

    for extra, words in [({"dynamic": {"exits": True}}, "dynamic.exits: early exits do not run on a parameter-shared"),
                         ({"search": {"objectives": ["error", "params"], "evaluations": 4, "ode_compensation": True}},
                          "search.ode_compensation: a parameter-shared model keeps every layer"),
                         ({"training": {"epochs": 1, "token_elimination": True}}, "training.token_elimination")]:
        body = search_body(workspace, ["error", "params"], 4, model=f"share:{share_id}") | extra
        refused = client.post("/searches", json=body)
        assert refused.status_code == 422 and words in refused.json()["detail"], refused.text
    created = client.post("/searches", json=search_body(workspace, ["error", "params"], 4, model=f"share:{share_id}"))
    assert created.status_code == 201, created.text
    search_id = created.json()["id"]
    assert created.json()["request"]["run"]["model"] == f"share:{share_id}"
    assert run_worker(settings, once=True, poll_s=0.05) == 1  # the worker's loop, in this process
    search = client.get(f"/searches/{search_id}").json()
    assert search["status"] == "succeeded", search["error"]
    points = client.get(f"/searches/{search_id}/pareto").json()["points"]
    assert points and all(len(SubNetworkConfig.from_dict(p["config"]).layers) == 3 for p in points)
    assert {p["params"]["encoder"] for p in points} <= set(range(result["params"]["encoder"] + 1))
