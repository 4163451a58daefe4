"""The web page in a real browser (issue 36): Playwright driving Debian's chromium against a real server (uvicorn on
a socket, a SQLite file, a worker running the jobs). A user's session end to end: upload a dataset from the page,
define the custom task with it, submit a tiny search from the form, watch it finish, read the front in human units,
hover and select a point on the plot, see its configuration, compare a point with the full model and one search's
front with another's, download the point and open the archive, make a shared model and put it in the form; and no
console error anywhere. A failing test leaves a screenshot in test-artifacts/.

Where no chromium is installed the tests are skipped with the reason (`apt-get install chromium`); CI installs it
and sets NASPRUNE_REQUIRE_BROWSER=1, so there they fail instead of skipping.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, search_body, service_settings, worker_thread

from service.api import serving

pytestmark = pytest.mark.slow

ARTIFACTS = REPO / "test-artifacts"
# examples/page_screenshot.py: hovering a front point, shared with the README's picture
_spec = importlib.util.spec_from_file_location("page_screenshot", REPO / "examples" / "page_screenshot.py")
screenshot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(screenshot)
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).is_file()), None)


def _missing(reason: str) -> None:
    if os.environ.get("NASPRUNE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and NASPRUNE_REQUIRE_BROWSER=1 (CI) needs the browser tests to run")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        _missing("no chromium here: apt-get install chromium (Playwright cannot download its own browser offline)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed: pip install 'nasprune[browser]'")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def site(workspace, tmp_path_factory) -> Iterator[str]:
    settings = service_settings(workspace, tmp_path_factory.mktemp("web"))
    with serving(settings) as url, worker_thread(settings):
        yield url


@contextlib.contextmanager
def page_of(browser, url: str, name: str, tmp_path: Path):
    """A fresh page on `url` that records every console error and uncaught exception; on failure a screenshot goes to
    test-artifacts/<name>.png. The errors are checked when the block ends."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.set_default_timeout(20_000)
    try:
        page.goto(url)
        yield page
        assert not errors, errors
    except BaseException:
        ARTIFACTS.mkdir(exist_ok=True)
        with contextlib.suppress(Exception):
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        raise
    finally:
        context.close()


def _hover_and_click_front_point(page) -> int:
    """Hover the first front point where plotly drew it, check the hover label, click it; the point's position."""
    at = screenshot.hover_front_point(page, 0.0)
    assert "front point" in page.text_content(".hoverlayer")
    page.mouse.click(at["x"], at["y"])
    return at["position"]


def test_a_user_uploads_data_runs_a_search_and_takes_a_point(browser, site, workspace, tmp_path) -> None:
    with page_of(browser, site, "search", tmp_path) as page:
        page.wait_for_function("document.getElementById('f-optimizer').options.length > 0")  # the form from /options
        assert page.get_attribute("link[rel=icon]", "href") == "/favicon.svg"
        for name, file in (("toy", "train.csv"), ("toytest", "test.csv")):
            page.set_input_files("#u-file", str(workspace / file))
            page.fill("#u-name", name)
            page.click("#upload button[type=submit]")
            page.wait_for_selector(f"#datasets td:text-is('{name}')")
        assert "60" in page.inner_text("#datasets") and "text, label" in page.inner_text("#datasets")
        page.click("#datasets tr:has(td:text-is('toy')) button[data-use-train]")
        page.click("#datasets tr:has(td:text-is('toytest')) button[data-use-test]")
        assert page.input_value("#f-task") == "custom/toy" and page.input_value("#f-text-columns") == "text"
        page.fill("#f-model", str(workspace / "model"))
        page.fill("#f-objectives", "error,params")
        for field, value in (("#f-epochs", "1"), ("#f-evaluations", "4"), ("#f-max-length", "16")):
            page.fill(field, value)
        page.click("#form button[type=submit]")
        page.wait_for_selector("#searches tr.selected")  # the new search, shown
        first = page.get_attribute("#searches tr.selected", "data-id")
        page.fill("#f-seed", "1")  # a second search on the same task, to compare fronts
        page.click("#form button[type=submit]")
        page.wait_for_function(f"document.querySelector('#searches tr.selected').dataset.id !== '{first}'")
        page.wait_for_function("document.querySelectorAll('#searches td.status-succeeded').length === 2",
                               timeout=180_000)
        assert page.inner_text("#error") == ""
        page.click(f"#searches tr[data-id='{first}'] td:first-child")  # back to the first
        page.wait_for_selector(f"#searches tr.selected[data-id='{first}']")

        page.wait_for_selector("#points tr.full")  # the front, with the full model's row first
        table = page.inner_text("#points")
        assert "full model" in table and "100%" in table and "1.00x" in table and "measured" in table
        page.wait_for_selector("#plot .scatterlayer .point")  # plotly, served by the app
        position = _hover_and_click_front_point(page)
        selection = page.inner_text("#selection")
        assert f"front point {position}" in selection and "heads kept" in selection
        assert "normalised retention" in selection
        assert page.locator("#selection .layers .meter").count() == 2 * 3  # heads and units of each of 3 layers

        page.check("#searches input[data-overlay]")  # the second search's front beside this one
        page.wait_for_function("[...document.querySelectorAll('#plot .legendtext')]"
                               ".some((t) => t.textContent.startsWith('search '))")

        page.select_option("#xaxis", "params_share")
        page.select_option("#yaxis", "metric")
        page.wait_for_function("document.querySelector('#plot .xtitle').textContent.includes('% of the full model')")

        page.check("#points input[data-compare='full']")  # the full model beside the first point
        page.check(f"#points input[data-compare='{position}']")
        page.wait_for_selector("#compare-box table")
        compared = page.inner_text("#compare")
        assert "full model" in compared and f"point {position}" in compared and "FFN units kept" in compared

        with page.expect_download(timeout=120_000) as waiting:
            page.click("#selection a:text-is('download HF')")
        data = Path(waiting.value.path()).read_bytes()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            names = {Path(n).name for n in archive.getnames()}
        assert {"config.json", "model.safetensors", "subnetwork.json"} <= names
        # a shared model of the form's model on its task (POST /shares) in blocks of 2 layers and 1 (the mapping
        # says how many blocks: the groups field is left out), recovered with an augmented copy of each batch; then
        # the form searches it
        for field, value in (("#s-groups", "1"), ("#s-mapping", "0,0,1"), ("#s-teacher", "0"), ("#s-epochs", "1"),
                             ("#s-copies", "1")):
            page.fill(field, value)
        page.click("#share-form button[type=submit]")
        page.wait_for_selector("#shares td.status-succeeded, #shares td.status-failed", timeout=180_000)
        assert page.locator("#shares td.status-succeeded").count() == 1, page.inner_html("#shares")
        assert "1 augmented copy" in page.inner_text("#shares")
        assert "3:" in page.inner_text("#shares")  # validation at 3 ODE steps, the only count these blocks take
        page.click("#shares button[data-share-use]")
        assert page.input_value("#f-model").startswith("share:")


