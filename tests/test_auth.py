"""API tokens over HTTP against a real SQLite file: the API is open without tokens and closed for good once one
exists;
every route but the public ones refuses a missing, wrong or revoked token; each search belongs to the token
that created it and is a 404 to any other; idempotency keys are per token; only hashes are stored; the
`nasprune token` commands; a worker runs an owned search as any other."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import fastapi.routing
import pytest
from conftest import start_worker
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from test_api import REPO, body, run_worker_once

from service import tokens
from service.api import create_app
from service.api.auth import is_public
from service.config import Settings, get_settings
from service.db import make_engine, session_factory
from service.models import ApiToken, Search, utcnow

# FastAPI's own pages: plain Starlette routes, outside the app-level token check, and meant to be public.
DOCS_PATHS = {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}


def make_settings(root: Path, workspace: Path, **overrides) -> Settings:
    return Settings(data_root=root / "data", allowed_model_roots=[workspace], allowed_data_roots=[workspace],
                    **overrides)


class Tokens:
    """Tokens made through service.tokens on the settings' database (the clear tokens kept for the tests)."""

    def __init__(self, settings: Settings) -> None:
        self.engine = make_engine(settings.url)
        self.factory = session_factory(self.engine)

    def create(self, name: str) -> tuple[str, str]:
        """(token id, clear token)"""
        with self.factory() as session:
            row, token = tokens.create_token(session, name)
            session.commit()
            return row.id, token

    def revoke(self, name: str) -> None:
        with self.factory() as session:
            tokens.revoke_token(session, name)
            session.commit()

    def row(self, name: str) -> ApiToken:
        with self.factory() as session:
            return session.scalars(select(ApiToken).where(ApiToken.name == name)).one()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def settings(workspace, tmp_path_factory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("auth"), workspace)


@pytest.fixture(scope="module")
def made(client, settings) -> dict[str, tuple[str, str]]:
    """Tokens a and b (active) and old (revoked), in the module's database: from here on the API is closed."""
    store = Tokens(settings)
    made = {name: store.create(name) for name in ("a", "b", "old")}
    store.revoke("old")
    yield made
    store.engine.dispose()


def call(client: TestClient, method: str, url: str, token: str | None = None, **kwargs):
    headers = kwargs.pop("headers", {}) | (bearer(token) if token else {})
    return client.request(method, url, headers=headers, **kwargs)


# ------------------------------------------------------------------------------------------ on and off


def test_the_api_is_open_until_a_token_exists_and_stays_closed_after_the_last_is_revoked(workspace, tmp_path) -> None:
    settings = make_settings(tmp_path, workspace)
    with TestClient(create_app(settings)) as client:
        created = client.post("/searches", json=body(workspace))
        assert created.status_code == 201, created.text
        assert client.get("/searches").json()["total"] == 1
        # an Authorization header of another scheme (e.g. a proxy's Basic auth) is no token: left alone
        assert client.get("/searches", headers={"Authorization": "Basic dTpw"}).status_code == 200
        store = Tokens(settings)
        try:
            # the running server closes at once, without a restart
            _, token = store.create("first")
            refused = client.get("/searches")
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert "nasprune token create" in refused.json()["detail"]
            assert client.get("/searches", headers=bearer(token)).json()["total"] == 0  # the old search is no one's
            assert client.get(f"/searches/{created.json()['id']}", headers=bearer(token)).status_code == 404
            store.revoke("first")
            closed = client.get("/searches")  # revoking a (perhaps leaked) last token does not open the server
            assert closed.status_code == 401 and "every one has been revoked" in closed.json()["detail"]
            # a token that is sent is checked all the same
            revoked = client.get("/searches", headers=bearer(token))
            assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]
        finally:
            store.engine.dispose()


