"""Files read on a user's behalf stay inside the allowed roots: symlinks inside an allowed folder that lead out
(GLUE task files, a model's config.json or tokenizer file) are refused at validation without reading them; a folder
changed after validation is refused again by the worker as it opens the files; the data root (searches, exports,
uploads) cannot be named by path under any token, with one answer whether or not the path exists."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_api import body, run_worker_once, wait_for
from test_auth import Tokens, bearer

from supernet import confine

SECRET = "root:x:0:0:root:/root:/bin/bash"  # the first line of the file a hostile symlink points at


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A folder outside every root, holding files worth stealing: a passwd-like file, a JSON file."""
    folder = tmp_path_factory.mktemp("outside")
    (folder / "passwd").write_text(f"{SECRET}\ndaemon:x:1:1::/:/bin/sh\n")
    (folder / "other.json").write_text('{"model_type": "secret-model-type", "token": "s3cr3t"}')
    return folder


@pytest.fixture(scope="module")
def settings(workspace, tmp_path_factory):
    from conftest import service_settings

    return service_settings(workspace, tmp_path_factory.mktemp("confine"))


def _model_copy(workspace: Path, name: str) -> Path:
    folder = workspace / "confine" / name
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(workspace / "model", folder)
    return folder


def _refused(client, payload: dict, *expected: str, headers: dict | None = None) -> str:
    response = client.post("/searches", json=payload, headers=headers or {})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    for part in expected:
        assert part in detail, detail
    return detail


# ------------------------------------------------------------------------------------------------ the module


def test_check_folder_refuses_an_entry_linked_out_and_accepts_links_that_stay(tmp_path, outside) -> None:
    root = tmp_path / "root"
    (root / "model" / "sub").mkdir(parents=True)
    (root / "model" / "config.json").write_text("{}")
    (root / "model" / "sub" / "inner.json").symlink_to(root / "model" / "config.json")
    assert confine.check_folder(root / "model", [root], what="model") == root / "model"
    (root / "model" / "sub" / "leak.txt").symlink_to(outside / "passwd")
    with pytest.raises(confine.OutsideRoots, match=r"model 'M' \(its entry 'sub/leak.txt'\) is outside"):
        confine.check_folder(root / "model", [root], what="model", given="M")


def test_open_text_under_a_policy_refuses_a_link_out_and_reads_nothing_of_it(tmp_path, outside) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "ok.csv").write_text("text,label\na,0\n")
    (root / "leak.csv").symlink_to(outside / "passwd")
    rules = confine.Policy.of(models=[], data=[root])
    with confine.policy(rules):
        with confine.open_text(root / "ok.csv") as f:
            assert f.readline() == "text,label\n"
        with pytest.raises(confine.OutsideRoots) as refused:
            confine.open_text(root / "leak.csv", given="my/leak.csv")
    assert "my/leak.csv" in str(refused.value) and SECRET not in str(refused.value)
    assert confine.current() is None  # the policy ends with its block
    with confine.open_text(root / "leak.csv") as f:  # without a policy (the CLI) a user reads their own files
        assert f.readline().strip() == SECRET


def test_the_descriptor_check_sees_the_file_actually_opened(tmp_path) -> None:
    (tmp_path / "real.csv").write_text("x\n")
    (tmp_path / "link.csv").symlink_to(tmp_path / "real.csv")
    with open(tmp_path / "link.csv") as f:
        assert confine._opened_path(f.fileno()) == (tmp_path / "real.csv").resolve()


def test_the_worker_policy_holds_a_model_folder_changed_after_validation(workspace, outside) -> None:
    """What supernet.run does before transformers reads a user's model folder."""
    folder = _model_copy(workspace, "swapped")
    rules = confine.Policy.of(models=[workspace], data=[])
    with confine.policy(rules):
        assert confine.model_source(str(folder)) == str(folder)
        assert confine.model_source("minilm") == "minilm"  # an alias is the server's own, not a user path
        (folder / "tokenizer_config.json").unlink()
        (folder / "tokenizer_config.json").symlink_to(outside / "other.json")
        with pytest.raises(confine.OutsideRoots, match="tokenizer_config.json"):
            confine.model_source(str(folder))


def test_a_hub_id_that_is_a_folder_in_the_workers_directory_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    with confine.policy(confine.Policy.of(models=[tmp_path / "models"], data=[])):
        assert confine.model_source("org/other") == "org/other"  # a hub id: fetched by name
        with pytest.raises(confine.OutsideRoots, match="a hub id that names a folder on the server"):
            confine.model_source("org/name")


# ------------------------------------------------------------------------------------------------ validation


def test_a_glue_folder_whose_task_files_link_out_is_refused_without_reading_them(client, workspace, outside) -> None:
    glue = workspace / "confine" / "glue-links"
    (glue / "RTE").mkdir(parents=True, exist_ok=True)
    for name in ("train.tsv", "dev.tsv"):
        if not (glue / "RTE" / name).is_symlink():
            (glue / "RTE" / name).symlink_to(outside / "passwd")
    detail = _refused(client, body(workspace, task="glue/rte", data_dir=str(glue)),
                      f"data_dir '{glue}/RTE/train.tsv' is outside the allowed folders")
    assert "root:" not in detail and str(outside) not in detail


