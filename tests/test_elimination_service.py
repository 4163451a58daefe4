"""Token elimination through the API: the `dynamic` section in POST /searches and GET /options, the latency shape
over real lengths beside it (422 naming the field when wrong), and the dynamics of trials and front points read back
over HTTP."""

from __future__ import annotations

from conftest import served_dynamic_point
from sqlalchemy import update
from test_api import body

from search.settings import DEFAULT_EXIT_THRESHOLDS
from service.db import make_engine, session_factory
from service.models import Search, SearchStatus
from service.store import DbStore
from supernet.config import SubNetworkConfig


def test_the_dynamic_section_is_in_the_options_and_checked(client, workspace) -> None:
    schema = client.get("/options").json()
    text = str(schema)
    assert "token_elimination" in text and "keep_floor" in text and "expected_macs" in text
    refused = client.post("/searches", json=body(workspace, latency={"lengths": "padded"}))
    assert refused.status_code == 422 and "lengths" in refused.text, refused.text
    with_latency = client.post("/searches", json=body(workspace, dynamic={"token_elimination": True},
                                                      latency={"batch_size": 1, "lengths": "validation"}))
    assert with_latency.status_code == 201, with_latency.text
    assert with_latency.json()["request"]["job"]["latency"]["lengths"] == "validation"
    bad = client.post("/searches", json=body(workspace, dynamic={"token_elimination": True, "keep_floor": 0}))
    assert bad.status_code == 422 and "keep_floor" in bad.text
    accepted = client.post("/searches", json=body(workspace, dynamic={"token_elimination": True},
                                                  search={"objectives": ["error", "expected_macs"]}))
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["request"]["job"]["dynamic"] == {
        "token_elimination": True, "keep_floor": 0.1, "exits": False, "exit_thresholds": list(DEFAULT_EXIT_THRESHOLDS)}


def test_trials_and_points_show_their_dynamics(client, workspace, settings, tmp_path) -> None:
    created = client.post("/searches", json=body(workspace, dynamic={"token_elimination": True},
                                                 search={"objectives": ["error", "expected_macs"]}))
    search_id = created.json()["id"]
    dropping = SubNetworkConfig(layers=(0, 1), heads=(2, 2), units=(8, 8), token_keep=(1.0, 0.5))
    dynamics = {"expected_macs": 321.0, "mean_tokens": [10.0, 5.0]}
    item, point = served_dynamic_point(client, settings, tmp_path, search_id, dropping, dynamics)
    assert item["dynamics"] == dynamics and item["config"]["token_keep"] == [1.0, 0.5]
    assert point["dynamics"] == dynamics and point["config"]["token_keep"] == [1.0, 0.5]


def test_an_eliminating_point_is_refused_as_onnx_with_the_reason(client, workspace, settings, tmp_path) -> None:
    created = client.post("/searches", json=body(workspace, dynamic={"token_elimination": True},
                                                 search={"objectives": ["error", "expected_macs"]}))
    search_id = created.json()["id"]
    engine = make_engine(settings.url)
    dropping = SubNetworkConfig(layers=(0, 1), heads=(2, 2), units=(8, 8), token_keep=(1.0, 0.5))
    DbStore(session_factory(engine), search_id, tmp_path).save_front({
        "task": "toy", "objectives": ["error", "expected_macs"], "hypervolume": 0.1,
        "points": [{"config": dropping.to_dict(), "objectives": {"error": 0.3, "expected_macs": 3.0},
                    "validation": {"accuracy": 0.7}, "params": {"encoder": 5}, "macs": 4, "latency_ms": 2.0,
                    "test": {"accuracy": 0.6}}]})
    with session_factory(engine).begin() as session:
        session.execute(update(Search).where(Search.id == search_id).values(status=SearchStatus.SUCCEEDED))
    engine.dispose()
    response = client.get(f"/searches/{search_id}/pareto/0/download?format=onnx")
    assert response.status_code == 409 and "format=hf" in response.json()["detail"], response.text


def test_export_onnx_refuses_a_model_that_drops_tokens(tmp_path) -> None:
    import pytest
    from conftest import make_supernet, supernet_config

    from supernet.extract import ExportError, export_onnx, extract

    config = supernet_config()
    full = SubNetworkConfig.full(config)
    model = extract(make_supernet(config), SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units,
                                                            token_keep=(1.0, 0.5, 0.5)))
    pytest.importorskip("onnx")
    with pytest.raises(ExportError, match="drops tokens"):
        export_onnx(model, tmp_path / "m.onnx")
