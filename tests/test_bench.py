"""Every benchmark in bench/ runs its smallest setting (`--tiny`: a tiny random BERT, a few GLUE rows) and checks
that it exercised the path its figure names (bench/checks.py, issue 37); each check is also made to fail on
purpose, so a benchmark that measures something else exits non-zero instead of printing a figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_supernet, random_inputs, supernet_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import checks  # noqa: E402
import compress_front  # noqa: E402
import elimination  # noqa: E402
import elimination_front  # noqa: E402
import eval_precision  # noqa: E402
import exits_front  # noqa: E402
import front_rescoring  # noqa: E402
import gpu  # noqa: E402
import latency_model  # noqa: E402
import load_test  # noqa: E402
import ode_compensation  # noqa: E402
import optimizers  # noqa: E402
import prove  # noqa: E402
import prove_report  # noqa: E402
import scoring  # noqa: E402
import search_budget  # noqa: E402
import search_speed  # noqa: E402
import shared_front  # noqa: E402
import shared_ode  # noqa: E402
import supernet_recipes  # noqa: E402
import supernet_speed  # noqa: E402
import tiny  # noqa: E402
import verify_front  # noqa: E402

from search.settings import DynamicConfig  # noqa: E402
from supernet.config import SubNetworkConfig  # noqa: E402
from supernet.extract import extract  # noqa: E402


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[str, str]:
    """The tiny setting's model folder and GLUE data dir, built once for the module."""
    return tiny.workspace(tmp_path_factory.mktemp("tiny"))


def workspace_root(workspace: tuple[str, str]) -> Path:
    return Path(workspace[0]).parent