def test_a_model_whose_config_links_out_is_refused_without_quoting_it(client, workspace, outside) -> None:
    folder = _model_copy(workspace, "config-link")
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to(outside / "other.json")
    detail = _refused(client, body(workspace, model=str(folder)), f"model '{folder}' (its entry 'config.json') is "
                                                                  "outside the allowed folders")
    assert "secret-model-type" not in detail and str(outside) not in detail


def test_a_model_with_any_file_linked_out_is_refused(client, workspace, outside) -> None:
    folder = _model_copy(workspace, "tokenizer-link")
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").symlink_to(outside / "passwd")
    _refused(client, body(workspace, model=str(folder)), "(its entry 'tokenizer.json') is outside the allowed folders")


def test_refusals_name_the_path_as_given_never_the_server_folders(client, settings, workspace) -> None:
    missing = workspace / "nope.csv"
    detail = _refused(client, body(workspace, custom=body(workspace)["custom"] | {"train_file": str(missing)}),
                      f"train_file '{missing}': no such file")
    assert str(settings.data_root) not in detail
    detail = _refused(client, body(workspace, model="/srv/elsewhere/model"), "outside the allowed folders")
    assert str(workspace) not in detail  # the allowed roots are the operator's business, not the caller's


# ------------------------------------------------------------------------------------------------ the worker


def test_a_data_file_swapped_for_a_link_after_validation_fails_the_job_unread(client, settings, workspace, outside,
                                                                             worker_env) -> None:
    folder = workspace / "confine" / "swap"
    folder.mkdir(parents=True, exist_ok=True)
    train = folder / "train.csv"
    shutil.copy(workspace / "train.csv", train)
    payload = body(workspace, custom=body(workspace)["custom"] | {"train_file": str(train)})
    response = client.post("/searches", json=payload)
    assert response.status_code == 201, response.text
    search_id = response.json()["id"]
    train.unlink()
    train.symlink_to(outside / "passwd")  # accepted, then changed: the worker must look again
    run_worker_once(worker_env)
    search = wait_for(client, search_id, lambda s: s["status"] == "failed", what="the search to fail")
    assert "is outside the allowed folders" in search["error"], search["error"]
    assert "root:" not in search["error"]
    logs = client.get(f"/searches/{search_id}/logs").text
    assert "root:" not in logs


# ------------------------------------------------------------------------------------------------ the data root


def test_no_token_can_name_files_under_the_data_root_and_existence_is_not_told(tmp_path_factory, workspace) -> None:
    """Alice's search folder (trials, an export) under a data root that itself lies inside an allowed root: Bob's
    requests naming her files are refused, exactly as a path there that does not exist."""
    from conftest import service_settings
    from fastapi.testclient import TestClient

    from service.api import create_app

    base = tmp_path_factory.mktemp("shared-root")
    settings = service_settings(workspace, base, allowed_model_roots=[workspace, base],
                                allowed_data_roots=[workspace, base])
    with TestClient(create_app(settings)) as client:
        store = Tokens(settings)
        alice, bob = (bearer(store.create(name)[1]) for name in ("alice", "bob"))
        created = client.post("/searches", json=body(workspace), headers=alice)
        assert created.status_code == 201, created.text
        folder = settings.search_folder(created.json()["id"])
        (folder / "exports").mkdir(parents=True, exist_ok=True)
        shutil.copy(workspace / "train.csv", folder / "trials.jsonl")
        shutil.copytree(workspace / "model", folder / "exports" / "0-hf", dirs_exist_ok=True)
        (folder / "data.csv").write_bytes((workspace / "train.csv").read_bytes())

        def detail(payload: dict) -> str:
            return _refused(client, payload, "is in the server's own folders", headers=bob)

        custom = body(workspace)["custom"]
        for existing, absent in [(folder / "data.csv", folder / "absent.csv"),
                                 (folder / "trials.jsonl", folder / "absent.jsonl")]:
            answers = [detail(body(workspace, custom=custom | {"train_file": str(p)})) for p in (existing, absent)]
            assert answers[0].replace(existing.name, absent.name) == answers[1]
        answers = [detail(body(workspace, model=str(p))) for p in (folder / "exports" / "0-hf", folder / "nothing")]
        assert answers[0].replace("exports/0-hf", "nothing") == answers[1]
        detail(body(workspace, task="glue/rte", data_dir=str(settings.data_root)))
        link = base / "innocent.csv"  # a link in an allowed root, into the data root
        if not link.is_symlink():
            link.symlink_to(folder / "data.csv")
        detail(body(workspace, custom=custom | {"train_file": str(link)}))
        # the alice folder itself is untouched by any of it
        assert (folder / "trials.jsonl").read_bytes() == (workspace / "train.csv").read_bytes()
