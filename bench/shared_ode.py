"""Parameter-shared models run as an ODE (issue 34; Chen et al., Findings of EMNLP 2023): for each `nasprune share`
run, the shared model against the unshared model it learnt from (metric and encoder storage), and its metric at
every step count K, by Euler and by Heun, on the validation and test splits, with the function evaluations each
takes (Heun: two a step), so that K Euler steps stand beside K/2 Heun steps at equal compute. Normalised retention
is against the majority class, as bench/prove_report.py computes it: (metric - majority) / (unshared - majority).

Results go to <out>/<task>/seed0/<run name>.json. The check (bench/checks.py): the exported model at one Euler step
per layer reproduces the validation metric the share run recorded.

    python bench/shared_ode.py --share runs/sst2-shared-g1 --share runs/sst2-shared-g1-plain
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from checks import require

from supernet.config import SupernetConfig
from supernet.counting import count_macs
from supernet.evaluation import evaluate
from supernet.extract import load_exported
from supernet.refine import PrunedModel
from supernet.run import Run
from supernet.settings import ShareSpec
from supernet.share import MODEL_DIR, WORK_DIR, integrated

HERE = Path(__file__).resolve().parent


def retention(value: float, full: float, majority: float) -> float | None:
    return None if full == majority else (value - majority) / (full - majority)


def measure(folder: Path) -> dict[str, Any]:
    spec = ShareSpec.model_validate(json.loads((folder / WORK_DIR / "share_spec.json").read_text()))
    run = Run(folder / WORK_DIR, spec)
    record = json.loads((folder / MODEL_DIR / "subnetwork.json").read_text())
    model = load_exported(folder / MODEL_DIR)
    config = SupernetConfig.from_hf(model.config)
    metric = run.task.spec.main_metric
    validation = list(run.batches("validation"))
    tests = {split: list(run.batches(split)) for split in run.task.test}
    majority = run.task.majority_baseline[metric]
    teacher = record["teacher_metrics"]
    unshared_macs = count_macs(SupernetConfig.from_dict(config.to_dict() | {"layer_groups": None}), seq_len=128)
    rows = []
    for solver in ("euler", "heun"):
        for steps in config.ode_step_counts():
            model.set_ode_steps(steps, solver)
            row = {"solver": solver, "steps": steps, "evaluations": steps * (2 if solver == "heun" else 1),
                   "mac_share": count_macs(config, replace(integrated(config, steps), ode_solver=solver),
                                           seq_len=128) / unshared_macs,
                   "validation": evaluate(PrunedModel(model), validation, run.task.spec)[metric]}
            if tests:
                split, batches = next(iter(tests.items()))
                row["test"] = evaluate(PrunedModel(model), batches, run.task.spec)[metric]
                row["normalised_retention_test"] = retention(row["test"], teacher["test"][metric], majority)
            row["normalised_retention_validation"] = retention(row["validation"], teacher["validation"][metric],
                                                               majority)
            rows.append(row)
            print(json.dumps(row), flush=True)
    plain = next(r for r in rows if r["solver"] == "euler" and r["steps"] == config.num_layers)
    require(abs(plain["validation"] - record["metrics"]["validation"][metric]) < 1e-9,
            f"{folder}: the export at one step per layer scores {plain['validation']}, the run recorded "
            f"{record['metrics']['validation'][metric]}")
    return {"run": str(folder), "task": spec.task, "metric": metric, "majority": majority, "teacher": teacher,
            "params": record["params"], "teacher_params": record["teacher_params"], "share": record["share"],
            "tying": {k: v for k, v in record["tying"].items() if k != "candidate_losses"},
            "train_s": record["train_s"], "train_limit": spec.train_limit, "layers": config.num_layers,
            "rows": rows}


def table_lines(results: Path) -> list[str]:
    """One share run's figures as markdown (bench/prove_report.py puts it in RESULTS.md)."""
    data = json.loads(results.read_text())
    metric, share, teacher = data["metric"], data["share"], data["teacher"]
    storage = data["params"]["encoder"] / data["teacher_params"]["encoder"]
    test = teacher.get("test", {}).get(metric)
    lines = [f"`{Path(data['run']).name}`: {share['groups']} shared block(s) (from layers "
             f"{data['tying']['sources']}), {share['epochs']:g} epoch(s) of distillation on "
             f"{data['train_limit'] or 'all'} training examples, step-count augmentation "
             f"{'on' if share['step_augmentation'] else 'off'}, {data['train_s']:.0f} s; encoder storage "
             f"{data['params']['encoder']:,} params, {storage:.3f} of the unshared model's; the unshared model scores "
             f"{teacher['validation'][metric]:.4f} validation" + (f", {test:.4f} test" if test is not None else "")
             + f"; majority class {data['majority']:.4f}.", "",
             "| solver | steps K | evaluations | MACs (of unshared) | validation | test | normalised retention "
             "(test) |",
             "|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        kept = r.get("normalised_retention_test")
        lines.append(f"| {r['solver']} | {r['steps']} | {r['evaluations']} | {r['mac_share']:.2f} | "
                     f"{r['validation']:.4f} | {r.get('test', float('nan')):.4f} | "
                     f"{'–' if kept is None else f'{kept:.1%}'} |")
    return lines


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--share", type=Path, action="append", required=True, help="a `nasprune share` --out folder")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "shared_ode")
    args = parser.parse_args(argv)
    written = []
    for folder in args.share:
        data = measure(folder)
        target = args.out / data["task"].replace("/", "-") / "seed0" / f"{folder.name}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(data, indent=1))
        print("\n".join(table_lines(target)))
        written.append(target)
    return written


if __name__ == "__main__":
    main()
