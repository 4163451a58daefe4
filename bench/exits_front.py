"""Early exits against static pruning (COST-EFF, Shen et al., EMNLP 2022): the front of a supernet trained with exits
and searched with exit thresholds, against the static front of the same model trained and searched without them.

Trains, one after the other in one process and from the same settings (bench/prove.py's importance job of --task
and --seed; --tiny: the tiny setting), two supernets: without exits (static) and with them (`training.exits`), each
in its own folder under --out, reused with its recorded training time when a previous run finished it. Then runs
the same search on each (same seed, budget and objectives: error and expected MACs, the objective that sees where
examples leave; with --cost latency error and the latency table's batch-1 prediction over the validation lengths,
which also prices each exit an input reads), the second with `dynamic.exits`. Reported side by side:

- job cost: training + search of each, the exits job as a multiple of the static one (target ≤ 1.3);
- hypervolume in error vs expected MACs on validation (the fronts' own figures) and on the test split (test
  metrics; expected MACs where each test example leaves, from one pass over the exits of each point);
- hypervolume in error vs measured batch-1 latency: every point of both fronts exported (an exiting point keeps its
  threshold) and timed on the first --latency-examples validation examples, each alone at its own length, medians
  of interleaved repeats, as a fraction of the static full model's latency timed in the same loop;
- for every exiting point: its batch-1 latency against (a) the same exported structure at full depth and (b) the
  fastest static front point whose validation metric is at least as good (the real bar), its expected MACs, mean
  exit layer, the exits it reads and the share of its encoder's MACs after the first of them (the most exiting can
  save);
- what exits cost the static points: the validation metric of the full network and of every static front structure
  at full depth on the exits supernet, against the static supernet's;
- the cheapest exiting point within 1 point (absolute) of the fully fine-tuned model (bench/prove.py's reference,
  else the static supernet's full network) and its expected MACs as a fraction of the full model's (COST-EFF's
  claim; target ≤ 1/5 on SST-2).

Results go to <out>/<task>/seed<k>/results.json. The checks (bench/checks.py): both searches did the same number of
evaluations (or the static one every member of its space), and every timed model is an exported model of the
structure (and threshold) named. Whether the exits front keeps a point that exits early (a front point opens only
the exits its validation examples left at, and one where none left is its structure at full depth) and whether a
timed example left early are reported (the FFN rows its exports saw), not checked: shallow exits that never become
confident are a finding.

    python bench/exits_front.py --task glue/mrpc --seed 0
    python bench/exits_front.py --task glue/mrpc --seed 0 --space layers   # exits with layer dropping instead
    python bench/exits_front.py --task glue/mrpc --seed 0 --cost latency   # both searches rank on batch-1 latency
    python bench/exits_front.py --tiny      # seconds: tiny supernets trained on a few MRPC rows
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import tiny
import torch
from checks import require
from elimination_front import (
    config_key,
    exported_model,
    fmt,
    macs_hypervolumes,
    run_search,
    scaled_hypervolume,
    scored_test_split,
    time_alone,
)
from elimination_front import summary as front_summary
from prove import EARLIER_CPU_MODEL, Stopwatch, add_trained_run_arguments, read_json, seed_folder, write_json
from prove import OUT as PROVE_OUT

from search.latency import device_name
from search.runner import SearchConfig
from search.settings import DynamicConfig, LatencyShape, SearchJob
from supernet.batching import make_batches, token_counts
from supernet.config import SubNetworkConfig
from supernet.counting import expected_macs
from supernet.evaluation import dtype_name, evaluate, resolve_dtype
from supernet.model import Supernet
from supernet.run import Run, same_run, train_run
from supernet.settings import EVALUATION_DTYPES, EXIT_LOSS_WEIGHTINGS, SPACE_NAMES, RunSpec, TrainingConfig

COSTS = ("expected_macs", "latency")  # the cost objective both searches rank on beside error (--cost)
KINDS = ("static", "exits")
TRAINING_FILE = "bench_training.json"  # this benchmark's record of how long a run folder's training took
TINY_EVALUATIONS = 12
TINY_EXIT_THRESHOLDS = tiny.TINY_EXIT_THRESHOLDS  # the tiny exits barely learn: τ up to 1 lets examples leave


def search_job(args: argparse.Namespace, kind: str) -> SearchJob:
    """The same search for both kinds but for the exit threshold gene. With --cost latency both rank on the latency
    table's batch-1 prediction over the validation examples' own lengths, which prices every exit an input reads
    (search.latency.LatencyTable.exit_ms); expected MACs cannot see an exit's check."""
    search = SearchConfig(objectives=["error", args.cost], evaluations=args.evaluations, seed=args.search_seed)
    dynamic = (DynamicConfig(exits=True, **({"exit_thresholds": args.exit_thresholds} if args.exit_thresholds else {}))
               if kind == "exits" else DynamicConfig())
    latency = LatencyShape(batch_size=1, lengths="validation") if args.cost == "latency" else LatencyShape()
    return SearchJob(search=search, evaluation_dtype=args.dtype, dynamic=dynamic, latency=latency)


