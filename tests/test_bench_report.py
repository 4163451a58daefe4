"""The generated report says which of the issue's methods are finished for which task and seed, so a run that has
not been made (or stopped part-way) shows in RESULTS.md rather than silently missing from its tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import scoring  # noqa: E402
from prove_report import (  # noqa: E402
    COVERED,
    HERE,
    READING,
    SharedMarks,
    baseline_training_times,
    composed_picks,
    coverage_lines,
    cpu_lines,
    load,
    main,
)


def test_coverage_marks_finished_methods_and_not_requested_ones(tmp_path: Path) -> None:
    folders = []
    for seed, finished in ((0, ["reference", "layer_drop"]), (1, [])):
        folder = tmp_path / "glue-mrpc" / f"seed{seed}"
        (folder / "nas_small").mkdir(parents=True)  # an unfinished method keeps its unit folder, not its record
        (folder / "settings.json").write_text(json.dumps({"methods": ["reference", "layer_drop", "nas_small"]}))
        for method in finished:
            (folder / f"{method}.json").write_text("[]")
        folders.append(folder)
    lines = coverage_lines({folder: load(folder) for folder in folders})
    rows = [line for line in lines if line.startswith("| glue-mrpc")]
    assert len(rows) == 2
    seed0 = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert seed0[:2] == ["glue-mrpc", "0"]
    assert dict(zip(COVERED, seed0[2:], strict=True)) == {
        method: "done" if method in ("reference", "layer_drop") else "**not yet**" for method in COVERED}
    assert rows[1].count("**not yet**") == len(COVERED)


def test_no_seeds_no_coverage_section() -> None:
    assert coverage_lines({}) == []


def test_training_times_show_every_seed_and_their_mean() -> None:
    def seed(**methods: list[float]) -> dict:
        return {"methods": {m: [{"cost_s": c, "cpu_share": 0.99} for c in costs] for m, costs in methods.items()}}

    seeds = {0: seed(reference=[100.0], layer_drop=[10.0, 20.0], oneshot=[5.0, 5.0]),
             1: seed(reference=[110.0], layer_drop=[40.0, 50.0], oneshot=[7.0, 7.0]),
             2: seed(reference=[120.0], oneshot=[9.0, 9.0])}
    lines = baseline_training_times(seeds, SharedMarks())
    assert lines[1].endswith("seed 2 (s) | mean ± sd (s) |") and lines[2].count("---") == 5
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[3:])}
    assert rows["full fine-tuning"] == ["100", "110", "120", "110 ± 10"]
    assert rows["layer dropping + FT"] == ["30", "90", "not yet", "–"]  # the mean waits for every seed
    assert rows["one-shot Kwon (no retraining)"] == ["5", "7", "9", "7 ± 2"]  # one scoring pass, not one per point
    assert len(rows) == 3  # methods no seed has are left out


def test_methods_run_on_another_cpu_are_named() -> None:
    xeon, epyc = "cpu-Intel(R) Xeon(R) Processor-2t", "cpu-AMD EPYC 9R14 96-Core Processor-2t"
    seeds = {0: {"settings": {"cpu_by_method": {"nas_small": xeon, "oneshot": epyc, "layer_drop": xeon}},
                 "methods": {"nas_small": [], "oneshot": []}},  # layer_drop has not finished: not reported
             1: {"settings": {}, "methods": {"reference": []}}}  # before the CPU was recorded
    assert cpu_lines(seeds) == ["", "**Ran on another CPU, Intel(R) Xeon(R) Processor-2t:** uniform sub-nets, each "
                                "FT (seed 0). Its training and evaluation times are that machine's; its latencies are "
                                "the AMD EPYC's unless a line below says otherwise."]
    assert cpu_lines({1: seeds[1]}) == []


def test_latencies_timed_on_another_cpu_are_named_apart_from_where_the_method_ran() -> None:
    xeon, epyc = "cpu-Intel(R) Xeon(R) Processor-2t", "cpu-AMD EPYC 9R14 96-Core Processor-2t"
    seeds = {0: {"settings": {"cpu_by_method": {"nas_small": xeon}},
                 "methods": {"nas_small": [{"latency_ms": {"1": 1.0}}],  # ran on the Xeon, timed from the AMD cache
                             "oneshot": [{"latency_ms": {"1": 1.0}, "latency_device": epyc}],
                             "layer_drop": [{"latency_ms": {"1": 1.0}, "latency_device": xeon}, {}]}}}
    lines = cpu_lines(seeds)
    assert lines[1].startswith("**Ran on another CPU, Intel(R) Xeon(R) Processor-2t:** uniform sub-nets")
    assert lines[2].startswith("**Latencies timed on another CPU, Intel(R) Xeon(R) Processor-2t:** layer dropping "
                               "+ FT (seed 0).")
    assert len(lines) == 3


def test_composed_picks_match_the_refined_front_by_configuration_not_position() -> None:
    """A front written again from a supernet retrained on another CPU can lose a point, shifting every later
    position (SST-2): the budgets' picks are still found on it by their sub-network."""
    def point(label: str, layers: int, params: float, val_error: float, test_error: float, **extra) -> dict:
        config = {"layers": list(range(layers)), "heads": [2] * layers + [0] * (6 - layers),
                  "units": [64] * layers + [0] * (6 - layers)}
        return {"label": label, "config": config, "params_fraction": params,
                "validation_error": val_error, "test_error": test_error, **extra}

    job = {"job_train_s": 300.0, "job_search_and_test_s": 100.0}
    default = [point("front 0", 5, 0.7, 0.10, 0.10, **job), point("front 1", 4, 0.45, 0.12, 0.14),
               point("front 2", 2, 0.3, 0.15, 0.20)]
    refined = [point("front 0 refined", 4, 0.45, 0.11, 0.12, refine_train_s=40.0, job_refine_s=100.0, **job),
               point("front 1 refined", 2, 0.3, 0.13, 0.15, refine_train_s=20.0)]  # the 0.7 point is gone
    seed = {"settings": {"main_metric": "accuracy", "majority_baseline": {"accuracy": 0.5}, "epochs": 3.0},
            "job_epochs": {"nasprune_importance": 3.0},
            "methods": {"nasprune_importance": default, "nasprune_importance_refined": refined,
                        "reference": [{"plain_train_s": 200.0}]}}
    n, refine_s, ratio, hypervolume = composed_picks(seed, (0.5, 0.33))
    evaluation = (100.0 - 60.0) / 2  # the refine stage's time less its training, shared evenly over its points
    assert n == 2 and refine_s == 40.0 + 20.0 + 2 * evaluation
    assert ratio == (300.0 + 100.0 + refine_s) / 200.0
    with_picks_refined = [default[0], refined[0], refined[1]]
    assert hypervolume == scoring.test_error_hypervolume(with_picks_refined, 0.5)
    assert composed_picks(seed, (0.75, 0.5)) is None  # the 0.7 pick is not on the refined front


def test_latency_caches_are_kept_per_cpu_model_and_thread_count() -> None:
    from prove import latency_cache_name

    xeon = latency_cache_name("cpu-Intel(R) Xeon(R) Processor-2t")
    assert xeon == "latency-cpu-intel-r-xeon-r-processor-2t.json"
    assert latency_cache_name("cpu-AMD EPYC 9R14 96-Core Processor-2t") != xeon
    assert latency_cache_name("cpu-Intel(R) Xeon(R) Processor-4t") != xeon


def test_the_report_holds_the_current_reading_and_no_work_diary(tmp_path: Path) -> None:
    """RESULTS.md states current results; the history of the work lives in bench/archive/, outside the report."""
    results = tmp_path / "RESULTS.md"
    main(["--out", str(tmp_path / "prove"), "--results", str(results)])
    text = results.read_text()
    assert (HERE / READING).read_text().strip() in text
    assert "session" not in text.lower() and "archive/NOTES.md" in text  # pointed at, not included
    assert not (HERE / "RESULTS_NOTES.md").exists()