def half(config) -> SubNetworkConfig:
    n = config.num_layers
    return SubNetworkConfig(tuple(range(n - 1)), (config.num_heads // 2,) * n, (config.intermediate_size // 2,) * n)


# -- bench/checks.py: each check passes on the path it names and fails on another -------------------------------
def test_width_trace_passes_for_the_sub_network_and_fails_for_the_full_network() -> None:
    model, inputs = make_supernet(), random_inputs()
    sub = half(model.config)
    with checks.trace_widths(model) as trace, torch.no_grad(), model.use(sub):
        model(inputs["input_ids"], inputs["attention_mask"])
    checks.require_widths(trace, sub, "sliced")
    with checks.trace_widths(model) as trace, torch.no_grad():
        model(inputs["input_ids"], inputs["attention_mask"])  # forgot set_sub_network: the full network ran
    with pytest.raises(checks.CheckFailed, match="not the sub-network's"):
        checks.require_widths(trace, sub, "sliced")
    with pytest.raises(checks.CheckFailed, match="never called"):
        checks.require_widths(checks.WidthTrace(), sub, "sliced")


def test_exported_check_refuses_a_supernet_and_another_sub_networks_export() -> None:
    model = make_supernet()
    sub = half(model.config)
    checks.require_exported(extract(model, sub), sub, "extracted")
    with pytest.raises(checks.CheckFailed, match="not an exported"):
        checks.require_exported(model, sub, "extracted")
    with pytest.raises(checks.CheckFailed, match="weights have"):
        checks.require_exported(extract(model, model.full_config()), sub, "extracted")


def test_models_called_sees_models_built_inside_library_code() -> None:
    model, inputs = make_supernet(), random_inputs()
    subs = [half(model.config), model.full_config()]
    exports = [extract(model, sub) for sub in subs]
    with checks.models_called() as seen, torch.no_grad():
        for small in [*exports, *exports]:
            small(inputs["input_ids"], inputs["attention_mask"])
        model(inputs["input_ids"])  # the supernet is not an export: not listed
    checks.require_timed_exports(seen, subs, "latency")
    with pytest.raises(checks.CheckFailed, match="2 exported models ran for 1"):
        checks.require_timed_exports(seen, subs[:1], "latency")
    with pytest.raises(checks.CheckFailed, match="weights have"):
        checks.require_timed_exports(seen, subs[::-1], "latency")


def test_dtype_check_reads_the_raw_logits() -> None:
    model, inputs = make_supernet(), random_inputs()
    with checks.output_dtypes(model) as trace, torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        model(inputs["input_ids"], inputs["attention_mask"])
    checks.require_dtype(trace, torch.bfloat16, "autocast")
    with checks.output_dtypes(model) as trace, torch.no_grad():
        model(inputs["input_ids"], inputs["attention_mask"])
    with pytest.raises(checks.CheckFailed, match="computed in"):
        checks.require_dtype(trace, torch.bfloat16, "autocast")


def test_forward_count() -> None:
    model, inputs = make_supernet(), random_inputs()
    with checks.count_forwards(model) as count, torch.no_grad():
        for _ in range(3):
            model(inputs["input_ids"])
    assert count.calls == 3


def test_tiny_glue_without_the_real_data_writes_rows_each_task_reads(tmp_path: Path) -> None:
    from supernet.loading import load_task

    folder = tiny.tiny_glue(tmp_path / "glue", source=tmp_path / "missing")
    for task in ("glue/mrpc", "glue/rte", "glue/sst2"):
        data = load_task(task, folder)
        labels = {example.label for example in data.train}
        assert labels == {0, 1} and len(data.train) + len(data.validation) == 48, task


# -- bench/elimination.py -----------------------------------------------------------------------------------------
def test_elimination_tiny_times_exported_models_that_drop_tokens(tmp_path: Path) -> None:
    rows = elimination.main(["--tiny", "--tiny-root", str(tmp_path), "--threads", "1"])
    assert len(rows) == 2 and all(r["ffn_tokens"]["eliminating"] < r["ffn_tokens"]["static"] for r in rows)
    assert all(r["analytic_speedup"] >= 1.1 and r["schedule"][0] == 1.0 for r in rows)
    (results,) = (tmp_path / "out").rglob("results.json")
    table = elimination.table_lines(results)  # what bench/prove_report.py writes into RESULTS.md
    assert len([line for line in table if line.startswith("| full") or line.startswith("| <=")]) == 2
    data = json.loads(results.read_text())
    assert data["run"] is None and data["epochs"] == 1.0  # the tiny run is --tiny's, not a --run to name
    task = results.parent.parent.name
    section = prove_report.elimination_section(task, tmp_path / "out")
    assert "--run" not in section[0] and section[2].startswith("The importance job's supernet")
    # a result from another supernet (--run) names it and how long it trained, so the command reproduces it
    results.write_text(json.dumps(data | {"run": "runs/sst2-1epoch", "epochs": 1.0}))
    section = prove_report.elimination_section(task, tmp_path / "out")
    assert section[0].endswith("--seed 0 --run runs/sst2-1epoch`)")
    assert section[2].startswith("The supernet of `runs/sst2-1epoch` (the importance job's settings, 1 epoch(s)")


def test_elimination_refuses_to_report_a_speedup_where_nothing_was_dropped(tmp_path: Path) -> None:
    with pytest.raises(checks.CheckFailed, match="nothing was eliminated"):
        elimination.main(["--tiny", "--tiny-root", str(tmp_path), "--threads", "1", "--speedups", "1.0"])


# -- bench/exits_front.py ---------------------------------------------------------------------------------------
def test_exits_front_tiny_compares_an_exits_front_with_the_static_one(tmp_path: Path) -> None:
    data = exits_front.main(["--tiny", "--tiny-root", str(tmp_path), "--threads", "1"])
    static, exits = data["searches"]["static"], data["searches"]["exits"]
    assert static["evaluations"] == exits["evaluations"] == exits_front.TINY_EVALUATIONS
    assert static["exiting_points"] == 0 and exits["exiting_points"] >= 1
    # both supernets trained here, with and without exits: the job cost counts the training
    assert json.loads((tmp_path / "out" / "glue-mrpc" / "seed0" / "exits-run" / "run.json").read_text())[
        "training"]["exits"] is True
    assert all(s["train_s"] > 0 and s["job_s"] == s["train_s"] + s["search_s"] for s in (static, exits))
    assert data["test_split"] == "test" and all(s["hypervolume_expected_macs"]["test"] is not None
                                                for s in (static, exits))
    latency = data["latency"]
    # every exiting point timed against its own structure at full depth
    assert latency["exiting"] and all(row["speedup_over_full_depth"] > 0 for row in latency["exiting"])
    assert all(1 <= row["dynamics"]["mean_exit_layer"] for row in latency["exiting"])
    assert all(0 <= row["after_first_exit"] < 1 for row in latency["exiting"])  # the first exit is before the end
    # each exiting point reads only the exits its validation examples left at (open_exits), and the table says which
    exiting = [p for p in exits["points"] if "exit_threshold" in p["config"]]
    assert exiting and all(p["dynamics"]["mean_exit_layer"] < len(p["config"]["layers"]) for p in exiting)
    cost = data["static_cost_of_exits"]
    assert len(cost["points"]) == static["front_size"]
    (results,) = (tmp_path / "out").rglob("results.json")
    table = exits_front.table_lines(results)
    assert [line.split(" | ")[0] for line in table if line.startswith(("| static", "| exits"))] \
        == ["| static", "| exits"]
    assert any(line.startswith("Cheapest exiting-front point") for line in table)
    assert any("| exits read (layers) |" in line for line in table)
    # the reference on the test split and each front's best point at ≤ 1/5 of the MACs, COST-EFF's own measure
    assert data["reference"]["test"] is not None
    assert any(line.startswith("On the test split, where the static supernet's full network scores") for line in table)
    assert any(line.startswith("Most accurate point at ≤ 1/5") for line in table)
    # every threshold of each evaluated structure is a trial, and the table counts the static points covered
    assert exits["trials"] > exits["evaluations"] == static["trials"]
    assert f"{exits['trials']} trials from {exits['evaluations']} evaluations" in "\n".join(table)
    assert any(line.startswith("Static front points covered by the exits front") for line in table)
    # both trainings timed here, on the machine the record names: the job ratio compares like with like
    assert data["cpu"] and static["train_cpu"] == exits["train_cpu"] == data["cpu"]
    assert any("both trained and searched one after the other in one process" in line for line in table)


def test_exits_front_counts_the_static_points_an_exits_point_is_at_least_as_good_as() -> None:
    def front(pairs):  # (cost, error): cost as expected MACs and as latency fraction alike
        return {"points": [{"objectives": {"expected_macs": c, "error": e}} for c, e in pairs]}, [c for c, _ in pairs]

    static, static_latency = front([(0.5, 0.2), (0.3, 0.3), (0.1, 0.5)])
    # the first covered by a cheaper point as good, the second by none (cheaper is worse), the third by its equal
    exits, exits_latency = front([(0.4, 0.2), (0.3, 0.35), (0.1, 0.5)])
    latency = {"fronts": {"static": {"latency_fraction": static_latency},
                          "exits": {"latency_fraction": [c * 2 for c in exits_latency]}}}
    assert exits_front.covered_points({"static": static, "exits": exits}, latency) == {
        "expected MACs": 2, "batch-1 latency": 0}


def test_exits_front_can_train_detached_exits(tmp_path: Path) -> None:
    data = exits_front.main(["--tiny", "--tiny-root", str(tmp_path), "--threads", "1", "--detach-exits",
                             "--exit-loss-weighting", "mean"])
    runs = tmp_path / "out" / "glue-mrpc" / "seed0"
    training = {kind: json.loads((runs / f"{kind}-run" / "run.json").read_text())["training"]
                for kind in exits_front.KINDS}
    # the exit settings of the run without exits are stored as their defaults
    assert training["exits"]["detach_exits"] and training["exits"]["exit_loss_weighting"] == "mean"
    assert not training["static"]["exits"] and not training["static"]["detach_exits"]
    assert data["detach_exits"] and exits_front.exit_training(data) == "detached"
    assert "detached hidden states (DeeBERT)" in exits_front.table_lines(runs / "results.json")[0]
    assert exits_front.exit_training({"exit_loss_weighting": "mean"}) == exits_front.exit_training({}) == "mean"
    # again with exits weighed by depth in the same folder: the exits supernet is trained again (its settings
    # differ), the static one and its search are kept (--reuse-static-search), and the table says so
    static_search = (runs / "static" / "front.json").read_text()
    again = exits_front.main(["--tiny", "--tiny-root", str(tmp_path), "--threads", "1", "--reuse-static-search"])
    assert (runs / "static" / "front.json").read_text() == static_search
    assert again["searches"]["static"]["search_reused"] and not again["searches"]["exits"]["search_reused"]
    assert again["searches"]["static"]["train_s"] == data["searches"]["static"]["train_s"]
    assert again["searches"]["exits"]["train_s"] != data["searches"]["exits"]["train_s"]
    assert not json.loads((runs / "exits-run" / "run.json").read_text())["training"]["detach_exits"]
    assert "--reuse-static-search" in " ".join(exits_front.table_lines(runs / "results.json"))
    assert exits_front.default_out("bench/out/exits_front", None, "depth", "latency") \
        == "bench/out/exits_front_depth_latency"
    assert exits_front.default_out("bench/out/exits_front", "layers", "mean", "expected_macs") \
        == "bench/out/exits_front_layers"


def test_exits_front_can_rank_on_predicted_batch_1_latency(tmp_path: Path, monkeypatch) -> None:
    """--cost latency: both searches rank on the latency table's batch-1 prediction (which prices each exit read);
    the tables still read expected MACs, filled in for every point."""
    monkeypatch.setenv("NASPRUNE_CACHE", str(tmp_path / "cache"))
    data = exits_front.main(["--tiny", "--tiny-root", str(tmp_path), "--threads", "1", "--cost", "latency"])
    assert data["objectives"] == ["error", "latency"] and data["cost"] == "latency"
    for kind in exits_front.KINDS:
        search = json.loads((tmp_path / "out" / "glue-mrpc" / "seed0" / kind / "search.json").read_text())
        assert search["search"]["objectives"] == ["error", "latency"] and search["latency"]["batch_size"] == 1
        assert all(p["objectives"]["expected_macs"] > 0 for p in data["searches"][kind]["points"])
    (results,) = (tmp_path / "out").rglob("results.json")
    assert any(line.startswith("| exits |") for line in exits_front.table_lines(results))


def test_exits_front_lets_a_layers_space_static_search_stop_when_it_has_evaluated_every_member() -> None:
    """The layers space holds 2^L - 1 sub-networks, fewer than a budget may ask: a static search that evaluated all
    of them is compared with an exits search that went on (its thresholds multiply the space); other spaces are
    too large to run out."""
    from supernet.settings import RunSpec

    supernet = make_supernet(supernet_config(num_layers=3))
    spec = RunSpec(model="m", task="glue/mrpc")
    assert exits_front.static_space_size(spec.model_copy(update={"space": "layers"}), supernet) == 7
    assert exits_front.static_space_size(spec, supernet) is None


def test_exits_front_reports_exports_that_never_exit(monkeypatch, tmp_path: Path) -> None:
    """Exits that never become confident are a finding the table states, not a failed benchmark."""
    from supernet import modules

    monkeypatch.setattr(modules._Running, "leave", lambda *_: None)  # the exported forward never lets a row leave
    data = exits_front.main(["--tiny", "--tiny-root", str(tmp_path), "--threads", "1"])
    rows = data["latency"]["exiting"]
    assert rows and all(row["timed_ffn_share"] == row["timed_ffn_share_full_depth"] for row in rows)
    (results,) = (tmp_path / "out").rglob("results.json")
    assert any(line.startswith("No timed example left early") for line in exits_front.table_lines(results))


# -- bench/gpu.py ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_gpu_bench_tiny_measures_every_part_on_this_device(tmp_path: Path) -> None:
    """The GPU bench on the tiny model, on whatever device this machine has (the CPU in CI)."""
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--work", str(tmp_path / "work"), "--out",
                    str(out), "--parts", "slicing,latency,job"], check=True, capture_output=True)
    results = json.loads(out.read_text())
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert results["device"].startswith(expected) and results["job"]["job_compute"]["device"].startswith(expected)
    assert results["job"]["ratio"] > 0 and results["job"]["front_points"] >= 1
    assert {row["sub"] for row in results["slicing"]} >= {"width 1", "width 0.5", "every other layer"}
    assert all(0 < row["mac_share"] <= 1 and row["exported_ms"] > 0 for row in results["slicing"])
    assert -1 <= results["latency"]["spearman"] <= 1 and results["latency"]["subs"] >= 3
    lines = gpu.table_lines(results)
    assert any("**" in line and "x**" in line for line in lines) and any(line.startswith("| 1 |") for line in lines)


