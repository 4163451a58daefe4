"""Which trials a search that ranked on a validation subset should measure again on the whole split.

A job ranks its 100 sub-networks on a seeded subset (`SearchJob.search_examples`) and then measures candidates
again in float32 on every validation example, keeping those the precise figures show non-dominated. This script
takes bench/prove.py's finished importance job (same task and seed), measures every one of its trials in float32
on the whole validation split and on test (timing each), and scores the front each rule would have kept, with the
float32 time the rule spends measuring its candidates again:

    subset front        the search's front as it ranked it, on the subset's figures (no second measurement)
    front, filtered     the subset's front measured again, dominated points dropped (the job's first rule)
    K layers            the first K non-dominated layers of the subset's ranking measured again, their front kept
                        (2 is the job's rule since: search.job.SUBSET_RESCORED_LAYERS)
    every trial         all trials measured again (what ranking on the whole split would choose among them)

Test hypervolume and the best test metric under each budget as bench/prove_report.py scores them. Figures are
cached in bench/out/front_rescoring/<task>/seed<k>/figures.jsonl (a rerun continues). The check
(bench/checks.py): every measurement ran its trial's sub-network at its widths.

    python bench/front_rescoring.py --task glue/mrpc --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from checks import checked_evaluate
from prove import seed_folder
from scoring import BUDGETS, best_under, test_error_hypervolume
from tqdm import tqdm

from search.job import read_trials
from search.pareto import first_layers, non_dominated
from supernet.config import SubNetworkConfig
from supernet.counting import count_params
from supernet.run import Run

HERE = Path(__file__).resolve().parent
log = logging.getLogger("front_rescoring")


def measure(run: Run, supernet, configs: list[SubNetworkConfig], cache: Path) -> dict[str, dict[str, Any]]:
    """float32 figures of every config on the whole validation split and on test, with the validation time."""
    known = {}
    if cache.is_file():
        for line in cache.read_text().splitlines():
            row = json.loads(line)
            known[row["key"]] = row
    validation, test = list(run.batches("validation")), list(run.batches("test"))
    spec = run.task.spec
    with open(cache, "a") as f:
        for config in tqdm(configs, desc="measuring again"):
            key = json.dumps(config.to_dict(), sort_keys=True)
            if key in known:
                continue
            started = time.perf_counter()
            metrics = checked_evaluate(supernet, validation, spec, sub=config, what=f"validation of {key}")
            seconds = time.perf_counter() - started
            row = {"key": key, "validation": metrics, "validation_s": seconds,
                   "test": checked_evaluate(supernet, test, spec, sub=config, what=f"test of {key}")}
            known[key] = row
            f.write(json.dumps(row) + "\n")
            f.flush()
    return known


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prove", type=Path, default=HERE / "out" / "prove", help="bench/prove.py's output folder")
    parser.add_argument("--task", default="glue/mrpc")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="nasprune_importance")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "out" / "front_rescoring"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    prove = args.prove / seed_folder(args.task, args.seed)
    folder = prove / args.method / "run"
    front = json.loads((folder / "front.json").read_text())
    if front.get("search_examples") in (None, front.get("validation_examples")):
        raise SystemExit(f"{folder}: this search ranked on the whole validation split; nothing to compare")
    run = Run(folder)
    supernet = run.load_supernet()
    metric = front["main_metric"]
    chance = 1.0 - json.loads((prove / "settings.json").read_text())["majority_baseline"][metric]
    trials = read_trials(folder)
    full = count_params(supernet.config, supernet.full_config()).encoder
    out = Path(args.out) / seed_folder(args.task, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    figures = measure(run, supernet, [t.config for t in trials], out / "figures.jsonl")

    def precise(t) -> dict[str, Any]:
        row = figures[json.dumps(t.config.to_dict(), sort_keys=True)]
        return {"params_fraction": t.objectives["params"] / full, "validation_error": 1 - row["validation"][metric],
                "test_error": 1 - row["test"][metric], "test": row["test"], "seconds": row["validation_s"]}

    names = front["objectives"]
    ranked = np.array([[t.objectives[n] for n in names] for t in trials])

    def kept_front(candidates: list[int]) -> list[dict[str, Any]]:
        points = [precise(trials[i]) for i in candidates]
        mask = non_dominated([[p["validation_error"], p["params_fraction"]] for p in points])
        return [p for p, keep in zip(points, mask, strict=True) if keep]

    rules: dict[str, tuple[list[dict[str, Any]], list[int]]] = {}
    subset_front = [{**precise(trials[i]), "validation_error": trials[i].objectives["error"]}
                    for i in first_layers(ranked, 1)]
    rules["subset front (not measured again)"] = (subset_front, [])
    for k in (1, 2, 3):
        candidates = [int(i) for i in first_layers(ranked, k)]
        label = {1: "front, filtered (the rule before)", 2: "2 layers (the job's rule)"}.get(k, f"{k} layers")
        rules[label] = (kept_front(candidates), candidates)
    rules["every trial"] = (kept_front(list(range(len(trials)))), list(range(len(trials))))

    lines = [f"{args.task} seed {args.seed}: {len(trials)} trials ranked on {front['search_examples']} of "
             f"{front['validation_examples']} validation examples; float32 on all of them.", "",
             "| rule | measured again | their float32 time (s) | front size | test hypervolume | "
             + " | ".join(f"test {metric} ≤ {b:.0%}" for b in BUDGETS) + " |",
             "|---" * (5 + len(BUDGETS)) + "|"]
    results = {}
    for label, (points, candidates) in rules.items():
        seconds = sum(precise(trials[i])["seconds"] for i in candidates)
        hv = test_error_hypervolume(points, chance)
        best = [best_under(points, b) for b in BUDGETS]
        cells = ["–" if p is None else f"{p['test'][metric]:.3f} ({p['params_fraction']:.0%})" for p in best]
        lines.append(f"| {label} | {len(candidates)} | {seconds:.0f} | {len(points)} | {hv:.3f} | "
                     + " | ".join(cells) + " |")
        results[label] = {"measured_again": len(candidates), "seconds": seconds, "front_size": len(points),
                          "hypervolume": hv}
    (out / "results.json").write_text(json.dumps({"task": args.task, "seed": args.seed, "rules": results,
                                                  "lines": lines}, indent=2))
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
