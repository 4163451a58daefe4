"""ODE-compensated against plain layer dropping (issue 34; the ODE view of Chen et al., Findings of EMNLP 2023): every
way of dropping layers from a trained supernet's full-width network, scored on the validation and test splits
plainly (the kept layers as they are) and compensated (a kept layer followed by m dropped ones takes one Euler step
of 1 + m along its residual branch: SubNetworkConfig.ode_compensation).

Scored on the trained supernet without retraining. Whether that is zero-shot depends on how the supernet was
trained: one whose space never drops layers (importance, per_layer at full depth) has never run a dropped stack,
while a `layers`-space supernet was trained on them (the "after the supernet's training" case); --run takes one
or more run folders and reports each. Reported per run, by the number of kept layers: the best and the mean
validation metric of every subset plain and compensated, how many subsets compensation improves, and the usual
top-dropping baseline (keep the first k layers) both ways with its test metric.

Results go to <out>/<task>/seed<k>/<run name>.json. The check (bench/checks.py): every figure is of the sub-network
named, at its widths (checked_evaluate), and the full network is the same both ways (nothing dropped: nothing
compensated).

    python bench/ode_compensation.py --run runs/sst2 --run runs/sst2-layers
    python bench/ode_compensation.py --tiny      # seconds: a tiny supernet
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from checks import checked_evaluate, require
from prove import add_trained_run_arguments, seed_folder, trained_run_folder

from supernet.config import SubNetworkConfig
from supernet.run import Run


def layer_subsets(num_layers: int, limit: int | None) -> list[tuple[int, ...]]:
    """Every non-empty proper subset of the layers (at most `limit` per kept count, the first in order)."""
    subsets = []
    for kept in range(1, num_layers):
        combos = list(itertools.combinations(range(num_layers), kept))
        subsets += combos[:limit] if limit else combos
    return subsets


def table_lines(results: Path) -> list[str]:
    """One run's figures as a markdown table (bench/prove_report.py puts it in RESULTS.md)."""
    data = json.loads(results.read_text())
    metric = data["metric"]
    trained = data.get("supernet") or {}
    lines = [f"Run `{data['run']}` ({data['space']} space, {trained.get('epochs', '?'):g} epoch(s) on "
             f"{trained.get('train_limit') or 'all'} training examples, {trained.get('validation_limit') or 'all'} "
             f"validation examples; full network {metric} {data['full']:.4f}, majority class "
             f"{data['majority_baseline'].get(metric, float('nan')):.4f}; validation unless marked test).", "",
             "| kept layers | subsets | best plain | best compensated | mean plain | mean compensated | compensation "
             "better | first k layers: plain | compensated | test plain | test compensated |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in data["summary"]:
        top = s["top_dropping"] or {}
        tests = [next(iter(top.get(k, {}).values()), None) for k in ("plain_test", "compensated_test")]
        cells = [f"{v:.4f}" if v is not None else "" for v in (top.get("plain"), top.get("compensated"), *tests)]
        lines.append(f"| {s['kept']} | {s['subsets']} | {s['best_plain']:.4f} | {s['best_compensated']:.4f} | "
                     f"{s['mean_plain']:.4f} | {s['mean_compensated']:.4f} | {s['improved']} of {s['subsets']} | "
                     + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], conflict_handler="resolve")
    add_trained_run_arguments(parser, task="glue/sst2", out="ode_compensation")
    parser.set_defaults(run=None)
    parser.add_argument("--run", type=Path, action="append", dest="runs", default=None,
                        help="a trained run folder (repeatable)")
    parser.add_argument("--per-count", type=int, default=None, help="at most this many subsets per kept count")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = args.runs or [trained_run_folder(args)]
    results = {}
    for folder in runs:
        run = Run(folder)
        supernet = run.load_supernet().eval()
        spec, metric = run.task.spec, run.task.spec.main_metric
        validation = list(run.batches("validation"))
        tests = {split: list(run.batches(split)) for split in run.task.test}
        config = supernet.config
        full = SubNetworkConfig.full(config)
        require(replace(full, ode_compensation=True) == full, "compensation changed the full network's config")
        rows = []
        for layers in layer_subsets(config.num_layers, args.per_count):
            plain = SubNetworkConfig(layers=layers, heads=config.layer_heads, units=config.layer_units)
            row: dict[str, Any] = {"layers": list(layers)}
            for name, sub in (("plain", plain), ("compensated", replace(plain, ode_compensation=True))):
                row[name] = checked_evaluate(supernet, validation, spec, sub=sub)[metric]
                if layers == tuple(range(len(layers))):  # the top-dropping baseline: its test metric too
                    row[f"{name}_test"] = {split: checked_evaluate(supernet, batches, spec, sub=sub)[metric]
                                           for split, batches in tests.items()}
            row["steps"] = list(replace(plain, ode_compensation=True).step_sizes())
            rows.append(row)
            print(f"{folder.name}: layers {list(layers)} steps {row['steps']}: {metric} plain {row['plain']:.4f} "
                  f"compensated {row['compensated']:.4f}", flush=True)
        summary = []
        for kept in range(1, config.num_layers):
            group = [r for r in rows if len(r["layers"]) == kept]
            top = next((r for r in group if r["layers"] == list(range(kept))), None)
            summary.append({
                "kept": kept, "subsets": len(group),
                "best_plain": max(r["plain"] for r in group), "best_compensated": max(r["compensated"] for r in group),
                "mean_plain": statistics.mean(r["plain"] for r in group),
                "mean_compensated": statistics.mean(r["compensated"] for r in group),
                "improved": sum(r["compensated"] > r["plain"] for r in group),
                "top_dropping": top and {k: top[k] for k in ("plain", "compensated", "plain_test",
                                                              "compensated_test") if k in top},
            })
        full_metric = checked_evaluate(supernet, validation, spec)[metric]
        data = {"run": str(folder), "task": run.spec.task, "space": run.spec.space, "metric": metric,
                "supernet": {"epochs": run.spec.training.epochs, "train_limit": run.spec.train_limit,
                             "validation_limit": run.spec.validation_limit, "model": run.spec.model},
                "full": full_metric, "majority_baseline": run.task.majority_baseline, "threads": args.threads,
                "torch": torch.__version__, "summary": summary, "rows": rows}
        out = Path(args.out) / seed_folder(run.spec.task, args.seed)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{folder.name}.json").write_text(json.dumps(data, indent=1))
        print("\n".join(table_lines(out / f"{folder.name}.json")))
        results[folder.name] = data
    return results


if __name__ == "__main__":
    main()