def test_the_recorded_gpu_figures_render() -> None:
    (record,) = (ROOT / "bench" / "out" / "gpu").glob("*.json")
    text = "\n".join(gpu.table_lines(json.loads(record.read_text())))
    assert "NVIDIA" in text and "Spearman" in text and "| 256 |" in text


# -- bench/compress_front.py -------------------------------------------------------------------------------------
def test_compress_front_tiny_compresses_below_the_target_with_every_protocol(tmp_path: Path) -> None:
    data = compress_front.main(["--tiny", "--tiny-root", str(tmp_path), "--threads", "1"])
    done = [row for row in data["rows"] if row["fits"]]
    assert {row["protocol"] for row in done} == {"tucker", "shared-lowrank", "lowrank"}
    for row in done:
        assert row["encoder_fraction"] <= row["fraction"] and row["encoder_params"] < data["full_encoder"]
        assert row["speedup_b1"] > 0 and row["speedup_b32"] > 0 and 0 <= row["validation"][data["metric"]] <= 1
    bigger = [row for row in data["rows"] if row["start"] != "full"]
    assert all(not row["fits"] for row in bigger)  # the tiny smaller point is already under 1/3: nothing to do
    (results,) = (tmp_path / "out").rglob("results.json")
    table = compress_front.table_lines(results)
    assert len(table) == 4 + len(data["rows"]) and all(line.count("|") == 14 for line in table[2:])


