"""search.job end to end through the CLI on the tiny model and the toy CSV task: the run folder, front.json,
resuming, extending, refusing another search, exporting a point, and the error paths."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, task_args
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from search.job import SearchJob, read_trials, run_search_job
from search.latency import LatencyTable
from search.pareto import distinct_non_dominated, first_layers, non_dominated
from search.runner import SearchConfig, Trial
from supernet.config import SubNetworkConfig
from supernet.counting import count_macs, count_params
from supernet.evaluation import evaluate, predict, resolve_dtype
from supernet.extract import SUBNETWORK_FILE, extract
from supernet.run import Run
from supernet.settings import RefineConfig

OBJECTIVES = ["error", "params", "latency"]
FILES = ("run.json", "search.json", "trials.jsonl", "front.json", "pareto.png")


def search_args(ws: Path, out: Path, *extra: str, evaluations: int = 6, dtype: str = "float32") -> list[str]:
    """float32 unless asked: what these tests compare against does not depend on whether the CPU has bfloat16."""
    return ["search", *task_args(ws), "--epochs", "1", "--batch-size", "8", "--evaluations", str(evaluations),
            "--objectives", ",".join(OBJECTIVES), "--latency-batch-size", "2", "--max-length", "16",
            "--out", str(out), *(["--evaluation-dtype", dtype] if dtype else []), *extra]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("nasprune-cache")


@pytest.fixture(autouse=True)
def _cache_in_tmp(cache_dir, monkeypatch) -> None:
    """The latency table is cached in a temporary folder, shared by the reruns of this module."""
    monkeypatch.setenv("NASPRUNE_CACHE", str(cache_dir))


@pytest.fixture(scope="module")
def search_run(workspace, cache_dir, tmp_path_factory) -> Path:
    """One finished search (6 evaluations). Tests that change a run folder work on a copy of it."""
    out = tmp_path_factory.mktemp("search") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NASPRUNE_CACHE", str(cache_dir))
        assert cli(search_args(workspace, out)) == 0
    return out


@pytest.fixture
def run_copy(search_run, tmp_path) -> Path:
    return Path(shutil.copytree(search_run, tmp_path / "run"))


def lines(folder: Path) -> list[str]:
    return (folder / "trials.jsonl").read_text().splitlines()


def cached_table(cache_dir: Path) -> LatencyTable:
    (path,) = (cache_dir / "latency").glob("*.json")
    return LatencyTable.from_dict(json.loads(path.read_text()))


def values(trial_like: dict) -> list[float]:
    return [trial_like["objectives"][name] for name in OBJECTIVES]


def non_dominated_trials(trials: list[Trial]) -> list[Trial]:
    keep = distinct_non_dominated([values(t.to_dict()) for t in trials])
    return [t for t, kept in zip(trials, keep, strict=True) if kept]


# --------------------------------------------------------------------------------------------- the folder


def test_search_writes_the_run_folder(search_run, cache_dir, capsys) -> None:
    assert all((search_run / name).is_file() for name in FILES)
    assert (search_run / "pareto.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert len(lines(search_run)) == 6
    trials = read_trials(search_run)
    assert [t.index for t in trials] == list(range(6))
    assert len({t.config for t in trials}) == 6
    job = SearchJob.from_dict(json.loads((search_run / "search.json").read_text()))
    assert job.search == SearchConfig(objectives=OBJECTIVES, optimizer="nsga2", evaluations=6, seed=0)
    assert (job.latency.batch_size, job.latency.seq_len, job.latency.device) == (2, None, "cpu")
    assert job.params_kind == "encoder"
    assert SearchJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    # the latency table went to $NASPRUNE_CACHE, at the run's max length
    table = cached_table(cache_dir)
    assert (table.batch_size, table.seq_len) == (2, 16)
    # the first three trials: largest (= full), smallest, middle of the uniform space
    run = Run(search_run)
    space = run.space(run.load_supernet().config)
    assert [t.config for t in trials[:3]] == [space.largest(), space.smallest(), space.middle()]


def test_trials_record_what_they_measure(search_run, cache_dir) -> None:
    run = Run(search_run)
    supernet = run.load_supernet()
    table = cached_table(cache_dir)
    validation = run.batches("validation")
    for trial in read_trials(search_run):
        metrics = evaluate(supernet, validation, run.task.spec, sub=trial.config)
        assert trial.validation == metrics
        assert trial.objectives["error"] == pytest.approx(1 - metrics["accuracy"])
        assert trial.objectives["params"] == count_params(supernet.config, trial.config).encoder
        assert trial.objectives["latency"] == trial.latency_ms == table.predict(trial.config)
        assert trial.macs == count_macs(supernet.config, trial.config, seq_len=16)


def _check_point(point: dict, supernet_config) -> None:
    assert set(point) == {"config", "objectives", "validation", "test", "params", "macs", "latency_ms",
                          "measured_latency_ms"}
    assert point["measured_latency_ms"] > 0  # the static point's model, timed by the search
    sub = SubNetworkConfig.from_dict(point["config"]).validate(supernet_config)
    assert list(point["objectives"]) == OBJECTIVES
    assert all(isinstance(v, float) for v in point["objectives"].values())
    assert set(point["validation"]) == set(point["test"]) == {"accuracy", "f1"}
    assert point["params"] == count_params(supernet_config, sub).to_dict()
    assert set(point["params"]) == {"encoder", "total"}
    assert type(point["macs"]) is int and point["macs"] == count_macs(supernet_config, sub, seq_len=16)
    assert type(point["latency_ms"]) is float and point["latency_ms"] == point["objectives"]["latency"]


def test_front_json(search_run) -> None:
    front = json.loads((search_run / "front.json").read_text())
    run = Run(search_run)
    supernet = run.load_supernet()
    assert front["objectives"] == OBJECTIVES and front["task"] == run.task.spec.name
    assert front["main_metric"] == "accuracy" and front["evaluations"] == 6
    assert front["points"]
    for point in front["points"]:
        _check_point(point, supernet.config)
    reference = front["reference"]
    _check_point(reference, supernet.config)
    assert SubNetworkConfig.from_dict(reference["config"]) == supernet.full_config()
    assert reference["objectives"]["error"] == pytest.approx(1 - reference["validation"]["accuracy"])
    # test metrics are those of the test split
    test = run.batches("test")
    for point in front["points"][:2] + [reference]:
        sub = SubNetworkConfig.from_dict(point["config"])
        assert point["test"] == evaluate(supernet, test, run.task.spec, sub=sub)
    # hypervolume: one entry per trial, non-decreasing, ending at the front's hypervolume
    history = front["hypervolume_history"]
    assert len(history) == 6 and history == sorted(history)
    assert front["hypervolume"] == pytest.approx(history[-1]) and front["hypervolume"] > 0
    normalisation = front["normalisation"]
    assert normalisation["lower"] == [0.0, 0.0, 0.0] and normalisation["reference_point"] == [1.1, 1.1, 1.1]
    assert normalisation["upper"] == [1.0, reference["objectives"]["params"], reference["objectives"]["latency"]]


def test_front_is_non_dominated_among_trials(search_run) -> None:
    front = json.loads((search_run / "front.json").read_text())
    trials = [t.to_dict() for t in read_trials(search_run)]
    F = np.array([values(t) for t in trials])
    expected = {json.dumps(trials[i]["config"]) for i in np.flatnonzero(distinct_non_dominated(F))}
    assert {json.dumps(p["config"]) for p in front["points"]} == expected
    by_config = {json.dumps(t["config"]): t for t in trials}
    for point in front["points"]:
        trial = by_config[json.dumps(point["config"])]
        assert point["objectives"] == trial["objectives"] and point["validation"] == trial["validation"]
        p = np.array(values(point))
        assert not np.any(np.all(F <= p, axis=1) & np.any(F < p, axis=1))


# ------------------------------------------------------------------------------------ resume and refusals


def test_rerun_evaluates_nothing(run_copy, workspace, capsys) -> None:
    before = (run_copy / "trials.jsonl").read_bytes()
    front = json.loads((run_copy / "front.json").read_text())
    assert cli(search_args(workspace, run_copy)) == 0
    assert (run_copy / "trials.jsonl").read_bytes() == before
    again = json.loads((run_copy / "front.json").read_text())
    assert again["points"] == front["points"] and again["hypervolume"] == front["hypervolume"]  # timings kept too
    assert "6 sub-networks evaluated" in capsys.readouterr().out


def test_more_evaluations_extend_the_search(run_copy, workspace, capsys) -> None:
    before = lines(run_copy)
    code = cli(search_args(workspace, run_copy, evaluations=8))
    assert code == 0, capsys.readouterr().err
    after = lines(run_copy)
    assert len(after) == 8 and after[:6] == before
    trials = read_trials(run_copy)
    assert [t.index for t in trials] == list(range(8))
    assert len({t.config for t in trials}) == 8
    front = json.loads((run_copy / "front.json").read_text())
    assert front["evaluations"] == 8 and len(front["hypervolume_history"]) == 8


def test_another_optimizer_in_the_same_folder_is_refused(run_copy, workspace, capsys) -> None:
    before = {name: (run_copy / name).read_bytes() for name in ("search.json", "trials.jsonl", "front.json")}
    capsys.readouterr()
    assert cli(search_args(workspace, run_copy, "--optimizer", "local")) == 2
    err = capsys.readouterr().err
    assert "nasprune: error:" in err and "different search" in err
    assert {name: (run_copy / name).read_bytes() for name in before} == before


def test_torn_last_line_is_ignored(tmp_path) -> None:
    trial = Trial(index=0, config=SubNetworkConfig(layers=(0,), heads=(1, 0), units=(2, 0)),
                  objectives={"error": 0.5, "params": 10.0}, validation={"accuracy": 0.5}, params={"encoder": 10,
                  "total": 20}, macs=5, latency_ms=0.1, elapsed_s=0.2)
    line = json.dumps(trial.to_dict())
    second = json.dumps(trial.to_dict() | {"index": 1})
    (tmp_path / "trials.jsonl").write_text(line + "\n" + second + "\n" + second[: len(second) // 2])
    assert read_trials(tmp_path) == [trial, Trial.from_dict(json.loads(second))]
    (tmp_path / "trials.jsonl").write_text(line + "\n" + "{")
    assert read_trials(tmp_path) == [trial]
    assert read_trials(tmp_path / "nowhere") == []


@pytest.mark.slow
def test_resume_after_a_torn_last_line(run_copy, search_run, workspace) -> None:
    """A crash while trial 4 was being written: the rerun evaluates it again and keeps every trial readable."""
    original = lines(search_run)
    (run_copy / "trials.jsonl").write_text("\n".join(original[:4]) + "\n" + original[4][: len(original[4]) // 2])
    assert len(read_trials(run_copy)) == 4
    assert cli(search_args(workspace, run_copy)) == 0
    trials = read_trials(run_copy)
    expected = read_trials(search_run)
    assert [(t.index, t.config, t.objectives) for t in trials] == [(t.index, t.config, t.objectives)
                                                                   for t in expected]
    # and a second rerun finds the search finished
    assert cli(search_args(workspace, run_copy)) == 0
    assert len(read_trials(run_copy)) == 6


# ---------------------------------------------------------------------------------------------- export


def test_export_a_point(search_run, tmp_path, capsys) -> None:
    out = tmp_path / "point-0"
    assert cli(["export", "--run", str(search_run), "--point", "0", "--out", str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    point = json.loads((search_run / "front.json").read_text())["points"][0]
    record = json.loads((out / SUBNETWORK_FILE).read_text())
    assert record["config"] == point["config"]
    model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    run = Run(search_run)
    metrics = evaluate(model, run.batches("validation"), run.task.spec)
    assert metrics["accuracy"] == point["validation"]["accuracy"]
    assert metrics == point["validation"]
    assert sum(p.numel() for p in model.parameters()) == point["params"]["total"]


def test_export_point_out_of_range(search_run, tmp_path, capsys) -> None:
    capsys.readouterr()
    assert cli(["export", "--run", str(search_run), "--point", "99", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "nasprune: error:" in err and "--point" in err
    assert not (tmp_path / "x").exists()


def test_search_with_an_unknown_objective(workspace, tmp_path, capsys) -> None:
    argv = search_args(workspace, tmp_path / "run")
    argv[argv.index("--objectives") + 1] = "error,speed"
    capsys.readouterr()
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "nasprune: error:" in err and "speed" in err
    assert not (tmp_path / "run").exists()  # refused before any training


def test_search_with_a_single_objective(workspace, tmp_path, capsys) -> None:
    argv = search_args(workspace, tmp_path / "run")
    argv[argv.index("--objectives") + 1] = "error"
    assert cli(argv) == 2
    assert "argument --objectives: List should have at least 2 items" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- refining the front


def refined_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_refine_stage_writes_refined_points(run_copy, workspace, capsys) -> None:
    trials_before = (run_copy / "trials.jsonl").read_bytes()
    assert cli(search_args(workspace, run_copy, "--refine-epochs", "0.5", "--refine-lr", "1e-3")) == 0
    assert "refined test" in capsys.readouterr().out
    assert (run_copy / "trials.jsonl").read_bytes() == trials_before  # refining is a stage after the search
    front = json.loads((run_copy / "front.json").read_text())
    run, supernet = Run(run_copy), Run(run_copy).load_supernet()
    for position, point in enumerate(front["points"]):
        refined = point["refined"]
        assert refined["folder"] == f"refined/{position}" and refined["train_s"] > 0
        assert refined["settings"] == {"epochs": 0.5, "learning_rate": 1e-3, "weight_decay": 0.01,
                                       "warmup_ratio": 0.06, "seed": 0}
        folder = run_copy / refined["folder"]
        model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
        assert evaluate(model, run.batches("validation"), run.task.spec) == refined["validation"]
        assert sum(p.numel() for p in model.parameters()) == point["params"]["total"]
        record = json.loads((folder / SUBNETWORK_FILE).read_text())
        assert record["config"] == point["config"] and record["metrics"]["refined"] == refined
        sliced = extract(supernet, SubNetworkConfig.from_dict(point["config"])).state_dict()
        weights = refined_weights(folder)
        assert any(not torch.equal(weights[k], sliced[k]) for k in weights)  # trained, not the slice


@pytest.mark.slow
def test_refined_points_survive_a_rerun_and_redo_on_new_settings(run_copy, workspace) -> None:
    refine = ("--refine-epochs", "0.5", "--refine-lr", "1e-3")
    assert cli(search_args(workspace, run_copy, *refine)) == 0
    weights = (run_copy / "refined/0/model.safetensors").read_bytes()
    front = json.loads((run_copy / "front.json").read_text())
    assert cli(search_args(workspace, run_copy, *refine)) == 0
    assert (run_copy / "refined/0/model.safetensors").read_bytes() == weights  # kept, not trained again
    assert json.loads((run_copy / "front.json").read_text())["points"] == front["points"]
    assert cli(search_args(workspace, run_copy, "--refine-epochs", "0.5", "--refine-lr", "2e-3")) == 0
    again = json.loads((run_copy / "front.json").read_text())["points"][0]["refined"]
    assert again["settings"]["learning_rate"] == 2e-3
    assert (run_copy / "refined/0/model.safetensors").read_bytes() != weights


@pytest.mark.slow
def test_a_refine_stopped_mid_point_leaves_no_half_trained_model(run_copy, workspace) -> None:
    run = Run(run_copy)
    job = SearchJob.from_dict(json.loads((run_copy / "search.json").read_text()))
    job = job.model_copy(update={"refine": RefineConfig(epochs=0.5, learning_rate=1e-3)})
    seen: list[tuple[int, int]] = []
    asked = []

    def stop_during_the_first_point() -> bool:  # asked once before the point, then after each training step
        asked.append(seen[-1] if seen else None)
        return asked.count((0, total)) > 1

    total = len(json.loads((run_copy / "front.json").read_text())["points"])
    assert run_search_job(run.spec, job, run_copy, progress=False, on_refine=lambda *p: seen.append(p),
                          should_stop=stop_during_the_first_point) is None
    assert seen == [(0, total)]
    assert all("refined" not in p for p in json.loads((run_copy / "front.json").read_text())["points"])
    assert not (run_copy / "refined/0").exists()
    seen.clear()
    assert run_search_job(run.spec, job, run_copy, progress=False, on_refine=lambda *p: seen.append(p)) is not None
    assert seen == [(i, total) for i in range(total + 1)]
    assert all("refined" in p for p in json.loads((run_copy / "front.json").read_text())["points"])


@pytest.mark.slow
def test_export_a_refined_point(run_copy, workspace, tmp_path, capsys) -> None:
    assert cli(search_args(workspace, run_copy, "--refine-epochs", "0.5", "--refine-lr", "1e-3")) == 0
    capsys.readouterr()
    out = tmp_path / "refined"
    assert cli(["export", "--run", str(run_copy), "--point", "0", "--out", str(out)]) == 0
    assert "(refined)" in capsys.readouterr().out
    exported, refined = refined_weights(out), refined_weights(run_copy / "refined/0")
    assert exported.keys() == refined.keys() and all(torch.equal(exported[k], refined[k]) for k in exported)
    sliced = tmp_path / "sliced"
    assert cli(["export", "--run", str(run_copy), "--point", "0", "--sliced", "--out", str(sliced)]) == 0
    point = json.loads((run_copy / "front.json").read_text())["points"][0]
    model = AutoModelForSequenceClassification.from_pretrained(sliced, trust_remote_code=True).eval()
    run = Run(run_copy)
    assert evaluate(model, run.batches("validation"), run.task.spec) == point["validation"]


def test_bad_refine_epochs_are_refused(workspace, tmp_path, capsys) -> None:
    assert cli(search_args(workspace, tmp_path / "run", "--refine-epochs", "-1")) == 2
    assert "argument --refine-epochs: Input should be greater than or equal to 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_search_in_the_importance_space(workspace, tmp_path) -> None:
    out = tmp_path / "run"
    assert cli(search_args(workspace, out, "--space", "importance")) == 0
    run = Run(out)
    scores = run.importance()
    space = run.space(run.load_supernet().config)
    assert space.name == "importance"
    for layer in scores.heads + scores.units:  # sorted as the weights were ordered
        assert torch.equal(layer, torch.sort(layer, descending=True, stable=True).values)
    points = json.loads((out / "front.json").read_text())["points"]
    for trial in read_trials(out):  # every evaluated sub-network is a member of the space
        assert space.decode(space.encode(trial.config)) == trial.config
    assert all(space.encode(SubNetworkConfig.from_dict(p["config"])) for p in points)


@pytest.mark.slow
def test_a_run_without_its_weights_trains_the_same_supernet_again(workspace, tmp_path) -> None:
    """A new checkout of bench/out holds a job's records but not its weights (.gitignore): the benchmark trains the
    supernet again and refines the recorded front on it, which is only sound if the seeded training is bitwise the
    same (Fisher ordering included) and the resumed search rewrites the same front."""
    out = tmp_path / "run"
    args = search_args(workspace, out, "--space", "importance")
    assert cli(args) == 0
    weights = load_file(out / "supernet" / "model.safetensors")
    front = json.loads((out / "front.json").read_text())
    importance = (out / "importance.json").read_text()
    shutil.rmtree(out / "supernet")
    (out / "checkpoint.pt").unlink(missing_ok=True)
    assert cli(args) == 0
    again = load_file(out / "supernet" / "model.safetensors")
    assert again.keys() == weights.keys()
    assert all(torch.equal(again[name], weights[name]) for name in weights)
    assert (out / "importance.json").read_text() == importance
    assert len(read_trials(out)) == 6  # the search resumed finished: nothing evaluated again
    rewritten = json.loads((out / "front.json").read_text())
    assert [(p["config"], p["validation"], p["test"]) for p in rewritten["points"]] == \
        [(p["config"], p["validation"], p["test"]) for p in front["points"]]


def test_the_importance_space_needs_fisher_scores(workspace, tmp_path, capsys) -> None:
    assert cli(search_args(workspace, tmp_path / "run", "--space", "importance", "--importance", "none")) == 2
    assert "needs importance 'fisher'" in capsys.readouterr().err


def test_a_refined_model_is_kept_only_if_not_worse_on_validation(run_copy, workspace) -> None:
    from supernet.metrics import error_from_metrics

    assert cli(search_args(workspace, run_copy, "--refine-epochs", "0.5", "--refine-lr", "1e-3")) == 0
    run = Run(run_copy)
    for point in json.loads((run_copy / "front.json").read_text())["points"]:
        refined = point["refined"]
        assert refined["kept"] == (error_from_metrics(run.task.spec, refined["validation"])
                                   <= error_from_metrics(run.task.spec, point["validation"]))


# ------------------------------------------------------------------------------------- refining on demand

REFINE = ("--epochs", "0.5", "--lr", "1e-3")


def test_refine_chosen_points_on_demand(run_copy, workspace, capsys) -> None:
    """`nasprune refine` trains only the chosen points, exactly as the job's refine stage would have."""
    before = json.loads((run_copy / "front.json").read_text())
    last = len(before["points"]) - 1
    assert cli(["refine", "--run", str(run_copy), "--point", str(last), *REFINE]) == 0
    assert "refined test" in capsys.readouterr().out
    front = json.loads((run_copy / "front.json").read_text())
    assert [("refined" in p) for p in front["points"]] == [k == last for k in range(last + 1)]
    assert {k: v for k, v in front.items() if k != "points"} == {k: v for k, v in before.items() if k != "points"}
    on_demand = front["points"][last]["refined"]
    assert sorted(p.name for p in (run_copy / "refined").iterdir()) == [str(last)]
    weights = refined_weights(run_copy / "refined" / str(last))
    # The job's refine stage with the same settings keeps that point (same record) and trains the others
    assert cli(search_args(workspace, run_copy, "--refine-epochs", "0.5", "--refine-lr", "1e-3")) == 0
    points = json.loads((run_copy / "front.json").read_text())["points"]
    assert points[last]["refined"] == on_demand and all("refined" in p for p in points)
    assert refined_weights(run_copy / "refined" / str(last)).keys() == weights.keys()


