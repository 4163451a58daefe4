"""The joint front (static structure + token-elimination schedule) against the static-only front of the same
supernet: what searching the schedule beside the structure buys, and what it costs the job.

Takes a trained supernet (bench/prove.py's importance job of --task and --seed, retrained if its weights were
removed; or --run; or --tiny's) and runs the same search twice, one after the other in one process, with the same
seed, budget and objectives (error and expected MACs, the objective that sees what dropping tokens saves): static,
then joint (`dynamic.token_elimination`: the schedule genes appended to the run's space). Each search runs in a
fresh copy of the supernet's run folder, so neither resumes nor reuses the other's evaluations. Reported side by
side:

- job cost: the wall time of each search job (search, front scored again, test split), and its evaluations;
- hypervolume in error vs expected MACs, on validation (the search's own figures) and on the test split (test
  metrics, expected MACs over the test split's lengths) where the task has test labels;
- hypervolume in error vs measured batch-1 latency: every point of both fronts exported (an eliminating point
  keeps its `token_keep`) and timed on the first --latency-examples validation examples, each run alone at its
  own length (no padding), medians of interleaved repeats, as a fraction of the full model's latency timed in the
  same loop.

Results go to bench/out/elimination_front/<task>/seed<k>/results.json (`--order joint,static`:
results-joint-first.json, the same comparison with the joint search first). Hypervolumes use bench/scoring.py's
normalisation: cost as a fraction of the full model's over 1.1, error over the majority class's error, reference
point (1, 1) for both fronts alike.

The checks (bench/checks.py): the joint front really holds points that drop tokens, both searches did the same
number of evaluations, every timed model is an exported model of the structure named (its schedule included),
and the exported points with a schedule gave their FFNs fewer tokens than they read (forward hooks).

    python bench/elimination_front.py --task glue/mrpc --seed 0
    python bench/elimination_front.py --tiny      # seconds: a tiny supernet trained on a few MRPC rows
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from checks import require, require_exported
from elimination import ffn_tokens
from prove import Stopwatch, add_trained_run_arguments, copy_trained, seed_folder, trained_run_folder
from scoring import PARAMS_REF

from search.job import run_search_job
from search.latency import load_or_calibrate
from search.pareto import hypervolume
from search.runner import SearchConfig
from search.settings import DynamicConfig, SearchJob
from supernet.batching import make_batches, token_counts
from supernet.config import SubNetworkConfig
from supernet.counting import expected_macs
from supernet.evaluation import dtype_name, exit_positions, predict_exits, resolve_dtype
from supernet.extract import extract
from supernet.run import Run, train_run
from supernet.settings import EVALUATION_DTYPES, RunSpec

OBJECTIVES = ["error", "expected_macs"]
KINDS = ("static", "joint")


def search_job(args: argparse.Namespace, kind: str) -> SearchJob:
    """The same search for both kinds but for the schedule genes."""
    search = SearchConfig(objectives=OBJECTIVES, evaluations=args.evaluations, seed=args.search_seed)
    return SearchJob(search=search, evaluation_dtype=args.dtype,
                     dynamic=DynamicConfig(token_elimination=kind == "joint"))


def warm_latency_table(spec: RunSpec, job: SearchJob, run: Run, supernet) -> None:
    """Calibrate the job's latency table now (it is cached on disk), so that neither timed job pays for it."""
    space = run.space(supernet.config)
    load_or_calibrate(supernet.config, batch_size=job.latency.batch_size,
                      seq_len=job.latency.seq_len or spec.max_length, unit_step=space.unit_step,
                      device=job.latency.device)


def run_search(source: Path, spec: RunSpec, job: SearchJob, folder: Path) -> dict[str, Any]:
    """One search job in a fresh copy of `source`'s trained run folder: its front and what it cost."""
    shutil.rmtree(folder, ignore_errors=True)  # a rerun measures the whole job again, never a resume
    copy_trained(source, folder, spec)
    with Stopwatch() as watch:
        run_search_job(spec, job, folder, progress=False)
    front = json.loads((folder / "front.json").read_text())
    return {"front": front, "search_s": watch.seconds, "cpu_share": watch.cpu_share,
            "evaluations": front["evaluations"], "load_average": os.getloadavg()[0]}


def scaled_hypervolume(pairs: Sequence[tuple[float, float]], chance_error: float) -> float:
    """bench/scoring.py's normalisation with a cost fraction in place of the params fraction: (cost / 1.1, error /
    majority-class error) under the reference (1, 1)."""
    return hypervolume([[cost / PARAMS_REF, error / chance_error] for cost, error in pairs], reference=[1.0, 1.0])


