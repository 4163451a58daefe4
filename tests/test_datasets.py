"""Uploaded datasets over HTTP, against a real SQLite file: POST /datasets (parsed by Starlette as it streams,
size-limited, its spooled file always closed, checked by the worker's own reader before it is kept: accepted exactly
when the loader can read it), list / read / delete, owner filtering, searches naming datasets by id (columns
checked), one such search run by a real worker process, and the download archive of its front built from the
export folder alone (a planted symlink or hard link pulls nothing in)."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from conftest import service_settings, wait_for, worker_thread
from fastapi.testclient import TestClient
from starlette.formparsers import MultiPartParser
from test_api import body, run_worker_once

from service import tokens
from service.api import create_app
from service.config import MIB, Settings
from service.db import make_engine, session_factory
from service.models import Dataset
from supernet.loading import load_custom_task
from supernet.tasks import DataError

MAX_UPLOAD = 64 * 1024


@pytest.fixture(scope="module")
def settings(workspace, tmp_path_factory) -> Settings:
    return service_settings(workspace, tmp_path_factory.mktemp("datasets"), max_upload_bytes=MAX_UPLOAD)


def upload(client: TestClient, content: bytes, filename: str = "train.csv", name: str | None = "toy",
           headers: dict[str, str] | None = None, **fields):
    data = ({"name": name} if name is not None else {}) | fields
    return client.post("/datasets", files={"file": (filename, content)}, data=data, headers=headers)


def _folders(settings: Settings) -> set[str]:
    return {p.name for p in settings.datasets_root.iterdir()} if settings.datasets_root.exists() else set()


def leftovers(settings: Settings) -> set[str]:
    """Folders under the datasets root with no row: what a refused upload must not leave behind."""
    folders = _folders(settings)
    with session_factory(make_engine(settings.url))() as session:
        known = {d.id for d in session.query(Dataset).all()}
    return folders - known


def custom(**fields) -> dict:
    return {"name": "toy", "text_columns": ["text"]} | fields


# ------------------------------------------------------------------------------------------ uploads


def test_upload_read_list_delete(client, workspace, settings) -> None:
    content = (workspace / "train.csv").read_bytes()
    response = upload(client, content, name="toy train")
    assert response.status_code == 201, response.text
    data = response.json()
    assert (data["name"], data["filename"], data["format"]) == ("toy train", "train.csv", "csv")
    assert (data["columns"], data["num_rows"], data["size_bytes"]) == (["id", "text", "label"], 60, len(content))
    assert "path" not in data  # a search names it by id; the server's paths are not shown
    stored = settings.dataset_folder(data["id"])
    assert [p.name for p in stored.iterdir()] == ["data.csv"] and (stored / "data.csv").read_bytes() == content

    assert client.get(f"/datasets/{data['id']}").json() == data
    page = client.get("/datasets", params={"limit": 1}).json()
    assert page["limit"] == 1 and page["total"] >= 1 and page["items"][0]["id"] == data["id"]  # newest first
    assert client.get("/datasets", params={"limit": 0}).status_code == 422

    assert client.delete(f"/datasets/{data['id']}").status_code == 204
    assert not stored.exists()
    assert client.get(f"/datasets/{data['id']}").status_code == 404


@pytest.mark.parametrize(("filename", "fields", "content", "fmt", "columns"), [
    ("train.tsv", {}, b"sentence\tlabel\nhello there\t1\nbye\t0\n", "tsv", ["sentence", "label"]),
    ("train.jsonl", {}, b'{"text": "a", "label": 1}\n\n{"label": 0, "text": "b"}\n', "jsonl", ["text", "label"]),
    ("export.txt", {"format": "csv"}, "\ufefftext,label\nh\u00e9llo,1\nbye,0\n".encode(), "csv", ["text", "label"]),
    ("x.CSV", {"format": "CSV"}, b"text,label\r\na,1\r\nb,0\r\n", "csv", ["text", "label"]),
    ("x.tsv", {"format": ""}, b"text\tlabel\na,b\t1\nc\t0\n", "tsv", ["text", "label"]),  # format "": by name
])
def test_upload_formats(client, filename, fields, content, fmt, columns) -> None:
    response = upload(client, content, filename=filename, **fields)
    assert response.status_code == 201, response.text
    assert (response.json()["format"], response.json()["columns"]) == (fmt, columns)


BAD_UPLOADS: dict[str, tuple[str, bytes, dict, str]] = {
    "not UTF-8": ("a.csv", "text,label\ncaf\u00e9,1\n".encode("latin-1"), {}, "not UTF-8"),
    "binary": ("a.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", {}, "not UTF-8"),
    "NUL bytes": ("a.csv", b"text,label\na\x00b,1\n", {}, "line 2 contains NUL bytes"),
    "empty file": ("a.csv", b"", {}, "empty file"),
    "header only": ("a.csv", b"text,label\n", {}, "a.csv: no examples (no data rows)"),
    "ragged rows": ("a.csv", b"text,label\na,1\nb,0,extra\n", {}, "line 3 has 3 fields"),
    "repeated column": ("a.csv", b"text,text,label\na,b,1\n", {}, "['text'] appear more than once"),
    "too many columns": ("a.csv", (",".join(f"c{i}" for i in range(1001)) + "\n" + "1," * 1000 + "1\n").encode(),
                         {}, "at most 1000"),
    "TSV named .csv": ("a.csv", b"text\tlabel\na\t1\n", {}, "is this TSV?"),
    "JSON array line": ("a.jsonl", b'{"text": "a", "label": 1}\n[1, 2]\n', {}, "line 2: expected a JSON object"),
    "JSON keys missing": ("a.jsonl", b'{"text": "a", "label": 1}\n{"text": "b"}\n', {},
                          "a.jsonl: line 2: missing column(s) ['label']"),
    "invalid JSON": ("a.jsonl", b'{"text": "a", "label": 1\n', {}, "line 1: invalid JSON"),
    "one JSON document": ("a.jsonl", b'[{"text": "a", "label": 1}]', {}, "expected a JSON object"),
    "unknown extension": ("a.xlsx", b"text,label\na,1\n", {}, "cannot tell the format"),
    "no extension": ("data", b"text,label\na,1\n", {}, "cannot tell the format"),
    "format vs extension": ("a.jsonl", b"text,label\na,1\n", {"format": "csv"}, "contradicts"),
    "unknown format": ("a.csv", b"text,label\na,1\n", {"format": "parquet"}, "not one of csv, tsv, jsonl"),
    "unexpected field": ("a.csv", b"text,label\na,1\n", {"path": "/etc/passwd"}, "unexpected form field 'path'"),
    "overlong field": ("a.csv", b"text,label\na,1\n", {"format": "c" * 2000}, "longer than 1024 bytes"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_are_refused_and_leave_nothing(client, settings, case) -> None:
    filename, content, fields, message = BAD_UPLOADS[case]
    response = upload(client, content, filename=filename, **fields)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert not leftovers(settings)


def test_malformed_forms_are_refused(client, settings) -> None:
    csv = b"text,label\na,1\nb,0\n"
    assert "`name` is required" in upload(client, csv, name=None).json()["detail"]
    assert "`name` is required" in upload(client, csv, name="  ").json()["detail"]
    no_file = client.post("/datasets", data={"name": "x"}, files={"other": ("a.csv", csv)})
    assert no_file.status_code == 422 and "unexpected form field 'other'" in no_file.json()["detail"]
    only_fields = client.post("/datasets", data={"name": "x"}, files={})
    assert only_fields.status_code == 415  # urlencoded, not multipart
    two = client.post("/datasets", data={"name": "x"}, files=[("file", ("a.csv", csv)), ("file", ("b.csv", csv))])
    assert two.status_code == 422 and "Maximum number of files is 1" in two.json()["detail"]
    as_json = client.post("/datasets", json={"name": "x", "file": "text,label\na,1\n"})
    assert as_json.status_code == 415 and "multipart/form-data" in as_json.json()["detail"]
    form = (b'--b0undary\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n--b0undary\r\n'
            b'Content-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\ntext,label\na,1\nb,0\n')
    headers = {"content-type": "multipart/form-data; boundary=b0undary"}
    assert client.post("/datasets", content=form + b"\r\n--b0undary--\r\n", headers=headers).status_code == 201
    cut = client.post("/datasets", content=form, headers=headers)
    assert cut.status_code == 422 and "no complete `file` part" in cut.json()["detail"]
    ended = client.post("/datasets", content=form + b"\r\n--b0undary\r\n", headers=headers)
    assert ended.status_code == 201, ended.text  # the file part ended: it is whole, only the closing "--" is cut
    twice = upload(client, csv, name="x", format=["csv", "csv"])
    assert twice.status_code == 422 and "the form field 'format' is given twice" in twice.json()["detail"]
    text_file = client.post("/datasets", content=form.replace(b'; filename="a.csv"', b"") + b"\r\n--b0undary--\r\n",
                            headers=headers)
    assert text_file.status_code == 422 and "the form field `file` is text" in text_file.json()["detail"]
    garbage = client.post("/datasets", content=b"garbage" + form, headers=headers)
    assert garbage.status_code == 422 and "malformed multipart body" in garbage.json()["detail"]
    nameless = client.post("/datasets", content=form.replace(b' name="file";', b""), headers=headers)
    assert nameless.status_code == 422 and 'header field "name" must be provided' in nameless.json()["detail"]
    assert not leftovers(settings)


# (file name, content, what the loader and the upload both say; None: both read it). Each file has two text
# columns' worth of rows and two labels, so the loader can split it.
AGREEMENT: dict[str, tuple[str, bytes, str | None]] = {
    "plain CSV": ("a.csv", b"text,label\na,1\nb,0\nc,1\n", None),
    "BOM, quoted newlines and commas": ("a.csv", '\ufefftext,label\n"a,\nb",1\n"c ""d""",0\ne,1\n'.encode(), None),
    "JSONL extra keys later": ("a.jsonl", b'{"text": "a", "label": 1}\n{"text": "b", "label": 0, "note": "x"}\n'
                               b'{"label": 1.0, "text": "c"}\n', None),  # the old upload check refused this
    "JSON null text": ("a.jsonl", b'{"text": "a", "label": 1}\n{"text": null, "label": 0}\n{"text": "c", "label": 1}\n',
                       "line 2: column 'text' is empty"),  # the old upload check accepted this
    "empty first object": ("a.jsonl", b'{}\n{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n',
                           "line 1: an empty JSON object names no columns"),  # the old check accepted it too
    "NUL bytes": ("a.csv", b"text,label\na\x00,1\nb,0\nc,1\n", "line 2 contains NUL bytes"),
    "repeated column": ("a.csv", b"text,label,label\na,1,1\nb,0,0\nc,1,1\n", "appear more than once"),
    "TSV named .csv": ("a.csv", b"text\tlabel\na\t1\nb\t0\nc\t1\n", "is this TSV?"),
    "ragged": ("a.tsv", b"text\tlabel\na\t1\nb\t0\t\nc\t1\n", "line 3 has 3 fields, the header has 2"),
    "missing key": ("a.jsonl", b'{"text": "a", "label": 1}\n{"label": 0}\n{"text": "c", "label": 1}\n',
                    "line 2: missing column(s) ['text']"),
    # what a search could not use sensibly: the old upload check and the old loader both accepted these
    "nested object": ("a.jsonl", b'{"text": "a", "label": 1}\n{"text": {"t": "b"}, "label": 0}\n'
                      b'{"text": "c", "label": 1}\n', "line 2: column 'text' holds an object"),
    "one class": ("a.csv", b"text,label\na,1\nb,1\nc,1\n", "column 'label' has 1 distinct label(s); "
                  "classification needs at least two distinct labels"),
    "fractions as classes": ("a.csv", b"text,label\na,0.5\nb,1.25\nc,2\n", "line 2: label '0.5' in column 'label' "
                             "is a fraction and every label is a number: a quantity, not a class; declare task_type "
                             "regression"),
}


