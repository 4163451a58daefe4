"""The exit threshold in the search (COST-EFF, issue 32): the gene, figures scored from one pass over a structure's
exits, expected MACs / mean exit layer / latency by hand, a tiny search job end to end, refusals naming the field,
and the API's `dynamic` section."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TOY_SPEC, cli, make_supernet, random_inputs, served_dynamic_point, supernet_config, task_args
from pydantic import ValidationError
from test_api import body
from transformers import AutoModelForSequenceClassification

from search.job import _front_scored_again, check_exits, read_trials
from search.latency import LatencyTable
from search.objectives import ExitPasses, Measurements, objective_values, resolve_objectives
from search.pareto import distinct_non_dominated
from search.runner import run_search
from search.settings import DEFAULT_EXIT_THRESHOLDS, DynamicConfig, SearchConfig, SearchSettings
from supernet.config import ConfigError, SubNetworkConfig, SupernetConfig
from supernet.counting import count_macs
from supernet.evaluation import evaluate
from supernet.extract import extract
from supernet.run import Run
from supernet.space import ExitSpace, TokenEliminationSpace, make_space
from supernet.tasks import TaskSpec

GRID = (0.0, 0.3, 0.6, 0.9)


def _config(**overrides) -> SupernetConfig:
    return supernet_config(exits=True, num_layers=4, **overrides)


def _batches(count: int = 3, size: int = 5, tokens: int = 9) -> list[dict[str, torch.Tensor]]:
    """Labelled batches of mixed lengths (padding in all rows but each batch's first)."""
    batches = []
    for k in range(count):
        batch = random_inputs(size, tokens, seed=k)
        batch["labels"] = torch.randint(0, 2, (size,), generator=torch.Generator().manual_seed(50 + k))
        batches.append(batch)
    return batches


def _table(config: SupernetConfig, **overrides) -> LatencyTable:
    """Round entries, one token count: predictions are exact arithmetic."""
    units = sorted(set(range(0, config.intermediate_size + 1, 8)) | {config.intermediate_size})
    data = {"device": "hand", "batch_size": 1, "seq_len": 16, "tokens": [16], "overhead_ms": [1.0],
            "attention_ms": [[0.5 * h] for h in range(config.num_heads + 1)], "ffn_units": units,
            "ffn_ms": [[0.25 + u / 16] for u in units], "scale": 1.0, "per_layer_ms": 0.125, "exit_ms": 0.0625}
    return LatencyTable(**(data | overrides))


def _measurements(supernet, batches, config, **overrides) -> Measurements:
    return Measurements(supernet=supernet, validation_batches=batches, task=TOY_SPEC, latency=_table(config),
                        seq_len=16, exits=True, **overrides)


def _spread_thresholds(supernet, batches, sub: SubNetworkConfig) -> list[float]:
    """Thresholds between the exits' observed normalised entropies, so some examples leave early, others not."""
    from supernet.modules import normalised_entropy

    logits, _ = ExitPasses(supernet, batches, TOY_SPEC).exit_logits(sub)
    values = sorted(set(normalised_entropy(torch.from_numpy(logits[:-1])).flatten().tolist()))
    picks = [values[int(len(values) * q)] for q in (0.3, 0.6)]
    return [(v + values[values.index(v) - 1]) / 2 for v in picks]


# ------------------------------------------------------------------------------------------------ the gene


@pytest.mark.parametrize("name", ["uniform", "per_layer", "layers"])
def test_the_threshold_gene_round_trips_and_its_upper_corner_is_off(name: str) -> None:
    config = _config()
    base = make_space(name, config)
    for space in (ExitSpace(base, GRID), ExitSpace(TokenEliminationSpace(base), GRID)):
        assert space.dimension == base.dimension + (1 if space.base is base else 3)
        assert space.largest() == base.largest() and space.largest().exit_threshold is None  # full depth
        rng = __import__("random").Random(0)
        seen = set()
        for _ in range(40):
            sub = space.sample(rng)
            assert space.decode(space.encode(sub)) == sub
            seen.add(sub.exit_threshold)
        assert seen <= {None, 0.3, 0.6, 0.9} and len(seen) > 2
    space = ExitSpace(base, GRID)
    top = space.upper
    assert [space.decode([*top[:-1], g]).exit_threshold for g in range(len(GRID))] == [0.9, 0.6, 0.3, None]
    with pytest.raises(ConfigError, match="not in the .* grid"):
        space.encode(replace(space.largest(), exit_threshold=0.45))
    for bad in ([0.1, 0.2], [0.0, 1.5], []):
        with pytest.raises(ConfigError, match="exit thresholds"):
            ExitSpace(base, bad)


def test_the_grid_setting_is_sorted_deduplicated_and_refused_without_zero() -> None:
    assert DynamicConfig().exit_thresholds == list(DEFAULT_EXIT_THRESHOLDS)
    assert DynamicConfig(exit_thresholds="0.3,0,0.3,0.1").exit_thresholds == [0.0, 0.1, 0.3]
    for bad, words in (("0.1,0.2", "include 0"), ("0,1.5", "less than or equal to 1"), ("", "at least 1")):
        with pytest.raises(ValidationError, match=words) as caught:
            DynamicConfig(exit_thresholds=bad)
        assert "exit_thresholds" in str(caught.value)
    with pytest.raises(ValidationError, match="at most 32"):
        DynamicConfig(exit_thresholds=[i / 40 for i in range(33)])


# ------------------------------------------------------------------------------------------------ figures


def test_thresholds_are_scored_from_one_exits_pass_and_equal_the_exiting_forward() -> None:
    config = _config()
    supernet, batches = make_supernet(config), _batches()
    structure = SubNetworkConfig(layers=(0, 1, 3), heads=(4, 2, 0, 3), units=(48, 24, 0, 16))
    thresholds = _spread_thresholds(supernet, batches, structure)
    calls = []
    hook = supernet.register_forward_hook(lambda module, args, out: calls.append(out.shape))
    m = _measurements(supernet, batches, config)
    subs = [structure] + [replace(structure, exit_threshold=t) for t in thresholds]
    figures = [m.figures(sub) for sub in subs]
    hook.remove()
    assert len(calls) == len(batches) and m.exit_passes == 1  # one pass over the batches for all thresholds
    positions = []
    for sub, figure in zip(subs, figures, strict=True):
        assert figure.validation == evaluate(supernet, batches, TOY_SPEC, sub=sub)  # the exiting forward
        if sub.exit_threshold is None:
            assert figure.dynamics is None
            continue
        with supernet.use(sub), torch.no_grad():  # where the forward sends each example, batch by batch
            exits = []
            for batch in batches:
                supernet(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
                exits += supernet.last_exit_layers.tolist()
        assert 1 < np.mean(exits) < 3  # some leave early, some do not
        positions.append(exits)
        assert figure.dynamics["mean_exit_layer"] == pytest.approx(sum(exits) / len(exits))
        lengths = [int(n) for b in batches for n in b["attention_mask"].sum(dim=1)]
        by_hand = sum(count_macs(config, sub, seq_len=n, exit_after=k) for n, k in zip(lengths, exits, strict=True))
        assert figure.dynamics["expected_macs"] == pytest.approx(by_hand / len(lengths))
        assert m.expected_macs(sub) == figure.dynamics["expected_macs"]
        assert figure.latency_ms == m.cost(sub)[2] == m.latency.predict(sub, [16] * len(exits), exits)
    assert positions[0] != positions[1]
    # a new structure is one more pass; a cached one none
    m.figures(replace(structure, units=(48, 24, 0, 8), exit_threshold=thresholds[0]))
    assert m.exit_passes == 2


def test_a_search_keeps_every_threshold_of_each_structure_it_evaluates_and_counts_passes() -> None:
    """One pass over a structure's exits scores every τ of the grid: each becomes a trial, the budget counts passes,
    and a resumed search (the optimizer replayed from the trials, the last pass's thresholds lost) ends the same."""
    config = _config()
    supernet, batches = make_supernet(config), _batches()
    space = ExitSpace(make_space("uniform", config), GRID)
    search = SearchConfig(objectives=["error", "expected_macs"], evaluations=6, seed=3)
    m = _measurements(supernet, batches, config)
    result = run_search(space, m, search, progress=False)
    structures = {space.evaluation(t.config) for t in result.trials}
    assert result.evaluations == len(structures) == 6 == m.exit_passes
    assert {t.config for t in result.trials} == {
        member for s in structures for member in (s, *space.scored_alongside(s))}
    assert [t.index for t in result.trials] == list(range(len(result.trials))) and len(result.trials) > 6
    # the front picks among every threshold of every structure
    assert any(t.config.exit_threshold is not None for t in result.front)
    firsts = {}
    for trial in result.trials:
        firsts.setdefault(space.evaluation(trial.config), trial.index)
    cut = max(firsts.values()) + 1  # the last pass's trial kept, the thresholds scored alongside it lost
    assert cut < len(result.trials)
    resumed = run_search(space, _measurements(supernet, batches, config), search, trials=result.trials[:cut],
                         progress=False)
    assert {t.config: t.objectives for t in resumed.trials} == {t.config: t.objectives for t in result.trials}
    assert resumed.evaluations == 6


def test_a_front_ranked_in_bfloat16_is_measured_again_at_every_threshold_of_its_structures() -> None:
    """The float32 front of an exits search ranked in bfloat16: the non-dominated points among every threshold of
    each structure on the bfloat16 front (one float32 pass per structure), not only the thresholds ranked best."""
    config = _config()
    supernet, batches = make_supernet(config), _batches()
    space = ExitSpace(make_space("uniform", config), GRID)
    names = ["error", "expected_macs"]
    m = _measurements(supernet, batches, config, dtype=torch.bfloat16)
    result = run_search(space, m, SearchConfig(objectives=names, evaluations=6, seed=3), progress=False)
    points, precise = _front_scored_again(result, m, names, None)
    structures = {t.config.pass_structure() for t in result.front}
    members = [member for s in structures for member in (s, *space.scored_alongside(s))]
    assert set(members) > {t.config for t in result.front}  # thresholds the bfloat16 ranking left off its front
    objectives = resolve_objectives(names)
    values = [[objective_values(objectives, sub, precise)[n] for n in names] for sub in members]
    expected = {members[i] for i, keep in enumerate(distinct_non_dominated(values)) if keep}
    assert {SubNetworkConfig.from_dict(p["config"]) for p in points} == expected
    assert precise.exit_passes == len(structures)


def test_figures_of_a_static_structure_in_an_exits_search_equal_the_plain_evaluation() -> None:
    config = _config()
    supernet, batches = make_supernet(config), _batches()
    m = _measurements(supernet, batches, config)
    for sub in (supernet.full_config(), SubNetworkConfig(layers=(2,), heads=(0, 0, 1, 0), units=(0, 0, 8, 0))):
        assert m.figures(sub).validation == evaluate(supernet, batches, TOY_SPEC, sub=sub)
        plain = Measurements(supernet=supernet, validation_batches=batches, task=TOY_SPEC, latency=_table(config),
                             seq_len=16)
        assert m.figures(sub) == plain.figures(sub)


def test_a_copy_on_other_batches_measures_expected_macs_on_them() -> None:
    """The front is measured again on the whole split after a search on a subset: its expected MACs must be the
    whole split's, not the subset's carried over."""
    config = supernet_config()
    supernet = make_supernet(config)
    dropping = SubNetworkConfig(layers=(0, 1, 2), heads=(4, 4, 4), units=(48, 48, 48), token_keep=(1.0, 0.5, 0.5))
    short = Measurements(supernet=supernet, validation_batches=[random_inputs(4, 5, seed=1)], task=TOY_SPEC,
                         latency=_table(config))
    longer = [random_inputs(4, 11, seed=2, padded=False)]
    before = short.expected_macs(dropping)
    copy = replace(short, validation_batches=longer, _cache={})
    assert copy.expected_macs(dropping) > before
    assert copy.dynamics(dropping)["expected_macs"] == copy.expected_macs(dropping)


# ------------------------------------------------------------------------------------------------ latency


def test_latency_with_exits_at_batch_1_is_the_sum_over_examples_by_hand() -> None:
    config = _config()
    table = _table(config)
    sub = SubNetworkConfig(layers=(0, 1, 3), heads=(4, 2, 0, 3), units=(48, 24, 0, 16), exit_threshold=0.5)
    layer = [0.5 * h + 0.25 + u / 16 for h, u in zip(sub.kept_heads(), sub.kept_units(), strict=True)]
    exits = [1, 3, 2, 3, 1]

    def alone(k: int) -> float:  # overhead, the k layers run (corrected), the exits read on the way
        return 1.0 + sum(layer[:k]) + 0.125 * k + 0.0625 * min(k, 2)

    assert table.predict(sub, [16] * 5, exits) == pytest.approx(sum(alone(k) for k in exits) / 5)
    # nobody leaving: the whole depth and every exit read, as without exit layers
    assert table.predict(sub, [16] * 5, [3] * 5) == pytest.approx(table.predict(sub)) == pytest.approx(alone(3))
    # without a threshold no exit is read
    assert table.predict(sub.static()) == pytest.approx(alone(3) - 2 * 0.0625)
    # batch 2: the batch shrinks as rows leave; each layer and exit costs the share of rows still in it
    pair = LatencyTable(**(table.to_dict() | {"batch_size": 2}))
    shares = [[1.0, 0.5, 0.5], [1.0, 1.0, 0.5], [1.0, 0.0, 0.0]]  # batches (1, 3), (2, 3), (1,)
    by_hand = [1.0 + sum(s * (x + 0.125) for s, x in zip(row, layer, strict=True)) + 0.0625 * sum(row[:2])
               for row in shares]
    assert pair.predict(sub, [16] * 5, exits) == pytest.approx(sum(by_hand) / 3)
    with pytest.raises(ValueError, match="one exit layer per input length"):
        table.predict(sub, [16] * 4, exits)
    with pytest.raises(ValueError, match="from 1 to 3"):
        table.predict(sub, [16] * 5, [0, 1, 2, 3, 4])


def test_calibration_times_an_exit_for_a_supernet_with_exits() -> None:
    from search.latency import calibrate

    table = calibrate(_config(), batch_size=2, seq_len=8, repeats=1)
    assert table.exit_ms > 0
    assert calibrate(supernet_config(), batch_size=2, seq_len=8, repeats=1).exit_ms == 0.0


# ------------------------------------------------------------------------------------------------ refusals


def test_refusals_name_dynamic_exits() -> None:
    regression = TaskSpec("custom/y", True, (), ("pearson", "spearman"), "spearman")
    with pytest.raises(ValueError, match="dynamic.exits: early exiting needs a classification task"):
        check_exits(_config(), regression)
    with pytest.raises(ValueError, match="dynamic.exits: this supernet has no exit heads; train it with exits"):
        check_exits(supernet_config(), TOY_SPEC)
    check_exits(_config(), TOY_SPEC)
    with pytest.raises(ValidationError, match="dynamic.exits: early exiting needs a classification task"):
        SearchSettings(task="glue/stsb", dynamic={"exits": True})
    custom = {"task": "custom/y", "custom": {"train_file": "/a.csv", "test_file": "/b.csv", "task_type": "regression"}}
    with pytest.raises(ValidationError, match="dynamic.exits"):
        SearchSettings(**custom, dynamic={"exits": True})
    assert SearchSettings(**custom).dynamic.exits is False


# ------------------------------------------------------------------------------------------------ the job


@pytest.fixture(scope="module")
def exits_workspace(workspace, tmp_path_factory) -> Path:
    """The tiny workspace with a model whose config asks for exit heads (fresh ones: the supernet trains them as it
    trains, without exit-aware losses)."""
    root = tmp_path_factory.mktemp("exits-ws")
    shutil.copytree(workspace / "model", root / "model")
    for name in ("train.csv", "test.csv"):
        shutil.copy(workspace / name, root / name)
    config = json.loads((root / "model" / "config.json").read_text())
    (root / "model" / "config.json").write_text(json.dumps(config | {"exits": True}))
    return root


def _args(ws: Path, out: Path, *extra: str, evaluations: int = 10) -> list[str]:
    return ["search", *task_args(ws), "--epochs", "1", "--batch-size", "8", "--evaluations", str(evaluations),
            "--objectives", "error,expected_macs,latency", "--latency-batch-size", "1", "--latency-lengths",
            "validation", "--max-length", "16", "--out", str(out), "--evaluation-dtype", "float32",
            "--space", "layers", "--optimizer", "random", *extra]


def test_a_search_with_exits_writes_thresholds_and_mean_exit_layers(exits_workspace, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NASPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    # τ = 1 sends every example with any preference out at its first exit, so the untrained exits leave; the layers
    # space has 7 structures, all evaluated, and with this grid 11 members (a single kept layer has no threshold),
    # every one scored from its structure's pass
    assert cli(_args(exits_workspace, out, "--exits", "--exit-thresholds", "1,0", evaluations=7)) == 0
    assert json.loads((out / "search.json").read_text())["dynamic"]["exit_thresholds"] == [0.0, 1.0]
    assert json.loads((out / "run.json").read_text())["training"]["exits"] is True  # --exits trains them
    run = Run(out)
    supernet = run.load_supernet()
    assert supernet.config.exits
    trials = read_trials(out)
    exiting = [t for t in trials if t.config.exit_threshold is not None]
    assert len(trials) == 11 and len(exiting) == 4
    assert all((t.dynamics is None) == t.config.is_static for t in trials)
    for trial in exiting:
        assert 1 <= trial.dynamics["mean_exit_layer"] <= len(trial.config.layers)
        assert trial.objectives["expected_macs"] == trial.dynamics["expected_macs"]
        assert trial.objectives["latency"] == trial.latency_ms
    front = json.loads((out / "front.json").read_text())
    assert (front["evaluations"], front["trials"]) == (7, 11)
    points = [p for p in front["points"] if "exit_threshold" in p["config"]]
    # an exit that leaves at the first layer skips the pooler too: the fewest expected MACs of all, so on the front
    assert points and min(p["dynamics"]["mean_exit_layer"] for p in points) == 1.0
    for point in front["points"]:
        assert ("mean_exit_layer" in point.get("dynamics", {})) == ("exit_threshold" in point["config"])
    point = points[0]
    sub = SubNetworkConfig.from_dict(point["config"])
    from search.report import front_table

    table = front_table(front)
    assert "exits" in table.splitlines()[1] and f"τ {sub.exit_threshold:g}, exit " in table and "full depth" in table
    assert point["test"] == evaluate(supernet, list(run.batches("test")), run.task.spec, sub=sub)
    # the export carries τ and reproduces the point's validation metric and mean exit layer
    exported = tmp_path / "export"
    assert cli(["export", "--run", str(out), "--config", sub.to_json(), "--out", str(exported)]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(exported, trust_remote_code=True).eval()
    assert model.config.exit_threshold == sub.exit_threshold
    layers = []
    with torch.no_grad():
        for batch in run.batches("validation"):
            model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            layers += model.last_exit_layers.tolist()
    assert evaluate(model, run.batches("validation"), run.task.spec) == point["validation"]
    assert sum(layers) / len(layers) == pytest.approx(point["dynamics"]["mean_exit_layer"])
    # the point reads exactly the exits its validation examples left at (SubNetworkConfig.open_exits)
    opened = sub.open_positions() or tuple(range(1, len(sub.layers)))
    assert opened == tuple(sorted({k for k in layers if k < len(sub.layers)}))
    assert evaluate(extract(supernet, sub), run.batches("validation"), run.task.spec) == point["validation"]


def test_exits_train_the_supernet_with_exits_unless_told_not_to(workspace, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("NASPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    # searching thresholds needs trained exits: --exits alone turns training.exits on (the end-to-end test above);
    # said outright not to, the job is refused before anything trains
    assert cli(_args(workspace, out, "--exits", "--no-train-exits", evaluations=2)) == 2
    err = capsys.readouterr().err
    assert "dynamic.exits" in err and "training.exits is false" in err
    assert not (out / "run.json").exists() and not (out / "search.json").exists()


# ------------------------------------------------------------------------------------------------ API


def test_the_api_takes_the_exits_section_and_names_a_bad_grid(client, workspace) -> None:
    assert "exit_thresholds" in str(client.get("/options").json())
    accepted = client.post("/searches", json=body(workspace, dynamic={"exits": True, "exit_thresholds": [0.4, 0, 0.2]},
                                                  search={"objectives": ["error", "expected_macs"]}))
    assert accepted.status_code == 201, accepted.text
    dynamic = accepted.json()["request"]["job"]["dynamic"]
    assert dynamic["exits"] is True and dynamic["exit_thresholds"] == [0.0, 0.2, 0.4]
    for grid in ([0.1, 0.2], [0, 2], "zero"):
        refused = client.post("/searches", json=body(workspace, dynamic={"exits": True, "exit_thresholds": grid}))
        assert refused.status_code == 422 and "dynamic.exit_thresholds" in refused.text, refused.text
    regression = client.post("/searches", json=body(workspace, task="glue/stsb", dynamic={"exits": True}))
    assert regression.status_code == 422 and "dynamic.exits" in regression.text, regression.text


# ------------------------------------------------------------------------------------------------ bench


def _bench():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import checks
    import tiny
    import verify_front

    return checks, tiny, verify_front


def test_verify_front_checks_an_exiting_point_alone_and_in_mixed_batches(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NASPRUNE_CACHE", str(tmp_path / "cache"))
    checks, tiny, verify_front = _bench()
    folder = tiny.tiny_search(tmp_path, evaluations=verify_front.TINY_EVALUATIONS, exits=True)
    reports = verify_front.verify_points(folder)
    exiting = [r for r in reports if r["exiting"]]
    assert exiting, "the tiny exits search puts exiting points on its front"
    for report in exiting:
        assert set(report["differences"]) == {verify_front.SEARCHED, verify_front.ALONE, verify_front.MIXED}
        assert all(d == 0.0 for d in report["differences"].values())
        assert len(set(report["mean_exit_layers"].values())) == 1
    # a recorded mean exit layer the export does not reproduce stops the check
    front = json.loads((folder / "front.json").read_text())
    k = exiting[0]["point"]
    front["points"][k]["dynamics"]["mean_exit_layer"] += 0.25
    (folder / "front.json").write_text(json.dumps(front))
    with pytest.raises(checks.CheckFailed, match="differ from its record"):
        verify_front.main(["--run", str(folder)])


def test_trials_and_points_show_threshold_and_mean_exit_layer_and_onnx_is_refused(client, workspace, settings,
                                                                                   tmp_path) -> None:
    created = client.post("/searches", json=body(workspace, dynamic={"exits": True},
                                                 search={"objectives": ["error", "expected_macs"]}))
    search_id = created.json()["id"]
    exiting = SubNetworkConfig(layers=(0, 1), heads=(2, 2), units=(8, 8), exit_threshold=0.3)
    dynamics = {"expected_macs": 321.0, "mean_exit_layer": 1.25}
    item, point = served_dynamic_point(client, settings, tmp_path, search_id, exiting, dynamics)
    assert item["dynamics"] == dynamics and item["config"]["exit_threshold"] == 0.3
    assert point["dynamics"] == dynamics and point["config"]["exit_threshold"] == 0.3
    response = client.get(f"/searches/{search_id}/pareto/0/download?format=onnx")
    assert response.status_code == 409 and "exits early" in response.json()["detail"], response.text
    page = client.get("/").text
    assert 'data-path="dynamic.exits"' in page and "mean exit layer" in page
