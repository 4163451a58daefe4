"""Hostile input over HTTP, against a real SQLite file: paths that leave the allowed roots (absolute, '..',
symlinks out of a root, URLs, control characters, overlong names) for the model, data_dir, train_file and
test_file; request bodies over the size limits (a declared Content-Length, a chunked body, a real server); and a
404 with a detail for a nonexistent id on every route that takes one."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from test_api import body

from service.api import UPLOAD_OVERHEAD_BYTES, serving
from service.config import Settings

MAX_BODY = 8 * 1024
MAX_UPLOAD = 16 * 1024


@pytest.fixture(scope="module")
def roots(workspace, tmp_path_factory) -> dict[str, Path]:
    """An allowed root (the workspace) holding symlinks that lead to an outside folder with valid contents, so
    that confinement is the only reason a request naming them is refused."""
    outside = tmp_path_factory.mktemp("outside")
    (outside / "model").mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if (workspace / "model" / name).exists():
            (outside / "model" / name).write_bytes((workspace / "model" / name).read_bytes())
    (outside / "train.csv").write_bytes((workspace / "train.csv").read_bytes())
    (outside / "glue" / "RTE").mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (outside / "glue" / "RTE" / name).write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    links = workspace / "links"
    links.mkdir(exist_ok=True)
    (workspace / "glue" / "RTE").mkdir(parents=True, exist_ok=True)
    for name in ("train.tsv", "dev.tsv"):
        (workspace / "glue" / "RTE" / name).write_bytes((outside / "glue" / "RTE" / name).read_bytes())
    for name, target in [("model", outside / "model"), ("train.csv", outside / "train.csv"),
                         ("glue", outside / "glue"), ("inside.csv", workspace / "train.csv"),
                         ("model-inside", workspace / "model"), ("glue-inside", workspace / "glue")]:
        if not (links / name).is_symlink():
            (links / name).symlink_to(target)
    return {"outside": outside, "links": links}


@pytest.fixture(scope="module")
def settings(workspace, tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("safety")
    return Settings(data_root=root / "data", allowed_model_roots=[workspace], allowed_data_roots=[workspace],
                    max_body_bytes=MAX_BODY, max_upload_bytes=MAX_UPLOAD)


def glue(ws: Path, data_dir: str) -> dict:
    return body(ws, task="glue/rte", data_dir=data_dir)


def custom(ws: Path, **files: str) -> dict:
    return body(ws, custom=body(ws)["custom"] | files)


FIELDS = {
    "model": lambda ws, path: body(ws, model=path),
    "data_dir": glue,
    "train_file": lambda ws, path: custom(ws, train_file=path),
    "test_file": lambda ws, path: custom(ws, test_file=path),
}
URLS = ["http://example.com/x", "https://example.com/x", "file:///etc/passwd", "s3://bucket/key", "hf://org/name",
        "ftp://host/x", "hdfs:/x"]


def hostile(ws: Path, outside: Path, links: Path, field: str) -> dict[str, tuple[str, str]]:
    """Hostile values for `field`, each with a part of the message it must be refused with."""
    elsewhere = {"model": outside / "model", "data_dir": outside / "glue", "train_file": outside / "train.csv",
                 "test_file": outside / "train.csv"}[field]
    linked = {"model": links / "model", "data_dir": links / "glue", "train_file": links / "train.csv",
              "test_file": links / "train.csv"}[field]
    cases = {
        "absolute path elsewhere": (str(elsewhere), "outside the allowed folders"),
        "dot-dot out of the root": (f"{ws}/../{elsewhere.parent.name}/{elsewhere.name}", "'..'"),
        "dot-dot inside the root": (f"{ws}/links/../{linked.name}", "'..'"),
        "relative dot-dot": (f"../../{elsewhere.name}", "'..'"),
        "symlink in a root leading out": (str(linked), "outside the allowed folders"),
        "home folder": ("~/x", "give an absolute path"),  # the server's home means nothing to a client
        "control character": (f"{ws}/a\x00b", "control characters"),
        "newline": (f"{ws}/a\nb", "control characters"),
        "overlong name": (f"{ws}/{'a' * 300}", field),
    }
    cases |= {f"URL {url.split(':')[0]}": (url, "URLs") for url in URLS}
    return cases


CASES = [(field, case) for field in FIELDS for case in hostile(Path("/w"), Path("/o"), Path("/l"), field)]


@pytest.mark.parametrize(("field", "case"), CASES, ids=[f"{f}: {c}" for f, c in CASES])
def test_paths_out_of_the_roots_are_refused(client, workspace, roots, field, case) -> None:
    value, message = hostile(workspace, roots["outside"], roots["links"], field)[case]
    before = client.get("/searches").json()["total"]
    response = client.post("/searches", json=FIELDS[field](workspace, value))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert message in detail and field in detail, detail
    assert client.get("/searches").json()["total"] == before  # nothing queued


def test_the_same_requests_inside_the_roots_are_accepted(client, workspace, roots) -> None:
    """The control for the test above: a symlink that stays inside a root, and the plain paths, are fine."""
    for payload in [body(workspace), custom(workspace, train_file=str(roots["links"] / "inside.csv")),
                    body(workspace, model=str(roots["links"] / "model-inside")),
                    glue(workspace, str(roots["links"] / "glue-inside"))]:
        response = client.post("/searches", json=payload)
        assert response.status_code == 201, response.text
        client.post(f"/searches/{response.json()['id']}/cancel")
    stored = client.post("/searches", json=custom(workspace, train_file=str(roots["links"] / "inside.csv"))).json()
    assert stored["request"]["run"]["custom"]["train_file"] == str((workspace / "train.csv").resolve())
    client.post(f"/searches/{stored['id']}/cancel")


def test_a_hub_id_is_allowed_by_name_but_not_as_a_url(client, workspace) -> None:
    offline = client.post("/searches", json=body(workspace, model="some-org/some-model"))
    assert offline.status_code == 422 and "cannot read the config of model 'some-org/some-model'" in \
        offline.json()["detail"]
    url = client.post("/searches", json=body(workspace, model="https://huggingface.co/some-org/some-model"))
    assert url.status_code == 422 and "URLs (https:...) are not accepted" in url.json()["detail"]


# ------------------------------------------------------------------------------------------ body size limits


def test_limits_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("NASPRUNE_MAX_BODY_BYTES", raising=False)
    monkeypatch.delenv("NASPRUNE_MAX_UPLOAD_BYTES", raising=False)
    defaults = Settings()
    assert (defaults.max_body_bytes, defaults.max_upload_bytes) == (2**20, 200 * 2**20)
    monkeypatch.setenv("NASPRUNE_MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("NASPRUNE_MAX_UPLOAD_BYTES", "123456")
    assert (Settings().max_body_bytes, Settings().max_upload_bytes) == (4096, 123456)


def test_a_declared_body_over_the_limit_is_413(client, workspace) -> None:
    padded = json.dumps(body(workspace)) + " " * MAX_BODY
    response = client.post("/searches", content=padded, headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["detail"] == f"request body larger than {MAX_BODY} bytes (the server's " \
                                        "NASPRUNE_MAX_BODY_BYTES)"
    fits = json.dumps(body(workspace)).ljust(MAX_BODY)
    accepted = client.post("/searches", content=fits, headers={"content-type": "application/json"})
    assert accepted.status_code == 201, accepted.text
    client.post(f"/searches/{accepted.json()['id']}/cancel")


def test_a_chunked_body_over_the_limit_is_413(client, workspace) -> None:
    payload = (json.dumps(body(workspace)) + " " * MAX_BODY).encode()

    def chunks():
        for start in range(0, len(payload), 1000):
            yield payload[start:start + 1000]

    response = client.post("/searches", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert "NASPRUNE_MAX_BODY_BYTES" in response.json()["detail"]


def _multipart(content: bytes) -> tuple[bytes, dict[str, str]]:
    form = (b'--b0undary\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n--b0undary\r\n'
            b'Content-Disposition: form-data; name="file"; filename="big.csv"\r\n\r\n' + content
            + b"\r\n--b0undary--\r\n")
    return form, {"content-type": "multipart/form-data; boundary=b0undary"}


def test_uploads_have_their_own_limit(client, settings) -> None:
    rows = b"text,label\n" + b"a line of words,1\na line of words,0\n" * ((MAX_UPLOAD - 11) // 36)
    assert MAX_BODY < len(rows) <= MAX_UPLOAD
    form, headers = _multipart(rows)
    assert client.post("/datasets", content=form, headers=headers).status_code == 201  # over max_body_bytes: fine

    declared, headers = _multipart(rows * ((MAX_UPLOAD + UPLOAD_OVERHEAD_BYTES) // len(rows) + 1))
    response = client.post("/datasets", content=declared, headers=headers)
    assert response.status_code == 413 and response.json()["detail"].startswith("request body larger than")

    def chunks():
        for start in range(0, len(declared), 4096):
            yield declared[start:start + 4096]

    streamed = client.post("/datasets", content=chunks(), headers=headers)
    assert streamed.status_code == 413 and "NASPRUNE_MAX_UPLOAD_BYTES" in streamed.json()["detail"]
    assert len(list(settings.datasets_root.iterdir())) == 1  # only the upload that fit


def test_a_real_server_refuses_a_huge_declared_body_without_reading_it(settings) -> None:
    """Through uvicorn (h11, a real socket): the 413 comes back at once, although the 1 TB body announced is never
    sent, and the connection is closed."""
    with serving(settings) as url:
        port = int(url.rsplit(":", 1)[1])
        for path, setting in (("/searches", "NASPRUNE_MAX_BODY_BYTES"), ("/datasets", "NASPRUNE_MAX_UPLOAD_BYTES")):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {10**12}\r\n\r\n{{".encode())
                reply = b""
                while chunk := conn.recv(65536):  # the server closes the connection after its answer
                    reply += chunk
            head, _, content = reply.decode().partition("\r\n\r\n")
            assert head.startswith("HTTP/1.1 413"), reply
            assert setting in json.loads(content)["detail"], content


# ------------------------------------------------------------------------------------------ 404 everywhere


def test_a_nonexistent_id_is_404_on_every_route(client) -> None:
    """Every route of the OpenAPI schema that takes an id, with every method, on an id that does not exist."""
    paths = client.get("/openapi.json").json()["paths"]
    walked = []
    for template, operations in paths.items():
        if "{" not in template:
            continue
        for method, operation in operations.items():
            kinds = {p["name"]: p["schema"].get("type") for p in operation.get("parameters", []) if p["in"] == "path"}
            url = re.sub(r"\{(\w+)\}", lambda m, k=kinds: "0" if k.get(m[1]) == "integer" else "nope", template)
            response = client.request(method.upper(), url)
            assert response.status_code == 404, (method, url, response.text)
            assert "nope" in response.json()["detail"], (method, url, response.text)
            walked.append(f"{method.upper()} {template}")
    assert {"GET /searches/{search_id}", "DELETE /searches/{search_id}", "POST /searches/{search_id}/cancel",
            "GET /searches/{search_id}/pareto", "GET /searches/{search_id}/pareto/{point}/download",
            "GET /datasets/{dataset_id}", "DELETE /datasets/{dataset_id}"} <= set(walked), walked