def test_fitting_compression_takes_the_largest_rank_within_the_budget() -> None:
    from conftest import supernet_config

    from supernet.config import SubNetworkConfig
    from supernet.counting import count_params

    config = supernet_config()
    sub = SubNetworkConfig.full(config)
    budget = count_params(config, sub).encoder / 4
    for protocol in ("tucker", "shared-lowrank", "lowrank"):
        chosen = compress_front.fitting_compression(config, sub, protocol, budget)
        assert count_params(config, sub, chosen).encoder <= budget
        bank = min(24, (chosen.rank + 1) ** 2) if protocol == "tucker" else None  # the tiny full network: 24 blocks
        larger = compress_front.Compression(protocol, chosen.rank + 1, bank=bank)
        assert count_params(config, sub, larger).encoder > budget
    assert compress_front.fitting_compression(config, sub, "lowrank", 10) is None


# -- bench/elimination_front.py ---------------------------------------------------------------------------------
def test_elimination_front_tiny_compares_the_joint_front_with_the_static_one(tmp_path: Path) -> None:
    data = elimination_front.main(["--tiny", "--tiny-root", str(tmp_path), "--threads", "1"])
    static, joint = data["searches"]["static"], data["searches"]["joint"]
    assert static["evaluations"] == joint["evaluations"] == elimination_front.TINY_EVALUATIONS
    assert static["eliminating_points"] == 0 and joint["eliminating_points"] >= 1
    assert all(s["search_s"] > 0 and 0 <= s["hypervolume_expected_macs"]["validation"] <= 1 for s in (static, joint))
    assert data["test_split"] == "test" and all(s["hypervolume_expected_macs"]["test"] is not None
                                                for s in (static, joint))
    latency = data["latency"]
    # every point of both fronts and the full model timed one example at a time, as fractions of the full model
    assert latency["models_timed"] >= 2 and latency["examples"] > 1
    assert all(len(latency["fronts"][kind]["latency_fraction"]) == data["searches"][kind]["front_size"]
               for kind in ("static", "joint"))
    shares = {kind: latency["fronts"][kind]["ffn_token_share"] for kind in ("static", "joint")}
    assert min(shares["joint"]) < 1.0 == max(shares["static"])  # the eliminating exports gave their FFNs fewer tokens
    (results,) = (tmp_path / "out").rglob("results.json")
    table = elimination_front.table_lines(results)  # what bench/prove_report.py writes into RESULTS.md
    assert [line.split(" | ")[0] for line in table if line.startswith("| static") or line.startswith("| joint")] \
        == ["| static", "| joint"]
    section = prove_report.elimination_front_section("glue-mrpc", tmp_path / "out")
    assert section[0].startswith("### Joint front") and all(line in section for line in table)


def test_elimination_front_refuses_latencies_of_exports_that_drop_nothing(monkeypatch, tmp_path: Path) -> None:
    from supernet.modules import ElasticBert

    monkeypatch.setattr(ElasticBert, "_keep_counts", lambda *_: None)  # every schedule silently ignored
    with pytest.raises(checks.CheckFailed, match="gave its FFNs fewer tokens"):
        elimination_front.main(["--tiny", "--tiny-root", str(tmp_path), "--threads", "1", "--warmup-evaluations", "0"])


def test_elimination_front_joint_first_keeps_its_own_results(tmp_path: Path) -> None:
    data = elimination_front.main(["--tiny", "--tiny-root", str(tmp_path), "--threads", "1", "--order",
                                   "joint,static", "--warmup-evaluations", "0"])
    assert data["order"] == ["joint", "static"]
    (results,) = (tmp_path / "out").rglob("results*.json")
    assert results.name == "results-joint-first.json"
    table = elimination_front.table_lines(results)
    assert [line.split(" | ")[0] for line in table if line.startswith("| ")][1:] == ["| joint", "| static"]
    section = prove_report.elimination_front_section("glue-mrpc", tmp_path / "out")
    assert "--order joint,static" in section[0]


def test_elimination_front_refuses_a_joint_search_that_drops_no_tokens(monkeypatch, tmp_path: Path) -> None:
    # a setting the job ignored: the "joint" search searched structures only
    monkeypatch.setattr(elimination_front, "DynamicConfig", lambda **_: DynamicConfig())
    with pytest.raises(checks.CheckFailed, match="holds no point that drops tokens"):
        elimination_front.main(["--tiny", "--tiny-root", str(tmp_path), "--threads", "1", "--warmup-evaluations", "0"])


