"""What a smaller validation set buys the search: time against the quality of the front it finds.

The search evaluates every sub-network it tries on the validation split, so the split's size sets a large share
of a job's time (bench/RESULTS.md). `validation_limit` (a seeded random subset, `RunSpec.validation_limit`) cuts
that roughly in proportion, at the price of a noisier
choice. This script takes the supernet bench/prove.py's importance job trained (`nasprune_importance`, same task
and seed: the training is not repeated), runs the same search (100 evaluations, the job's seed) once per limit,
one after the other in one process (so their times are measured side by side), and scores each front on test
under bench/prove_report.py's hypervolume normalisation, with the best test metric at <= 75 / 50 / 33 % of the
encoder's parameters (chosen on the search's own validation subset, as a user would choose).

Since `SearchJob.search_examples` the service's job itself ranks on a subset (550 by default) and measures its
front again on the whole capped split: the `job` row of such a job is written as job-search<n>.json and reads "n,
front on N", beside the rows above, whose searches and fronts both see `limit` examples.

    python bench/search_budget.py --task glue/mrpc --seed 0 --limits job 275 550 full

`--dtype` is the precision the search ranks in (`SearchJob.evaluation_dtype`; the front is scored in float32
either way): auto, the service's default, is bfloat16 on a CPU that computes it natively. Each limit's result is
written to bench/out/search_budget/<task>/seed<k>/<limit>[-bfloat16][-search<j>].json when it ends (a rerun continues;
searches in float32, the default before bfloat16, carry no suffix); the table is printed at the end.

`--search-seed J` runs the searches with another seed on the same trained supernet: how much the front found
moves with the search's own randomness, the yardstick for any other difference between two rows.

The check (bench/checks.py): each search's front saw the number of validation examples its row names and ranked
in the precision it names; a failed check exits non-zero. `--prove` points at another bench/prove.py output (its
`--tiny` one for a run in seconds).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from checks import require
from prove import Stopwatch, copy_trained, seed_folder
from scoring import BUDGETS, best_under, test_error_hypervolume

from search.job import run_search_job
from search.runner import SearchConfig
from search.settings import SearchJob
from supernet.evaluation import dtype_name, resolve_dtype
from supernet.settings import EVALUATION_DTYPES, RunSpec

HERE = Path(__file__).resolve().parent
PROVE = HERE / "out" / "prove"

log = logging.getLogger("search_budget")


def prepare(source: Path, folder: Path, limit: int | None) -> RunSpec:
    """A run folder holding the source job's trained supernet, its spec with `validation_limit` set."""
    stored = RunSpec.from_dict(json.loads((source / "run.json").read_text()))
    spec = stored.model_copy(update={"validation_limit": limit})
    if not (folder / "supernet").is_dir():
        copy_trained(source, folder, spec)
    return spec


def score(front: dict[str, Any], chance_error: float) -> dict[str, Any]:
    """Test hypervolume and the best test metric under each budget, scored as bench/prove_report.py scores."""
    full, metric = front["reference"]["params"]["encoder"], front["main_metric"]
    points = [{"params_fraction": p["params"]["encoder"] / full, "validation_error": 1.0 - p["validation"][metric],
               "test_error": 1.0 - p["test"][metric], "test": p["test"]} for p in front["points"]]
    best = {str(budget): best_under(points, budget) for budget in BUDGETS}
    return {"hypervolume": test_error_hypervolume(points, chance_error), "front_size": len(points),
            "best_under": {k: p and {"fraction": p["params_fraction"], "test": p["test"]} for k, p in best.items()}}