def test_refining_points_already_refined_loads_no_data(run_copy, monkeypatch) -> None:
    """A repeated on-demand refine of refined points returns at once: no tokenising, no training."""
    from search.job import refine_points

    assert cli(["refine", "--run", str(run_copy), "--point", "0", *REFINE]) == 0
    front = json.loads((run_copy / "front.json").read_text())

    def no_data(*args, **kwargs):
        raise AssertionError("refine_front loaded data for a point already refined")

    monkeypatch.setattr(Run, "batches", no_data)
    again = refine_points(run_copy, [0], RefineConfig(epochs=0.5, learning_rate=1e-3), progress=False)  # = REFINE
    assert again is not None and again["points"][0]["refined"] == front["points"][0]["refined"]


def test_points_refined_on_demand_survive_a_rerun_of_the_search(run_copy, workspace) -> None:
    assert cli(["refine", "--run", str(run_copy), "--point", "0", *REFINE]) == 0
    refined = json.loads((run_copy / "front.json").read_text())["points"][0]["refined"]
    assert cli(search_args(workspace, run_copy)) == 0  # no refine stage: the point keeps its refined model
    assert json.loads((run_copy / "front.json").read_text())["points"][0]["refined"] == refined


def test_refine_refuses_bad_points_and_runs_without_a_front(run_copy, tmp_path, capsys) -> None:
    front = (run_copy / "front.json").read_bytes()
    size = len(json.loads(front)["points"])
    assert cli(["refine", "--run", str(run_copy), "--point", str(size), *REFINE]) == 2
    assert f"no front point {size}" in capsys.readouterr().err
    assert cli(["refine", "--run", str(run_copy), "--point", "0", "--epochs", "0"]) == 2
    assert "argument --epochs: Input should be greater than 0" in capsys.readouterr().err
    assert (run_copy / "front.json").read_bytes() == front and not (run_copy / "refined").exists()
    assert cli(["refine", "--run", str(tmp_path / "nothing"), "--point", "0"]) == 2
    assert "no front here" in capsys.readouterr().err