def test_elimination_front_refuses_latencies_of_another_model(monkeypatch, tmp_path: Path) -> None:
    full_network = lambda supernet, sub: extract(supernet, supernet.full_config())  # noqa: E731
    monkeypatch.setattr(elimination_front, "extract", full_network)
    with pytest.raises(checks.CheckFailed, match="latency of .*weights have"):
        elimination_front.main(["--tiny", "--tiny-root", str(tmp_path), "--threads", "1", "--warmup-evaluations", "0"])


# -- bench/supernet_speed.py ---------------------------------------------------------------------------------------
def test_supernet_speed_tiny_times_a_real_sandwich_step(capsys) -> None:
    results = supernet_speed.main(["--tiny", "--threads", "1"])
    assert set(results) == {"50% heads + 50% units", "25% heads + 25% units", "1 of 3 layers", "training_step"}
    assert "sandwich step (full + smallest + 2 random" in capsys.readouterr().out


def test_supernet_speed_refuses_to_time_a_plain_phase_as_sandwich(capsys) -> None:
    """The issue's bug: the default recipe's plain phase made the "sandwich" timing a plain step."""
    with pytest.raises(checks.CheckFailed, match="sandwich step ran 1 forward passes, not 4"):
        supernet_speed.main(["--tiny", "--threads", "1", "--plain-fraction", "0.75"])
    assert "sandwich step (" not in capsys.readouterr().out  # no figure printed


@pytest.mark.slow
def test_a_failed_check_exits_non_zero_with_the_reason() -> None:
    result = subprocess.run([sys.executable, "bench/supernet_speed.py", "--tiny", "--threads", "1",
                             "--plain-fraction", "0.75"], cwd=ROOT, capture_output=True, text=True, check=False,
                            env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert "benchmark check failed: a sandwich step ran 1 forward passes" in result.stderr
    assert "sandwich step (" not in result.stdout


# -- bench/latency_model.py ------------------------------------------------------------------------------------------
def test_latency_model_tiny_times_the_exported_models() -> None:
    result = latency_model.main(["--tiny", "--threads", "1"])
    assert len(result["measured_ms"]) == 4


def test_latency_model_tiny_over_real_lengths_times_eliminating_exports() -> None:
    """The token-axis mode: sub-networks that drop tokens, timed on inputs of their own lengths."""
    result = latency_model.main(["--tiny", "--threads", "1", "--lengths", "validation"])
    assert len(result["measured_ms"]) == 4 and result["eliminating"] >= 1


def test_latency_model_refuses_latencies_of_the_wrong_model(monkeypatch) -> None:
    """A regression that timed the full network for every sub-network: the check names the widths."""
    import search.latency

    monkeypatch.setattr(search.latency, "extract", lambda supernet, sub: extract(supernet, supernet.full_config()))
    with pytest.raises(checks.CheckFailed, match="weights have"):
        latency_model.main(["--tiny", "--threads", "1"])


# -- bench/search_speed.py -------------------------------------------------------------------------------------------
def test_search_speed_tiny_evaluates_each_sub_network(tmp_path: Path, workspace) -> None:
    rows = search_speed.main(["--tiny", "--tiny-root", str(workspace_root(workspace)), "--threads", "1"])
    assert rows["full"]["mac_share"] == 1.0 and 0 < rows["25% heads + 25% units"]["mac_share"] < 0.3


def test_search_speed_refuses_an_evaluation_that_ignores_the_sub_network(monkeypatch, workspace) -> None:
    real = search_speed.evaluate
    monkeypatch.setattr(search_speed, "evaluate", lambda model, batches, spec, sub=None: real(model, batches, spec))
    with pytest.raises(checks.CheckFailed, match="not the sub-network's"):
        search_speed.main(["--tiny", "--tiny-root", str(workspace_root(workspace)), "--threads", "1"])


# -- bench/eval_precision.py -----------------------------------------------------------------------------------------
def test_eval_precision_tiny_computes_in_the_precision_it_names(tmp_path: Path) -> None:
    rows = eval_precision.main(["--tiny", "--tiny-root", str(tmp_path), "--threads", "1"])
    assert [row["sub"] for row in rows] == ["full", "middle", "random 0"]
    assert all(row["float32"]["agreement"] == 1.0 for row in rows)


def test_eval_precision_refuses_bfloat16_figures_computed_in_float32(monkeypatch, tmp_path: Path) -> None:
    """A regression where the autocast context does nothing (as on a device without it): float32 logits."""
    import contextlib

    monkeypatch.setattr(eval_precision.torch, "autocast", lambda *args, **kwargs: contextlib.nullcontext())
    with pytest.raises(checks.CheckFailed, match="autocast bf16: the logits were computed in"):
        eval_precision.main(["--tiny", "--tiny-root", str(tmp_path), "--threads", "1"])


# -- bench/verify_front.py -------------------------------------------------------------------------------------------
def test_verify_front_tiny_reloads_every_front_point(tmp_path: Path, capsys) -> None:
    assert verify_front.main(["--tiny", "--tiny-root", str(tmp_path)]) == 0.0
    out = capsys.readouterr().out
    # --tiny searches keep schedules too: a point that drops tokens is checked alone and in mixed batches of 32
    dropping = [line for line in out.splitlines() if line.startswith("point ") and "keep [" in line]
    assert dropping and all("batch 1:" in line and "batch 32 mixed:" in line for line in dropping)
    assert "points dropping tokens (checked at batch 1 and 32 too): 0 of" not in out


def test_verify_front_tiny_compress_reloads_the_compressed_point_and_notices_a_wrong_record(tmp_path: Path,
                                                                                           capsys) -> None:
    assert verify_front.main(["--tiny-compress", "--tiny-root", str(tmp_path)]) == 0.0
    assert "compressed points: 1" in capsys.readouterr().out
    (record_file,) = (tmp_path / "search" / "compressed").glob("*/*/subnetwork.json")
    record = json.loads(record_file.read_text())
    record["metrics"]["validation"] = {m: v + 0.01 for m, v in record["metrics"]["validation"].items()}
    record_file.write_text(json.dumps(record))
    with pytest.raises(checks.CheckFailed, match="differ from its record"):
        verify_front.main(["--run", str(tmp_path / "search")])


def test_verify_front_checks_a_static_front_as_searched_only(tmp_path: Path) -> None:
    reports = verify_front.verify_points(tiny.tiny_search(tmp_path))
    assert reports and all(not r["eliminating"] and r["differences"] == {verify_front.SEARCHED: 0.0}
                           for r in reports)


def test_verify_front_checks_an_eliminating_point_alone_and_in_mixed_batches(tmp_path: Path) -> None:
    folder = tiny.tiny_search(tmp_path, evaluations=verify_front.TINY_EVALUATIONS, token_elimination=True)
    reports = verify_front.verify_points(folder)
    eliminating = [r for r in reports if r["eliminating"]]
    assert eliminating and all(set(r["differences"]) == {verify_front.SEARCHED, verify_front.ALONE,
                                                         verify_front.MIXED} for r in eliminating)
    assert all(set(r["differences"]) == {verify_front.SEARCHED} for r in reports if not r["eliminating"])
    assert all(r["logits_batch1_vs_32"] < 1e-5 for r in eliminating)
    # a recorded metric the export does not reproduce stops the check
    front = json.loads((folder / "front.json").read_text())
    k = next(r["point"] for r in eliminating)
    front["points"][k]["validation"] = {m: v + 0.01 for m, v in front["points"][k]["validation"].items()}
    (folder / "front.json").write_text(json.dumps(front))
    with pytest.raises(checks.CheckFailed, match="differ from its record"):
        verify_front.main(["--run", str(folder)])


def test_verify_front_refuses_a_front_that_is_not_the_non_dominated_trials(tmp_path: Path) -> None:
    folder = tiny.tiny_search(tmp_path)
    front_file = folder / "front.json"
    front = json.loads(front_file.read_text())
    trials = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]
    kept = {json.dumps(p["config"], sort_keys=True) for p in front["points"]}
    other = next(t for t in trials if json.dumps(t["config"], sort_keys=True) not in kept)
    front["points"].append(front["points"][0] | {"config": other["config"]})
    front_file.write_text(json.dumps(front))
    with pytest.raises(checks.CheckFailed, match="not the non-dominated trials"):
        verify_front.main(["--run", str(folder)])