def with_expected_macs(front: dict[str, Any], supernet: Supernet, lengths: list[int]) -> dict[str, Any]:
    """`front` with expected MACs among each point's (and the reference's) objectives where the search ranked on
    another cost: a dynamic point's from its `dynamics` (where its validation examples left), a static one's over
    the validation lengths the search measured, so every table reads one cost whatever the search ranked on."""
    for point in [*front["points"], front["reference"]]:
        if "expected_macs" not in point["objectives"]:
            dynamic = (point.get("dynamics") or {}).get("expected_macs")
            point["objectives"]["expected_macs"] = dynamic if dynamic is not None else expected_macs(
                supernet.config, SubNetworkConfig.from_dict(point["config"]), lengths)
    return front


def base_spec(args: argparse.Namespace) -> RunSpec:
    """The static run's settings: the tiny setting's, or bench/prove.py's importance job's (its run.json)."""
    if args.tiny:
        model, data_dir = tiny.workspace(args.tiny_root)
        return tiny.tiny_spec(model, data_dir)
    source = args.run or args.prove / seed_folder(args.task, args.seed) / "nasprune_importance" / "run"
    require((source / "run.json").is_file(), f"{source}: no run.json (run bench/prove.py --task {args.task} first, "
                                             "or name a trained run with --run)")
    return Run(source).spec


def static_space_size(spec: RunSpec, supernet: Supernet) -> int | None:
    """The number of sub-networks in the static search's space when it is small enough to run out of: the layers
    space holds 2^L - 1 (every non-empty set of kept layers). A static search that evaluated all of them has its
    best front although the exits search, whose thresholds multiply the space, went on to the budget."""
    return 2 ** supernet.config.num_layers - 1 if spec.space == "layers" else None


def reusable_static_search(out: Path, job: SearchJob) -> dict[str, Any] | None:
    """The static search an earlier run left in `out` (run_search's figures, its time from that run's record) when
    it ran `job`'s search, else None."""
    try:
        stored = read_json(out / "static" / "search.json")
        front = read_json(out / "static" / "front.json")
        record = read_json(out / "results.json")["searches"]["static"]
    except (OSError, KeyError, ValueError):
        return None
    asked = job.to_dict()
    if any(stored.get(key) != asked.get(key) for key in ("search", "dynamic", "latency", "evaluation_dtype")):
        return None
    return {"front": front, "evaluations": front["evaluations"], "reused": True,
            **{key: record[key] for key in ("search_s", "cpu_share", "load_average")}}


def trained(spec: RunSpec, folder: Path) -> dict[str, Any]:
    """Train `spec` into `folder` (or find it trained by an earlier run of this benchmark with the same settings)
    and say how long it took."""
    record = folder / TRAINING_FILE
    if (record.is_file() and (folder / "supernet" / "model.safetensors").is_file()
            and same_run(RunSpec.from_dict(read_json(folder / "run.json")), spec)):
        return read_json(record)
    shutil.rmtree(folder, ignore_errors=True)  # a half-trained folder would resume: its time would not be a cost
    with Stopwatch() as watch:
        train_run(spec, folder, progress=False)
    data = {"train_s": watch.seconds, "cpu_share": watch.cpu_share, "load_average": os.getloadavg()[0],
            "cpu": device_name("cpu")}
    write_json(record, data)
    return data