@pytest.mark.parametrize("case", list(AGREEMENT))
def test_an_upload_is_accepted_exactly_when_the_worker_can_read_it(client, settings, tmp_path, case) -> None:
    """The upload's check is the loader's: same verdict, same message (after the file's name). (Which columns are
    text is known only once a search names them: an empty field is judged then, see the test after next.)"""
    filename, content, message = AGREEMENT[case]
    path = tmp_path / filename
    path.write_bytes(content)
    response = upload(client, content, filename=filename)
    try:
        data = load_custom_task("t", path, path, text_columns=["text"], label_column="label", validation_fraction=0.5)
    except DataError as exc:
        loader_error = str(exc).removeprefix(f"{path}: ")
    else:
        loader_error = None
        assert len(data.train) + len(data.validation) == 3
    if message is None:
        assert loader_error is None and response.status_code == 201, response.text
        stored = Path(settings.dataset_folder(response.json()["id"]) / f"data.{response.json()['format']}")
        assert stored.read_bytes() == content
        assert load_custom_task("t", stored, stored, text_columns=["text"], label_column="label",
                                validation_fraction=0.5).test["test"] == data.test["test"]
    else:
        assert response.status_code == 422 and message in response.json()["detail"], response.text
        assert response.json()["detail"] == f"{filename}: {loader_error}"
    assert not leftovers(settings)