# -- bench/prove.py and what reads its output (prove_report, search_budget, front_rescoring, eval_precision) ---------
@pytest.fixture(scope="module")
def tiny_prove(tmp_path_factory) -> Path:
    """bench/prove.py --tiny: reference, one-shot masks and the default job on a tiny model (its output folder)."""
    root = tmp_path_factory.mktemp("prove")
    results = prove.main(["--tiny", "--tiny-root", str(root), "--threads", "1"])
    assert set(results) == set(prove.TINY_METHODS)
    assert all(p["latency_ms"]["32"] > 0 for points in results.values() for p in points)
    return root / "prove"


def test_prove_report_on_the_tiny_prove(tiny_prove: Path, tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    prove_report.main(["--out", str(tiny_prove), "--results", str(results)])
    text = results.read_text()
    assert "## glue-mrpc" in text and "| nasprune front (importance space, default) | 0 |" in text


def test_prove_report_refuses_a_record_without_the_main_metric(tmp_path: Path) -> None:
    folder = tmp_path / "glue-mrpc" / "seed0"
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps({"main_metric": "f1"}))
    point = {"config": {}, "params_fraction": 1.0, "validation_error": 0.1, "test_error": 0.2,
             "validation": {"f1": 0.9}, "test": {"accuracy": 0.8}}
    (folder / "reference.json").write_text(json.dumps([point]))
    with pytest.raises(checks.CheckFailed, match=r"reference.json, point 0: no test.f1"):
        prove_report.load(folder)


def test_prove_refuses_a_latency_of_another_model(monkeypatch, tiny_prove: Path) -> None:
    """A regression that timed the full model for every point: the check names the widths."""
    monkeypatch.setattr(prove, "extract", lambda supernet, sub: extract(supernet, supernet.full_config()))
    root = tiny_prove.parent
    with pytest.raises(checks.CheckFailed, match="weights have"):
        prove.main(["--tiny", "--tiny-root", str(root), "--threads", "1", "--methods", "oneshot",
                    "--fresh-latency"])


def test_search_budget_on_the_tiny_prove(tiny_prove: Path, tmp_path: Path) -> None:
    lines = search_budget.main(["--prove", str(tiny_prove), "--limits", "6", "job", "--evaluations", "4",
                                "--threads", "1", "--out", str(tmp_path)])
    rows = [line for line in lines if line.startswith("| 6 ") or line.startswith("| 8, front on")]
    assert len(rows) == 2


def test_search_budget_refuses_a_search_on_other_examples(tiny_prove: Path) -> None:
    run = tiny_prove / "glue-mrpc" / "seed0" / "nasprune_importance" / "run"
    search_budget.require_searched(run, 8, json.loads((run / "search.json").read_text())["evaluation_dtype"])
    with pytest.raises(checks.CheckFailed, match="ranked 8 validation examples, not 6"):
        search_budget.require_searched(run, 6, "float32")
    with pytest.raises(checks.CheckFailed, match="not float16"):
        search_budget.require_searched(run, 8, "float16")