def require_searched(folder: Path, examples: int, dtype: str) -> None:
    """The search in `folder` ranked `examples` validation examples in `dtype`, as the row will say."""
    front = json.loads((folder / "front.json").read_text())
    ranked_in = json.loads((folder / "search.json").read_text()).get("evaluation_dtype")
    seen = front.get("search_examples") or front.get("validation_examples")
    require(seen == examples, f"{folder}: the search ranked {seen} validation examples, not {examples}")
    require(ranked_in == dtype, f"{folder}: the search ranked in {ranked_in}, not {dtype}")


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prove", type=Path, default=PROVE, help="bench/prove.py's output folder")
    parser.add_argument("--task", default="glue/mrpc")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limits", nargs="+", default=["275", "550", "full"],
                        help="validation examples the search sees; 'full' for the whole split, 'job' for "
                             "bench/prove.py's job's own search (its front and time, not run again)")
    parser.add_argument("--evaluations", type=int, default=100)
    parser.add_argument("--dtype", choices=EVALUATION_DTYPES, default="auto",
                        help="precision the searches rank in (the job row keeps its own)")
    parser.add_argument("--search-seed", type=int, default=None,
                        help="the searches' seed (default: --seed, the job's); the job row is the job's own")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "out" / "search_budget"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    prove = args.prove / seed_folder(args.task, args.seed)
    source = prove / "nasprune_importance" / "run"
    if not (source / "training.json").is_file():
        raise SystemExit(f"{source} holds no trained supernet: run bench/prove.py --task {args.task} "
                         f"--seed {args.seed} --methods nasprune_importance first")
    settings = json.loads((prove / "settings.json").read_text())
    reference = json.loads((prove / "reference.json").read_text())[0]
    job_times = json.loads((source.parent / "times.json").read_text())  # the prove job's training and search
    metric = settings["main_metric"]
    out = Path(args.out) / seed_folder(args.task, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    dtype = dtype_name(resolve_dtype(args.dtype))
    search_seed = args.seed if args.search_seed is None else args.search_seed
    suffix = ("" if dtype == "float32" else f"-{dtype}") + ("" if search_seed == args.seed else f"-search{search_seed}")
    for limit_arg in args.limits:
        name = job_row_name(source) if limit_arg == "job" else f"{limit_arg}{suffix}"
        result_file = out / f"{name}.json"
        if result_file.is_file():
            continue
        size = settings["sizes"]["validation"]
        if limit_arg == "job":  # the prove job's own search (on its own validation_limit), timed in its own run
            elapsed = job_times["search_and_test_s"]
            job_spec = RunSpec.from_dict(json.loads((source / "run.json").read_text()))
            front, epochs, examples = (json.loads((source / "front.json").read_text()), job_spec.training.epochs,
                                       min(job_spec.validation_limit or size, size))
            searched = front.get("search_examples", examples)  # a job since SearchJob.search_examples ranks on fewer
            cpu_share = job_times.get("search_and_test_cpu_share")
            searched_in = json.loads((source / "search.json").read_text()).get("evaluation_dtype", "float32")
        else:
            spec = prepare(source, out / name, None if limit_arg == "full" else int(limit_arg))
            # ranked on the whole (capped) split, as every search did before SearchJob.search_examples: a row's
            # limit is the validation examples the search and its front both see
            job = SearchJob(search=SearchConfig(evaluations=args.evaluations, seed=search_seed), evaluation_dtype=dtype,
                            search_examples=None)
            with Stopwatch() as watch:
                run_search_job(spec, job, out / name)
            elapsed, cpu_share, searched_in = watch.seconds, watch.cpu_share, dtype
            front, epochs = json.loads((out / name / "front.json").read_text()), spec.training.epochs
            examples = min(spec.validation_limit or size, size)
            searched = examples
            require_searched(out / name, examples, dtype)
        result = {"task": args.task, "seed": args.seed, "limit": limit_arg,
                  "search_seed": args.seed if limit_arg == "job" else search_seed, "validation_examples": examples,
                  "search_examples": searched,
                  "validation_size": settings["sizes"]["validation"], "search_and_test_s": elapsed,
                  "load_average": None if limit_arg == "job" else os.getloadavg()[0], "threads": args.threads,
                  "cpu_share": cpu_share, "dtype": searched_in,
                  "train_s": job_times["train_s"],
                  "job_epochs": epochs,
                  "plain_per_epoch_s": reference["plain_train_s"] / settings["epochs"],
                  "main_metric": metric, **score(front, 1.0 - settings["majority_baseline"][metric])}
        result_file.write_text(json.dumps(result, indent=2))
    lines = table_lines(out)
    print("\n".join(lines))
    return lines


def job_row_name(source: Path) -> str:
    """The job row's file: "job" for a job that ranked on its whole (capped) validation split, "job-search<n>" for
    one that ranked on a subset of n (SearchJob.search_examples), so a job searched again keeps both rows."""
    front = json.loads((source / "front.json").read_text())
    searched, examples = front.get("search_examples"), front.get("validation_examples")
    return "job" if searched is None or searched == examples else f"job-search{searched}"


def fmt_load(load: float | None) -> str:
    return "–" if load is None else f"{load:.1f}"


def table_lines(folder: Path) -> list[str]:
    """The Markdown table of one task and seed's results, in increasing numbers of validation examples; the ratio
    column divides by the slowest search's time on the most examples."""
    rows = [json.loads(f.read_text()) for f in folder.glob("*.json")]
    if not rows:
        return []
    rows.sort(key=lambda r: (r.get("search_examples", r["validation_examples"]), r["validation_examples"],
                             r["limit"] == "job", r.get("dtype", "float32"), r.get("search_seed", r["seed"])))
    metric, first = rows[0]["main_metric"], rows[0]
    lines = [f"{first['task']} seed {first['seed']}, {first['threads']} threads: supernet training "
             f"{first['train_s']:.0f} s ({first['job_epochs']} epochs), plain fine-tuning "
             f"{first['plain_per_epoch_s']:.0f} s per epoch.", "",
             "| validation examples | search precision | search + test (s) | ÷ slowest's "
             "| whole job ÷ plain, same epochs "
             "| hypervolume | front size | " + " | ".join(f"test {metric} ≤ {b:.0%}" for b in BUDGETS)
             + " | 1-min load |",
             "|---" * (8 + len(BUDGETS)) + "|"]
    full = max(r["search_and_test_s"] for r in rows if r["validation_examples"] == rows[-1]["validation_examples"])
    for row in rows:
        best = [row["best_under"][str(b)] for b in BUDGETS]
        ratio = (row["train_s"] + row["search_and_test_s"]) / (row["plain_per_epoch_s"] * row["job_epochs"])
        share = f"{row['search_and_test_s'] / full:.2f}"
        source = row.get("source") or ("bench/prove.py's job" if row["limit"] == "job" else "")
        searched = row.get("search_examples", row["validation_examples"])
        size = f"{row['validation_examples']}" + (" (all)" if row["validation_examples"] == row["validation_size"]
                                                 else "")
        if searched != row["validation_examples"]:  # ranked on a subset, the front measured on all of them
            size = f"{searched}, front on {size}"
        size += f" ({source})" if source else ""
        cells = ["–" if b is None else f"{b['test'][metric]:.3f} ({b['fraction']:.0%})" for b in best]
        precision = row.get("dtype", "float32") + ("" if row.get("search_seed", row["seed"]) == row["seed"]
                                                   else f", search seed {row['search_seed']}")
        lines.append(f"| {size} | {precision} | {row['search_and_test_s']:.0f} | {share} | "
                     f"{ratio:.2f} | {row['hypervolume']:.3f} | "
                     f"{row['front_size']} | {' | '.join(cells)} | {fmt_load(row['load_average'])} |")
    return lines


if __name__ == "__main__":
    main()