def test_refine_notices_a_front_rewritten_under_it(run_copy) -> None:
    """A refine must not write its figures into a different front (the search rerun with a larger budget)."""
    from search.job import refine_points

    def rewrite_front(done: int, total: int) -> None:
        if done == 0:
            front = json.loads((run_copy / "front.json").read_text())
            front["points"][0]["config"] = {**front["points"][0]["config"], "layers": "changed"}
            (run_copy / "front.json").write_text(json.dumps(front))

    with pytest.raises(RuntimeError, match="changed while point 0 was refined"):
        refine_points(run_copy, [0], RefineConfig(epochs=0.5, learning_rate=1e-3), progress=False,
                      on_point=rewrite_front)


# ------------------------------------------------------------------------------------------- precision


@pytest.mark.slow
def test_a_bfloat16_search_ranks_in_bfloat16_and_reports_float32(workspace, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert cli(search_args(workspace, out, dtype="bfloat16")) == 0, capsys.readouterr().err
    assert json.loads((out / "search.json").read_text())["evaluation_dtype"] == "bfloat16"
    run = Run(out)
    supernet, spec = run.load_supernet(), run.task.spec
    validation = run.batches("validation")
    exact, rounded = predict(supernet, validation)[0], predict(supernet, validation, dtype=torch.bfloat16)[0]
    assert not np.array_equal(exact, rounded) and np.allclose(exact, rounded, atol=0.05)  # really two precisions
    trials = {t.config: t for t in read_trials(out)}
    for config, trial in trials.items():  # what the search saw
        assert trial.validation == evaluate(supernet, validation, spec, sub=config, dtype=torch.bfloat16)
    front = json.loads((out / "front.json").read_text())
    assert front["search_dtype"] == "bfloat16" and front["points"]
    for point in front["points"]:  # what the front reports: float32, as the exported model scores
        sub = SubNetworkConfig.from_dict(point["config"])
        assert point["search_validation"] == trials[sub].validation
        assert point["validation"] == evaluate(supernet, validation, spec, sub=sub)
        assert point["objectives"]["error"] == pytest.approx(1 - point["validation"]["accuracy"])
        assert point["objectives"]["params"] == trials[sub].objectives["params"]
    assert non_dominated(np.array([values(p) for p in front["points"]])).all()
    assert front["reference"]["validation"] == evaluate(supernet, validation, spec)
    # a rerun on the default (auto) keeps the precision the search ranked in, whatever this CPU has
    before = lines(out)
    assert cli(search_args(workspace, out, dtype="")) == 0
    assert lines(out) == before
    capsys.readouterr()
    assert cli(search_args(workspace, out, dtype="float32")) == 2
    assert "different search" in capsys.readouterr().err


def test_a_search_stored_before_the_precision_setting_resumes_in_float32(run_copy, workspace) -> None:
    job = json.loads((run_copy / "search.json").read_text())
    del job["evaluation_dtype"], job["search_examples"]
    (run_copy / "search.json").write_text(json.dumps(job))
    before = lines(run_copy)
    assert cli(search_args(workspace, run_copy, dtype="")) == 0  # the default subset is larger than this split
    assert lines(run_copy) == before
    stored = json.loads((run_copy / "search.json").read_text())
    assert (stored["evaluation_dtype"], stored["search_examples"]) == ("float32", None)


@pytest.mark.slow
def test_a_search_on_a_validation_subset_reports_the_whole_split(workspace, tmp_path, capsys, evaluated) -> None:
    """The search ranks on a seeded subset; the front is measured again on every validation example. On the CPU,
    where this test evaluates again: a GPU's float32 logits differ in the last bits, enough to flip a near tie."""
    out = tmp_path / "run"
    assert cli(search_args(workspace, out, "--search-examples", "8", "--device", "cpu")) == 0, \
        capsys.readouterr().err
    assert json.loads((out / "search.json").read_text())["search_examples"] == 8
    run = Run(out)
    supernet, spec = run.load_supernet(), run.task.spec
    validation, subset = run.batches("validation"), run.batches("validation", subset=8)
    assert sum(len(b["labels"]) for b in subset) == 8 < len(run.task.validation)
    trials = {t.config: t for t in read_trials(out)}
    for config, trial in trials.items():  # what the search saw
        assert trial.validation == evaluate(supernet, subset, spec, sub=config)
    assert any(trial.validation != evaluate(supernet, validation, spec, sub=config)  # really two sets
               for config, trial in trials.items())
    front = json.loads((out / "front.json").read_text())
    assert (front["search_examples"], front["validation_examples"]) == (8, len(run.task.validation))
    # measured again: the first two non-dominated layers of the search's ranking; kept: their front on all examples
    ranked = list(trials.values())
    candidates = [ranked[i].config for i in first_layers([values(t.to_dict()) for t in ranked], 2)]
    assert len(candidates) > len(non_dominated_trials(ranked))
    assert all(Counter(evaluated)[c] == 2 for c in candidates)  # once by the search, once on all examples
    precise = [[1 - evaluate(supernet, validation, spec, sub=c)["accuracy"], trials[c].objectives["params"],
                trials[c].objectives["latency"]] for c in candidates]
    expected = {c for c, keep in zip(candidates, distinct_non_dominated(precise), strict=True) if keep}
    assert {SubNetworkConfig.from_dict(p["config"]) for p in front["points"]} == expected
    for point in front["points"]:  # what the front reports: the whole split
        sub = SubNetworkConfig.from_dict(point["config"])
        assert point["search_validation"] == trials[sub].validation
        assert point["validation"] == evaluate(supernet, validation, spec, sub=sub)
        assert point["objectives"]["error"] == pytest.approx(1 - point["validation"]["accuracy"])
    assert non_dominated(np.array([values(p) for p in front["points"]])).all()
    assert front["reference"]["validation"] == evaluate(supernet, validation, spec)
    # a rerun with the same subset continues; another size is another search, and the refusal names it
    before = lines(out)
    assert cli(search_args(workspace, out, "--search-examples", "8")) == 0
    assert lines(out) == before
    capsys.readouterr()
    assert cli(search_args(workspace, out, "--search-examples", "all")) == 2
    assert "different search (search_examples: 8 stored, None asked)" in capsys.readouterr().err


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [
    (True, False, torch.bfloat16), (False, True, torch.bfloat16), (False, False, torch.float32)])
