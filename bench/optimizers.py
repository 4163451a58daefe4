"""Optimizer comparison: hypervolume reached by nsga2, morea, random and local with the same budget and seeds.

For one task: train the MiniLM supernet once (resumable run folder), then run every optimizer for every seed
on objectives (error, encoder params), 100 evaluations each by default. All runs share one cache of measured
sub-networks (persisted in figures.jsonl), so a sub-network proposed by several runs is evaluated once; each
run's result is saved as it finishes, so a rerun continues where it stopped.
Hypervolume: error in [0, 1] as is, params as a fraction of the full encoder, reference point 1.1 x 1.1.

    python bench/optimizers.py --task glue/rte
    python bench/optimizers.py --task glue/mrpc
    python bench/optimizers.py --task glue/sst2 --train-limit 20000
    python bench/optimizers.py --tiny --out /tmp/tiny-optimizers   # seconds: a tiny model on a few RTE rows

The check (bench/checks.py): every run spent exactly the evaluations it names, each a distinct sub-network
measured in the shared cache, and its front is non-dominated; a failed check exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import tiny
import torch
from checks import require

from search.latency import load_or_calibrate
from search.objectives import Figures, Measurements
from search.pareto import non_dominated
from search.runner import SearchConfig, SearchResult, run_search
from search.settings import LatencyShape
from supernet.config import SubNetworkConfig
from supernet.run import Run, train_run
from supernet.settings import RunSpec, TrainingConfig

OUT = Path(__file__).resolve().parent / "out" / "optimizers"


def require_budget(result: SearchResult, measurements: Measurements, evaluations: int, what: str) -> None:
    """The run compared is the run named: `evaluations` trials of distinct sub-networks, each measured (in the
    cache every run shares), and a front that no trial dominates."""
    configs = [trial.config for trial in result.trials]
    require(len(configs) == evaluations, f"{what}: {len(configs)} trials, not the {evaluations} evaluations named")
    require(len(set(configs)) == len(configs), f"{what}: a sub-network was counted twice")
    known = measurements.known()
    require(all(c in known for c in configs), f"{what}: a trial's sub-network was never measured")
    values = [list(t.objectives.values()) for t in result.front]
    require(all(non_dominated(values)), f"{what}: its front holds a dominated point")


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model on a few rows: 8 evaluations, 1 seed")
    parser.add_argument("--out", type=Path, default=OUT, help="results per task under this folder")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="glue/rte")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/glue"))
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--validation-limit", type=int, default=500)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--space", default="uniform")
    parser.add_argument("--evaluations", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--optimizers", nargs="+", default=["nsga2", "morea", "random", "local"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    changes = {}
    if args.tiny:
        args.model, args.data_dir = tiny.workspace(args.out / "tiny")
        args.evaluations, args.seeds, args.validation_limit, args.epochs = 8, [0], None, 1.0
        changes = {"max_length": tiny.TINY_MAX_LENGTH, "batch_size": 8, "eval_batch_size": 8}
    torch.set_num_threads(args.threads)
    folder = args.out / args.task.replace("/", "-")
    spec = RunSpec(model=args.model, task=args.task, data_dir=args.data_dir, train_limit=args.train_limit,
                   validation_limit=args.validation_limit, space=args.space,
                   training=TrainingConfig(epochs=args.epochs), **changes)
    train_run(spec, folder / "run")
    run = Run(folder / "run")
    supernet = run.load_supernet()
    table = load_or_calibrate(supernet.config, batch_size=LatencyShape().batch_size, seq_len=spec.max_length)
    measurements = Measurements(supernet=supernet, validation_batches=run.batches("validation"),
                                task=run.task.spec, latency=table, seq_len=spec.max_length)
    cache_file = folder / "figures.jsonl"
    if cache_file.is_file():
        for line in cache_file.read_text().splitlines():
            row = json.loads(line)
            measurements.remember(SubNetworkConfig.from_dict(row["config"]), Figures(**row["figures"]))
    space = run.space(supernet.config)
    results: dict[str, list[float]] = {}
    for optimizer in args.optimizers:
        for seed in args.seeds:
            path = folder / "results" / f"{optimizer}-{seed}.json"
            if not path.is_file():
                before = set(measurements.known())
                result = run_search(space, measurements, SearchConfig(
                    objectives=["error", "params"], optimizer=optimizer, evaluations=args.evaluations, seed=seed))
                require_budget(result, measurements, args.evaluations, f"{optimizer}, seed {seed}")
                with open(cache_file, "a") as f:
                    for sub, figures in measurements.known().items():
                        if sub not in before:
                            f.write(json.dumps({"config": sub.to_dict(), "figures": vars(figures)}) + "\n")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({"hypervolume": result.hypervolume,
                                            "hypervolume_history": result.hypervolume_history,
                                            "front": [t.to_dict() for t in result.front],
                                            "trials": [t.to_dict() for t in result.trials]}))
            results.setdefault(optimizer, []).append(json.loads(path.read_text())["hypervolume"])
    lines = [f"{args.task}: hypervolume after {args.evaluations} evaluations (error x encoder params, "
             f"validation {len(run.task.validation)} examples, space {args.space}, seeds {args.seeds})",
             "| optimizer | mean HV | std | per seed |", "|---|---|---|---|"]
    for optimizer, values in results.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {optimizer} | {statistics.mean(values):.4f} | {std:.4f} | "
                     + ", ".join(f"{v:.4f}" for v in values) + " |")
    training = json.loads((folder / "run" / "training.json").read_text())
    lines.append(f"supernet validation: full {training['validation']['full']}, "
                 f"smallest {training['validation']['smallest']}, majority {training['majority_baseline']}; "
                 f"{len(measurements.known())} distinct sub-networks evaluated in all")
    print("\n".join(lines))
    (folder / "summary.md").write_text("\n".join(lines) + "\n")
    return results


if __name__ == "__main__":
    main()
