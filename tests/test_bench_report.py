"""The generated report says which of the issue's methods are finished for which task and seed, so a run that has
not been made (or stopped part-way) shows in RESULTS.md rather than silently missing from its tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from prove_report import COVERED, coverage_lines, load  # noqa: E402


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