def test_front_rescoring_on_the_tiny_prove(tiny_prove: Path, tmp_path: Path) -> None:
    results = front_rescoring.main(["--prove", str(tiny_prove), "--threads", "1", "--out", str(tmp_path)])
    assert results["every trial"]["measured_again"] == 8


def test_front_rescoring_refuses_figures_of_the_full_network(monkeypatch, tiny_prove: Path, tmp_path: Path) -> None:
    """A regression where evaluation ignores the sub-network: every trial would score as the full network."""
    real = checks.evaluate
    monkeypatch.setattr(checks, "evaluate", lambda model, batches, spec, sub=None: real(model, batches, spec))
    with pytest.raises(checks.CheckFailed, match="not the sub-network's"):
        front_rescoring.main(["--prove", str(tiny_prove), "--threads", "1", "--out", str(tmp_path)])


def test_eval_precision_on_the_tiny_prove(tiny_prove: Path, tmp_path: Path) -> None:
    rows = eval_precision.main(["--prove", str(tiny_prove), "--threads", "1", "--subnetworks", "1", "--repeats", "1",
                                "--out", str(tmp_path)])
    assert len(rows) == 3 and (tmp_path / "glue-mrpc" / "seed0" / "results.json").is_file()


# -- bench/supernet_recipes.py (a recipe trains a whole supernet: its measuring and table are tested) -------------
def test_supernet_recipes_measures_each_architecture_at_its_widths(monkeypatch) -> None:
    from conftest import TOY_SPEC, toy_batches

    model = make_supernet()
    archs = [("half", half(model.config)), ("full", model.full_config())]
    points = supernet_recipes.measure(model, archs, toy_batches(2), toy_batches(2, seed=5), TOY_SPEC)
    assert [p["label"] for p in points] == ["half", "full"] and points[1]["params_fraction"] == 1.0
    real = checks.evaluate
    monkeypatch.setattr(checks, "evaluate", lambda model, batches, spec, sub=None: real(model, batches, spec))
    with pytest.raises(checks.CheckFailed, match="half: a forward ran"):
        supernet_recipes.measure(model, archs, toy_batches(2), toy_batches(2, seed=5), TOY_SPEC)


def test_supernet_recipes_table(tmp_path: Path) -> None:
    point = {"label": "uniform 50%", "params_fraction": 0.5, "validation": {"f1": 0.8}, "test": {"f1": 0.75}}
    (tmp_path / "v0.json").write_text(json.dumps({"train_s": 12.0, "points": [point]}))
    lines = supernet_recipes.recipe_table(tmp_path, ["v0", "lr1e-4"])
    assert lines[2] == "| architecture | params | v0 |"
    assert lines[4] == "| uniform 50% | 50% | 0.800 / 0.750 |" and lines[5] == "| training time (s) | | 12 |"


# -- bench/optimizers.py ---------------------------------------------------------------------------------------------
def test_optimizers_tiny_spends_each_runs_budget(tmp_path: Path) -> None:
    results = optimizers.main(["--tiny", "--out", str(tmp_path), "--threads", "1", "--optimizers", "random",
                               "nsga2"])
    assert set(results) == {"random", "nsga2"} and (tmp_path / "glue-rte" / "summary.md").is_file()


def test_optimizers_refuses_a_run_short_of_its_budget(tiny_config) -> None:
    from conftest import TOY_SPEC, hand_latency_table, toy_batches

    from search.objectives import Measurements
    from search.runner import SearchConfig, run_search
    from supernet.space import make_space

    model = make_supernet(tiny_config)
    measurements = Measurements(supernet=model, validation_batches=toy_batches(2), task=TOY_SPEC,
                                latency=hand_latency_table(tiny_config), seq_len=8)
    result = run_search(make_space("uniform", tiny_config), measurements,
                        SearchConfig(optimizer="random", evaluations=3, seed=0))
    optimizers.require_budget(result, measurements, 3, "random")
    with pytest.raises(checks.CheckFailed, match="3 trials, not the 5 evaluations named"):
        optimizers.require_budget(result, measurements, 5, "random")


# -- bench/scoring.py ------------------------------------------------------------------------------------------------
def test_scoring_on_a_hand_made_front() -> None:
    points = [{"params_fraction": 0.55, "test_error": 0.1, "validation_error": 0.2},
              {"params_fraction": 0.22, "test_error": 0.15, "validation_error": 0.1}]
    # normalised: (0.5, 0.5) and (0.2, 0.75) under (1, 1): 0.5 x 0.5 + 0.3 x 0.25
    assert scoring.test_error_hypervolume(points, chance_error=0.2) == pytest.approx(0.25 + 0.075)
    assert scoring.best_under(points, 0.5) is points[1] and scoring.best_under(points, 0.1) is None
    with pytest.raises(ValueError, match="point 1 has no numeric 'test_error'"):
        scoring.test_error_hypervolume([points[0], {"params_fraction": 0.5}], 0.2)


# -- bench/load_test.py ----------------------------------------------------------------------------------------------
def test_load_test_key_check_finds_a_key_stored_twice() -> None:
    stats = load_test.Stats()
    stats.ledger["a"] = [("new", 201, "id-1")]
    stats.ledger["b"] = [("new", 201, "id-2"), ("repost", 200, "id-2")]
    assert load_test.check_keys(stats, {"a": ["id-1"], "b": ["id-2"]}, {"id-1", "id-2"})["problem_count"] == 0
    broken = load_test.check_keys(stats, {"a": ["id-1"], "b": ["id-2", "id-3"]}, {"id-1", "id-2"})
    assert broken["problem_count"] == 1 and broken["problems"][0].startswith("b:")