def test_the_page_without_a_search_has_no_console_errors_and_labels_its_controls(browser, site, tmp_path) -> None:
    with page_of(browser, site, "empty", tmp_path) as page:
        page.wait_for_function("document.getElementById('f-optimizer').options.length > 0")
        unlabelled = page.evaluate("""() => [...document.querySelectorAll('#form input, #form select, #upload input')]
            .filter((el) => !el.labels || !el.labels.length).map((el) => el.id || el.name)""")
        assert unlabelled == []
        # the exit-loss weighting's choices come from the API's schema, the default chosen
        assert page.evaluate("[...document.getElementById('f-exit-weighting').options].map((o) => o.value)") \
            == ["mean", "depth"] and page.input_value("#f-exit-weighting") == "depth"
        page.keyboard.press("Tab")  # keyboard focus reaches the form
        assert page.evaluate("document.activeElement.tagName") in ("A", "INPUT", "SELECT", "BUTTON")


def test_a_search_with_thousands_of_trials_is_fetched_once_and_then_only_what_is_new(browser, workspace,
                                                                                      tmp_path) -> None:
    """A running search with 3,000 trials: the page draws them all, and each later poll asks only for the trials
    after those it holds (offset=3000), so a new trial is one row on the wire, not 3,001. (A server of its own and
    no worker: a worker would take the search back from its silent "worker".)"""
    from search.runner import Trial
    from service import repository as repo
    from service.db import make_engine, session_factory, upgrade
    from service.models import SearchStatus
    from supernet.config import SubNetworkConfig

    settings = service_settings(workspace, tmp_path)
    upgrade(settings.url)
    factory = session_factory(engine := make_engine(settings.url))

    def trial(i: int) -> Trial:
        units = (i % 48 + 1, (i // 48) % 48 + 1, i // 2304 + 1)
        return Trial(index=i, config=SubNetworkConfig(layers=(0, 1, 2), heads=(4, 4, 4), units=units),
                     objectives={"error": 0.5 - i * 1e-5, "params": 1000.0 + i}, validation={"accuracy": 0.5},
                     params={"encoder": 1000 + i, "total": 2000 + i}, macs=10_000 + i, latency_ms=1.0, elapsed_s=i)

    request = {"run": search_body(workspace, ["error", "params"], 3000), "job": {}}
    request["run"].pop("search"), request["run"].pop("latency")
    request["job"] = {"search": {"objectives": ["error", "params"], "evaluations": 3001}, "latency": {"batch_size": 2}}
    with factory.begin() as session:
        search, _ = repo.create_search(session, request=request, folder_root=settings.searches_root)
        search.status, search_id = SearchStatus.SEARCHING, search.id
        for i in range(3000):
            repo.add_trial(session, search_id, trial(i))
    asked: list[str] = []
    with serving(settings) as site, page_of(browser, site, "many", tmp_path) as page:
        page.on("request", lambda r: asked.append(r.url) if f"/searches/{search_id}/trials" in r.url else None)
        page.wait_for_selector(f"#searches tr[data-id='{search_id}']")
        page.click(f"#searches tr[data-id='{search_id}'] td:first-child")
        page.wait_for_function("(window.nasprunePlot || []).length === 3000", timeout=30_000)
        with factory.begin() as session:
            repo.add_trial(session, search_id, trial(3000))
        page.wait_for_function("window.nasprunePlot.length === 3001", timeout=30_000)
        assert "3001 trials" in page.inner_text("#detail-info")
    engine.dispose()
    offsets = [int(url.rsplit("offset=", 1)[1]) for url in asked]
    assert offsets[0] == 0 and set(offsets[1:]) == {3000}, offsets


def test_a_points_knobs_are_sliders_that_show_what_turning_them_does(browser, site, workspace, tmp_path) -> None:
    """A search with token elimination: a front point that drops tokens has a keep-rate slider (GET .../knobs);
    moving it shows that setting's validation metric and expected MACs beside the point's own."""
    import httpx

    body = search_body(workspace, ["error", "expected_macs"], 8) | {"dynamic": {"token_elimination": True}}
    created = httpx.post(f"{site}/searches", json=body, timeout=30)
    assert created.status_code == 201, created.text
    search_id = created.json()["id"]
    with page_of(browser, site, "knobs", tmp_path) as page:
        page.wait_for_selector(f"#searches tr[data-id='{search_id}'] td.status-succeeded", timeout=180_000)
        page.click(f"#searches tr[data-id='{search_id}'] td:first-child")
        page.wait_for_selector("#points tr.row")
        # a point that drops tokens (the page's own copy of the front)
        position = page.evaluate("() => (cache.front.points.find((p) => p.knobs) || {}).position ?? null")
        assert position is not None, page.inner_text("#points")
        page.click(f"#points tr[data-point='{position}'] td:nth-child(2)")
        slider = page.wait_for_selector("#knob-token_keep_scale")
        before = page.inner_text("#knob-token_keep_scale-out")
        assert "× 1" in before and "as the point" in before and "expected MACs" in before
        slider.focus()
        page.keyboard.press("End")  # the largest keep rate
        after = page.inner_text("#knob-token_keep_scale-out")
        assert "× 1.5" in after and after != before


def test_without_plotly_the_page_draws_its_plain_plot_and_points_still_select(browser, workspace, tmp_path,
                                                                             monkeypatch) -> None:
    """A server without the web extra (no plotly): GET /options names no plot library, the page draws its SVG
    scatter, and a front point clicked there is selected as on the interactive plot."""
    from service import repository as repo
    from service.api import routes
    from service.db import make_engine, session_factory, upgrade
    from service.models import SearchStatus

    monkeypatch.setattr(routes, "plot_library", lambda: None)
    settings = service_settings(workspace, tmp_path)
    upgrade(settings.url)
    factory = session_factory(engine := make_engine(settings.url))
    point = {"config": {"layers": [0, 1, 2], "heads": [2, 2, 2], "units": [24, 24, 24]},
             "objectives": {"error": 0.3, "params": 500.0}, "validation": {"accuracy": 0.7}, "test": {"accuracy": 0.65},
             "params": {"encoder": 500, "total": 900}, "macs": 5000, "latency_ms": 1.0}
    full = point | {"config": {"layers": [0, 1, 2], "heads": [4, 4, 4], "units": [48, 48, 48]},
                    "objectives": {"error": 0.2, "params": 1000.0}, "validation": {"accuracy": 0.8},
                    "test": {"accuracy": 0.75}, "params": {"encoder": 1000, "total": 1400}, "macs": 10_000,
                    "latency_ms": 2.0}
    request = {"run": {"model": "minilm", "task": "glue/sst2"}, "job": {"search": {"objectives": ["error", "params"]},
                                                                     "latency": {"batch_size": 2}}}
    with factory.begin() as session:
        search, _ = repo.create_search(session, request=request, folder_root=settings.searches_root)
        search.status, search_id = SearchStatus.SUCCEEDED, search.id
        session.flush()
        repo.save_front(session, search_id, {"task": "glue/sst2", "main_metric": "accuracy", "objectives":
                                             ["error", "params"], "points": [point], "reference": full,
                                             "majority_baseline": {"accuracy": 0.5}, "hypervolume": 0.4})
    engine.dispose()
    with serving(settings) as site, page_of(browser, site, "svg", tmp_path) as page:
        assert page.evaluate("fetch('/options').then((r) => r.json()).then((o) => o.plot_library)") is None
        page.click(f"#searches tr[data-id='{search_id}'] td:first-child")
        page.wait_for_selector("#plot svg circle")
        page.click("#plot svg circle[fill='#d84a4a']")  # the front point
        page.wait_for_selector("#selection .layers")
        assert "front point 0" in page.inner_text("#selection") and "50%" in page.inner_text("#selection")
