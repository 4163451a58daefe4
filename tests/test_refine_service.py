"""The service side of refining front points, over real SQLite files (migration 0003, front_points.refined, is in
tests/test_migrations.py): the repository storing a point's "refined" entry, the worker's refining progress, and the
export code choosing the refined model folder only where it is safe (no path taken from JSON, nothing outside the
search folder). The end-to-end run through a worker process is in tests/test_api.py."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from search.records import REFINED_DIR
from search.runner import SearchConfig
from search.settings import LatencyShape, SearchJob
from service import queue
from service import repository as repo
from service.api.routes import refined_read
from service.config import Settings
from service.db import make_engine, session_factory, upgrade
from service.exports import archive_name, archive_path, export_stem, leftovers, refined_source
from service.models import SearchStatus
from service.worker import SearchRunner, _JobState, diverged_reason
from supernet.config import SubNetworkConfig
from supernet.extract import SUBNETWORK_FILE
from supernet.files import temporary_sibling
from supernet.settings import RefineConfig, RunSpec

CONFIG = SubNetworkConfig(layers=(0,), heads=(2,), units=(8,)).to_dict()
REFINED = {"validation": {"accuracy": 0.9}, "test": {"accuracy": 0.85}, "train_s": 1.5, "kept": True,
           "settings": RefineConfig(epochs=0.5).to_dict() | {"seed": 0}, "folder": f"{REFINED_DIR}/0"}


def point(**extra) -> dict:
    return {"config": CONFIG, "objectives": {"error": 0.2, "params": 50.0}, "validation": {"accuracy": 0.8},
            "params": {"encoder": 500}, "macs": 123, "latency_ms": 2.0, "test": {"accuracy": 0.75}} | extra


# ------------------------------------------------------------------------------------------------ repository


@pytest.fixture
def factory(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db' / 'nasprune.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield session_factory(engine)
    engine.dispose()


def test_replace_front_stores_the_refined_entry(factory) -> None:
    other = SubNetworkConfig(layers=(0,), heads=(1,), units=(4,)).to_dict()
    with factory.begin() as session:
        search_id = repo.create_search(session, request={})[0].id
        repo.replace_front(session, search_id, [point(refined=REFINED), point(config=other)])
    with factory() as session:
        refined, plain = repo.list_front(session, search_id)
        assert refined.refined == REFINED and plain.refined is None
        with pytest.raises(repo.InvalidArgument, match="front point 0 is malformed.*refined"):
            repo.replace_front(session, search_id, [point(refined=["not", "an", "object"])])


def test_the_api_shows_the_refined_entry_without_its_folder() -> None:
    shown = refined_read(REFINED)
    assert shown is not None and "folder" not in shown.model_dump()
    assert shown.model_dump() == {k: v for k, v in REFINED.items() if k != "folder"}
    assert refined_read(None) is None


# ------------------------------------------------------------------------------------------------ worker


def test_the_worker_reports_refining_as_a_stage_of_exporting(tmp_path: Path) -> None:
    settings = Settings(data_root=tmp_path / "data", heartbeat_s=1, stale_after_s=3)
    upgrade(settings.url)
    engine = make_engine(settings.url)
    try:
        factory = session_factory(engine)
        request = repo.request_dict(RunSpec(model="minilm", task="custom/toy"),
                                    SearchJob(search=SearchConfig(evaluations=2), latency=LatencyShape(),
                                              refine=RefineConfig(epochs=0.5)))
        queue.enqueue(factory, request=request, folder_root=settings.searches_root)
        search = queue.claim_next(factory, "w1")
        assert search is not None and search.status == SearchStatus.TRAINING  # e.g. a resumed job: no trial ran
        runner = SearchRunner(settings, factory, search, "w1", threading.Event())
        state = _JobState(search_id=search.id, worker_id="w1", evaluations_total=2, time_limit_s=None)

        def stored():
            with factory() as session:
                row = repo.get_search(session, search.id)
                return row.status, row.stage, row.eta_s

        runner.on_refine(state, 0, 3)
        assert stored() == (SearchStatus.EXPORTING, "refining 0/3", None)
        time.sleep(0.05)
        runner.on_refine(state, 1, 3)
        status, stage, eta = stored()
        assert (status, stage) == (SearchStatus.EXPORTING, "refining 1/3") and eta >= 2 * 0.05
        runner.on_refine(state, 3, 3)
        assert stored() == (SearchStatus.EXPORTING, "refining 3/3", 0.0)
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------------------------ exports


def _refined_folder(folder: Path, config: dict = CONFIG) -> Path:
    folder.mkdir(parents=True)
    (folder / SUBNETWORK_FILE).write_text(json.dumps({"config": config}))
    (folder / "config.json").write_text("{}")
    return folder


def test_the_refined_folder_is_derived_and_confined(tmp_path: Path) -> None:
    search = tmp_path / "searches" / "s1"
    refined = point(refined=REFINED | {"folder": "../../elsewhere"})  # the JSON value is never followed
    _refined_folder(tmp_path / "elsewhere")
    assert refined_source(search, 0, refined) is None  # no refined/0 yet
    inside = _refined_folder(search / REFINED_DIR / "0")
    assert refined_source(search, 0, refined) == inside.resolve()
    assert refined_source(search, 0, point()) is None  # the point was not refined: slice it
    # refined but worse than the slice on validation: the slice is served
    assert refined_source(search, 0, point(refined=REFINED | {"kept": False})) is None
    # refined/1: a symlink planted to a folder outside the search folder
    (search / REFINED_DIR / "1").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert refined_source(search, 1, refined) is None
    # refined/2: a folder of another sub-network (a stale one) is not this point's model
    _refined_folder(search / REFINED_DIR / "2", config=SubNetworkConfig(layers=(), heads=(0,), units=(0,)).to_dict())
    assert refined_source(search, 2, refined) is None
    # refined/3: no readable subnetwork.json
    (search / REFINED_DIR / "3").mkdir()
    assert refined_source(search, 3, refined) is None


def test_refined_and_sliced_exports_have_separate_cache_entries(tmp_path: Path) -> None:
    assert export_stem(0, "hf") == "0-hf" and export_stem(0, "hf", refined=True) == "0-hf-refined"
    assert archive_path(tmp_path, 1, "onnx", refined=True) == tmp_path / "exports" / "1-onnx-refined.tar.gz"
    assert archive_name("abcdef0123", 2, "hf", refined=True) == "nasprune-abcdef01-point2-hf-refined"
    exports = tmp_path / "exports"
    exports.mkdir()
    # the temporaries supernet.files.atomic_path makes for the folder and the archive of each stem
    folder, archive = (temporary_sibling(exports / name) for name in ("0-hf", "0-hf.tar.gz"))
    refined_folder, refined_archive = (temporary_sibling(exports / n) for n in ("0-hf-refined", "0-hf-refined.tar.gz"))
    names = [folder.name, archive.name, ".0-hf.lock", refined_folder.name, refined_archive.name, ".0-hf-refined.lock",
             "0-hf.tar.gz", "0-hf-refined.tar.gz"]
    for name in names:
        (exports / name).touch()
    assert sorted(p.name for p in leftovers(exports, "0-hf")) == sorted([folder.name, archive.name])
    assert sorted(p.name for p in leftovers(exports, "0-hf-refined")) == sorted([refined_folder.name,
                                                                                 refined_archive.name])


def test_a_diverged_refinement_says_why_and_what_to_lower() -> None:
    """The two ways a refinement diverges, as its error reads: the trainer's message (which names the setting
    already), and a refined model whose logits are not finite (the refined model's evaluation refused them)."""
    from supernet.evaluation import NonFiniteLogits
    from supernet.training import TrainingDiverged

    config = RefineConfig(epochs=1, learning_rate=0.5)
    unchanged = "; nothing was stored: the point's downloads are unchanged"
    trained = TrainingDiverged("refinement diverged at step 2 of 8: the loss is nan; lower refine.learning_rate "
                               "(now 0.5)")
    assert diverged_reason(trained, config) == f"{trained}{unchanged}"
    logits = NonFiniteLogits("12 of 24 logits are NaN or inf")
    assert diverged_reason(logits, config) == ("refinement diverged: the refined model's 12 of 24 logits are NaN or "
                                               f"inf; lower refine.learning_rate (now 0.5){unchanged}")