def test_auto_is_bfloat16_only_where_the_cpu_computes_it(monkeypatch, avx512_bf16, amx, expected) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert resolve_dtype("auto") == expected
    assert resolve_dtype("float32") == torch.float32 and resolve_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="evaluation dtype"):
        resolve_dtype("float16")
    with pytest.raises(ValueError, match="evaluation_dtype"):
        SearchJob(evaluation_dtype="half")


def point_at(params: int, accuracy: float) -> dict:
    return {"params": {"encoder": params, "total": params + 50}, "validation": {"accuracy": accuracy}}


def test_budget_points_pick_the_best_on_validation_within_each_budget() -> None:
    from search.job import budget_points
    from supernet.tasks import TaskSpec

    task = TaskSpec("toy", False, ("no", "yes"), ("accuracy",), "accuracy")
    front = {"reference": point_at(1000, 0.9),
             "points": [point_at(900, 0.88), point_at(600, 0.86), point_at(500, 0.86), point_at(480, 0.84),
                        point_at(300, 0.80), point_at(100, 0.70)]}
    assert budget_points(front, [0.5], task) == [2]  # 600 is over half; of 500 and 480, 500 is better
    assert budget_points(front, [0.75, 0.5], task) == [2]  # 600 and 500 tie on validation: the smaller
    assert budget_points(front, [0.33, 0.2, 0.05], task) == [4, 5]  # nothing fits 5 %
    assert budget_points(front, [1.0], task) == [0]
    assert budget_points(front, [0.45], task, params_kind="total") == [4]  # 480 + 50 > 0.45 x 1050