def scored_test_split(front: dict[str, Any], run: Run) -> tuple[str, str] | None:
    """(test split, key of its main metric in a point's "test") where the task has test labels, else None."""
    metric = front["main_metric"]
    splits = list(run.task.test)
    if not splits or not front["points"]:
        return None
    key = metric if len(splits) == 1 else f"{splits[0]}/{metric}"
    return (splits[0], key) if key in front["points"][0].get("test", {}) else None


@torch.no_grad()
def split_positions(supernet, sub: SubNetworkConfig, batches: list) -> list[int]:
    """Where each example of `batches` leaves under `sub`'s exit threshold (one pass over the exits)."""
    with supernet.use(replace(sub, exit_threshold=None)):
        logits, _ = predict_exits(supernet, batches)
    return exit_positions(logits, sub.exit_threshold, sub.open_positions()).tolist()


def macs_hypervolumes(front: dict[str, Any], supernet, chance_error: float, test: list | None,
                      key: str | None) -> dict[str, float | None]:
    """Error vs expected MACs on validation (the front's own figures) and on test (test metrics; expected MACs over
    the test lengths, an exiting point's examples counted up to where they leave), as fractions of the full
    model's."""
    full = front["reference"]["objectives"]["expected_macs"]
    validation = scaled_hypervolume([(p["objectives"]["expected_macs"] / full, p["objectives"]["error"])
                                     for p in front["points"]], chance_error)
    if test is None or key is None:
        return {"validation": validation, "test": None}
    config, lengths = supernet.config, token_counts(test)
    full_test = expected_macs(config, supernet.full_config(), lengths)
    pairs = []
    for point in front["points"]:
        sub = SubNetworkConfig.from_dict(point["config"])
        exits = None if sub.exit_threshold is None else split_positions(supernet, sub, test)
        pairs.append((expected_macs(config, sub, lengths, exit_layers=exits) / full_test, 1.0 - point["test"][key]))
    return {"validation": validation, "test": scaled_hypervolume(pairs, chance_error)}


@torch.inference_mode()
def run_alone(model: torch.nn.Module, examples: list[dict[str, torch.Tensor]]) -> None:
    for b in examples:
        model(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))


def exported_model(supernet, sub: SubNetworkConfig, what: str) -> torch.nn.Module:
    """`sub` exported (physically sliced, its schedule and exit threshold set), checked to be what its row names."""
    model = extract(supernet, sub)
    require_exported(model, sub, what)
    keep = model.model.token_keep
    require((keep is not None) == (sub.token_keep is not None),
            f"{what}: the exported model's token_keep is {keep}, the point's {sub.token_keep}")
    require(model.model.exit_threshold == sub.exit_threshold,
            f"{what}: the exported model's exit_threshold is {model.model.exit_threshold}, the point's "
            f"{sub.exit_threshold}")
    opened = None if sub.open_exits is None else frozenset(sub.open_rows())
    require(model.model.open_exits == opened,
            f"{what}: the exported model reads the exits of layers {model.model.open_exits}, the point {opened}")
    return model