def static_cost_of_exits(static: Supernet, with_exits: Supernet, front: dict[str, Any], run: Run,
                         metric: str) -> dict[str, Any]:
    """The validation metric at full depth of the full network and of every static front structure, on the
    supernet trained without exits and on the one trained with them (what training the exits cost)."""
    batches = run.batches("validation")
    subs = {"full": static.full_config()} | {config_key(SubNetworkConfig.from_dict(p["config"])):
                                             SubNetworkConfig.from_dict(p["config"]) for p in front["points"]}
    rows = []
    for key, sub in subs.items():
        without = evaluate(static, batches, run.task.spec, sub=sub)[metric]
        trained_with = evaluate(with_exits, batches, run.task.spec, sub=sub)[metric]
        rows.append({"point": key, "static_supernet": without, "exits_supernet": trained_with})
    changes = [row["exits_supernet"] - row["static_supernet"] for row in rows[1:]]
    return {"full": rows[0], "points": rows[1:],
            "mean_change": statistics.mean(changes) if changes else None}


PROVE_REFERENCE = "fully fine-tuned model (bench/prove.py reference)"
FIFTH = 0.2  # the budget: a point at ≤ 1/5 of the full model's expected MACs


def reference_metric(args: argparse.Namespace, metric: str,
                     static_front: dict[str, Any]) -> tuple[float, float | None, str]:
    """The fully fine-tuned model's validation and test metrics (bench/prove.py's reference), else the static
    supernet's full network's."""
    reference = args.prove / seed_folder(args.task, args.seed) / "reference.json"
    if not args.tiny and reference.is_file():
        point = read_json(reference)[0]
        return point["validation"][metric], (point.get("test") or {}).get(metric), PROVE_REFERENCE
    full = static_front["reference"]
    return full["validation"][metric], (full.get("test") or {}).get(metric), "static supernet's full network"


def latency_section(fronts: dict[str, dict[str, Any]], supernets: dict[str, Supernet], run: Run,
                    chance_error: float, metric: str, args: argparse.Namespace) -> dict[str, Any]:
    """Batch-1 latency of every point of both fronts, of each exiting point's structure at full depth and of the
    static full model; each front's hypervolume in error vs latency fraction; each exiting point against its
    full-depth twin and the fastest static point at least as good."""
    examples = run.task.validation[:args.latency_examples]
    alone = list(make_batches(examples, run.tokenizer, batch_size=1, max_length=run.spec.max_length,
                              is_regression=run.task.spec.is_regression))
    lengths = token_counts(alone)
    models = {"full": exported_model(supernets["static"], supernets["static"].full_config(), "the full model")}
    keys: dict[str, list[str]] = {}
    for kind, front in fronts.items():
        keys[kind] = []
        for point in front["points"]:
            sub = SubNetworkConfig.from_dict(point["config"])
            key = f"{kind}:{config_key(sub)}"
            keys[kind].append(key)
            models[key] = exported_model(supernets[kind], sub, f"latency of {key}")
            if sub.exit_threshold is not None:
                models[f"{key}:full-depth"] = exported_model(supernets[kind], replace(sub, exit_threshold=None),
                                                             f"latency of {key} at full depth")
    seconds, ffn_share = time_alone(models, alone, args.repeats)
    exiting = [key for key in keys["exits"] if "exit_threshold" in key]
    # whether any timed example left early is a finding (reported per point), not a failure: a task whose shallow
    # exits never become confident is a result the figures must show
    fraction = {key: value / seconds["full"] for key, value in seconds.items()}
    per_kind = {kind: {"hypervolume": scaled_hypervolume(
        [(fraction[k], p["objectives"]["error"]) for k, p in zip(keys[kind], front["points"], strict=True)],
        chance_error), "latency_fraction": [fraction[k] for k in keys[kind]]} for kind, front in fronts.items()}
    static_points = list(zip(keys["static"], fronts["static"]["points"], strict=True))
    comparisons = []
    for key, point in zip(keys["exits"], fronts["exits"]["points"], strict=True):
        if key not in exiting:
            continue
        value = point["validation"][metric]
        as_good = [(fraction[k], k) for k, p in static_points if p["validation"][metric] >= value]
        bar = min(as_good) if as_good else None
        comparisons.append({
            "config": point["config"], "validation": value, "dynamics": point.get("dynamics"),
            "after_first_exit": after_first_exit(supernets["exits"], SubNetworkConfig.from_dict(point["config"]),
                                                 lengths),
            "expected_macs_fraction": (point["objectives"]["expected_macs"]
                                       / fronts["exits"]["reference"]["objectives"]["expected_macs"]),
            "latency_fraction": fraction[key], "full_depth_fraction": fraction[f"{key}:full-depth"],
            "timed_ffn_share": ffn_share[key], "timed_ffn_share_full_depth": ffn_share[f"{key}:full-depth"],
            "speedup_over_full_depth": seconds[f"{key}:full-depth"] / seconds[key],
            "static_bar_fraction": None if bar is None else bar[0],
            "speedup_over_static_bar": None if bar is None else seconds[bar[1]] / seconds[key]})
    return {"examples": len(alone), "mean_length": statistics.mean(lengths), "repeats": args.repeats,
            "full_s": seconds["full"], "models_timed": len(models), "fronts": per_kind, "exiting": comparisons}