@pytest.mark.slow
def test_refine_budgets_refine_only_the_points_within_them(run_copy, workspace, caplog) -> None:
    """Through the CLI: a budget no point fits refines nothing (and says so), one that fits refines its pick, and
    the whole front refined later with the same recipe keeps that model (which points is no part of a recipe).
    The toy front is small (often one point): budget_points' choice among many is the test above."""
    refine = ("--refine-epochs", "0.5", "--refine-lr", "1e-3")
    front = json.loads((run_copy / "front.json").read_text())
    full = front["reference"]["params"]["encoder"]
    smallest = min(p["params"]["encoder"] for p in front["points"]) / full
    assert cli(search_args(workspace, run_copy, *refine, "--refine-budgets", f"{smallest / 2:.6f}")) == 0
    assert all("refined" not in p for p in json.loads((run_copy / "front.json").read_text())["points"])
    assert not (run_copy / "refined").exists()
    assert "no front point within" in caplog.text
    assert cli(search_args(workspace, run_copy, *refine, "--refine-budgets", f"{smallest * 1.01:.6f},0.001")) == 0
    points = json.loads((run_copy / "front.json").read_text())["points"]
    picks = [i for i, p in enumerate(points) if p["params"]["encoder"] <= smallest * 1.01 * full]
    assert picks and [i for i, p in enumerate(points) if "refined" in p] == picks
    assert sorted(int(d.name) for d in (run_copy / "refined").iterdir()) == picks
    weights = (run_copy / f"refined/{picks[0]}/model.safetensors").read_bytes()
    assert cli(search_args(workspace, run_copy, *refine)) == 0
    assert all("refined" in p for p in json.loads((run_copy / "front.json").read_text())["points"])
    assert (run_copy / f"refined/{picks[0]}/model.safetensors").read_bytes() == weights


