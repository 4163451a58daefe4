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
from conftest import make_supernet, random_inputs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import checks  # noqa: E402
import eval_precision  # noqa: E402
import latency_model  # noqa: E402
import search_speed  # noqa: E402
import supernet_speed  # noqa: E402
import tiny  # noqa: E402
import verify_front  # noqa: E402

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
@pytest.mark.slow
def test_eval_precision_tiny_computes_in_the_precision_it_names(tmp_path: Path) -> None:
    rows = eval_precision.main(["--tiny", "--tiny-root", str(tmp_path), "--threads", "1"])
    assert [row["sub"] for row in rows] == ["full", "middle", "random 0"]
    assert all(row["float32"]["agreement"] == 1.0 for row in rows)


@pytest.mark.slow
def test_eval_precision_refuses_bfloat16_figures_computed_in_float32(monkeypatch, tmp_path: Path) -> None:
    """A regression where the autocast context does nothing (as on a device without it): float32 logits."""
    import contextlib

    monkeypatch.setattr(eval_precision.torch, "autocast", lambda *args, **kwargs: contextlib.nullcontext())
    with pytest.raises(checks.CheckFailed, match="autocast bf16: the logits were computed in"):
        eval_precision.main(["--tiny", "--tiny-root", str(tmp_path), "--threads", "1"])


# -- bench/verify_front.py -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_verify_front_tiny_reloads_every_front_point(tmp_path: Path) -> None:
    assert verify_front.main(["--tiny", "--tiny-root", str(tmp_path)]) == 0.0


@pytest.mark.slow
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