def _rows(count: int, label) -> bytes:
    return "".join(json.dumps({"text": f"words {i}", "label": label(i)}) + "\n" for i in range(count)).encode()


# (file, form fields, message): refused at upload, where a search could not use the label column sensibly
UNUSABLE: dict[str, tuple[str, bytes, dict, str]] = {
    "nested label": ("a.jsonl", b'{"text": "a", "label": 1}\n{"text": "b", "label": {"v": 0}}\n', {},
                     "a.jsonl: line 2: column 'label' holds an object; a field must be text, a number, true or false"),
    "a list in a column no search names yet": ("a.jsonl", b'{"text": "a", "label": 1, "meta": 0}\n'
                                               b'{"text": "b", "label": 0, "meta": [1, 2]}\n', {},
                                               "a.jsonl: line 2: column 'meta' holds a list; a field must be "
                                               "text, a number, true or false"),
    "blank label": ("a.csv", b"text,label\na,1\nb,  \nc,0\n", {}, "a.csv: line 3: empty label in column 'label'"),
    "single class": ("a.csv", b"text,label\na,pos\nb,pos\n", {}, "a.csv: column 'label' has 1 distinct label(s); "
                     "classification needs at least two distinct labels"),
    "60 float labels": ("a.jsonl", _rows(60, lambda i: i / 7), {}, "a.jsonl: line 2: label '0.14285714285714285' in "
                        "column 'label' is a fraction and every label is a number: a quantity, not a class; declare "
                        "task_type regression"),
    "too many classes": ("a.jsonl", _rows(150, lambda i: f"c{i}"), {}, "a.jsonl: line 101: column 'label' has more "
                         "than 100 distinct labels, too many classes for classification; if it is a number to "
                         "predict, declare task_type regression"),
    "named label column missing": ("a.csv", b"text,label\na,1\nb,0\n", {"label_column": "y"},
                                   "label_column 'y': a.csv has no such column; its columns are ['text', 'label']"),
    "regression on words": ("a.csv", b"text,label\na,1\nb,high\n", {"task_type": "regression"},
                            "a.csv: line 3: label 'high' is not a number"),
    "regression without a label": ("a.csv", b"text,y\na,1\nb,0\n", {"task_type": "regression"},
                                   "task_type 'regression' needs a label column: a.csv has no column `label`; "
                                   "name the label column with the form field label_column"),
    "unknown task type": ("a.csv", b"text,label\na,1\nb,0\n", {"task_type": "ranking"},
                          "the form field `task_type` is 'ranking'; use one of classification, regression"),
}


