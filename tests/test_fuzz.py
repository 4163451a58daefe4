"""Fuzz the HTTP API from its own OpenAPI document (schemathesis): requests the schema allows and requests it does
not, against a real SQLite file holding one succeeded search (trials, front, front.json, a log). Every answer must
be a documented status with a body matching the schema, and never a 5xx.

Two passes: one with made-up ids (404s, validation errors, queued searches from fuzzed POST bodies), one with every
`search_id` set to the seeded search (and `point` to one of its front points, `refinement_id` and
`compression_id` to its queued refinement and compression), so the query parameters and bodies of these routes
are fuzzed against real rows.
The routes are read from the app, so new ones are fuzzed as they land. Left out of the second pass: the export
download (it would wait for a worker to build a model archive) and DELETE (it would remove the rows the pass reads).
About 1,700 requests, ~10 s.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from schemathesis.python import asgi

from search.records import compression_key
from search.runner import SearchConfig, Trial
from search.settings import LatencyShape, SearchJob
from service import compressions, queue, refinements
from service import repository as repo
from service.api import create_app
from service.config import LOG_FILE, Settings
from service.db import make_engine, session_factory, upgrade
from service.models import SearchStatus
from supernet.config import SubNetworkConfig
from supernet.settings import CompressConfig, RunSpec

MAX_EXAMPLES = 25
# Deterministic (same cases every run, no example database written into the repository), no shrinking: a failure
# is reported with the request that caused it, which is what matters here.
GENERATION = {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none", "no-shrink": True}
# A body the schema allows can still name a model or file that is not there, an unknown objective, a CSV that does
# not parse, or an Idempotency-Key header that differs from the body's key: POSTs may answer those with a 422 that
# says why. (404, 409 and the other 4xx statuses schemathesis expects of valid data stay as they are.)
VALID_BUT_REFUSED = {"include-method": "POST", "checks": {"positive_data_acceptance": {
    "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]}}}
HEAVY = r"/download$"  # of a succeeded search: waits export_wait_s for a worker to build its archive


def _trial(index: int, config: SubNetworkConfig) -> Trial:
    return Trial(index=index, config=config, objectives={"error": 0.3 - 0.05 * index, "params": 0.5 + 0.1 * index},
                 validation={"accuracy": 0.7 + 0.05 * index}, params={"encoder": 1000 * (index + 1), "total": 9000},
                 macs=10**6 * (index + 1), latency_ms=1.0 + index, elapsed_s=0.5 * index)


def seed_succeeded_search(settings: Settings) -> tuple[str, str, str]:
    """A search as a worker leaves it: claimed, three trials, a front of two (rows), succeeded, a log; and
    a refinement and a compression of its point 0, queued. (search id, refinement id, compression id)"""
    upgrade(settings.url)
    engine = make_engine(settings.url)
    factory = session_factory(engine)
    request = repo.request_dict(RunSpec(max_length=16), SearchJob(search=SearchConfig(evaluations=3),
                                                                  latency=LatencyShape(batch_size=2)))
    with factory.begin() as session:
        search, _ = repo.create_search(session, request=request, idempotency_key="fuzz-seed",
                                       folder_root=settings.searches_root)
        search_id = search.id
    assert queue.claim_next(factory, "fuzz-worker") is not None
    configs = [SubNetworkConfig(layers=(0, 1), heads=(4, h), units=(48, 24)) for h in (1, 2, 4)]
    trials = [_trial(i, c) for i, c in enumerate(configs)]
    points = [t.to_dict() | {"test": {"accuracy": 0.6}} for t in trials[:2]]
    with factory.begin() as session:
        for trial in trials:
            repo.add_trial(session, search_id, trial)
        repo.save_front(session, search_id, {"task": "rte", "objectives": ["error", "params"], "points": points,
                                             "reference": points[0], "hypervolume": 0.25})
        repo.update_progress(session, search_id, stage="done", evaluations_done=3, evaluations_total=3,
                             hypervolume=0.25, step=6, total_steps=6, epoch=1)
    assert queue.finish(factory, search_id, SearchStatus.SUCCEEDED, worker_id="fuzz-worker")
    with factory.begin() as session:
        refinement_id = refinements.create(session, search_id=search_id, position=0,
                                           settings={"epochs": 1.0, "learning_rate": 1e-4}).id
        wanted = CompressConfig(rank=8).to_dict()
        compression_id = compressions.request(session, search_id=search_id, position=0, settings=wanted,
                                              settings_key=compression_key(wanted, 0))[0].id
    engine.dispose()
    folder = settings.search_folder(search_id)
    folder.mkdir(parents=True)
    (folder / LOG_FILE).write_text("running search\nsucceeded\n")
    return search_id, refinement_id, compression_id


# The routes and their schema, from an app that is never started (building the document touches no disk); the
# requests go to the started app of the `app` fixture below, over the seeded database.
SCHEMA = schemathesis.openapi.from_dict(
    create_app(Settings(data_root=Path("/nonexistent/nasprune-fuzz"))).openapi(),
    config=schemathesis.Config.from_dict({"generation": GENERATION, "operations": [VALID_BUT_REFUSED]}),
)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> tuple[Settings, str, str, str]:
    settings = Settings(data_root=tmp_path_factory.mktemp("fuzz") / "data")
    return settings, *seed_succeeded_search(settings)


@pytest.fixture(scope="module")
def app(seeded):
    app = create_app(seeded[0])
    yield app
    asgi.shutdown_lifespans()  # schemathesis started the app on its first request; this disposes of its engine


@pytest.mark.slow
@SCHEMA.parametrize()
def test_fuzz_with_any_ids(case, app) -> None:
    case.call_and_validate(app=app)


@pytest.mark.slow
@SCHEMA.exclude(path_regex=HEAVY).exclude(method="DELETE").parametrize()
def test_fuzz_the_seeded_search(case, app, seeded) -> None:
    on_search = "search_id" in (case.path_parameters or {})
    if on_search:
        seeded_ids = {"search_id": seeded[1], "point": 0, "refinement_id": seeded[2], "compression_id": seeded[3]}
        case.path_parameters |= {k: v for k, v in seeded_ids.items() if k in case.path_parameters}
    response = case.call_and_validate(app=app)
    if on_search and case.meta is not None and case.meta.generation.mode.is_positive:
        # a valid request about a search that exists is answered with its data (else the pass read no rows); a
        # refine of the point with other settings than its queued refinement's waits for that one (409)
        busy = response.status_code == 409 and "wait for it to end" in response.text
        # compress settings the schema allows may still not fit together (a bank without tucker) or the point (a
        # rank above its hidden size): a 422 that says which
        unfit = case.path.endswith("/compress") and response.status_code == 422
        assert response.status_code < 300 or busy or unfit, (case.method, case.formatted_path, response.status_code,
                                                    response.text)