def after_first_exit(supernet: Supernet, sub: SubNetworkConfig, lengths: list[int]) -> float:
    """The share of the structure's MACs (at full depth, over `lengths`) in the layers after the first exit it reads:
    the most that exiting can save, were every input to leave there."""
    first = (sub.open_positions() or (1,))[0]
    full = replace(sub, exit_threshold=None)
    encoder = expected_macs(supernet.config, full, lengths, encoder_only=True)
    kept = expected_macs(supernet.config, sub, lengths, encoder_only=True, exit_layers=[first] * len(lengths))
    return (encoder - kept) / encoder if encoder else 0.0


def cheapest_close_point(points: list[dict[str, Any]], full: float, metric: str, reference: float,
                         within: float = 0.01, split: str = "validation") -> dict[str, Any] | None:
    """The point of least expected MACs whose `split` metric is within `within` (absolute) of the reference, with
    that cost as a fraction of `full` (the full model's expected MACs); points not scored on `split` are skipped."""
    close = [p for p in points if p.get(split) and p[split][metric] >= reference - within]
    if not close:
        return None
    best = min(close, key=lambda p: p["objectives"]["expected_macs"])
    return {"config": best["config"], split: best[split][metric],
            "expected_macs_fraction": best["objectives"]["expected_macs"] / full, "dynamics": best.get("dynamics")}


def summary(kind: str, training: dict[str, Any], result: dict[str, Any],
            macs: dict[str, float | None]) -> dict[str, Any]:
    """elimination_front's summary of a search, counting exiting points, with the training that preceded it."""
    return {"train_s": training["train_s"], "train_cpu": training.get("cpu", EARLIER_CPU_MODEL),
            "job_s": training["train_s"] + result["search_s"], "search_reused": result.get("reused", False),
            "full_expected_macs": result["front"]["reference"]["objectives"]["expected_macs"],
            "full_validation": result["front"]["reference"]["validation"]} | front_summary(
        kind, result, macs, dynamic="exit_threshold", counted="exiting_points")


# How a record's exits supernet trained its exits (training.exit_loss_weighting, or detach_exits), in the tables'
# words.
EXIT_TRAINING_WORDS = {"depth": "exits' losses weighed by depth (PABEE)", "mean": "exits' losses weighed alike (mean)",
                       "detached": "exit heads trained on detached hidden states (DeeBERT)"}
DEFAULT_EXIT_LOSS_WEIGHTING = TrainingConfig.model_fields["exit_loss_weighting"].default


def exit_training(data: dict[str, Any]) -> str:
    """How a results record's exits supernet trained its exits: "detached", or its exit-loss weighting (a record
    from before the option was one weighed alike)."""
    return "detached" if data.get("detach_exits") else data.get("exit_loss_weighting", "mean")