@pytest.mark.parametrize("case", list(UNUSABLE))
def test_uploads_a_search_could_not_use_are_refused(client, settings, case) -> None:
    filename, content, fields, message = UNUSABLE[case]
    response = upload(client, content, filename=filename, **fields)
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == message
    assert not leftovers(settings)


def test_the_label_column_and_task_type_of_an_upload(client) -> None:
    """What the upload was checked as is shown, with its classes; the form fields are in the OpenAPI schema."""
    plain = upload(client, b"text,label\na,pos\nb,neg\nc,pos\n").json()
    assert (plain["label_column"], plain["task_type"], plain["label_counts"]) == ("label", "classification",
                                                                                {"neg": 1, "pos": 2})
    assert client.get(f"/datasets/{plain['id']}").json() == plain
    floats = upload(client, _rows(60, lambda i: i / 7), filename="f.jsonl", task_type="Regression").json()
    assert (floats["label_column"], floats["task_type"], floats["label_counts"]) == ("label", "regression", None)
    named = upload(client, b"text,verdict\na,2\nb,10\nc,2\n", label_column="verdict").json()
    assert named["label_counts"] == {"2": 2, "10": 1}  # class order: numeric
    unlabelled = upload(client, b"text,score\na,0.5\nb,1.5\n").json()
    assert (unlabelled["label_column"], unlabelled["task_type"], unlabelled["label_counts"]) == (None, None, None)
    form = client.get("/openapi.json").json()["paths"]["/datasets"]["post"]["requestBody"]["content"]
    properties = form["multipart/form-data"]["schema"]["properties"]
    assert properties["task_type"]["enum"] == ["classification", "regression"] and "label_column" in properties