@pytest.mark.parametrize(("flags", "message"), [
    (("--refine-epochs", "1", "--refine-budgets", "0.5,1.5"), "argument --refine-budgets: Input should be less than "
                                                              "or equal to 1 (got '1.5')"),
    (("--refine-budgets", "0.5"), "need refine epochs > 0"),
])
def test_bad_refine_budgets_are_refused(workspace, tmp_path, capsys, flags, message) -> None:
    assert cli(search_args(workspace, tmp_path / "run", *flags)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_refine_budgets_that_are_not_numbers_are_a_usage_error(workspace, tmp_path, capsys) -> None:
    assert cli(search_args(workspace, tmp_path / "run", "--refine-epochs", "1", "--refine-budgets", "half")) == 2
    assert "argument --refine-budgets: Input should be a valid number" in capsys.readouterr().err


def test_refine_budgets_round_trip_through_the_stored_job() -> None:
    job = SearchJob(refine=RefineConfig(epochs=1, budgets=(0.33, 0.5, 0.5)))
    assert job.refine.budgets == (0.5, 0.33)
    stored = json.loads(json.dumps(job.to_dict()))
    assert stored["refine"]["budgets"] == [0.5, 0.33] and SearchJob.from_dict(stored) == job
    assert "budgets" not in job.refine.recipe()
    assert SearchJob.from_dict({**stored, "refine": {"epochs": 1}}).refine.budgets == ()  # stored before budgets


# ------------------------------------------------------------------------------------------------ token elimination


def test_a_search_with_token_elimination_ranks_schedules_by_expected_macs(workspace, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    args = search_args(workspace, out, "--token-elimination", "--space", "per_layer", evaluations=14)
    args[args.index("--objectives") + 1] = "error,expected_macs,params"
    assert cli(args) == 0
    run = Run(out)
    supernet = run.load_supernet()
    space = run.space(supernet.config)
    trials = read_trials(out)
    dropping = [t for t in trials if t.config.token_keep is not None]
    assert dropping and len(dropping) < len(trials)  # both kinds were ranked (the largest corner drops nothing)
    from search.objectives import Measurements
    from supernet.counting import expected_macs

    lengths = Measurements(supernet=supernet, validation_batches=run.batches("validation"), task=run.task.spec,
                           latency=None).lengths
    assert lengths and max(lengths) <= 16
    for trial in trials:
        assert space.decode(space.encode(trial.config.static())) == trial.config.static()
        assert trial.objectives["expected_macs"] == expected_macs(supernet.config, trial.config, lengths)
    trial = dropping[0]
    assert trial.objectives["expected_macs"] < expected_macs(supernet.config, trial.config.static(), lengths)
    assert all((t.dynamics is None) == (t.config.token_keep is None) for t in trials)
    assert trial.dynamics["expected_macs"] == trial.objectives["expected_macs"]
    assert len(trial.dynamics["mean_tokens"]) == len(trial.config.layers)
    assert trial.dynamics["mean_tokens"][-1] < sum(lengths) / len(lengths)
    for point in json.loads((out / "front.json").read_text())["points"]:
        assert ("dynamics" in point) == ("token_keep" in point["config"])
    # the exported model computes what the search measured: per example, whatever its batch
    model = extract(supernet, trial.config)
    assert model.config.token_keep == [trial.config.token_keep[i] for i in trial.config.layers]
    assert evaluate(model, run.batches("validation"), run.task.spec) == trial.validation
    # `nasprune export` of such a point: the folder keeps the lengths set_speedup solves over
    exported = tmp_path / "export"
    assert cli(["export", "--run", str(out), "--config", trial.config.to_json(), "--out", str(exported)]) == 0
    reloaded = AutoModelForSequenceClassification.from_pretrained(exported, trust_remote_code=True).eval()
    assert reloaded.config.token_lengths == sorted(lengths)
    assert evaluate(reloaded, run.batches("validation"), run.task.spec) == trial.validation
    reloaded.set_speedup(1.2)
    assert reloaded.config.token_keep[0] == 1.0


def test_token_elimination_ranked_by_batch_1_latency_over_the_real_lengths(workspace, tmp_path, monkeypatch) -> None:
    """`latency` with elimination: predicted at batch 1 over the validation examples' own lengths, from a table with a
    token axis; a schedule that drops tokens is predicted faster than the same structure without it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("NASPRUNE_CACHE", str(cache))
    out = tmp_path / "run"
    args = search_args(workspace, out, "--token-elimination", "--space", "per_layer", "--latency-batch-size", "1",
                       "--latency-lengths", "validation", evaluations=10)
    args[args.index("--objectives") + 1] = "error,latency"
    assert cli(args) == 0
    (path,) = (cache / "latency").glob("*.json")
    table = LatencyTable.from_dict(json.loads(path.read_text()))
    assert table.batch_size == 1 and table.eliminates and len(table.tokens) > 1
    run = Run(out)
    from search.objectives import Measurements

    lengths = Measurements(supernet=run.load_supernet(), validation_batches=run.batches("validation"),
                           task=run.task.spec, latency=None).lengths
    assert max(lengths) < table.seq_len  # the examples' own lengths, shorter than the padded width
    trials = read_trials(out)
    dropping = [t for t in trials if t.config.token_keep is not None]
    assert dropping
    for trial in trials:
        assert trial.objectives["latency"] == trial.latency_ms == table.predict(trial.config, lengths)
    trial = dropping[0]
    # the schedule is priced (its ranking and the fewer tokens after it), not ignored
    assert trial.latency_ms != table.predict(trial.config.static(), lengths)
    assert trial.latency_ms != table.predict(trial.config)  # not the padded seq_len shape


# ------------------------------------------------------------------------------------- compressing a point

COMPRESS = ("--protocol", "tucker", "--rank", "4", "--bank", "3", "--embedding-rank", "6", "--epochs", "0.5",
            "--lr", "1e-3")


def test_compress_a_point_writes_a_model_that_reloads_and_keeps_its_recorded_metric(run_copy, tmp_path,
                                                                                     capsys) -> None:
    from search.records import COMPRESSED_DIR
    from supernet.extract import load_exported
    from supernet.factors import Compression

    out = tmp_path / "compressed"
    assert cli(["compress", "--run", str(run_copy), "--point", "0", *COMPRESS, "--out", str(out)]) == 0
    assert "compressed point 0 (tucker, rank 4)" in capsys.readouterr().out
    record = json.loads((out / "subnetwork.json").read_text())
    run = Run(run_copy)
    supernet = run.load_supernet()
    sub = SubNetworkConfig.from_dict(record["config"])
    compression = Compression("tucker", 4, bank=3, embedding_rank=6)
    assert record["params"] == count_params(supernet.config, sub, compression).to_dict()
    assert record["params"]["total"] < record["point_params"]["total"]
    model = load_exported(out)
    assert model.config.compression == compression.to_dict()
    assert sum(p.numel() for p in model.parameters()) == record["params"]["total"]
    assert evaluate(model, run.batches("validation"), run.task.spec) == pytest.approx(
        record["metrics"]["validation"], abs=1e-9)
    theirs = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    batch = next(iter(run.batches("validation")))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(theirs(**inputs).logits, model(**inputs).logits, atol=1e-6, rtol=0)
    assert len(list((run_copy / COMPRESSED_DIR / "0").iterdir())) == 1
    assert not list((run_copy / COMPRESSED_DIR / "0").glob("*.pt"))  # the recovery's checkpoint is gone


def test_compressing_again_with_the_same_settings_returns_the_stored_model(run_copy, tmp_path, monkeypatch) -> None:
    import search.compression as compression

    assert cli(["compress", "--run", str(run_copy), "--point", "0", *COMPRESS, "--out", str(tmp_path / "a")]) == 0

    def no_training(*args, **kwargs):
        raise AssertionError("a point compressed with these settings was compressed again")

    monkeypatch.setattr(compression, "compress_model", no_training)
    assert cli(["compress", "--run", str(run_copy), "--point", "0", *COMPRESS, "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_compress_refuses_what_does_not_fit_naming_it(run_copy, tmp_path, capsys) -> None:
    size = len(json.loads((run_copy / "front.json").read_text())["points"])
    out = ["--out", str(tmp_path / "c")]
    assert cli(["compress", "--run", str(run_copy), "--point", str(size), *out]) == 2
    assert "point must be between 0 and" in capsys.readouterr().err
    assert cli(["compress", "--run", str(run_copy), "--point", "0", "--rank", "100000", "--epochs", "0", *out]) == 2
    assert "rank" in capsys.readouterr().err
    assert cli(["compress", "--run", str(run_copy), "--point", "0", "--rank", "2", "--bank", "5", *out]) == 2
    assert "bank must be at most rank² = 4" in capsys.readouterr().err
    assert cli(["compress", "--run", str(run_copy), "--point", "0", "--rank", "4", "--bank", "9", *out]) == 2
    assert "bank must be at most the number of matrix blocks" in capsys.readouterr().err
    assert cli(["compress", "--run", str(run_copy), "--point", "0", "--protocol", "lowrank", "--bank", "2", *out]) == 2
    assert "bank" in capsys.readouterr().err
    assert cli(["compress", "--run", str(run_copy), "--point", "0", "--rank", "0", *out]) == 2
    assert "--rank" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and not (run_copy / "compressed").exists()