def default_out(base: str, space: str | None, training: str, cost: str) -> str:
    """Where a run of these options goes unless --out says: exits_front[_<space>][_depth|_detached][_latency]
    beside `base` (`training`: exit_training's value)."""
    return (base + (f"_{space}" if space else "") + (f"_{training}" if training in ("depth", "detached") else "")
            + ("_latency" if cost == "latency" else ""))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # --run: the static run whose settings both trainings take
    add_trained_run_arguments(parser, task="glue/mrpc", out="exits_front")
    parser.add_argument("--search-seed", type=int, default=None, help="both searches' seed (default: --seed)")
    parser.add_argument("--evaluations", type=int, default=100, help="each search's evaluation budget")
    parser.add_argument("--exit-thresholds", type=lambda v: [float(x) for x in v.split(",")], default=None,
                        help="the exits search's threshold grid (default: the service's)")
    parser.add_argument("--dtype", choices=EVALUATION_DTYPES, default="auto", help="precision the searches rank in")
    parser.add_argument("--latency-examples", type=int, default=200,
                        help="the first N validation examples timed one at a time")
    parser.add_argument("--space", choices=SPACE_NAMES, default=None,
                        help="both supernets' search space instead of the run's (layers: exits with layer dropping, "
                             "to set against the width pruning COST-EFF prefers); results under "
                             "bench/out/exits_front_<space> unless --out says otherwise")
    parser.add_argument("--exit-loss-weighting", choices=EXIT_LOSS_WEIGHTINGS, default=DEFAULT_EXIT_LOSS_WEIGHTING,
                        help="how the exits supernet weighs its exits' losses (training.exit_loss_weighting, default "
                             "%(default)s: depth is PABEE's, the k-th exit weighing k; mean weighs them alike); "
                             "results under bench/out/exits_front_depth for depth unless --out says otherwise")
    parser.add_argument("--detach-exits", action="store_true",
                        help="the exits supernet's heads learn on detached hidden states (training.detach_exits, "
                             "DeeBERT): its backbone trains as the static one's; results under "
                             "bench/out/exits_front_detached unless --out says otherwise")
    parser.add_argument("--reuse-static-search", action="store_true",
                        help="keep the static search an earlier run of the same options left in --out (its front and "
                             "its timings, from that run's results.json) instead of searching again: the static side "
                             "is the same when only the exits supernet or its search changed")
    parser.add_argument("--cost", choices=COSTS, default="expected_macs",
                        help="the cost both searches rank on beside error: expected MACs (what exiting saves in "
                             "compute), or latency, the latency table's batch-1 prediction on the validation "
                             "lengths (prices each exit's check); results under "
                             "bench/out/exits_front[_<space>]_latency unless --out says otherwise")
    args = parser.parse_args(argv)
    if args.out == parser.get_default("out"):
        args.out = default_out(args.out, args.space, exit_training(vars(args)), args.cost)
    if args.tiny:
        args.tiny_root = args.tiny_root or Path(os.environ.get("TMPDIR", "/tmp")) / f"nasprune-tiny-exits-{os.getpid()}"
        args.out, args.repeats = args.tiny_root / "out", 1
        args.evaluations = min(args.evaluations, TINY_EVALUATIONS)
        args.exit_thresholds = args.exit_thresholds or TINY_EXIT_THRESHOLDS
    if args.latency_examples < 1 or args.repeats < 1 or args.evaluations < 1:
        parser.error("--latency-examples, --repeats and --evaluations must be at least 1")
    args.search_seed = args.seed if args.search_seed is None else args.search_seed
    args.dtype = dtype_name(resolve_dtype(args.dtype))  # both searches rank in the same, named precision
    torch.set_num_threads(args.threads)

    static_spec = base_spec(args)
    if args.space:
        static_spec = static_spec.model_copy(update={"space": args.space})
    exits_training = {"exits": True, "exit_loss_weighting": args.exit_loss_weighting, "detach_exits": args.detach_exits}
    specs = {"static": static_spec, "exits": RunSpec.model_validate(static_spec.to_dict() | {
        "training": static_spec.training.to_dict() | exits_training})}
    out = Path(args.out) / seed_folder(static_spec.task, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    training = {kind: trained(spec, out / f"{kind}-run") for kind, spec in specs.items()}
    reused = reusable_static_search(out, search_job(args, "static")) if args.reuse_static_search else None
    results = {kind: reused if kind == "static" and reused else run_search(out / f"{kind}-run", specs[kind],
                                                                          search_job(args, kind), out / kind)
               for kind in KINDS}
    fronts = {kind: result["front"] for kind, result in results.items()}

    runs = {kind: Run(out / kind) for kind in KINDS}
    supernets = {kind: runs[kind].load_supernet().eval() for kind in KINDS}
    lengths = token_counts(runs["static"].batches("validation"))  # what the searches measured expected MACs over
    for kind in KINDS:  # the tables read expected MACs whatever the searches ranked on
        with_expected_macs(fronts[kind], supernets[kind], lengths)
    done = {kind: results[kind]["evaluations"] for kind in KINDS}
    require(done["static"] == done["exits"] or done["static"] == static_space_size(static_spec, supernets["static"]),
            f"the static search did {done['static']} evaluations, the exits one {done['exits']}: the fronts are not "
            "of the same budget")
    metric = fronts["static"]["main_metric"]
    chance_error = 1.0 - fronts["static"]["majority_baseline"][metric]
    key = scored_test_split(fronts["static"], runs["static"])
    test = None if key is None else runs["static"].batches(key[0])
    macs = {kind: macs_hypervolumes(front, supernets[kind], chance_error, test, key and key[1])
            for kind, front in fronts.items()}
    latency = latency_section(fronts, supernets, runs["static"], chance_error, metric, args)
    reference, reference_test, reference_name = reference_metric(args, metric, fronts["static"])
    full_macs = fronts["exits"]["reference"]["objectives"]["expected_macs"]
    data = {"task": static_spec.task, "run": None if args.run is None else str(args.run), "seed": args.seed,
            "space": static_spec.space,
            "search_seed": args.search_seed, "threads": args.threads, "cpu": device_name("cpu"),
            "torch": torch.__version__, "dtype": args.dtype, "objectives": ["error", args.cost],
            "space_option": args.space, "cost": args.cost, "exit_loss_weighting": args.exit_loss_weighting,
            "detach_exits": args.detach_exits,
            "evaluations": args.evaluations, "main_metric": metric, "chance_error": chance_error,
            "exit_thresholds": search_job(args, "exits").dynamic.exit_thresholds,
            "test_split": key and key[0], "latency": latency,
            "static_cost_of_exits": static_cost_of_exits(supernets["static"], supernets["exits"], fronts["static"],
                                                         runs["static"], metric),
            "reference": {"metric": reference, "test": reference_test, "what": reference_name,
                          "cheapest_within_1pt": cheapest_close_point(fronts["exits"]["points"], full_macs, metric,
                                                                      reference)},
            "searches": {kind: summary(kind, training[kind], results[kind], macs[kind]) for kind in KINDS}}
    results_file = out / "results.json"
    results_file.write_text(json.dumps(data, indent=1))
    print("\n".join(table_lines(results_file)))
    return data


def table_lines(results: Path) -> list[str]:
    """The Markdown tables of one task and seed's results.json (for bench/RESULTS.md)."""
    if not results.is_file():
        return []
    data = json.loads(results.read_text())
    rows, latency, metric = data["searches"], data["latency"], data["main_metric"]
    static_job = rows["static"]["job_s"]
    lines = [f"{data['evaluations']} evaluations per search (seed {data['search_seed']}, ranked in {data['dtype']}, "
             f"objectives {' and '.join(data['objectives'])}; thresholds {data['exit_thresholds']}"
             + f"; the exits supernet's {EXIT_TRAINING_WORDS[exit_training(data)]}), "
             f"{data['threads']} thread(s), {data.get('cpu', EARLIER_CPU_MODEL)}. "
             + machines_line(data) + f"Batch-1 latency: the first {latency['examples']} validation examples (mean "
             f"{latency['mean_length']:.0f} tokens) each alone, unpadded, median of {latency['repeats']} "
             f"interleaved repeats, as a fraction of the static full model's ({latency['full_s']:.2f} s for all of "
             "them). Hypervolumes: cost / 1.1 and error / majority-class error under (1, 1).", "",
             "| front | job (s) | ÷ static (target ≤ 1.3) | training (s) | search (s) | front size | exiting points "
             "| HV error × expected MACs, validation | HV, test | HV error × batch-1 latency |",
             "|---" * 10 + "|"]
    for kind in KINDS:
        row = rows[kind]
        hv = row["hypervolume_expected_macs"]
        lines.append(f"| {kind} | {row['job_s']:.0f} | {row['job_s'] / static_job:.2f} | {row['train_s']:.0f} "
                     f"| {row['search_s']:.0f} | {row['front_size']} | {row['exiting_points']} "
                     f"| {fmt(hv['validation'])} | {fmt(hv['test'])} "
                     f"| {fmt(latency['fronts'][kind]['hypervolume'])} |")
    if latency["exiting"]:
        lines += ["", f"| exiting point: τ | validation {metric} | mean exit layer | expected MACs ÷ full "
                      "| exits read (layers) | encoder MACs after the first | batch-1 latency ÷ full "
                      "| speed-up over its full depth | over the fastest static point as good "
                      "| timed FFN rows ÷ full depth's |",
                  "|---" * 10 + "|"]
    for row in latency["exiting"]:
        dynamics = row["dynamics"] or {}
        bar = row["speedup_over_static_bar"]
        lines.append(f"| {row['config']['exit_threshold']} | {row['validation']:.4f} "
                     f"| {dynamics.get('mean_exit_layer', float('nan')):.2f} "
                     f"| {row['expected_macs_fraction']:.3f} | {_exits_read(row['config'])} "
                     f"| {_share(row.get('after_first_exit'))} "
                     f"| {row['latency_fraction']:.3f} "
                     f"| {row['speedup_over_full_depth']:.2f}x | {'none as good' if bar is None else f'{bar:.2f}x'} "
                     f"| {row['timed_ffn_share'] / row['timed_ffn_share_full_depth']:.3f} |")
    if not latency["exiting"]:
        lines += ["", "No point of the exits front exits early: at the thresholds its search kept, no validation "
                      "example left before the last kept layer, so each point is its structure at full depth."]
    if latency["exiting"] and not any(row["timed_ffn_share"] < row["timed_ffn_share_full_depth"]
                                      for row in latency["exiting"]):
        lines += ["", f"No timed example left early at any exiting point ({len(latency['exiting'])}): their exits "
                      "were never confident enough on these examples."]
    trials = rows["exits"].get("trials")
    if trials:
        lines += ["", f"The exits search scored every threshold of each structure it evaluated from one pass: "
                      f"{trials} trials from {rows['exits']['evaluations']} evaluations."]
    else:
        lines += ["", "This record's exits search predates scoring every threshold of a structure it evaluates: each "
                      "of its evaluations was one (structure, threshold) pair, and its front was measured again only "
                      "at the thresholds ranked best."]
    covered = covered_points(rows, latency)
    lines += ["", "Static front points covered by the exits front (an exits point at most as costly and at least as "
                  "accurate on validation; the target asks for all): "
                  + ", ".join(f"{count} of {rows['static']['front_size']} in {name}" for name, count in covered.items())
                  + "."]
    cost = data["static_cost_of_exits"]
    close = data["reference"]["cheapest_within_1pt"]
    own = {kind: own_full_close(rows[kind], metric) for kind in KINDS}
    full_change = cost["full"]["exits_supernet"] - cost["full"]["static_supernet"]
    lines += ["", f"What exits cost the static points (validation {metric} at full depth, supernet trained with exits "
                  f"minus without): full network {full_change:+.4f}"
                  + ("" if cost["mean_change"] is None else f", static front structures {cost['mean_change']:+.4f} "
                     "on average") + ".",
              f"Cheapest exiting-front point within 1 point of the {data['reference']['what']} "
              f"({data['reference']['metric']:.4f}): "
              + ("none." if close is None else f"{close['validation']:.4f} at {close['expected_macs_fraction']:.3f} "
                 "of the full model's expected MACs (target ≤ 0.2 on SST-2)."),
              "Cheapest point within 1 point of its own supernet's full network, as a fraction of the full model's "
              "expected MACs: " + ", ".join(f"{kind} {fmt(own[kind])}" for kind in KINDS) + "."]
    return lines + reference_lines(results, data)


def covered_points(rows: dict[str, dict[str, Any]], latency: dict[str, Any]) -> dict[str, int]:
    """How many static front points some exits front point weakly dominates, in error × expected MACs and in
    error × measured batch-1 latency (the issue's "the exits front dominates the static one" is all of them)."""
    def pairs(kind: str, costs: list[float]) -> list[tuple[float, float]]:
        return [(cost, point["objectives"]["error"]) for cost, point in zip(costs, rows[kind]["points"], strict=True)]

    def count(static: list[tuple[float, float]], exits: list[tuple[float, float]]) -> int:
        return sum(any(c <= cost and e <= error for c, e in exits) for cost, error in static)

    macs = {kind: [p["objectives"]["expected_macs"] for p in rows[kind]["points"]] for kind in KINDS}
    timed = {kind: latency["fronts"][kind]["latency_fraction"] for kind in KINDS}
    return {"expected MACs": count(pairs("static", macs["static"]), pairs("exits", macs["exits"])),
            "batch-1 latency": count(pairs("static", timed["static"]), pairs("exits", timed["exits"]))}


def machines_line(data: dict[str, Any]) -> str:
    """What the job column compares: both trainings and searches on this machine, or a training reused from a run
    on another one (its time is that machine's, so the job ratio mixes machines)."""
    here = data.get("cpu", EARLIER_CPU_MODEL)
    trained_on = {kind: data["searches"][kind].get("train_cpu", EARLIER_CPU_MODEL) for kind in KINDS}
    reused = ("The static search is an earlier run's (--reuse-static-search), its time as measured then. "
              if data["searches"]["static"].get("search_reused") else "")
    if all(cpu == here for cpu in trained_on.values()):
        return "Job: training + search, both trained and searched one after the other in one process. " + reused
    return ("Job: training + search; the trainings were timed on " + ", ".join(
        f"{cpu} ({kind})" for kind, cpu in trained_on.items()) + " and the searches here, so the job ratio compares "
        "machines and is no measure of what exits cost. " + reused)


def reference_lines(results: Path, data: dict[str, Any]) -> list[str]:
    """The reference on the test split too (its validation figure is the best of its learning rates and epochs on
    that same validation split, so it flatters it), and the most accurate point of each front at ≤ 1/5 of the full
    model's expected MACs as a share of the reference, COST-EFF's own measure (it keeps 96.5 % of BERT-base's GLUE
    score at 1/19 of its FLOPs)."""
    metric, reference = data["main_metric"], data["reference"]
    if "test" in reference:
        test = reference["test"]
    else:
        test = prove_reference_test(results, metric) if reference["what"] == PROVE_REFERENCE else None
    fronts = {kind: data["searches"][kind] for kind in KINDS}
    lines = []
    if test is not None:
        close = {kind: cheapest_close_point(front["points"], front["full_expected_macs"], metric, test, split="test")
                 for kind, front in fronts.items()}
        lines.append(f"On the test split, where the {reference['what']} scores {test:.4f}, the cheapest point within "
                     "1 point: " + ", ".join(f"{kind} " + ("none" if close[kind] is None else
                                                         f"{close[kind]['test']:.4f} at "
                                                         f"{close[kind]['expected_macs_fraction']:.3f}")
                                            for kind in KINDS)
                     + " of the full model's expected MACs" + (
                         " (the reference's validation figure is the best of its learning rates and epochs on that "
                         "same split, so the test split is the fairer bar)." if reference["what"] == PROVE_REFERENCE
                         else "."))
    best = {}
    for kind, front in fronts.items():
        under = [p for p in front["points"] if p["objectives"]["expected_macs"] <= FIFTH * front["full_expected_macs"]]
        best[kind] = max(under, key=lambda p: p["validation"][metric], default=None)

    def share(point: dict[str, Any] | None) -> str:
        if point is None:
            return "none"
        text = f"{point['validation'][metric]:.4f} ({100 * point['validation'][metric] / reference['metric']:.1f} %"
        if test is not None and point.get("test"):
            text += f"; test {point['test'][metric]:.4f}, {100 * point['test'][metric] / test:.1f} %"
        return text + ")"

    lines.append("Most accurate point at ≤ 1/5 of the full model's expected MACs, validation "
                 f"{metric} (share of the reference's): " + ", ".join(f"{kind} {share(best[kind])}" for kind in KINDS)
                 + "; COST-EFF keeps 96.5 % of BERT-base's score at 1/19 of its FLOPs.")
    return lines


def prove_reference_test(results: Path, metric: str) -> float | None:
    """The test metric of bench/prove.py's reference beside a record from before results kept it:
    <out>/<task>/seed<k>/results.json reads bench/out/prove/<task>/seed<k>/reference.json."""
    reference = PROVE_OUT / results.parent.parent.name / results.parent.name / "reference.json"
    return (read_json(reference)[0].get("test") or {}).get(metric) if reference.is_file() else None


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def _exits_read(config: dict[str, Any]) -> str:
    """The supernet layers (0-based) whose exits a point reads: its open exits, or every kept layer's but the last."""
    opened = config.get("open_exits", config["layers"][:-1])
    return ", ".join(str(i) for i in opened)


def own_full_close(row: dict[str, Any], metric: str) -> float | None:
    """The least expected MACs (÷ the full network's) of a front's points within 1 point (absolute) of its own
    supernet's full network: the comparison both supernets' training cannot bias."""
    if "full_expected_macs" not in row:
        return None
    close = cheapest_close_point(row["points"], row["full_expected_macs"], metric, row["full_validation"][metric])
    return None if close is None else close["expected_macs_fraction"]


if __name__ == "__main__":
    main()