def test_required_mode_refuses_everything_until_a_token_exists(workspace, tmp_path) -> None:
    settings = make_settings(tmp_path, workspace, auth="required")
    with TestClient(create_app(settings)) as client:
        refused = client.get("/searches")
        assert refused.status_code == 401 and "none exists yet" in refused.json()["detail"]
        assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200
        store = Tokens(settings)
        try:
            _, token = store.create("ci")
            assert client.get("/searches", headers=bearer(token)).status_code == 200
            store.revoke("ci")
            assert client.get("/searches").status_code == 401  # revoking the last token does not open it
        finally:
            store.engine.dispose()
    with pytest.raises(ValueError, match="auth"):
        Settings(data_root=tmp_path, auth="sometimes")


# ------------------------------------------------------------------------------------------ every route


def all_routes(app) -> list:
    """Every route with its full path: included routers flattened (FastAPI 0.16x keeps them nested in
    app.routes; older versions copy their routes there)."""
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    return list(flatten(app.routes)) if flatten else list(app.routes)


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "0", path)


def test_every_route_but_the_public_ones_needs_a_valid_token(client, made) -> None:
    _, revoked = made["old"]
    checked, public = [], set()
    for route in all_routes(client.app):
        if not isinstance(getattr(route, "original_route", route), APIRoute):
            assert route.path in DOCS_PATHS, f"{route.path} is not an API route: the token check would not run"
            assert client.get(route.path).status_code == 200, route.path
            continue
        for method in sorted(route.methods - {"HEAD"}):
            url = _concrete(route.path)
            if is_public(getattr(route, "original_route", route)):
                assert call(client, method, url).status_code == 200, (method, url)
                public.add(f"{method} {route.path}")
                continue
            cases = {"no token": {}, "wrong token": bearer("not-a-token"), "revoked token": bearer(revoked),
                     "other scheme": {"Authorization": "Basic dTpw"}, "empty bearer": {"Authorization": "Bearer "}}
            for case, headers in cases.items():
                extra = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
                response = client.request(method, url, headers=headers, **extra)
                assert response.status_code == 401, (method, url, case, response.text)
                assert response.headers["www-authenticate"] == "Bearer", (method, url, case)
                assert "token" in response.json()["detail"], (method, url, case)
            checked.append(f"{method} {route.path}")
    # a route made public is a decision to see in this test: the page, its static assets, the health check
    assert public == {"GET /", "GET /healthz", "GET /favicon.svg", "GET /static/plotly.min.js"}
    # the routes of today at least (a new one is checked by the loop above without being listed here)
    assert {"POST /searches", "GET /searches", "GET /searches/{search_id}", "GET /searches/{search_id}/trials",
            "GET /searches/{search_id}/pareto", "GET /searches/{search_id}/pareto/{point}/download",
            "POST /searches/{search_id}/cancel", "DELETE /searches/{search_id}", "GET /searches/{search_id}/logs"
            } <= set(checked)


def test_the_messages_say_what_is_wrong(client, made) -> None:
    wrong = client.get("/searches", headers=bearer("nope"))
    assert wrong.json()["detail"] == "invalid or revoked API token"
    basic = client.get("/searches", headers={"Authorization": "Basic dTpw"}).json()["detail"]
    assert "Bearer <token>" in basic and "must read" in basic


def test_openapi_documents_the_bearer_scheme(client, made) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["token"] == {
        "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["token"][
            "description"]}
    searches = schema["paths"]["/searches"]
    # optional while no token exists: `{}` (no credentials) is the alternative
    assert searches["get"]["security"] == [{"token": []}, {}] and "401" in searches["post"]["responses"]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    assert "401" not in schema["paths"]["/healthz"]["get"]["responses"]


# ------------------------------------------------------------------------------------------ ownership