def batch1_latencies(supernet, subs: dict[str, SubNetworkConfig], examples: list[dict[str, torch.Tensor]],
                     repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """time_alone of every sub-network of `subs`, exported from `supernet`."""
    return time_alone({key: exported_model(supernet, sub, f"latency of {key}") for key, sub in subs.items()},
                      examples, repeats)


def time_alone(models: dict[str, torch.nn.Module], examples: list[dict[str, torch.Tensor]],
               repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds to run `examples` one at a time through each model, repeats interleaved (the order reversed
    every other round, so a drift in load hits every model alike); and, from one untimed pass first, the tokens
    each model's FFNs were given as a share of every token through every layer it has (fewer where tokens are
    dropped or examples exit early)."""
    tokens = sum(token_counts(examples))
    ffn_share = {}
    for key, model in models.items():  # untimed: first-call allocations are not the model's cost
        with ffn_tokens(model) as seen:
            run_alone(model, examples)
        ffn_share[key] = seen[0] / (tokens * len(model.model.layers)) if model.model.layers else 1.0
    times: dict[str, list[float]] = {key: [] for key in models}
    order = list(models)
    for round_ in range(repeats):
        for key in order if round_ % 2 == 0 else reversed(order):
            started = time.perf_counter()
            run_alone(models[key], examples)
            times[key].append(time.perf_counter() - started)
    return {key: statistics.median(values) for key, values in times.items()}, ffn_share


def config_key(sub: SubNetworkConfig) -> str:
    return json.dumps(sub.to_dict(), sort_keys=True, separators=(",", ":"))


def latency_section(fronts: dict[str, dict[str, Any]], run: Run, supernet, chance_error: float,
                    args: argparse.Namespace) -> dict[str, Any]:
    """Batch-1 latency of every front point of both fronts and the full model, and each front's hypervolume in
    error vs latency fraction."""
    examples = run.task.validation[:args.latency_examples]
    alone = list(make_batches(examples, run.tokenizer, batch_size=1, max_length=run.spec.max_length,
                              is_regression=run.task.spec.is_regression))
    points = [SubNetworkConfig.from_dict(p["config"]) for front in fronts.values() for p in front["points"]]
    subs = {"full": supernet.full_config()} | {config_key(sub): sub for sub in points}  # a shared point once
    seconds, ffn_share = batch1_latencies(supernet, subs, alone, args.repeats)
    dropping = [key for key, sub in subs.items() if sub.token_keep is not None]
    require(any(ffn_share[key] < 1.0 for key in dropping),
            f"none of the {len(dropping)} exported points with a keep schedule gave its FFNs fewer tokens than it "
            f"read on these {len(alone)} examples: the latencies would show no elimination")
    fraction = {key: value / seconds["full"] for key, value in seconds.items()}
    per_kind = {}
    for kind, front in fronts.items():
        keys = [config_key(SubNetworkConfig.from_dict(p["config"])) for p in front["points"]]
        per_kind[kind] = {
            "hypervolume": scaled_hypervolume([(fraction[k], p["objectives"]["error"])
                                               for k, p in zip(keys, front["points"], strict=True)], chance_error),
            "latency_fraction": [fraction[k] for k in keys], "ffn_token_share": [ffn_share[k] for k in keys]}
    return {"examples": len(alone), "mean_length": statistics.mean(token_counts(alone)), "repeats": args.repeats,
            "full_s": seconds["full"], "models_timed": len(subs), "fronts": per_kind}


def summary(kind: str, result: dict[str, Any], macs: dict[str, float | None], *, dynamic: str = "token_keep",
            counted: str = "eliminating_points") -> dict[str, Any]:
    """One search's figures; `counted`: how many front points carry the runtime field `dynamic`."""
    front = result["front"]
    return {"kind": kind, "search_s": result["search_s"], "cpu_share": result["cpu_share"],
            "load_average": result["load_average"], "evaluations": result["evaluations"],
            "trials": front.get("trials"), "front_size": len(front["points"]),
            counted: sum(dynamic in p["config"] for p in front["points"]),
            "hypervolume_expected_macs": macs,
            "points": [{"config": p["config"], "objectives": p["objectives"], "validation": p["validation"],
                        "test": p.get("test"), "dynamics": p.get("dynamics")} for p in front["points"]]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_trained_run_arguments(parser, task="glue/mrpc", out="elimination_front")
    parser.add_argument("--search-seed", type=int, default=None, help="both searches' seed (default: --seed)")
    parser.add_argument("--evaluations", type=int, default=100, help="each search's evaluation budget")
    parser.add_argument("--dtype", choices=EVALUATION_DTYPES, default="auto", help="precision the searches rank in")
    parser.add_argument("--order", choices=("static,joint", "joint,static"), default="static,joint",
                        help="which search runs first (a rerun in the other order shows what the order costs)")
    parser.add_argument("--warmup-evaluations", type=int, default=2,
                        help="a short untimed search first (0: none), so neither timed job pays the process's "
                             "first-call costs")
    parser.add_argument("--latency-examples", type=int, default=200,
                        help="the first N validation examples timed one at a time")
    args = parser.parse_args(argv)
    source = trained_run_folder(args)
    if args.tiny:
        args.evaluations = min(args.evaluations, TINY_EVALUATIONS)
    if args.latency_examples < 1 or args.repeats < 1 or args.evaluations < 1 or args.warmup_evaluations < 0:
        parser.error("--latency-examples, --repeats and --evaluations must be at least 1, --warmup-evaluations "
                     "at least 0")
    args.search_seed = args.seed if args.search_seed is None else args.search_seed
    args.dtype = dtype_name(resolve_dtype(args.dtype))  # both searches rank in the same, named precision
    torch.set_num_threads(args.threads)

    source_run = Run(source)
    train_run(source_run.spec, source, progress=False)  # a run whose weights were removed trains the same ones again
    spec = source_run.spec
    out = Path(args.out) / seed_folder(spec.task, args.seed)  # the run's own task, whichever --run names
    out.mkdir(parents=True, exist_ok=True)
    supernet = source_run.load_supernet().eval()
    warm_latency_table(spec, search_job(args, "static"), source_run, supernet)

    if args.warmup_evaluations:  # untimed: the first job in a process pays one-time costs the second would not
        warmup = search_job(args, "joint")
        warmup = warmup.model_copy(update={"search": warmup.search.model_copy(
            update={"evaluations": args.warmup_evaluations})})
        run_search(source, spec, warmup, out / "warmup")
        shutil.rmtree(out / "warmup")
    order = args.order.split(",")
    results = {kind: run_search(source, spec, search_job(args, kind), out / kind) for kind in order}
    fronts = {kind: result["front"] for kind, result in results.items()}
    require(results["static"]["evaluations"] == results["joint"]["evaluations"],
            f"the static search did {results['static']['evaluations']} evaluations, the joint one "
            f"{results['joint']['evaluations']}: the fronts are not of the same budget")
    require(any("token_keep" in p["config"] for p in fronts["joint"]["points"]),
            f"the joint front ({len(fronts['joint']['points'])} points) holds no point that drops tokens: with this "
            "supernet and budget the search found no schedule worth its error, so there is no joint front to compare")

    metric = fronts["static"]["main_metric"]
    chance_error = 1.0 - fronts["static"]["majority_baseline"][metric]
    key = scored_test_split(fronts["static"], source_run)
    test = None if key is None else source_run.batches(key[0])
    macs = {kind: macs_hypervolumes(front, supernet, chance_error, test, key and key[1])
            for kind, front in fronts.items()}
    latency = latency_section(fronts, source_run, supernet, chance_error, args)
    data = {"task": spec.task, "seed": args.seed, "search_seed": args.search_seed, "threads": args.threads,
            "torch": torch.__version__, "dtype": args.dtype, "objectives": OBJECTIVES,
            "evaluations": args.evaluations, "main_metric": metric, "chance_error": chance_error,
            "test_split": key and key[0], "order": order,
            "warmup_evaluations": args.warmup_evaluations, "latency": latency,
            "searches": {kind: summary(kind, results[kind], macs[kind]) for kind in KINDS}}
    results_file = out / ("results.json" if order[0] == "static" else "results-joint-first.json")
    results_file.write_text(json.dumps(data, indent=1))
    print("\n".join(table_lines(results_file)))
    return data


TINY_EVALUATIONS = 12  # enough for the tiny joint search to put schedules on its front


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def table_lines(results: Path) -> list[str]:
    """The Markdown table of one task and seed's results.json (bench/prove_report.py puts it in RESULTS.md)."""
    if not results.is_file():
        return []
    data = json.loads(results.read_text())
    rows = data["searches"]
    latency = data["latency"]
    static_s = rows["static"]["search_s"]
    lines = [f"{data['evaluations']} evaluations per search (seed {data['search_seed']}, ranked in {data['dtype']}, "
             f"objectives {' and '.join(data['objectives'])}), run one after the other "
             f"({', '.join(data['order'])}) in one process"
             + (" after an untimed warm-up search" if data.get("warmup_evaluations") else "")
             + f", {data['threads']} thread(s). Batch-1 latency: the first "
             f"{latency['examples']} validation examples (mean {latency['mean_length']:.0f} tokens) each alone, "
             f"unpadded, median of {latency['repeats']} interleaved repeats, as a fraction of the full model's "
             f"({latency['full_s']:.2f} s for all of them). Hypervolumes: cost / 1.1 and error / majority-class "
             "error under (1, 1).", "",
             "| front | search job (s) | ÷ static (target ≤ 1.2 for joint) | evaluations | front size "
             "| points dropping tokens | HV error × expected MACs, validation | HV, test "
             "| HV error × batch-1 latency | 1-min load |",
             "|---" * 10 + "|"]
    for kind in data["order"]:
        row = rows[kind]
        hv = row["hypervolume_expected_macs"]
        lines.append(f"| {kind} | {row['search_s']:.1f} | {row['search_s'] / static_s:.2f} | {row['evaluations']} "
                     f"| {row['front_size']} | {row['eliminating_points']} | {fmt(hv['validation'])} "
                     f"| {fmt(hv['test'])} | {fmt(latency['fronts'][kind]['hypervolume'])} "
                     f"| {row['load_average']:.1f} |")
    return lines


if __name__ == "__main__":
    main()
