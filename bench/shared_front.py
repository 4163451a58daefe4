"""The shared family's front against the unshared front, at equal MACs and at equal stored bytes (issue 34; Chen et
al., Findings of EMNLP 2023).

A parameter-shared model (nasprune share) searched with its own genes (each block's heads and units, the number of
ODE steps, the solver) trades compute like an unshared one, but stores each block once. This reads two finished
searches of one task, the unshared model's (--unshared) and the shared one's (--shared), and sets their fronts side
by side in the two currencies the trade is about:

- MACs per example (compute): each family's non-dominated trials in (validation error, MACs);
- stored parameters, total (memory and download size; float32 bytes are 4x): the same in (error, params).

Both against the unshared search's full model: MACs and params as its shares, so one hypervolume scale (reference
1.1 in each, error as is) serves both families. At a grid of budgets (BUDGETS, shares of the full model) each
family's best validation metric within the budget. Validation figures are the trials' (the search's ranked
examples, the same for both searches of one task and seed); the fronts' test figures are in their front.json.

Torch-free: it reads trials.jsonl and front.json. Results go to <out>/<task>/seed<k>/results.json.

    python bench/shared_front.py --unshared bench/out/runs/sst2-1ep --shared bench/out/runs/sst2-shared-g1-1ep
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from checks import require
from prove import OUT, seed_folder

from search.pareto import hypervolume, non_dominated

BUDGETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
CURRENCIES = {"macs": "MACs", "params": "stored params (total)"}


def _read(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    require((folder / "trials.jsonl").is_file() and (folder / "front.json").is_file(),
            f"{folder}: no trials.jsonl and front.json (a finished search is needed)")
    trials = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines() if line.strip()]
    return trials, json.loads((folder / "front.json").read_text())


def _cost(trial: dict[str, Any], currency: str) -> float:
    return float(trial["macs"] if currency == "macs" else trial["params"]["total"])


def family(trials: list[dict[str, Any]], metric: str, full: dict[str, Any]) -> dict[str, Any]:
    """One family's fronts in each currency (as shares of the unshared full model), hypervolumes and budget bests."""
    values = np.array([t["validation"][metric] for t in trials])
    out: dict[str, Any] = {"trials": len(trials)}
    for currency in CURRENCIES:
        shares = np.array([_cost(t, currency) for t in trials]) / _cost(full, currency)
        F = np.column_stack([1 - values, shares])
        keep = non_dominated(F)
        order = np.argsort(shares[keep])
        out[currency] = {
            "front": [{"share": float(shares[keep][i]), metric: float(values[keep][i])} for i in order],
            "hypervolume": hypervolume(F[keep]),
            "best_within": {str(b): (float(values[shares <= b + 1e-12].max()) if (shares <= b + 1e-12).any()
                                     else None) for b in BUDGETS},
        }
    return out


def compare(unshared: Path, shared: Path) -> dict[str, Any]:
    plain_trials, plain_front = _read(unshared)
    shared_trials, shared_front = _read(shared)
    require(plain_front["task"] == shared_front["task"], f"the searches are on {plain_front['task']} and "
                                                         f"{shared_front['task']}: one task is needed")
    metric, full = plain_front["main_metric"], plain_front["reference"]
    return {"task": plain_front["task"], "metric": metric, "unshared_run": str(unshared), "shared_run": str(shared),
            "full": {"macs": full["macs"], "params": full["params"], "validation": full["validation"]},
            "shared_full": {k: shared_front["reference"][k] for k in ("macs", "params", "validation")},
            "families": {"unshared": family(plain_trials, metric, full),
                         "shared": family(shared_trials, metric, full)}}


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def table_lines(results: Path) -> list[str]:
    """The Markdown tables of one results.json (for bench/RESULTS.md)."""
    if not results.is_file():
        return []
    data = json.loads(results.read_text())
    metric, fams = data["metric"], data["families"]
    full, shared_full = data["full"], data["shared_full"]
    stored = shared_full["params"]["total"]
    lines = [f"Unshared full model: {full['params']['total']:,} params, {full['macs']:,} MACs, validation {metric} "
             f"{full['validation'][metric]:.4f}; the shared model at one step per layer: {stored:,} params "
             f"({stored / full['params']['total']:.1%}), validation {metric} {shared_full['validation'][metric]:.4f}. "
             "Trials: "
             f"{fams['unshared']['trials']} unshared, {fams['shared']['trials']} shared; validation figures on the "
             "search's ranked examples.", ""]
    for currency, name in CURRENCIES.items():
        lines += [f"Best validation {metric} within a budget of {name}, as a share of the unshared full model "
                  f"(hypervolume of error vs {name}: unshared {fams['unshared'][currency]['hypervolume']:.4f}, "
                  f"shared {fams['shared'][currency]['hypervolume']:.4f}):", "",
                  "| family | " + " | ".join(f"≤ {b:g}" for b in BUDGETS) + " |", "|---" * (len(BUDGETS) + 1) + "|"]
        for name_ in ("unshared", "shared"):
            best = fams[name_][currency]["best_within"]
            lines.append(f"| {name_} | " + " | ".join(_cell(best[str(b)]) for b in BUDGETS) + " |")
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unshared", type=Path, required=True, help="the unshared model's finished search")
    parser.add_argument("--shared", type=Path, required=True, help="the shared model's finished search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT.parent / "shared_front")
    args = parser.parse_args(argv)
    data = compare(args.unshared, args.shared)
    out = args.out / seed_folder(data["task"], args.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=1))
    print("\n".join(table_lines(out / "results.json")))
    return data


if __name__ == "__main__":
    main()