def test_a_search_is_a_404_to_every_other_token(client, made, settings, workspace) -> None:
    owner_a, token_a = made["a"]
    _, token_b = made["b"]
    created = call(client, "POST", "/searches", token_a, json=body(workspace))
    assert created.status_code == 201, created.text
    search_id = created.json()["id"]
    folder = settings.search_folder(search_id)
    folder.mkdir(parents=True)
    (folder / "worker.log").write_text("a's log\n")
    with session_factory(engine := make_engine(settings.url))() as session:
        assert session.get(Search, search_id).owner_id == owner_a
    engine.dispose()

    routes = [("GET", ""), ("GET", "/trials"), ("GET", "/pareto"), ("GET", "/pareto/0/download"),
              ("POST", "/cancel"), ("DELETE", ""), ("GET", "/logs")]
    for method, suffix in routes:
        theirs = call(client, method, f"/searches/{search_id}{suffix}", token_b)
        unknown = call(client, method, f"/searches/{'f' * 32}{suffix}", token_b)
        assert theirs.status_code == unknown.status_code == 404, (method, suffix, theirs.text)
        # the same message as for an id that does not exist: nothing says the search is there
        assert theirs.json()["detail"] == unknown.json()["detail"].replace("f" * 32, search_id)
    assert search_id not in [s["id"] for s in call(client, "GET", "/searches", token_b).json()["items"]]

    # B's cancel and delete did nothing; A still has it all
    mine = call(client, "GET", f"/searches/{search_id}", token_a).json()
    assert mine["status"] == "queued" and not mine["cancel_requested"]
    assert search_id in [s["id"] for s in call(client, "GET", "/searches", token_a).json()["items"]]
    assert call(client, "GET", f"/searches/{search_id}/logs", token_a).text == "a's log\n"
    assert call(client, "GET", f"/searches/{search_id}/trials", token_a).json()["total"] == 0
    assert call(client, "POST", f"/searches/{search_id}/cancel", token_a).json()["status"] == "cancelled"
    assert call(client, "DELETE", f"/searches/{search_id}", token_a).status_code == 204
    assert not folder.exists()


def test_a_share_is_a_404_to_every_other_token_and_not_their_model(client, made, settings, workspace) -> None:
    """A share is its token's: another token neither reads, cancels nor downloads it, nor names it as a model; the
    same settings asked by two tokens are two shares (two folders), never one token's work handed to the other."""
    from service.models import Share, ShareStatus

    _, token_a = made["a"]
    _, token_b = made["b"]
    wanted = body(workspace) | {"share": {"groups": 1, "teacher_epochs": 0}}
    del wanted["search"], wanted["latency"]
    share_id = call(client, "POST", "/shares", token_a, json=wanted).json()["id"]
    with session_factory(engine := make_engine(settings.url)).begin() as session:
        session.get(Share, share_id).status = ShareStatus.SUCCEEDED  # as if a worker had made it
    engine.dispose()
    for method, suffix in [("GET", ""), ("POST", "/cancel"), ("GET", "/logs"), ("GET", "/download")]:
        theirs = call(client, method, f"/shares/{share_id}{suffix}", token_b)
        assert theirs.status_code == 404 and theirs.json()["detail"] == f"no share with id {share_id!r}"
    assert share_id not in [s["id"] for s in call(client, "GET", "/shares", token_b).json()]
    searched = call(client, "POST", "/searches", token_b, json=body(workspace, model=f"share:{share_id}"))
    assert searched.status_code == 422 and "no share with id" in searched.json()["detail"], searched.text
    theirs = call(client, "POST", "/shares", token_b, json=wanted)
    assert theirs.status_code == 202 and theirs.json()["id"] != share_id
    assert call(client, "POST", f"/shares/{theirs.json()['id']}/cancel", token_b).json()["status"] == "cancelled"
    assert call(client, "GET", f"/shares/{share_id}", token_a).json()["model"] == f"share:{share_id}"


def test_lists_hold_only_the_callers_searches(client, made, workspace) -> None:
    _, token_a = made["a"]
    _, token_b = made["b"]
    ids = {name: [call(client, "POST", "/searches", token, json=body(workspace)).json()["id"] for _ in range(2)]
           for name, token in (("a", token_a), ("b", token_b))}
    for name, token in (("a", token_a), ("b", token_b)):
        page = call(client, "GET", "/searches", token, params={"status": "queued"}).json()
        listed = {s["id"] for s in page["items"]}
        assert set(ids[name]) <= listed and not listed & set(ids["b" if name == "a" else "a"])
        assert page["total"] == len(listed)
    for name, token in (("a", token_a), ("b", token_b)):
        for search_id in ids[name]:
            call(client, "POST", f"/searches/{search_id}/cancel", token)