def test_upload_over_the_limit_is_413_and_removed(client, settings) -> None:
    line = b"some words to fill the file up,1\n"
    at_limit = b"text,label\nb,0\n" + line * ((MAX_UPLOAD - 15) // len(line))
    at_limit += b"x" * (MAX_UPLOAD - len(at_limit) - 3) + b",1\n"
    assert len(at_limit) == MAX_UPLOAD
    assert upload(client, at_limit).status_code == 201
    response = upload(client, at_limit + b"y,1\n")
    assert response.status_code == 413, response.text
    assert "NASPRUNE_MAX_UPLOAD_BYTES" in response.json()["detail"]
    assert not leftovers(settings)


def _open_files_under(folder: Path) -> list[str]:
    """What this process holds open under `folder` (a deleted temporary file still shows, as '... (deleted)')."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to list open files")
def test_the_spooled_upload_is_closed_whatever_the_outcome(client, settings, tmp_path, monkeypatch) -> None:
    """Starlette spools the file part to a temporary file once it passes spool_max_size; made tiny here, every
    upload goes to disk under tmp_path, and none may stay open (so alive on disk) once its answer is sent."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(MultiPartParser, "spool_max_size", 16)
    probe = tempfile.SpooledTemporaryFile(max_size=MultiPartParser.spool_max_size)
    probe.write(b"x" * 32)  # past the size: rolled over to a real (unnamed) file under tmp_path
    assert len(_open_files_under(tmp_path)) == 1  # the check sees such a file
    probe.close()
    assert _open_files_under(tmp_path) == []
    good = b"text,label\n" + b"a,1\nb,0\n" * 50
    for content, code in ((good, 201), (b"text,label\na,1\nb\n", 422), (good * 200, 413)):
        assert upload(client, content).status_code == code
        assert _open_files_under(tmp_path) == []
    assert not leftovers(settings)


def test_the_client_filename_is_never_a_path(client, settings, tmp_path) -> None:
    for filename in ("../../../escape.csv", "/tmp/abs.csv", "..\\..\\win.csv", "a\x00b\nc.csv", ".."):
        response = upload(client, b"text,label\na,1\nb,0\n", filename=filename, format="csv")
        assert response.status_code == 201, (filename, response.text)
        data = response.json()
        assert "/" not in data["filename"] and "\\" not in data["filename"] and "\n" not in data["filename"]
        assert [p.name for p in settings.dataset_folder(data["id"]).iterdir()] == ["data.csv"]
    assert not (settings.data_root.parent / "escape.csv").exists() and not Path("/tmp/abs.csv").exists()


def test_another_owners_dataset_is_not_found(workspace, settings, tmp_path) -> None:
    """With real tokens (the server switches to auth mode for good once one exists, so this test has its own
    database): B never sees A's dataset."""
    own = settings.model_dump(exclude={"data_root", "database_url"}) | {"data_root": tmp_path / "data"}
    settings = Settings(**own)
    assert str(tmp_path) in settings.url
    with TestClient(create_app(settings)) as client:
        _another_owners_dataset_is_not_found(client, workspace, settings)


def _another_owners_dataset_is_not_found(client, workspace, settings) -> None:
    factory = session_factory(make_engine(settings.url))
    with factory() as session:
        _, token_a = tokens.create_token(session, "datasets owner a")
        _, token_b = tokens.create_token(session, "datasets owner b")
        session.commit()
    a, b = {"Authorization": f"Bearer {token_a}"}, {"Authorization": f"Bearer {token_b}"}
    try:
        assert upload(client, b"text,label\na,1\n").status_code == 401  # anonymous, now that tokens exist
        dataset_id = upload(client, b"text,label\na,1\nb,0\n", headers=a).json()["id"]
        assert client.get(f"/datasets/{dataset_id}", headers=b).status_code == 404
        assert client.delete(f"/datasets/{dataset_id}", headers=b).status_code == 404
        assert client.get("/datasets", headers=b).json()["total"] == 0
        search = client.post("/searches", headers=b, json=body(workspace, custom=custom(train_dataset=dataset_id,
                                                                                      test_dataset=dataset_id)))
        assert search.status_code == 422 and "no dataset with id" in search.json()["detail"]
        mine = upload(client, b"text,label\nb,0\nc,1\n", headers=b).json()
        assert mine["id"] != dataset_id and client.get("/datasets", headers=b).json()["total"] == 1
        assert client.get(f"/datasets/{dataset_id}", headers=a).status_code == 200
        assert client.get(f"/datasets/{mine['id']}", headers=a).status_code == 404
    finally:
        with factory() as session:
            tokens.revoke_token(session, "datasets owner a")
            tokens.revoke_token(session, "datasets owner b")
            session.commit()
    # every token revoked: the server stays closed (it does not fall back to anonymous access)
    assert client.get(f"/datasets/{dataset_id}").status_code == 401
    assert client.get(f"/datasets/{dataset_id}", headers=a).status_code == 401


# ------------------------------------------------------------------------------------------ searches naming datasets


def test_a_search_names_datasets_and_their_columns_are_checked(client, workspace, settings) -> None:
    train = upload(client, (workspace / "train.csv").read_bytes()).json()["id"]
    test = upload(client, b"sentence,label\nhello,pos\nbye,neg\n", filename="test.csv").json()["id"]

    def refused(task: dict, message: str) -> None:
        response = client.post("/searches", json=body(workspace, custom=task))
        assert response.status_code == 422, response.text
        assert message in response.json()["detail"], response.json()["detail"]

    refused(custom(train_dataset=train, test_dataset=test),
            f"test_dataset '{test}' has no column(s) ['text'] (text_columns ['text'], label_column 'label'); "
            "its columns are ['sentence', 'label']")
    refused(custom(train_dataset=train, test_dataset=train, label_column="y"), "no column(s) ['y']")
    refused(custom(train_dataset=train, train_file=str(workspace / "train.csv"), test_dataset=train),
            "exactly one of train_file (a path) and train_dataset")
    refused(custom(train_dataset=train), "exactly one of test_file (a path) and test_dataset")
    refused(custom(train_dataset="nope", test_dataset=train), "no dataset with id 'nope'")
    # files given by path: the header is read
    refused(custom(train_file=str(workspace / "train.csv"), test_file=str(workspace / "test.csv"),
                   text_columns=["text", "text_b"]), f"train_file '{workspace}/train.csv' has no column(s) ['text_b']")
    # an upload's file named by path would skip the owner check
    stored = str(settings.dataset_folder(train) / "data.csv")
    refused(custom(train_file=stored, test_dataset=train), "name it by id (train_dataset)")

    accepted = client.post("/searches", json=body(workspace, custom=custom(train_dataset=train,
                                                                         test_file=str(workspace / "test.csv"))))
    assert accepted.status_code == 201, accepted.text
    shown = accepted.json()["request"]["run"]["custom"]  # the upload by id, as named: never its server path
    assert shown["train_dataset"] == train and "train_file" not in shown and stored not in accepted.text
    client.post(f"/searches/{accepted.json()['id']}/cancel")


def test_a_search_naming_columns_that_could_not_run_is_refused_at_once(client, workspace) -> None:
    """The upload stored what each column holds, so POST /searches judges the text and label columns it names by the
    reader's rules at once (422 naming the field), rather than a worker failing the search later."""
    rows = ["text,note,score,label,id"] + [f"w{i},{'' if i % 2 else 'n'},{(i % 8) / 4},{'ab'[i % 2]},{i}"
                                           for i in range(120)]
    dataset = upload(client, "\n".join(rows).encode() + b"\n").json()["id"]
    what = f"train_dataset '{dataset}'"

    def post(**fields):
        return client.post("/searches", json=body(workspace, custom=custom(train_dataset=dataset,
                                                                         test_dataset=dataset) | fields))

    for fields, message in [
        ({"text_columns": ["text", "note"]}, f"custom.text_columns: {what}: line 3: column 'note' is empty"),
        ({"label_column": "note"}, f"custom.label_column: {what}: line 3: empty label in column 'note'"),
        ({"label_column": "score"}, f"custom.label_column: {what}: line 3: label '0.25' in column 'score' is a "
                                    "fraction and every label is a number: a quantity, not a class; declare task_type "
                                    "regression"),
        ({"label_column": "id"}, f"custom.label_column: {what}: line 102: column 'id' has more than 100 distinct "
                                 "labels"),
        ({"label_column": "text", "task_type": "regression"}, f"custom.label_column: {what}: line 2: label 'w0' is "
                                                              "not a number"),
    ]:
        response = post(**fields)
        assert response.status_code == 422, (fields, response.text)
        assert response.json()["detail"].startswith(message), response.json()["detail"]
    other = upload(client, b"text,label\nx,a\ny,c\nz,b\n", filename="test.csv").json()["id"]
    unknown = client.post("/searches", json=body(workspace, custom=custom(train_dataset=dataset, test_dataset=other)))
    assert unknown.status_code == 422 and unknown.json()["detail"] == (
        f"custom.label_column: test_dataset '{other}' has label(s) ['c'] in column 'label' that train_dataset "
        f"'{dataset}' does not (its labels: ['a', 'b'])")
    for fields in ({"label_column": "score", "task_type": "regression"}, {"label_column": "label"},
                   {"label_column": "id", "task_type": "regression"}):
        accepted = post(**fields)
        assert accepted.status_code == 201, (fields, accepted.text)
        client.post(f"/searches/{accepted.json()['id']}/cancel")


def test_a_file_named_by_path_is_held_to_the_same_rules_by_the_worker(client, workspace, settings) -> None:
    """A file under an allowed data root is read by the worker only (the request checks its header): the reader's
    rules fail the search with the reason, before any training."""
    path = workspace / f"nested-{os.getpid()}.jsonl"
    path.write_text('{"text": "a", "label": "pos"}\n{"text": {"nested": "b"}, "label": "neg"}\n'
                    '{"text": "c", "label": "neg"}\n')
    response = client.post("/searches", json=body(workspace, custom=custom(train_file=str(path),
                                                                         test_file=str(workspace / "test.csv"))))
    assert response.status_code == 201, response.text
    with worker_thread(settings):
        search = wait_for(client, response.json()["id"], lambda s: s["status"] in ("failed", "succeeded"))
    assert search["status"] == "failed"
    assert "line 2: column 'text' holds an object; a field must be text, a number, true or false" in search["error"]


@pytest.mark.slow
def test_a_search_on_uploaded_datasets_runs_in_a_worker(client, workspace, worker_env, settings, tmp_path) -> None:
    train = upload(client, (workspace / "train.csv").read_bytes(), name="toy train").json()
    jsonl = "".join(json.dumps({"label": label, "text": text}) + "\n" for _, text, label in
                    (line.split(",") for line in (workspace / "test.csv").read_text().splitlines()[1:]))
    test = upload(client, jsonl.encode(), filename="test.jsonl", name="toy test").json()
    assert test["num_rows"] == 20
    response = client.post("/searches", json=body(workspace, custom=custom(train_dataset=train["id"],
                                                                         test_dataset=test["id"])))
    assert response.status_code == 201, response.text
    search_id = response.json()["id"]
    in_use = client.delete(f"/datasets/{train['id']}")
    assert in_use.status_code == 409 and search_id in in_use.json()["detail"]

    run_worker_once(worker_env)
    search = client.get(f"/searches/{search_id}").json()
    assert search["status"] == "succeeded", search["error"]
    assert client.get(f"/searches/{search_id}/trials").json()["total"] == 5
    assert client.delete(f"/datasets/{train['id']}").status_code == 204  # no longer read by an active search

    _check_archive(client, search_id, settings, tmp_path)


def _members(content: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
        return tar.getmembers()


def _check_archive(client: TestClient, search_id: str, settings: Settings, tmp_path: Path) -> None:
    """The archive has plain members under one top folder; what is planted in the export folder stays out."""
    url = f"/searches/{search_id}/pareto/0/download"
    with worker_thread(settings):  # builds the export job the download queues
        first = client.get(url)
    assert first.status_code == 200, first.text
    members = _members(first.content)
    top = members[0].name
    assert members[0].isdir() and "/" not in top
    for m in members:
        assert (m.isfile() or m.isdir()) and not m.name.startswith("/") and ".." not in m.name.split("/")
        assert m.name == top or m.name.startswith(top + "/")
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "")
    assert {f"{top}/config.json", f"{top}/model.safetensors"} <= {m.name for m in members}

    secret = tmp_path / "secret.txt"
    secret.write_text("outside the export folder")
    exports = settings.search_folder(search_id) / "exports"
    (exports / "0-hf" / "planted-link").symlink_to(secret)
    (exports / "0-hf" / "planted-dir").symlink_to(tmp_path, target_is_directory=True)
    os.link(secret, exports / "0-hf" / "planted-hardlink")
    (exports / "0-hf.tar.gz").unlink()
    (exports / "0-hf.tar.gz").symlink_to(secret)  # a planted archive: not served, built again
    with worker_thread(settings):
        again = client.get(url)
    assert again.status_code == 200, again.text
    assert [m.name for m in _members(again.content)] == [m.name for m in members]  # nothing planted came in
    with tarfile.open(fileobj=io.BytesIO(again.content), mode="r:gz") as tar:
        contents = [tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()]
    assert not any(b"outside the export folder" in c for c in contents)
    assert not (exports / "0-hf.tar.gz").is_symlink()


# ------------------------------------------------------------------------------------------ room on the server


def test_each_token_has_a_quota_of_stored_bytes(workspace, settings, tmp_path) -> None:
    """Two real tokens, their own database: A's uploads stop at NASPRUNE_MAX_DATASET_BYTES_PER_OWNER (507, nothing
    kept) while B still has room; deleting one of A's datasets makes room again."""
    content = b"text,label\na,1\nb,0\n"  # 19 bytes: two fit under the quota, a third does not
    own = settings.model_dump(exclude={"data_root", "database_url"}) | {"data_root": tmp_path / "data",
                                                                        "max_dataset_bytes_per_owner": 45}
    settings = Settings(**own)
    with TestClient(create_app(settings)) as client:
        factory = session_factory(make_engine(settings.url))
        with factory() as session:
            a = {"Authorization": f"Bearer {tokens.create_token(session, 'quota a')[1]}"}
            b = {"Authorization": f"Bearer {tokens.create_token(session, 'quota b')[1]}"}
            session.commit()
        first = upload(client, content, headers=a).json()["id"]
        assert upload(client, content, headers=a).status_code == 201
        refused = upload(client, content, headers=a)
        assert refused.status_code == 507, refused.text
        assert refused.json()["detail"] == (
            "storing this file (19 bytes) would take your datasets to 57 bytes, over the server's limit of 45 bytes "
            "per token (NASPRUNE_MAX_DATASET_BYTES_PER_OWNER): delete datasets you no longer need "
            "(DELETE /datasets/{id}) and try again")
        assert not leftovers(settings)
        assert upload(client, content, headers=b).status_code == 201  # B's datasets are B's own count
        assert client.delete(f"/datasets/{first}", headers=a).status_code == 204
        assert upload(client, content, headers=a).status_code == 201


def test_an_upload_that_would_leave_too_little_free_space_is_507(client, settings) -> None:
    """The disk fills up after the server started: NASPRUNE_MIN_FREE_MB set above what the data root's disk has
    free (read with shutil.disk_usage) refuses every upload with 507, and nothing is written."""
    free = shutil.disk_usage(settings.data_root).free // MIB
    state = client.app.state
    state.settings = settings.model_copy(update={"min_free_mb": free + 1024})
    try:
        before = _folders(settings)
        response = upload(client, b"text,label\na,1\nb,0\n")
        assert response.status_code == 507, response.text
        assert response.json()["detail"] == (
            f"the server's disk would have less than its reserve of NASPRUNE_MIN_FREE_MB={free + 1024} MB free after "
            "storing this file: free space on the server (delete datasets or old searches) and try again")
        assert str(settings.data_root) not in response.text
        assert _folders(settings) == before
    finally:
        state.settings = settings
    assert upload(client, b"text,label\na,1\nb,0\n").status_code == 201


def test_a_client_that_disconnects_mid_upload_leaves_one_log_line_and_nothing_on_disk(settings, caplog) -> None:
    """Through uvicorn (a real socket): the client sends the headers and half of a multipart body, then closes the
    connection. The server logs one warning, no traceback, and keeps nothing of the upload."""
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_config=None,
                                           log_level="info"))
    thread = threading.Thread(target=server.run, daemon=True)
    caplog.set_level(logging.INFO)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.02)
        before = _folders(settings)
        port = server.servers[0].sockets[0].getsockname()[1]
        part = (b'--b0undary\r\nContent-Disposition: form-data; name="name"\r\n\r\ncut\r\n--b0undary\r\n'
                b'Content-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\ntext,label\n'
                + b"some words,1\n" * 2000)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"POST /datasets HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b0undary"
                         b"\r\nContent-Length: " + str(len(part) * 2).encode() + b"\r\n\r\n" + part)
            time.sleep(0.3)  # the server is reading the body
        deadline = time.monotonic() + 30
        while not any("closed the connection" in r.getMessage() or r.exc_info for r in caplog.records):
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            time.sleep(0.05)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    warned = [r for r in caplog.records if "closed the connection" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert "nothing was stored" in warned[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in caplog.text], caplog.text
    assert _folders(settings) == before
