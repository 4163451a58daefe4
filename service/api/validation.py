"""Check a POST /searches body before it is queued, and turn it into the (RunSpec, SearchJob) a worker runs.

A request that would fail in the worker minutes later should fail here at once, with a message the client can
act on: the model's architecture (read from its config only, never remote code), paths inside the allowed
roots, the task's files, the names of the space, objectives and optimizer. Every problem is an `InvalidSearch`
(HTTP 422).
"""

from __future__ import annotations

from pathlib import Path

from search.job import LatencyShape, SearchJob
from search.objectives import ObjectiveError, resolve_objectives
from search.optimizers import OPTIMIZERS
from search.runner import SearchConfig
from supernet.convert import ModelLoadError, read_model_config
from supernet.data import GLUE_TASKS
from supernet.run import CustomTask, RunSpec
from supernet.space import SPACES
from supernet.training import TrainingConfig

from ..config import Settings, within_roots
from .schemas import SearchCreate

MODEL_ALIASES = ("minilm",)
DATA_SUFFIXES = (".csv", ".tsv", ".jsonl")


class InvalidSearch(ValueError):
    """A search request that cannot run; the message says why and what to change."""


def _roots_text(roots: list[Path]) -> str:
    return ", ".join(str(r) for r in roots)


def _local_path(text: str, what: str, roots: list[Path], base: Path) -> Path:
    """`text` as an absolute path inside `roots` (relative paths are taken under `base`)."""
    path = Path(text).expanduser()
    if ".." in path.parts:
        raise InvalidSearch(f"{what} {text!r}: paths must not contain '..'")
    if not path.is_absolute():
        path = base / path
    if not within_roots(path, roots):
        raise InvalidSearch(f"{what} {text!r} is outside the allowed folders ({_roots_text(roots)}); "
                            "set NASPRUNE_ALLOWED_MODEL_ROOTS / NASPRUNE_ALLOWED_DATA_ROOTS to allow more")
    return path.resolve()


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "~", ".")) or "\\" in name or Path(name).exists() or name.count("/") > 1


def check_model(name: str, settings: Settings, max_length: int) -> str:
    """The model reference to store: 'minilm', an absolute folder inside the model roots, or a hub id."""
    if name in MODEL_ALIASES:
        ref = name
    elif _looks_local(name):
        path = _local_path(name, "model", settings.model_roots, settings.data_root)
        if not (path / "config.json").is_file():
            raise InvalidSearch(f"model {name!r}: no config.json in {path}")
        ref = str(path)
    else:
        ref = name  # a hub id ("org/name"): allowed by name; its config is read below, never remote code
    try:
        config = read_model_config(ref)
    except ModelLoadError as exc:
        raise InvalidSearch(str(exc)) from None
    except Exception as exc:  # a hub id that cannot be fetched, a broken config
        raise InvalidSearch(f"cannot read the config of model {name!r}: {type(exc).__name__}: {exc}") from None
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and max_length > positions:
        raise InvalidSearch(f"max_length {max_length} exceeds the model's {positions} positions")
    return ref


def _check_glue(task: str, data_dir: str | None, settings: Settings) -> tuple[str, str | None]:
    key = task.strip().lower()
    if "/" not in key:
        key = f"glue/{key}"
    if key not in GLUE_TASKS:
        raise InvalidSearch(f"unknown task {task!r}; known GLUE tasks: {', '.join(GLUE_TASKS)}, "
                            "or pass a custom task object {name, train_file, test_file, text_columns, ...}")
    if data_dir is None:
        return key, None
    folder = _local_path(data_dir, "data_dir", settings.data_roots, settings.data_root)
    glue = GLUE_TASKS[key]
    needed = [glue.train_file, *(name for _, name in glue.test_files)]
    missing = [name for name in needed if not (folder / glue.directory / name).is_file()]
    if missing:
        raise InvalidSearch(f"data_dir {data_dir!r} has no {glue.directory}/{', '.join(missing)} for {key}")
    return key, str(folder)


def _check_data_file(text: str, what: str, settings: Settings) -> str:
    path = _local_path(text, what, settings.data_roots, settings.data_root)
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise InvalidSearch(f"{what} {text!r}: expected a {', '.join(DATA_SUFFIXES)} file")
    if not path.is_file():
        raise InvalidSearch(f"{what} {text!r}: no such file ({path})")
    return str(path)


def build_request(body: SearchCreate, settings: Settings) -> tuple[RunSpec, SearchJob]:
    """Validate `body` and build what the worker runs; raises InvalidSearch."""
    if body.space not in SPACES:
        raise InvalidSearch(f"unknown search space {body.space!r}; choose one of {', '.join(SPACES)}")
    if body.optimizer not in OPTIMIZERS:
        raise InvalidSearch(f"unknown optimizer {body.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if body.optimizer == "ehvi":
        from search.optimizers.synetune import botorch_available

        if not botorch_available():
            raise InvalidSearch("optimizer 'ehvi' needs botorch: pip install 'nasprune[ehvi]' on the workers "
                                "and the server, or choose another optimizer")
    try:
        resolve_objectives(body.objectives)
    except ObjectiveError as exc:
        raise InvalidSearch(str(exc)) from None
    model = check_model(body.model, settings, body.max_length)
    custom = None
    if isinstance(body.task, str):
        task, data_dir = _check_glue(body.task, body.data_dir, settings)
    else:
        c = body.task
        custom = CustomTask(name=c.name, train_file=_check_data_file(c.train_file, "train_file", settings),
                            test_file=_check_data_file(c.test_file, "test_file", settings),
                            text_columns=list(c.text_columns), label_column=c.label_column, task_type=c.task_type)
        task, data_dir = f"custom/{c.name}", None
    budget = body.budget
    try:
        training = TrainingConfig(epochs=budget.epochs, seed=body.seed)
        search = SearchConfig(objectives=list(body.objectives), optimizer=body.optimizer,
                              evaluations=budget.evaluations, time_limit_s=budget.time_limit_s, seed=body.seed)
    except (ValueError, ObjectiveError) as exc:
        raise InvalidSearch(str(exc)) from None
    spec = RunSpec(model=model, task=task, data_dir=data_dir, custom=custom, space=body.space,
                   max_length=body.max_length, batch_size=body.batch_size, eval_batch_size=body.eval_batch_size,
                   train_limit=budget.train_limit, validation_limit=budget.validation_limit, training=training)
    latency = LatencyShape(batch_size=body.latency.batch_size, seq_len=body.latency.seq_len,
                           device=body.latency.device)
    return spec, SearchJob(search=search, latency=latency, params_kind=body.params)