def test_idempotency_keys_are_scoped_per_token(client, made, settings, workspace) -> None:
    _, token_a = made["a"]
    _, token_b = made["b"]
    key = "k" * 200  # the longest key: the stored, scoped form must still fit the column
    first_a = call(client, "POST", "/searches", token_a, json=body(workspace), headers={"Idempotency-Key": key})
    first_b = call(client, "POST", "/searches", token_b, json=body(workspace), headers={"Idempotency-Key": key})
    assert (first_a.status_code, first_b.status_code) == (201, 201), first_b.text
    assert first_a.json()["id"] != first_b.json()["id"]
    again_a = call(client, "POST", "/searches", token_a, json=body(workspace, idempotency_key=key))
    again_b = call(client, "POST", "/searches", token_b, json=body(workspace), headers={"Idempotency-Key": key})
    assert (again_a.status_code, again_b.status_code) == (200, 200)
    assert again_a.json()["id"] == first_a.json()["id"] and again_b.json()["id"] == first_b.json()["id"]
    other = call(client, "POST", "/searches", token_b, json=body(workspace, training={"seed": 3}),
                 headers={"Idempotency-Key": key})
    assert other.status_code == 409 and first_a.json()["id"] not in other.json()["detail"]
    with session_factory(engine := make_engine(settings.url))() as session:
        stored = [session.get(Search, r.json()["id"]).idempotency_key for r in (first_a, first_b)]
    engine.dispose()
    assert len(set(stored)) == 2 and all(len(k) <= 200 and key not in k for k in stored)
    for response, token in ((first_a, token_a), (first_b, token_b)):
        call(client, "POST", f"/searches/{response.json()['id']}/cancel", token)


# ------------------------------------------------------------------------------------------ storage


def test_only_the_hash_of_a_token_is_stored(client, made, settings) -> None:
    _, token_a = made["a"]
    assert call(client, "GET", "/searches", token_a).status_code == 200
    files = list(settings.data_root.glob("nasprune.db*"))  # the database, its WAL and shared memory
    assert files
    # read by another process: closing a file of a live SQLite database in this one would drop the POSIX locks
    # this process's connections (the app's) hold on it, and their writes would no longer reach other processes
    contents = subprocess.run(["cat", *map(str, files)], capture_output=True, check=True).stdout
    for _, token in made.values():
        assert token.encode() not in contents
        assert tokens.hash_token(token).encode() in contents
    with session_factory(engine := make_engine(settings.url))() as session:
        assert session.scalar(select(ApiToken).where(ApiToken.token_hash == tokens.hash_token(token_a))) is not None
    engine.dispose()


def test_last_used_is_stamped_at_most_once_a_minute(client, made, settings) -> None:
    _, token_b = made["b"]
    store = Tokens(settings)
    try:
        call(client, "GET", "/searches", token_b)
        stamp = store.row("b").last_used_at
        assert stamp is not None and utcnow() - stamp < timedelta(seconds=30)
        call(client, "GET", "/searches", token_b)
        assert store.row("b").last_used_at == stamp  # no write for a request within the minute
        earlier = stamp - tokens.TOUCH_EVERY
        with store.factory() as session:
            session.execute(update(ApiToken).where(ApiToken.name == "b").values(last_used_at=earlier))
            session.commit()
        call(client, "GET", "/searches", token_b)
        assert store.row("b").last_used_at > stamp
    finally:
        store.engine.dispose()


