"""One contract for every store of a search's records (search/store.py): the CLI's FileStore and the service's
DbStore over a real SQLite file run the same tests: trials durable and stored once, the front loaded back whole,
refines of different points at the same time keeping each other's entries, a rewritten front noticed."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from search.records import SUBNETWORK_FILE
from search.runner import Trial
from search.store import FileStore, FrontChanged
from service import repository as repo
from service.db import make_engine, session_factory, upgrade
from service.store import DbStore
from supernet.config import SubNetworkConfig


def sub(heads: int) -> SubNetworkConfig:
    return SubNetworkConfig(layers=(0,), heads=(heads,), units=(8,))


def trial(index: int, heads: int) -> Trial:
    return Trial(index=index, config=sub(heads), objectives={"error": 0.5, "params": 10.0 * heads},
                 validation={"accuracy": 0.5}, params={"encoder": 10, "total": 20}, macs=100, latency_ms=1.0,
                 elapsed_s=0.1 * index)


def front(count: int = 3) -> dict:
    points = [{"config": sub(h).to_dict(), "objectives": {"error": 0.1 * h, "params": 5.0 * h},
               "validation": {"accuracy": 0.8}, "params": {"encoder": 5 * h}, "macs": 10 * h, "latency_ms": 1.0 * h,
               "test": {"accuracy": 0.7}} for h in range(1, count + 1)]
    return {"task": "toy", "objectives": ["error", "params"], "points": points, "hypervolume": 0.4,
            "reference": {"params": {"encoder": 100}}, "evaluations": 7}


@pytest.fixture(params=["file", "db"])
def store(request, tmp_path: Path):
    if request.param == "file":
        yield FileStore(tmp_path / "run")
        return
    url = f"sqlite:///{tmp_path / 'db' / 'nasprune.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    with factory.begin() as session:
        search_id = repo.create_search(session, request={})[0].id
    folder = tmp_path / "search"  # the run folder, as a worker passes it (where a legacy search's files would be)
    folder.mkdir()
    yield DbStore(factory, search_id, folder)
    engine.dispose()


def test_trials_are_durable_and_stored_once(store) -> None:
    assert store.load_trials() == []
    for t in (trial(0, 1), trial(1, 2), trial(1, 2)):  # the same trial again (a replayed callback) is a no-op
        store.add_trial(t)
    assert sorted(t.index for t in store.load_trials()) == [0, 1]
    assert [t.to_dict() for t in sorted(store.load_trials(), key=lambda t: t.index)] == [trial(0, 1).to_dict(),
                                                                                          trial(1, 2).to_dict()]


def test_the_front_loads_back_whole_and_is_replaced_whole(store, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert store.load_front() is None  # a new search: nothing to load, nothing to warn about
    assert not caplog.records, caplog.text
    store.save_front(front())
    assert store.load_front() == front()
    store.save_front(front(2) | {"hypervolume": 0.5})
    assert store.load_front() == front(2) | {"hypervolume": 0.5}


def test_concurrent_refines_of_different_points_keep_each_others_entries(store) -> None:
    store.save_front(front(6))
    points = front(6)["points"]
    barrier = threading.Barrier(6)

    def refine(position: int) -> None:
        barrier.wait()
        store.set_refined(position, points[position]["config"], {"kept": True, "position": position})

    threads = [threading.Thread(target=refine, args=(p,)) for p in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p["refined"]["position"] for p in store.load_front()["points"]] == list(range(6))


def test_a_front_rewritten_under_a_refine_is_noticed(store) -> None:
    store.save_front(front())
    with pytest.raises(FrontChanged):
        store.set_refined(0, sub(9).to_dict(), {"kept": True})
    with pytest.raises(FrontChanged):
        store.set_refined(5, sub(1).to_dict(), {"kept": True})
    assert all("refined" not in p for p in store.load_front()["points"])


def test_file_store_drops_a_torn_last_line_so_appends_start_clean(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.add_trial(trial(0, 1))
    with open(tmp_path / "trials.jsonl", "a") as f:
        f.write('{"index": 1, "conf')  # a crash mid-write
    assert [t.index for t in store.load_trials()] == [0]
    store.add_trial(trial(1, 2))
    assert [json.loads(line)["index"] for line in (tmp_path / "trials.jsonl").read_text().splitlines()] == [0, 1]


def test_the_torch_free_names_match_the_exporters() -> None:
    from supernet.extract import SUBNETWORK_FILE as EXTRACT_FILE

    assert SUBNETWORK_FILE == EXTRACT_FILE


def test_a_dynamic_trial_and_point_keep_their_runtime_fields_and_dynamics(store) -> None:
    dropping = SubNetworkConfig(layers=(0, 1), heads=(2, 2), units=(8, 8), token_keep=(1.0, 0.5))
    dynamics = {"expected_macs": 1234.5, "mean_tokens": [12.0, 6.5]}
    stored = Trial(index=0, config=dropping, objectives={"error": 0.4, "expected_macs": 1234.5},
                   validation={"accuracy": 0.6}, params={"encoder": 10, "total": 20}, macs=99, latency_ms=1.0,
                   elapsed_s=0.1, dynamics=dynamics)
    store.add_trial(stored)
    store.add_trial(trial(1, 1))
    loaded = store.load_trials()
    assert loaded[0] == stored and loaded[0].config.token_keep == (1.0, 0.5) and loaded[1].dynamics is None
    data = front(1)
    data["points"].append({"config": dropping.to_dict(), "objectives": {"error": 0.4, "params": 1.0},
                           "validation": {"accuracy": 0.6}, "params": {"encoder": 10}, "macs": 99,
                           "latency_ms": 1.0, "test": {"accuracy": 0.5}, "dynamics": dynamics})
    store.save_front(data)
    points = store.load_front()["points"]
    assert "dynamics" not in points[0] and points[1]["dynamics"] == dynamics
    assert SubNetworkConfig.from_dict(points[1]["config"]) == dropping
