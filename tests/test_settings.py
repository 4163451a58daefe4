"""One configuration model: the settings models drive the CLI flags, the API body and schema, and the stored JSON.

The agreement test walks every leaf field of the search settings: the CLI has a flag for it, the API's OpenAPI
schema has the property with the same default and bounds, and a non-default value given through the CLI and
through the API body is stored as the same JSON (defaults too). Also: the registries behind the choice lists, old
stored rows and files, and the flag generator's own rules.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from search.names import OBJECTIVE_NAMES, OPTIMIZER_NAMES
from search.settings import LatencyShape, SearchConfig, SearchJob, SearchSettings
from service import repository as repo
from service.api.schemas import RefineCreate, SearchRequest
from service.cli import _parse_settings, build_parser
from service.flags import FlagError, FlagValueError, add_flags, model_flags, parse_flags
from supernet.settings import (
    SPACE_NAMES,
    CustomTask,
    RefineConfig,
    RefinePointConfig,
    RunSpec,
    TrainingConfig,
    flag_extra,
)

# A valid value other than the default for every leaf field of SearchSettings, written as the CLI gets it and as
# the API body gets it. A field added to the models without a line here fails the coverage test below.
NON_DEFAULT: dict[tuple[str, ...], tuple[str, Any]] = {
    ("space",): ("uniform", "uniform"),
    ("max_length",): ("32", 32),
    ("batch_size",): ("4", 4),
    ("eval_batch_size",): ("16", 16),
    ("train_limit",): ("30", 30),
    ("validation_limit",): ("all", None),
    ("split_seed",): ("3", 3),
    ("importance",): ("none", "none"),
    ("importance_batches",): ("2", 2),
    ("data_dir",): ("none", None),  # a custom task has no GLUE folder: null both ways (the default)
    ("custom", "text_columns"): ("text", ["text"]),
    ("custom", "label_column"): ("label", "label"),
    ("custom", "task_type"): ("classification", "classification"),
    ("training", "epochs"): ("2.5", 2.5),
    ("training", "plain_fraction"): ("0.5", 0.5),
    ("training", "learning_rate"): ("3e-4", 3e-4),
    ("training", "weight_decay"): ("0.1", 0.1),
    ("training", "warmup_ratio"): ("0.2", 0.2),
    ("training", "gradient_accumulation"): ("2", 2),
    ("training", "max_grad_norm"): ("5", 5.0),
    ("training", "num_random_subnets"): ("1", 1),
    ("training", "sample_floor"): ("0.1", 0.1),
    ("training", "temperature"): ("2", 2.0),
    ("training", "label_loss_weight"): ("0.5", 0.5),
    ("training", "seed"): ("7", 7),
    ("training", "checkpoint_every_steps"): ("50", 50),
    ("training", "token_elimination"): ("", True),
    ("training", "exits"): ("", True),
    ("training", "exit_learning_rate_scale"): ("5", 5.0),
    ("training", "exit_loss_weighting"): ("mean", "mean"),
    ("training", "detach_exits"): ("", True),
    ("search", "objectives"): ("error,macs,expected_macs", ["error", "macs", "expected_macs"]),
    ("search", "optimizer"): ("random", "random"),
    ("search", "evaluations"): ("12", 12),
    ("search", "ode_compensation"): ("", True),
    ("search", "time_limit_s"): ("600", 600.0),
    ("search", "seed"): ("11", 11),
    ("search", "optimizer_options"): ('{"population_size": 4}', {"population_size": 4}),
    ("latency", "batch_size"): ("8", 8),
    ("latency", "seq_len"): ("24", 24),
    ("latency", "device"): ("cuda:1", "cuda:1"),
    ("latency", "lengths"): ("validation", "validation"),
    ("params_kind",): ("total", "total"),
    ("refine", "epochs"): ("0.5", 0.5),
    ("refine", "learning_rate"): ("2e-3", 2e-3),
    ("refine", "weight_decay"): ("0", 0.0),
    ("refine", "warmup_ratio"): ("0.1", 0.1),
    ("refine", "budgets"): ("0.33,0.5", [0.33, 0.5]),
    ("evaluation_dtype",): ("bfloat16", "bfloat16"),
    ("search_examples",): ("100", 100),
    ("dynamic", "token_elimination"): ("", True),  # a switch: the flag alone
    ("dynamic", "keep_floor"): ("0.2", 0.2),
    ("dynamic", "exits"): ("", True),
    ("dynamic", "exit_thresholds"): ("0,0.25,0.5", [0.0, 0.25, 0.5]),
}
# Fields set by the test's task in both forms (the model, the task and its files), and fields without a flag.
TASK_FIELDS = {("model",), ("task",), ("custom", "train_file"), ("custom", "test_file")}
NO_FLAG = {("custom", "name")}  # the name of task custom/<name>


def leaves(model: type[BaseModel], path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every leaf field of `model` (nested sections walked), by path, with its FieldInfo."""
    found = {}
    for name, info in model.model_fields.items():
        inner = info.annotation
        args = getattr(inner, "__args__", ())
        section = next((a for a in (inner, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if section is not None:
            found |= leaves(section, (*path, name))
        else:
            found[(*path, name)] = info
    return found


def _flag_name(path: tuple[str, ...]) -> str:
    return next(f.name for f in model_flags(SearchSettings) if f.path == path)


def _cli(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    _parse_settings(args)
    return args


def _task_argv(ws: Path) -> list[str]:
    return ["--model", str(ws / "model"), "--task", "custom/toy", "--train-file", str(ws / "train.csv"),
            "--test-file", str(ws / "test.csv")]


def _task_body(ws: Path) -> dict[str, Any]:
    return {"model": str(ws / "model"), "task": "custom/toy",
            "custom": {"train_file": str(ws / "train.csv"), "test_file": str(ws / "test.csv")}}


def _schema_property(schema: dict[str, Any], root: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """The JSON schema of the field at `path`, following $refs and nullable anyOf's."""
    node = root
    for name in path:
        node = _resolve(schema, node)
        node = node["properties"][name]
    return node


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while True:
        if "$ref" in node:
            node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
        elif "anyOf" in node:
            node = next(option for option in node["anyOf"] if option.get("type") != "null")
        else:
            return node


BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum",
          "min_length": "minLength", "max_length": "maxLength"}


def _bounds(info) -> dict[str, Any]:
    return {BOUNDS[attr]: getattr(m, attr) for m in info.metadata for attr in BOUNDS if hasattr(m, attr)}


# ------------------------------------------------------------------------------------------ the agreement test


def test_every_leaf_field_has_a_flag_and_a_non_default_test_value() -> None:
    fields = leaves(SearchSettings)
    assert set(fields) == set(NON_DEFAULT) | TASK_FIELDS | NO_FLAG, "a field was added or removed: update NON_DEFAULT"
    options = {o for action in build_parser()._subparsers._group_actions[0].choices["search"]._actions
               for o in action.option_strings}
    flags = {f.path: f for f in model_flags(SearchSettings)}
    assert set(flags) == set(fields) - NO_FLAG
    for path, flag in flags.items():
        assert set(flag.names) <= options, path
    for path, (_, value) in NON_DEFAULT.items():
        default = fields[path].get_default(call_default_factory=True)
        if path not in (("data_dir",), ("custom", "text_columns"), ("custom", "label_column"),
                        ("custom", "task_type")):  # kept at their defaults: the toy task's columns, no GLUE folder
            assert value != (list(default) if isinstance(default, tuple) else default), path


def test_the_api_schema_has_every_field_with_the_models_default_and_bounds(client) -> None:
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/searches"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    for path, info in leaves(SearchSettings).items():
        prop = _schema_property(schema, operation, path)
        if not info.is_required():
            default = info.get_default(call_default_factory=True)
            expected = list(default) if isinstance(default, tuple) else default
            # FastAPI's document leaves a null default out; every other default must be there
            assert (prop.get("default") if expected is None else prop["default"]) == expected, path
        inner = _resolve(schema, prop)
        for key, value in _bounds(info).items():
            # a list's or an object's length bounds are minItems/maxItems, minProperties/maxProperties
            alternatives = [key, key.replace("Length", "Items"), key.replace("Length", "Properties")]
            assert next(inner[k] for k in alternatives if k in inner) == value, (path, key)
    # the choice lists are the registries'
    assert _resolve(schema, _schema_property(schema, operation, ("space",)))["enum"] == list(SPACE_NAMES)
    assert _resolve(schema, _schema_property(schema, operation, ("search", "optimizer")))["enum"] == \
        list(OPTIMIZER_NAMES)
    objectives = _resolve(schema, _schema_property(schema, operation, ("search", "objectives")))
    assert objectives["items"]["enum"] == list(OBJECTIVE_NAMES) and objectives["minItems"] == 2


def test_non_default_values_through_the_cli_and_the_api_are_stored_alike(client, workspace) -> None:
    argv = ["search", *_task_argv(workspace), "--out", "unused"]
    body = _task_body(workspace)
    for path, (text, value) in NON_DEFAULT.items():
        argv[-2:-2] = [_flag_name(path), *([text] if text else [])]
        node = body
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    argv[-2:-2] = ["--device", "cpu", "--precision", "float32"]
    body["compute"] = {"device": "cpu", "precision": "float32"}
    args = _cli(argv)
    spec, job = args.settings.split()
    response = client.post("/searches", json=body)
    assert response.status_code == 201, response.text
    stored = response.json()["request"]
    assert stored == repo.request_dict(spec, job, args.compute)
    assert stored["compute"] == {"device": "cpu", "precision": "float32"}
    for path, (_, value) in NON_DEFAULT.items():  # and each value is the one given
        node = stored["run"] if path[0] in RunSpec.model_fields else stored["job"]
        for key in path:
            node = node[key]
        assert node == (sorted(value, reverse=True) if path == ("refine", "budgets") else value), path
    client.post(f"/searches/{response.json()['id']}/cancel")


def test_defaults_through_the_cli_and_the_api_are_stored_alike(client, workspace) -> None:
    """Every default but max_length (the tiny model has 64 positions)."""
    args = _cli(["search", *_task_argv(workspace), "--max-length", "32", "--out", "unused"])
    spec, job = args.settings.split()
    response = client.post("/searches", json=_task_body(workspace) | {"max_length": 32})
    assert response.status_code == 201, response.text
    assert response.json()["request"] == repo.request_dict(spec, job, args.compute)
    assert job.search.seed == spec.training.seed == 0  # the search seed follows the training seed, stored as an int
    client.post(f"/searches/{response.json()['id']}/cancel")


def test_a_training_seed_alone_seeds_the_search_too(client, workspace) -> None:
    _, cli_job = _cli(["search", *_task_argv(workspace), "--seed", "5", "--out", "x"]).settings.split()
    response = client.post("/searches", json=_task_body(workspace) | {"training": {"seed": 5}, "max_length": 32})
    assert response.json()["request"]["job"]["search"]["seed"] == cli_job.search.seed == 5
    client.post(f"/searches/{response.json()['id']}/cancel")
    _, apart = _cli(["search", *_task_argv(workspace), "--seed", "5", "--search-seed", "6", "--out", "x"]
                    ).settings.split()
    assert apart.search.seed == 6


def test_refine_create_is_the_refine_recipe_with_one_epoch() -> None:
    """POST .../refine and `nasprune refine` take RefineConfig's recipe fields with its bounds; epochs default 1."""
    assert set(RefineCreate.model_fields) == set(RefineConfig.model_fields) - {"budgets"}
    assert RefineCreate().epochs == 1.0 and RefinePointConfig().config() == RefineConfig(epochs=1.0)
    for name in ("learning_rate", "weight_decay", "warmup_ratio"):
        assert _bounds(RefineCreate.model_fields[name]) == _bounds(RefineConfig.model_fields[name])
        assert RefineCreate.model_fields[name].default == RefineConfig.model_fields[name].default
    assert _bounds(RefineCreate.model_fields["epochs"])["maximum"] == _bounds(RefineConfig.model_fields["epochs"])[
        "maximum"] == 100
    args = build_parser().parse_args(["refine", "--run", "r", "--point", "0", "--lr", "1e-3", "--warmup-ratio", "0"])
    _parse_settings(args)
    assert args.settings == RefinePointConfig(learning_rate=1e-3, warmup_ratio=0.0)


# ------------------------------------------------------------------------------------------ the registries


def test_the_name_registries_are_the_implementations() -> None:
    from search.objectives import OBJECTIVES
    from search.optimizers import OPTIMIZERS
    from supernet.space import SPACES

    assert tuple(SPACES) == SPACE_NAMES
    assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES
    assert tuple(OBJECTIVES) == OBJECTIVE_NAMES


def test_options_serves_the_request_schemas(client) -> None:
    options = client.get("/options").json()
    assert options["search"] == SearchRequest.model_json_schema()
    assert options["refine"] == RefineCreate.model_json_schema()


def test_the_web_page_hard_codes_no_choices_or_defaults() -> None:
    page = (Path(__file__).resolve().parents[1] / "service" / "api" / "static" / "index.html").read_text()
    assert "/options" in page
    for names in (OPTIMIZER_NAMES, SPACE_NAMES, OBJECTIVE_NAMES):
        quoted = [name for name in names if f'"{name}"' in page or f"'{name}'" in page or f">{name}<" in page]
        assert len(quoted) < 2, f"the page lists {quoted} itself: take them from GET /options"
    assert 'value="nsga2"' not in page and 'value="importance"' not in page


# ------------------------------------------------------------------------------------------ stored JSON


# A row as the release before this model stored it (service/repository.request_dict of the dataclasses).
OLD_ROW = {
    "run": {"model": "/data/models/tiny", "task": "custom/toy", "data_dir": None,
            "custom": {"name": "toy", "train_file": "/data/train.csv", "test_file": "/data/test.csv",
                       "text_columns": ["text"], "label_column": "label", "task_type": "classification"},
            "space": "importance", "max_length": 16, "batch_size": 8, "eval_batch_size": 64, "train_limit": None,
            "validation_limit": 5000, "split_seed": 0, "importance": "fisher", "importance_batches": 8,
            "training": {"epochs": 1.0, "plain_fraction": 0.75, "learning_rate": 0.0001, "weight_decay": 0.01,
                         "warmup_ratio": 0.06, "gradient_accumulation": 1, "max_grad_norm": 1.0,
                         "num_random_subnets": 2, "sample_floor": 0.0, "temperature": 1.0, "label_loss_weight": 1.0,
                         "seed": 0, "checkpoint_every_steps": None}},
    "job": {"search": {"objectives": ["error", "params", "latency"], "optimizer": "nsga2", "evaluations": 6,
                       "time_limit_s": None, "seed": 0, "optimizer_options": {}},
            "latency": {"batch_size": 2, "seq_len": None, "device": "cpu"}, "params_kind": "encoder",
            "refine": {"epochs": 0.5, "learning_rate": 0.0001, "weight_decay": 0.01, "warmup_ratio": 0.06,
                       "budgets": [0.5, 0.33]},
            "evaluation_dtype": "auto", "search_examples": 550},
}


def test_a_row_stored_by_the_previous_release_parses_and_round_trips() -> None:
    spec, job = repo.parse_request(OLD_ROW)
    assert spec.custom == CustomTask(name="toy", train_file="/data/train.csv", test_file="/data/test.csv")
    assert job.refine.budgets == (0.5, 0.33) and job.search.objectives == ["error", "params", "latency"]
    # sections added since appear with their defaults; everything the old row held is as it was
    added = {"dynamic": {"token_elimination": False, "keep_floor": 0.1, "exits": False,
                         "exit_thresholds": [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]},
             "latency": OLD_ROW["job"]["latency"] | {"lengths": "fixed"},
             "search": OLD_ROW["job"]["search"] | {"ode_compensation": False}}
    training = OLD_ROW["run"]["training"] | {"token_elimination": False, "exits": False,
                                             "exit_learning_rate_scale": 1.0, "exit_loss_weighting": "depth",
                                             "detach_exits": False}
    assert repo.request_dict(spec, job) == {"run": OLD_ROW["run"] | {"training": training},
                                            "job": OLD_ROW["job"] | added}


def test_files_from_before_the_newer_settings_read_as_they_ran() -> None:
    run = {k: v for k, v in OLD_ROW["run"].items() if k != "validation_limit"}
    assert RunSpec.from_dict(run).validation_limit is None  # written before the cap: the whole split
    job = {k: v for k, v in OLD_ROW["job"].items() if k not in ("evaluation_dtype", "search_examples", "refine",
                                                                  "params_kind")}
    old = SearchJob.from_dict(job)
    assert (old.evaluation_dtype, old.search_examples, old.refine, old.params_kind) == \
        ("float32", None, RefineConfig(), "encoder")


def test_exit_losses_read_as_they_were_trained_and_only_exits_runs_differ_by_them() -> None:
    exits_row = OLD_ROW["run"] | {"training": OLD_ROW["run"]["training"] | {"exits": True}}
    # stored before exits could be weighed by depth: they were weighed alike
    assert RunSpec.from_dict(exits_row).training.exit_loss_weighting == "mean"
    assert RunSpec.model_validate({"training": {"exits": True}}).training.exit_loss_weighting == "depth"
    # without exits the exit settings do nothing, so they never make two runs differ (nor a run stored before the
    # default changed)
    plain = RunSpec.model_validate({"training": {"exit_loss_weighting": "mean", "exit_learning_rate_scale": 5}})
    assert plain == RunSpec() and RunSpec.from_dict(RunSpec().to_dict()) == RunSpec()
    # --exits with alike losses: the choice survives dynamic.exits turning training exits on
    settings = SearchSettings.model_validate({"dynamic": {"exits": True}, "training": {"exit_loss_weighting": "mean"}})
    run, _ = settings.split()
    assert run.training.exits and run.training.exit_loss_weighting == "mean"


def test_malformed_rows_are_refused_with_the_field() -> None:
    with pytest.raises(repo.InvalidArgument, match="evaluations"):
        repo.parse_request({"run": {}, "job": {"search": {"evaluations": 0}, "latency": {}}})
    with pytest.raises(repo.InvalidArgument, match="space"):
        repo.parse_request({"run": {"space": "galaxy"}, "job": {"search": {}, "latency": {}}})


def test_models_refuse_bad_values_naming_the_field() -> None:
    cases = [(TrainingConfig, {"epochs": 0}, "epochs"), (TrainingConfig, {"plain_fraction": 1}, "plain_fraction"),
             (TrainingConfig, {"epochs": float("nan")}, "epochs"), (TrainingConfig, {"lr": 1}, "lr"),
             (RunSpec, {"max_length": 10_000}, "max_length"), (RunSpec, {"space": "galaxy"}, "space"),
             (RunSpec, {"task": "glue/rte", "custom": {"name": "toy", "train_file": "a", "test_file": "b"}},
              "custom describes task custom/toy"),
             (SearchConfig, {"evaluations": 100_001}, "evaluations"), (SearchConfig, {"objectives": "error"},
                                                                       "objectives"),
             (SearchConfig, {"time_limit_s": 31 * 24 * 3600}, "time_limit_s"),
             (LatencyShape, {"device": "tpu"}, "device"), (LatencyShape, {"batch_size": 4097}, "batch_size"),
             (RefineConfig, {"epochs": 101}, "epochs"), (RefineConfig, {"budgets": [0.5]}, "need refine epochs"),
             (CustomTask, {"name": "a b", "train_file": "a", "test_file": "b"}, "name")]
    for model, data, message in cases:
        with pytest.raises(ValueError, match=message):
            model.model_validate(data)


def test_refine_config_is_frozen_and_normalises_its_budgets() -> None:
    config = RefineConfig(epochs=1, budgets="0.33,0.5,0.5")
    assert config.budgets == (0.5, 0.33) and config.enabled and hash(config) == hash(RefineConfig(epochs=1,
                                                                                                   budgets=(0.33, 0.5)))
    with pytest.raises(ValueError, match="frozen"):
        config.epochs = 2  # type: ignore[misc]


def test_the_custom_name_comes_from_the_task() -> None:
    spec = RunSpec.model_validate({"task": "custom/mine", "custom": {"train_file": "a", "test_file": "b"}})
    assert spec.custom is not None and spec.custom.name == "mine" and spec.custom.text_columns == ["text"]


# ------------------------------------------------------------------------------------------ the flag generator


class _Inner(BaseModel):
    rate: float = Field(0.5, gt=0, le=1, json_schema_extra=flag_extra("r", "rate"))
    names: list[str] = Field(default_factory=lambda: ["a"])


class _Outer(BaseModel):
    limit: int | None = Field(10, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)
    refine: _Inner = Field(default_factory=_Inner)
    inner: _Inner = Field(default_factory=_Inner)


def test_the_generator_refuses_two_fields_on_one_flag() -> None:
    with pytest.raises(FlagError, match="both map to flag --r"):
        model_flags(_Outer, prefixes={})
    flags = model_flags(_Outer, prefixes={"refine": "refine-"})  # a prefix keeps them apart
    assert {f.name for f in flags} == {"--limit", "--options", "--refine-r", "--refine-names", "--r", "--names"}


def _parse(argv: list[str]) -> _Outer:
    flags = model_flags(_Outer, prefixes={"refine": "refine-"})
    parser = argparse.ArgumentParser()
    add_flags(parser, flags)
    return parse_flags(_Outer, flags, parser.parse_args(argv))


def test_flags_parse_back_into_the_model() -> None:
    assert _parse([]) == _Outer()  # nothing given: every default is the model's
    parsed = _parse(["--limit", "all", "--options", '{"k": 1}', "--refine-rate", "0.25", "--names", "x, y"])
    assert parsed == _Outer(limit=None, options={"k": 1}, refine=_Inner(rate=0.25, names=["a"]),
                            inner=_Inner(names=["x", "y"]))
    with pytest.raises(FlagValueError, match=r"argument --refine-r: Input should be less than or equal to 1 "
                                             r"\(got 2.0\)"):
        _parse(["--refine-rate", "2"])
    with pytest.raises(FlagValueError, match="argument --limit: Input should be greater than or equal to 1"):
        _parse(["--limit", "0"])
    with pytest.raises(SystemExit):  # not JSON: argparse's own error, exit status 2
        _parse(["--options", "{not json"])


def test_a_bad_flag_value_exits_2_naming_the_flag(capsys) -> None:
    from service.cli import main

    assert main(["search", "--evaluations", "0", "--out", "x"]) == 2
    assert "argument --evaluations: Input should be greater than or equal to 1 (got 0)" in capsys.readouterr().err
    assert main(["search", "--search-seed", "-1", "--out", "x"]) == 2
    assert "argument --search-seed" in capsys.readouterr().err
    assert main(["train", "--train-file", "a.csv", "--out", "x"]) == 2
    assert "--train-file describe a custom task: give --task custom/<name> too" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["search", "--optimizer", "annealing", "--out", "x"])
    assert exc.value.code == 2 and "argument --optimizer: invalid choice" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ bounds on every number


def _numbers(schema: dict[str, Any], node: dict[str, Any], path: str = "") -> dict[str, dict[str, Any]]:
    """Every number or integer in a JSON schema (array items and nested objects walked), by dotted path."""
    node = _resolve({"components": {"schemas": schema.get("$defs", {})}},
                    {k: v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" else v
                     for k, v in node.items()})
    if node.get("type") in ("number", "integer"):
        return {path: node}
    found: dict[str, dict[str, Any]] = {}
    for name, prop in node.get("properties", {}).items():
        found |= _numbers(schema, prop, f"{path}.{name}".lstrip("."))
    if isinstance(node.get("items"), dict):
        found |= _numbers(schema, node["items"], f"{path}[]")
    return found


def test_every_number_a_request_takes_has_a_lower_and_an_upper_bound(client) -> None:
    """What GET /options serves (the API body and the web form; the CLI flags come from the same models): no
    number without both ends, so 1e308 or a negative count is a 422 naming the field, never a job."""
    options = client.get("/options").json()
    for kind in ("search", "refine"):
        numbers = _numbers(options[kind], options[kind])
        assert {"train_limit", "training.learning_rate", "refine.learning_rate", "refine.budgets[]"} <= set(numbers) \
            if kind == "search" else "learning_rate" in numbers
        for path, node in numbers.items():
            assert {"minimum", "exclusiveMinimum"} & set(node), (kind, path, node)
            assert {"maximum", "exclusiveMaximum"} & set(node), (kind, path, node)


@pytest.mark.parametrize(("section", "value"), [
    ({"refine": {"epochs": 1, "learning_rate": 1e308}}, "refine.learning_rate"),
    ({"training": {"learning_rate": 2}}, "training.learning_rate"),
    ({"training": {"max_grad_norm": 1e308}}, "training.max_grad_norm"),
    ({"training": {"checkpoint_every_steps": 10**12}}, "training.checkpoint_every_steps"),
    ({"train_limit": 10**12}, "train_limit"),
    ({"validation_limit": 10**12}, "validation_limit"),
    ({"search_examples": 10**12}, "search_examples"),
    ({"search": {"optimizer_options": {"population_size": 1e308}}}, "population_size"),
    ({"search": {"optimizer_options": {"reference": [1, 1e300]}}}, "reference"),
    ({"search": {"optimizer_options": {"deep": json.loads("[" * 50 + "]" * 50)}}}, "nested more than 4 levels"),
])
def test_an_absurd_number_in_a_search_is_422_naming_the_field(client, workspace, section, value) -> None:
    response = client.post("/searches", json=_task_body(workspace) | section)
    assert response.status_code == 422 and value in response.json()["detail"], response.text


def test_nan_and_infinity_in_a_body_are_422(client, workspace, settings) -> None:
    """Python's JSON reader takes NaN, Infinity and 1e999 (inf): the settings models refuse them by name."""
    body = json.dumps(_task_body(workspace))[:-1]
    for text, field in [('"training": {"learning_rate": NaN}', "training.learning_rate"),
                        ('"refine": {"epochs": 1, "learning_rate": Infinity}', "refine.learning_rate"),
                        ('"search": {"time_limit_s": 1e999}', "search.time_limit_s"),
                        ('"search": {"optimizer_options": {"crossover_eta": NaN}}', "crossover_eta")]:
        response = client.post("/searches", content=f"{body}, {text}}}",
                               headers={"content-type": "application/json"})
        assert response.status_code == 422 and field in response.json()["detail"], response.text


def test_an_absurd_refine_learning_rate_is_422(client, settings) -> None:
    """POST .../pareto/{point}/refine takes RefinePointConfig: the rate that made NaN weights is refused first."""
    from test_refinements import fake_search

    url = f"/searches/{fake_search(settings)}/pareto/0/refine"
    for body in ({"learning_rate": 1e308}, {"learning_rate": 1.5}, {"weight_decay": 1e10}, {"warmup_ratio": -1},
                 {"epochs": 1e308}):
        response = client.post(url, json=body)
        (field,) = body
        assert response.status_code == 422 and field in response.json()["detail"], response.text
    nan = client.post(url, content='{"learning_rate": NaN}', headers={"content-type": "application/json"})
    assert nan.status_code == 422 and "learning_rate" in nan.json()["detail"]


@pytest.mark.parametrize(("argv", "flag"), [
    (["--train-limit", "1000000000000"], "--train-limit"),
    (["--refine-epochs", "1", "--refine-lr", "1e308"], "--refine-lr"), (["--lr", "nan"], "--lr"),
    (["--max-grad-norm", "inf"], "--max-grad-norm"),
])
def test_an_absurd_number_on_the_command_line_exits_2_naming_the_flag(capsys, argv, flag) -> None:
    from service.cli import main

    assert main(["search", *argv, "--out", "x"]) == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_the_refine_command_refuses_an_absurd_learning_rate(capsys, tmp_path) -> None:
    from service.cli import main

    assert main(["refine", "--run", str(tmp_path), "--point", "0", "--lr", "1e308"]) == 2
    assert "argument --lr: Input should be less than or equal to 1" in capsys.readouterr().err
