"""The generated report says which of the issue's methods are finished for which task and seed, so a run that has
not been made (or stopped part-way) shows in RESULTS.md rather than silently missing from its tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from prove_report import (  # noqa: E402
    COVERED,
    SharedMarks,
    baseline_training_times,
    coverage_lines,
    cpu_lines,
    load,
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
                                "FT (seed 0). Its wall times are that machine's."]
    assert cpu_lines({1: seeds[1]}) == []