@pytest.mark.slow
def test_load_test_smallest_setting_passes_its_checks(tmp_path: Path) -> None:
    """One real server with one worker, two clients for a few seconds: every check of the script holds."""
    status = load_test.main(["--duration", "3", "--clients", "2", "--workers", "1", "--ramp", "0.5", "--active", "1",
                             "--evaluations", "1", "--json", str(tmp_path / "load.json")])
    assert status == 0
    assert all(json.loads((tmp_path / "load.json").read_text())["checks"].values())


# -- bench/ode_compensation.py ------------------------------------------------------------------------------------
def test_ode_compensation_tiny_scores_every_drop_both_ways(tmp_path: Path) -> None:
    data = ode_compensation.main(["--tiny", "--tiny-root", str(tmp_path), "--threads", "1"])
    (result,) = data.values()
    layers = len(result["rows"][-1]["layers"]) + 1  # the largest proper subset keeps all but one
    assert len(result["rows"]) == 2 ** layers - 2  # every non-empty proper subset
    for row in result["rows"]:
        assert sum(row["steps"]) == layers - row["layers"][0]  # the steps cover the depth from the first kept
    assert [s["kept"] for s in result["summary"]] == list(range(1, layers))
    assert all("plain_test" in s["top_dropping"] for s in result["summary"])


# -- bench/shared_ode.py -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_shared_ode_scores_every_step_count_by_both_solvers(workspace, tmp_path: Path) -> None:
    from supernet.settings import ShareSpec
    from supernet.share import share_run

    model, data_dir = workspace
    spec = ShareSpec.model_validate(tiny.tiny_spec(model, data_dir).to_dict() | {
        "share": {"groups": 1, "teacher_epochs": 0, "epochs": 1}})
    assert share_run(spec, tmp_path / "shared", progress=False) is not None
    (written,) = shared_ode.main(["--share", str(tmp_path / "shared"), "--out", str(tmp_path / "out")])
    data = json.loads(written.read_text())
    layers = data["layers"]
    assert [(r["solver"], r["steps"], r["evaluations"]) for r in data["rows"]] == [
        *(("euler", k, k) for k in range(1, layers + 1)), *(("heun", k, 2 * k) for k in range(1, layers + 1))]
    euler = {r["steps"]: r["mac_share"] for r in data["rows"] if r["solver"] == "euler"}
    assert euler[layers] == pytest.approx(1.0, rel=1e-3) and euler[1] < euler[layers]
    lines = shared_ode.table_lines(written)
    assert any(line.startswith(f"| heun | {layers} | {2 * layers} |") for line in lines)


# -- bench/shared_front.py ---------------------------------------------------------------------------------------
def _search_folder(folder: Path, task: str, trials: list[tuple[float, int, int]], full: tuple[float, int, int]) -> Path:
    """A finished search's trials.jsonl and front.json, each trial (accuracy, MACs, total params)."""
    folder.mkdir(parents=True)
    rows = [{"index": i, "validation": {"accuracy": a}, "macs": m, "params": {"encoder": p // 2, "total": p}}
            for i, (a, m, p) in enumerate(trials)]
    (folder / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, m, p = full
    reference = {"macs": m, "params": {"encoder": p // 2, "total": p}, "validation": {"accuracy": a}}
    (folder / "front.json").write_text(json.dumps({"task": task, "main_metric": "accuracy", "reference": reference,
                                                   "points": []}))
    return folder


def test_shared_front_compares_the_families_at_equal_macs_and_equal_stored_params(tmp_path: Path) -> None:
    unshared = _search_folder(tmp_path / "u", "glue/sst2", [(0.9, 100, 1000), (0.8, 50, 500), (0.6, 10, 100)],
                              (0.9, 100, 1000))
    shared = _search_folder(tmp_path / "s", "glue/sst2", [(0.85, 100, 300), (0.8, 40, 300), (0.7, 20, 300)],
                            (0.85, 100, 300))
    data = shared_front.main(["--unshared", str(unshared), "--shared", str(shared), "--out", str(tmp_path / "out")])
    fams = data["families"]
    macs, params = ({name: fams[name][currency]["best_within"] for name in fams} for currency in ("macs", "params"))
    assert macs["unshared"]["0.5"] == macs["shared"]["0.5"] == 0.8
    assert macs["unshared"]["0.2"] == 0.6 and macs["shared"]["0.2"] == 0.7
    # stored params: the shared family stores 30 % of the full model at every step count
    assert params["shared"]["0.3"] == 0.85 and params["unshared"]["0.3"] == 0.6 and params["shared"]["0.2"] is None
    assert fams["shared"]["params"]["hypervolume"] == pytest.approx((1.1 - 0.15) * (1.1 - 0.3))  # one point left
    assert [p["share"] for p in fams["unshared"]["macs"]["front"]] == [0.1, 0.5, 1.0]
    lines = shared_front.table_lines(tmp_path / "out" / "glue-sst2" / "seed0" / "results.json")
    assert any(line.startswith("| shared | ") for line in lines) and "stored params" in "\n".join(lines)
    other = _search_folder(tmp_path / "o", "glue/mrpc", [(0.7, 10, 10)], (0.7, 10, 10))
    with pytest.raises(SystemExit, match="one task"):
        shared_front.main(["--unshared", str(unshared), "--shared", str(other), "--out", str(tmp_path / "out")])