def test_token_functions_refuse_bad_names_and_reuse(settings, made) -> None:
    store = Tokens(settings)
    try:
        for name in ("", "   ", "x" * 201, "tab\there"):
            with pytest.raises(ValueError, match="token name"):
                store.create(name)
        with pytest.raises(ValueError, match="already exists \\(revoked\\)"):
            store.create("old")
        with pytest.raises(LookupError, match="no token named 'zed'; known: a, b, old"):
            store.revoke("zed")
        before = store.row("old").revoked_at
        store.revoke("old")  # again: nothing changes
        assert store.row("old").revoked_at == before
    finally:
        store.engine.dispose()


# ------------------------------------------------------------------------------------------ the CLI


def test_token_commands_in_process(monkeypatch, tmp_path, capsys) -> None:
    from conftest import cli

    monkeypatch.setenv("NASPRUNE_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.delenv("NASPRUNE_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        assert cli(["token", "list"]) == 0
        assert "no tokens" in capsys.readouterr().out
        assert cli(["token", "create", "alice"]) == 0
        out, err = capsys.readouterr()
        token = out.strip()
        assert len(token) >= 43 and "shown this once" in err
        assert cli(["token", "create", "alice"]) == 2
        assert "already exists" in capsys.readouterr().err
        assert cli(["token", "list"]) == 0
        out = capsys.readouterr().out
        assert "alice" in out and "active" in out and token not in out
        assert cli(["token", "revoke", "bob"]) == 2
        assert "no token named 'bob'" in capsys.readouterr().err
        assert cli(["token", "revoke", "alice"]) == 0
        out, err = capsys.readouterr()
        assert "revoked" in out and "refuses every call" in err
    finally:
        get_settings.cache_clear()


@pytest.mark.slow
def test_token_commands_as_processes(workspace, tmp_path) -> None:
    settings = make_settings(tmp_path, workspace)
    env = os.environ | {"NASPRUNE_DATA_ROOT": str(settings.data_root), "PYTHONPATH": str(REPO)}
    env.pop("NASPRUNE_DATABASE_URL", None)

    def nasprune(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "service.cli", "token", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    created = nasprune("create", "ci")  # on a data root with no database yet: it migrates first
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    with TestClient(create_app(settings)) as client:
        assert client.get("/searches").status_code == 401
        assert client.get("/searches", headers=bearer(token)).status_code == 200
        listed = nasprune("list")
        assert listed.returncode == 0 and re.search(r"^ci\s+\S+ \S+ UTC\s+\S+ \S+ UTC\s+active$", listed.stdout, re.M)
        assert token not in listed.stdout + listed.stderr
        revoked = nasprune("revoke", "ci")
        assert revoked.returncode == 0, revoked.stderr
        assert client.get("/searches", headers=bearer(token)).status_code == 401


# ------------------------------------------------------------------------------------------ the worker


@pytest.mark.slow
def test_a_worker_runs_an_owned_search(client, made, settings, workspace, tmp_path_factory) -> None:
    _, token_a = made["a"]
    _, token_b = made["b"]
    created = call(client, "POST", "/searches", token_a, json=body(workspace, search={"evaluations": 3}))
    search_id = created.json()["id"]
    env = os.environ | {
        "NASPRUNE_DATA_ROOT": str(settings.data_root), "NASPRUNE_DATABASE_URL": settings.url,
        "NASPRUNE_ALLOWED_MODEL_ROOTS": json.dumps([str(workspace)]),
        "NASPRUNE_ALLOWED_DATA_ROOTS": json.dumps([str(workspace)]),
        "NASPRUNE_CACHE": str(tmp_path_factory.mktemp("cache")), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO),
    }
    run_worker_once(env)
    search = call(client, "GET", f"/searches/{search_id}", token_a).json()
    assert search["status"] == "succeeded", search["error"]
    point = call(client, "GET", f"/searches/{search_id}/pareto", token_a).json()["points"][0]
    worker = start_worker(env, once=False)  # builds the export the download queues
    try:
        archive = call(client, "GET", point["downloads"]["hf"], token_a)
    finally:
        worker.terminate()
        assert worker.wait(timeout=60) == 0
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/gzip"
    assert call(client, "GET", point["downloads"]["hf"], token_b).status_code == 404
