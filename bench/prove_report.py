"""Turn bench/out/prove/ (written by bench/prove.py) into bench/RESULTS.md and the plots in bench/results/.

    python bench/prove_report.py                 # every task and seed found under bench/out/prove

Quality is read against chance: beside each raw metric, the majority-class score and the normalised retention
(metric - majority) / (full - majority), where "full" is the plainly fine-tuned full model of the same seed.
Hypervolume (higher is better) is computed per method on (encoder params as a fraction of the full encoder,
test error), normalised so that the reference point is (1.1, majority-class error): a point only counts where
it is smaller than 1.1 x the full encoder and better than always answering the majority class. Points are
chosen on validation; test figures are reported.

A record without the fields the tables read (a point's configuration, size, errors, the main metric) stops the
report with its path (bench/checks.py) instead of printing blanks.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from checks import require  # noqa: E402
from compress_front import table_lines as compress_table  # noqa: E402
from elimination import table_lines as elimination_table  # noqa: E402
from elimination_front import table_lines as elimination_front_table  # noqa: E402
from exits_front import (  # noqa: E402
    DEFAULT_EXIT_LOSS_WEIGHTING,
    EXIT_TRAINING_WORDS,
    exit_training,
)
from exits_front import default_out as exits_front_out  # noqa: E402
from exits_front import table_lines as exits_front_table  # noqa: E402
from gpu import table_lines as gpu_table  # noqa: E402
from ode_compensation import table_lines as ode_table  # noqa: E402
from prove import DEFAULT_LRS, EARLIER_CPU_MODEL, PICK_BUDGETS, plain_rate, point_key  # noqa: E402
from scoring import BUDGETS, best_under, test_error_hypervolume  # noqa: E402
from search_budget import table_lines as budget_table  # noqa: E402
from shared_front import table_lines as shared_front_table  # noqa: E402
from shared_ode import table_lines as shared_table  # noqa: E402
from supernet_recipes import CONTROL, RECIPES, recipe_table  # noqa: E402

from search.settings import DEFAULT_EXIT_THRESHOLDS  # noqa: E402

HERE = Path(__file__).resolve().parent
# the machine of every run whose settings.json records no CPU (the CPU was recorded per method only later)
EARLIER_CPU = f"a 2-core {EARLIER_CPU_MODEL} VM (Zen 4, AVX512-BF16, KVM)"
OUT = HERE / "out" / "prove"
READING = "READING.md"  # the current reading of the figures, kept by hand; the work's history is in archive/
NASPRUNE = ("nasprune_importance_refined", "nasprune_importance_picks_refined", "nasprune_importance",
            "nasprune_refined", "nasprune", "nasprune_v1", "nasprune_v0")
METHODS = (*NASPRUNE, "reference", "layer_drop", "oneshot", "oneshot_ft", "nas_small")
NAMES = {"nasprune_importance_refined": "nasprune front (importance space), refined",
         "nasprune_importance_picks_refined": "nasprune front (importance space), picks ≤ 50 / 33 % refined",
         "nasprune_importance": "nasprune front (importance space, default)",
         "nasprune_refined": "nasprune front (uniform space), refined", "nasprune": "nasprune front (uniform space)",
         "nasprune_v0": "nasprune front, first recipe (before)",
         "nasprune_v1": "nasprune front, second recipe (no labels, T = 10)",
         "reference": "full fine-tuning", "layer_drop": "layer dropping + FT",
         "oneshot": "one-shot Kwon (no retraining)", "oneshot_ft": "Kwon masks + short FT",
         "nas_small": "uniform sub-nets, each FT"}
STYLE = {"nasprune_importance_refined": ("darkgreen", "P"), "nasprune_importance": ("tab:olive", "o"),
         "nasprune_importance_picks_refined": ("tab:cyan", "v"),
         "nasprune_refined": ("darkred", "P"), "nasprune": ("tab:red", "o"),
         "nasprune_v0": ("tab:orange", "o"), "nasprune_v1": ("tab:pink", "o"),
         "reference": ("black", "*"),
         "layer_drop": ("tab:blue", "s"), "oneshot": ("tab:gray", "x"), "oneshot_ft": ("tab:green", "^"),
         "nas_small": ("tab:purple", "D")}


POINT_FIELDS = ("config", "params_fraction", "validation_error", "test_error")


def require_points(path: Path, points: list[dict[str, Any]], metric: str | None) -> None:
    """A record the tables read: every point with its configuration, size and errors, and the task's main metric
    in its validation and test figures (a record of another shape would print blanks or another metric)."""
    for k, point in enumerate(points):
        missing = [f for f in POINT_FIELDS if f not in point]
        missing += [f"{split}.{metric}" for split in ("validation", "test")
                    if metric is not None and metric not in point.get(split, {})]
        require(not missing, f"{path}, point {k}: no {', '.join(missing)}")


def load(folder: Path) -> dict[str, Any]:
    """One seed: settings and each method's points (only methods that finished), checked (require_points)."""
    data = {"settings": json.loads((folder / "settings.json").read_text()), "methods": {}, "job_epochs": {}}
    for method in METHODS:
        path = folder / f"{method}.json"
        if path.is_file():
            data["methods"][method] = json.loads(path.read_text())
            require_points(path, data["methods"][method], data["settings"].get("main_metric"))
        run_file = folder / method.removesuffix("_refined") / "run" / "run.json"  # a refined job reuses its run
        if method in NASPRUNE and run_file.is_file():
            data["job_epochs"][method] = json.loads(run_file.read_text())["training"]["epochs"]
    return data


def main_metric(seed: dict[str, Any]) -> str:
    return seed["settings"]["main_metric"]


def majority(seed: dict[str, Any]) -> float:
    """The majority-class score of the main metric on the test split."""
    baseline = seed["settings"]["majority_baseline"]
    return float(baseline.get(main_metric(seed), baseline.get(f"test/{main_metric(seed)}", 0.0)))


def chance_error(seed: dict[str, Any]) -> float:
    return 1.0 - majority(seed)


def points_of(seed: dict[str, Any], method: str) -> list[dict[str, Any]]:
    points = seed["methods"].get(method, [])
    return [p for p in points if p.get("on_front", True)]


def full_metric(seed: dict[str, Any]) -> float | None:
    reference = seed["methods"].get("reference")
    return reference[0]["test"][main_metric(seed)] if reference else None


def retention(seed: dict[str, Any], metric: float) -> tuple[float | None, float | None]:
    full = full_metric(seed)
    if full is None:
        return None, None
    base = majority(seed)
    normalised = (metric - base) / (full - base) if full != base else None
    return metric / full, normalised


def method_hypervolume(seed: dict[str, Any], method: str, *, with_full: bool = False) -> float | None:
    points = points_of(seed, method)
    if with_full and method != "reference":
        points = points + points_of(seed, "reference")
    if not points:
        return None
    return test_error_hypervolume(points, chance_error(seed))


# below this share of its threads' CPU time, a timed unit shared the cores with other work (prove.Stopwatch): a
# quiet unit uses nearly all of its threads' time and one beside another job of the same thread count about half,
# so the threshold sits between.
SHARED_CPU = 0.75
SHARED_NOTE = (f"\\* timed while other work shared the cores (the process used under {SHARED_CPU:.0%} of its threads' "
               "CPU time): an upper bound, not a cost. Units timed before the CPU share was recorded carry no mark.")


class SharedMarks:
    """Marks a cost timed while the cores were shared, and remembers whether it marked any (for the footnote)."""

    def __init__(self) -> None:
        self.marked = False

    def __call__(self, *shares: float | None) -> str:
        """'*' if any of the recorded CPU shares says the cores were shared while it was timed."""
        shared = any(s is not None and s < SHARED_CPU for s in shares)
        self.marked |= shared
        return "\\*" if shared else ""

    def footnote(self) -> list[str]:
        """The lines that end a table: SHARED_NOTE only if a cell of it was marked."""
        return ["", SHARED_NOTE, ""] if self.marked else [""]


def point_shares(p: dict[str, Any]) -> list[float | None]:
    """Every CPU share recorded for a point's cost: its fine-tuning grid's, or its nasprune job's stages'."""
    return [p.get("cpu_share"), p.get("job_train_cpu_share"), p.get("job_search_and_test_cpu_share"),
            p.get("job_refine_cpu_share")]


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def mean_spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


# ------------------------------------------------------------------------------------------------ plots


def plot_task(task: str, seed: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for axis, label, key in (("params", "encoder params (fraction of full)", "params_fraction"),
                             ("latency", "measured latency, batch 32 x 128 (ms)", None)):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for method in METHODS:
            points = points_of(seed, method)
            if not points:
                continue
            xs = [p[key] if key else p["latency_ms"]["32"] for p in points]
            ys = [p["test_error"] for p in points]
            color, marker = STYLE[method]
            order = sorted(range(len(xs)), key=lambda i: xs[i])
            ax.plot([xs[i] for i in order], [ys[i] for i in order], marker=marker, color=color,
                    linestyle="-" if method in NASPRUNE else ":", label=NAMES[method], markersize=6)
        ax.axhline(chance_error(seed), color="gray", linewidth=0.8, linestyle="--", label="majority class")
        ax.set_xlabel(label)
        ax.set_ylabel(f"test error (1 - {main_metric(seed)})")
        ax.set_title(f"{task} (seed {seed['settings']['seed']})")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        path = out / f"{task}-error-vs-{axis}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------ report


def task_section(task: str, seeds: dict[int, dict[str, Any]], plots: list[Path]) -> list[str]:
    first = seeds[min(seeds)]
    settings = first["settings"]
    metric = main_metric(first)
    lines = [f"## {task}", ""]
    done = [str(k) for k in sorted(seeds) if seeds[k]["methods"]]
    lines.append(f"Seeds with results: {', '.join(done)} (each table's seeds column says which method has how many; "
                 f"± is the sample standard deviation over them). Train / validation / test examples: "
                 f"{settings['sizes']['train']} / {settings['sizes']['validation']} / {settings['sizes']['test']}; "
                 f"main metric {metric}; majority class {majority(first):.3f} on test. Command: `python "
                 f"bench/prove.py --task {settings['task']} --seed {settings['seed']}"
                 + (f" --train-limit {settings['train_limit']}" if settings.get("train_limit") else "")
                 + ("" if settings["lrs"] == DEFAULT_LRS else f" --lrs {' '.join(f'{lr:g}' for lr in settings['lrs'])}")
                 + "`." + ("" if settings["lrs"] == DEFAULT_LRS else
                           f" **Learning-rate grid of this task: {', '.join(f'{lr:g}' for lr in settings['lrs'])} "
                           "only** (the reference and masks + FT pick from it)."))
    lines += cpu_lines(seeds)
    lines.append("")
    lines += [f"![{p.stem}](results/{p.name})" for p in plots]
    lines.append("")

    lines += ["### Hypervolume (test error vs encoder params; higher is better)", "",
              "| method | seeds | hypervolume | with the full model added |", "|---|---|---|---|"]
    for method in METHODS:
        have = [k for k, s in sorted(seeds.items()) if method in s["methods"]]
        own = [method_hypervolume(seeds[k], method) for k in have]
        plus = [method_hypervolume(seeds[k], method, with_full=True) for k in have]
        if own:
            lines.append(f"| {NAMES[method]} | {', '.join(map(str, have))} | {mean_spread(own)} | "
                         f"{mean_spread(plus)} |")
    lines.append("")

    lines += [f"### Best {metric} at a parameter budget (chosen on validation; test figures)", "",
              "| method | " + " | ".join(f"≤ {b:.0%} params: {metric} (raw ratio, normalised)" for b in BUDGETS) + " |",
              "|---|" + "---|" * len(BUDGETS)]
    for method in METHODS:
        if not any(method in s["methods"] for s in seeds.values()):
            continue
        cells = []
        for budget in BUDGETS:
            metrics, raws, norms = [], [], []
            for seed in seeds.values():
                point = best_under(points_of(seed, method), budget)
                if point is None:
                    continue
                value = point["test"][metric]
                raw, norm = retention(seed, value)
                metrics.append(value)
                raws.append(raw)
                norms.append(norm)
            cells.append("–" if not metrics else f"{mean_spread(metrics)} ({mean_spread(raws)}, {mean_spread(norms)})")
        lines.append(f"| {NAMES[method]} | " + " | ".join(cells) + " |")
    lines.append("")

    lines += ["### Every point (first seed)", "",
              f"| method | point | encoder params | MACs | val {metric} | test {metric} | retention (raw, norm.) "
              "| latency b1 / b32 (ms) | training cost (s) |", "|---|---|---|---|---|---|---|---|---|"]
    shared_mark = SharedMarks()
    for method in METHODS:
        for p in sorted(points_of(first, method), key=lambda p: -p["params_fraction"]):
            raw, norm = retention(first, p["test"][metric])
            latency = p.get("latency_ms", {})
            mark = shared_mark(*point_shares(p))
            lines.append(f"| {NAMES[method]} | {p['label']} | {p['params_fraction']:.1%} | {p['macs_fraction']:.1%} | "
                         f"{p['validation'][metric]:.3f} | {p['test'][metric]:.3f} | {fmt(raw)}, {fmt(norm)} | "
                         f"{fmt(latency.get('1'), '.1f')} / {fmt(latency.get('32'), '.0f')} | "
                         f"{fmt(p.get('cost_s'), '.0f')}{mark} |")
    lines += shared_mark.footnote()

    reference = first["methods"].get("reference")
    jobs = {m: job_point(first, m) for m in NASPRUNE}
    if any(jobs.values()) and reference and reference[0].get("plain_train_s"):
        plain, plain_epochs = reference[0]["plain_train_s"], first["settings"]["epochs"]
        plain_lr = plain_rate(first["settings"]["lrs"])
        shared_mark = SharedMarks()
        lines += ["### Cost", "", f"Whole nasprune job ÷ plain fine-tuning of the full model for the same epochs as "
                  f"the job's supernet training (target ≤ 2.5): the reference's {plain_epochs:g}-epoch run at lr "
                  f"{plain_lr:g} took {plain:.0f} s, and its time is proportional to the epochs (the same steps per "
                  "epoch; evaluations are not counted), so plain fine-tuning for E epochs is taken as "
                  f"{plain:.0f} s x E / {plain_epochs:g}. The last column divides by the {plain_epochs:g}-epoch "
                  "run instead, whatever the job's epochs.", "",
                  "| job | epochs | supernet training (s) | search + test re-evaluation (s) | refining the front (s) "
                  f"| whole job (s) | ÷ plain, same epochs | ÷ plain, {plain_epochs:g} epochs |",
                  "|---|---|---|---|---|---|---|---|"]
        for method, p in jobs.items():
            if p:
                refine = p.get("job_refine_s", 0.0) if method.endswith("_refined") else 0.0
                epochs = first["job_epochs"].get(method, plain_epochs)
                train_mark = shared_mark(p.get("job_train_cpu_share"))
                search_mark = shared_mark(p.get("job_search_and_test_cpu_share"))
                refine_mark = shared_mark(p.get("job_refine_cpu_share")) if method.endswith("_refined") else ""
                rows = [(NAMES[method], p["job_search_and_test_s"], search_mark, True)]
                # earlier searches set aside by prove.py when a default changed (the job alone: their fronts'
                # refining is not this front's)
                for key, seconds in ({} if method.endswith("_refined") else earlier_searches(p)).items():
                    rows.append((f"{NAMES[method]}, its earlier search ({describe_earlier(key)})", seconds,
                                 shared_mark(p.get(f"job_search_and_test_cpu_share_{key}")), False))
                for label, search_s, mark, bold in rows:
                    job = p["job_train_s"] + search_s + refine
                    ratio = f"{job / (plain * epochs / plain_epochs):.2f}"
                    lines.append(f"| {label} | {epochs:g} | {p['job_train_s']:.0f}{train_mark} | "
                                 f"{search_s:.0f}{mark} | {refine:.0f}{refine_mark} | {job:.0f} | "
                                 f"{f'**{ratio}**' if bold else ratio} | {job / plain:.2f} |")
        lines += on_demand_refine(first, jobs, plain / plain_epochs)
        lines += job_cost_per_seed(seeds)
        lines += budget_picks_refined(seeds)
        lines += baseline_training_times(seeds, shared_mark)
        lines += shared_mark.footnote()

    default = "nasprune_importance" if "nasprune_importance" in first["methods"] else "nasprune"
    front = [p for p in first["methods"].get(default, []) if p.get("on_front", True) and "latency_ms" in p]
    full = [p for p in first["methods"].get(default, []) if not p.get("on_front", True)]
    if front and full and "latency_ms" in full[0]:
        base = full[0]
        lines += [f"### Measured speed of the exported front points ({NAMES[default]})", "",
                  "| point | MACs | MAC reduction | speed-up b1 | speed-up b32 | speed-up b32 ÷ MAC reduction |",
                  "|---|---|---|---|---|---|"]
        for p in sorted(front, key=lambda p: -p["macs_fraction"]):
            if p.get("latency_device") != base.get("latency_device"):
                continue  # timed on another device than the full model: no speed-up to read
            reduction = base["macs"] / p["macs"]
            s1 = base["latency_ms"]["1"] / p["latency_ms"]["1"]
            s32 = base["latency_ms"]["32"] / p["latency_ms"]["32"]
            lines.append(f"| {p['label']} | {p['macs_fraction']:.1%} | {reduction:.2f}x | {s1:.2f}x | {s32:.2f}x | "
                         f"{s32 / reduction:.2f} |")
        lines.append("")
    return lines


def job_point(seed: dict[str, Any], method: str) -> dict[str, Any] | None:
    """The first point of a nasprune method that carries its job's times (training, search, refining)."""
    return next((p for p in seed["methods"].get(method, []) if p.get("job_train_s") is not None), None)


def cpu_lines(seeds: dict[int, dict[str, Any]]) -> list[str]:
    """The methods that ran on another CPU than EARLIER_CPU (settings.json's `cpu_by_method`; a method it does not
    name ran on EARLIER_CPU): their times are not that machine's. Latencies are named apart, by the device each
    point records (`latency_device`; none recorded: EARLIER_CPU's cache), since a method that ran elsewhere may
    have been timed from the earlier CPU's cache."""
    by_cpu: dict[str, list[str]] = defaultdict(list)
    timed_on: dict[str, list[str]] = defaultdict(list)
    for k, seed in sorted(seeds.items()):
        for method, cpu in seed["settings"].get("cpu_by_method", {}).items():
            if method in seed["methods"] and EARLIER_CPU_MODEL not in cpu:
                by_cpu[cpu.removeprefix("cpu-")].append(f"{NAMES.get(method, method)} (seed {k})")
        for method, points in seed["methods"].items():
            for device in sorted({p.get("latency_device") or EARLIER_CPU_MODEL for p in points if "latency_ms" in p}):
                if EARLIER_CPU_MODEL not in device:
                    timed_on[device.removeprefix("cpu-")].append(f"{NAMES.get(method, method)} (seed {k})")
    lines = [f"**Ran on another CPU, {cpu}:** {'; '.join(methods)}. Its training and evaluation times are that "
             f"machine's; its latencies are the {EARLIER_CPU_MODEL}'s unless a line below says otherwise."
             for cpu, methods in by_cpu.items()]
    lines += [f"**Latencies timed on another CPU, {cpu}:** {'; '.join(methods)}. Set them beside the others' with "
              "care: the full MiniLM at batch 32 x 128 took 743 ms on the AMD EPYC and 516 ms on the Intel Xeon."
              for cpu, methods in timed_on.items()]
    return ["", *lines] if lines else []


def baseline_training_times(seeds: dict[int, dict[str, Any]], shared_mark) -> list[str]:
    """Each baseline's total training time, one column per seed (the mean where every seed has it): seeds differ by
    noticeably, so the first seed alone would be one draw."""
    keys = sorted(seeds)
    many = len(keys) > 1
    lines = ["", "| method | " + " | ".join(f"total training time, seed {k} (s)" for k in keys)
             + (" | mean ± sd (s) |" if many else " |"), "|---|" + "---|" * (len(keys) + many)]
    for method in ("reference", "layer_drop", "oneshot", "oneshot_ft", "nas_small"):
        cells, totals = [], []
        for k in keys:
            points = seeds[k]["methods"].get(method)
            if not points:
                cells.append("not yet")
                continue
            total = points[0]["cost_s"] if method == "oneshot" else sum(p.get("cost_s", 0) for p in points)
            totals.append(total)
            cells.append(f"{total:.0f}{shared_mark(*(p.get('cpu_share') for p in points))}")
        if totals:
            mean = (f" | {statistics.mean(totals):.0f} ± {statistics.stdev(totals):.0f}"
                    if many and len(totals) == len(keys) else " | –" if many else "")
            lines.append(f"| {NAMES[method]} | " + " | ".join(cells) + mean + " |")
    return lines


def job_cost_per_seed(seeds: dict[int, dict[str, Any]]) -> list[str]:
    """The default job ÷ plain fine-tuning for the same epochs, seed by seed (each seed's own plain run)."""
    ratios = {}
    for k, seed in sorted(seeds.items()):
        method = "nasprune_importance" if "nasprune_importance" in seed["methods"] else "nasprune"
        job = job_point(seed, method)
        reference = seed["methods"].get("reference")
        if job and reference and reference[0].get("plain_train_s"):
            plain_epochs = seed["settings"]["epochs"]
            plain = reference[0]["plain_train_s"] * seed["job_epochs"].get(method, plain_epochs) / plain_epochs
            ratios[k] = (job["job_train_s"] + job["job_search_and_test_s"]) / plain
    if len(ratios) < 2:
        return []
    each = ", ".join(f"seed {k} {ratio:.2f}" for k, ratio in ratios.items())
    return ["", f"The default job ÷ plain fine-tuning for the same epochs, each seed against its own plain run: {each} "
            f"(mean {statistics.mean(ratios.values()):.2f} ± {statistics.stdev(ratios.values()):.2f} x)."]


def budget_picks_refined(seeds: dict[int, dict[str, Any]]) -> list[str]:
    """Refining only the points a user would download (the best on validation within each budget, what a job with
    `refine budgets` does, or `nasprune refine` point by point) instead of the whole front: composed from the
    whole-front refine's records, since that refine fine-tuned each point alone with the same recipe, data order and
    seed (a point refined alone is the same model: the measured picks column checks it where it ran). A point's cost
    is its training time plus its share of the refine stage's evaluation time (the stage's time less its training,
    spread evenly over the points)."""
    rows = []
    for budgets in (BUDGETS, PICK_BUDGETS):
        names = " / ".join(f"{b:.0%}" for b in budgets)
        mine = []
        for k, seed in sorted(seeds.items()):
            composed = composed_picks(seed, budgets)
            if composed is not None:
                measured = method_hypervolume(seed, "nasprune_importance_picks_refined") \
                    if budgets == PICK_BUDGETS else None
                mine.append((k, *composed, measured, method_hypervolume(seed, "oneshot_ft"),
                             method_hypervolume(seed, "nasprune_importance_refined")))
        rows += [f"| {names} | {k} | {n} | {seconds:.0f} | {ratio:.2f} | {hv:.3f} | {fmt(measured)} | {fmt(masks)} | "
                 f"{fmt(whole)} |" for k, n, seconds, ratio, hv, measured, masks, whole in mine]
        if len(mine) > 1:
            rows.append(f"| {names} | mean | | | {statistics.mean(r[3] for r in mine):.2f} | "
                        f"{mean_spread([r[4] for r in mine])} | {mean_spread([r[5] for r in mine])} | "
                        f"{mean_spread([r[6] for r in mine])} | {mean_spread([r[7] for r in mine])} |")
    if not rows:
        return []
    return ["", "Refining only the points a user would download: the best on validation within each budget of "
            "params (one point may serve two budgets), each refined alone (`--refine-budgets`, or `nasprune refine` "
            "point by point), the rest of the front as the job left it. Composed from the whole-front refine's "
            "records (each point fine-tuned alone with the same recipe, data order and seed); a point's cost is its "
            "training time plus an even share of the refine stage's evaluation time. The measured column is the "
            "job run with `--refine-budgets 0.5,0.33` (prove.py's nasprune_importance_picks_refined) where it ran.",
            "", "| budgets | seed | points refined | refining (s) | job + refining ÷ plain, same epochs | "
            "test hypervolume | measured | masks + FT | whole front refined |", "|---" * 9 + "|", *rows]


def composed_picks(seed: dict[str, Any], budgets: tuple[float, ...]) -> tuple | None:
    """(points refined, refining s, job + refining ÷ plain, test hypervolume) of refining the budgets' picks of
    the default job's front, composed from its whole-front refine; None where a record is missing or a pick is not
    on the refined front. Points are matched by configuration, not position: a front written again from a supernet
    retrained on another CPU can gain or lose a point (SST-2's refine)."""
    front = points_of(seed, "nasprune_importance")
    refined = {point_key(p): p for p in points_of(seed, "nasprune_importance_refined")
               if p["label"].startswith("front ")}
    job = job_point(seed, "nasprune_importance")
    reference = seed["methods"].get("reference")
    stage = job_point(seed, "nasprune_importance_refined")
    if not (front and refined and job and stage and reference and reference[0].get("plain_train_s")):
        return None
    picks = {point_key(p) for b in budgets if (p := best_under(front, b)) is not None}
    if any(i not in refined for i in picks):
        return None
    evaluation = (stage["job_refine_s"] - sum(p["refine_train_s"] for p in refined.values())) / len(refined)
    points = [refined[i] if (i := point_key(p)) in picks else p for p in front]
    refine_s = sum(refined[i]["refine_train_s"] + evaluation for i in picks)
    epochs = seed["job_epochs"].get("nasprune_importance", 1.0)
    plain = reference[0]["plain_train_s"] * epochs / seed["settings"]["epochs"]
    whole = job["job_train_s"] + job["job_search_and_test_s"] + refine_s
    return len(picks), refine_s, whole / plain, test_error_hypervolume(points, chance_error(seed))


def earlier_searches(point: dict[str, Any]) -> dict[str, float]:
    """The search times of a job's earlier searches (prove.py's set_search_aside), by the name it kept them under."""
    prefix = "job_search_and_test_s_"
    return {key.removeprefix(prefix): value for key, value in point.items() if key.startswith(prefix)}


def describe_earlier(key: str) -> str:
    """'search1100' -> 'ranked on 1100 validation examples'; 'search550-front1' adds that only its front (its
    first 1 non-dominated layer) was measured again on every example; 'validation2000' -> 'validation cap 2000'."""
    if key.startswith("search"):
        examples, _, layers = key.removeprefix("search").partition("-front")
        return f"ranked on {examples} validation examples" + (
            f", only its first {layers} non-dominated layer(s) measured again on all" if layers else "")
    return f"validation cap {key.removeprefix('validation')}"


def on_demand_refine(seed: dict[str, Any], jobs: dict[str, Any], plain_per_epoch: float) -> list[str]:
    """What refining only the point a user downloads costs (`nasprune refine`, POST .../pareto/{k}/refine): the
    per-point training times of the refined importance front, against plain fine-tuning for the job's epochs."""
    refined = [p for p in seed["methods"].get("nasprune_importance_refined", []) if p.get("refine_train_s")]
    job = jobs.get("nasprune_importance")
    if not refined or not job:
        return []
    epochs = seed["job_epochs"].get("nasprune_importance", 1.0)
    plain = plain_per_epoch * epochs
    times = sorted(p["refine_train_s"] for p in refined)
    half = [p["refine_train_s"] for p in refined if p["params_fraction"] <= 0.5]
    whole = job["job_train_s"] + job["job_search_and_test_s"]
    median = statistics.median(times)
    return ["", f"Refining one point on demand instead of the whole front (`nasprune refine`, `POST "
            f"/searches/{{id}}/pareto/{{k}}/refine`): {times[0]:.0f}-{times[-1]:.0f} s of training per point "
            f"(median {median:.0f} s; {statistics.median(half) if half else float('nan'):.0f} s at ≤ 50 % params), "
            f"{median / plain:.2f} x plain fine-tuning for the job's epochs; the default job plus one refined "
            f"point costs {(whole + median) / plain:.2f} x."]


def search_budget_section(task: str, budgets: Path) -> list[str]:
    """bench/search_budget.py: the default job's search on a validation subset, one table per seed."""
    lines: list[str] = []
    for folder in sorted((budgets / task).glob("seed*")):
        table = budget_table(folder)
        if table:
            seed = folder.name.removeprefix("seed")
            lines += [f"### Search on a validation subset (`python bench/search_budget.py --task "
                      f"{task.replace('-', '/', 1)} --seed {seed}`)", "",
                      "The importance job's supernet searched again (100 evaluations, the job's seed), each search "
                      "seeing a seeded random subset of the validation split (`validation_limit`) and ranking in "
                      "the precision its row names (`evaluation_dtype`; bfloat16, the default on a CPU that computes "
                      "it natively, has its front scored again in float32); the searches of one command "
                      "ran one after the other in one process. Test figures of the front each finds, chosen on its "
                      "own subset; the job ratio keeps the job's training time.", "", *table, ""]
    return lines


def elimination_section(task: str, elimination: Path) -> list[str]:
    """bench/elimination.py: exported front structures dropping tokens against the same structures without, one
    table per seed."""
    lines: list[str] = []
    for folder in sorted((elimination / task).glob("seed*")):
        table = elimination_table(folder / "results.json")
        if table:
            seed = folder.name.removeprefix("seed")
            data = json.loads((folder / "results.json").read_text())
            run = data.get("run")
            supernet = ("The importance job's supernet" if run is None else
                        f"The supernet of `{run}` (the importance job's settings, {data['epochs']:g} epoch(s) of "
                        "training)")
            lines += [f"### Token elimination (`python bench/elimination.py --task {task.replace('-', '/', 1)} "
                      f"--seed {seed}{'' if run is None else f' --run {run}'}`)", "",
                      f"{supernet}; each structure exported, then set to each speed-up with "
                      "`model.set_speedup` (the schedule solved on expected MACs over the validation lengths, no "
                      "retraining) and timed against the same structure without elimination.", "", *table, ""]
    return lines


def elimination_front_section(task: str, fronts: Path) -> list[str]:
    """bench/elimination_front.py: the joint (structure + schedule) front against the static one, one table per
    seed."""
    lines: list[str] = []
    for results in sorted((fronts / task).glob("seed*/results*.json")):  # results-joint-first.json: joint first
        folder, table = results.parent, elimination_front_table(results)
        if table:
            seed = folder.name.removeprefix("seed")
            order = " --order joint,static" if results.stem.endswith("joint-first") else ""
            lines += [f"### Joint front with token elimination against the static front (`python "
                      f"bench/elimination_front.py --task {task.replace('-', '/', 1)} --seed {seed}{order}`)", "",
                      "The importance job's supernet searched twice with the same seed and budget on error and "
                      "expected MACs: structures only (static), and structures with keep schedules (joint).", "",
                      *table, ""]
    return lines


def gpu_section(folder: Path) -> list[str]:
    """bench/gpu.py: each GPU's figures (bench/out/gpu/<name>.json)."""
    lines = []
    for path in sorted(folder.glob("*.json")):
        lines += [f"## On a GPU: {path.stem} (`bash bench/gpu_check.sh OUT`, which runs `bench/gpu.py`)", "",
                  *gpu_table(json.loads(path.read_text())), ""]
    return lines


def task_arguments(task: str, results: Path, data: dict[str, Any]) -> str:
    """A benchmark's usual arguments for one results file of `task`: --task, --seed and the run it read, if any."""
    run = data.get("run")
    return (f"--task {task.replace('-', '/', 1)} --seed {results.parent.name.removeprefix('seed')}"
            + (f" --run {run}" if run else ""))


def run_sections(task: str, files: list[Path], script: str, title: str, intro: str,
                 table: Callable[[Path], list[str]],
                 arguments: Callable[[Path, dict[str, Any]], str] | None = None) -> list[str]:
    """One section per results file of `script` (bench/out/<script's folder>/<task>/seed<k>/...): its title with
    the command that made it (`arguments(file, its data)`; by default --task, --seed and the run it read, if it
    names one), `intro`, and `table`'s lines."""
    lines: list[str] = []
    for results in files:
        rows = table(results)
        if rows:
            data = json.loads(results.read_text())
            command = arguments(results, data) if arguments else task_arguments(task, results, data)
            lines += [f"### {title} (`python bench/{script} {command}`)", "", intro, "", *rows, ""]
    return lines


def exits_front_section(task: str, fronts: Path) -> list[str]:
    """bench/exits_front.py: the front of a supernet trained with exits and searched with thresholds against the
    static front of the same settings trained without, one table per seed."""
    files = sorted((fronts / task).glob("seed*/results.json"))
    if not files:
        return []
    first = json.loads(files[0].read_text())
    # --space and --cost as recorded (a record from before they were: exits_front_<space> names the space)
    space = first.get("space_option", fronts.name.removeprefix("exits_front").removeprefix("_") or None)
    latency = first.get("cost") == "latency"
    where = ""
    if space:
        where = f"; both supernets in the {space} space" + (" (sub-networks drop whole layers)" * (space == "layers"))
    cost = ("predicted batch-1 latency (the latency table over the validation lengths, each exit read priced)"
            if latency else "expected MACs")

    training = exit_training(first)

    def command(results: Path, data: dict[str, Any]) -> str:
        default = exits_front_out("exits_front", space, training, "latency" if latency else "expected_macs")
        thresholds = data["exit_thresholds"]
        return (task_arguments(task, results, data)
                + (f" --evaluations {data['evaluations']}" if data["evaluations"] != 100 else "")
                + (f" --space {space}" if space else "") + (" --cost latency" if latency else "")
                + (" --detach-exits" if training == "detached" else
                   f" --exit-loss-weighting {training}" if training != DEFAULT_EXIT_LOSS_WEIGHTING else "")
                + (f" --exit-thresholds {','.join(f'{t:g}' for t in thresholds)}"
                   if thresholds != list(DEFAULT_EXIT_THRESHOLDS) else "")
                + (f" --out bench/out/{fronts.name}" if fronts.name != default else ""))

    title = ("Early exits against the static front" + (f" in the {space} space" if space else "")
             + f", {EXIT_TRAINING_WORDS[training]}"
             + (", searched on latency" if latency else ""))
    return run_sections(task, files, "exits_front.py", title,
                        "The importance job's settings trained twice, without exits (static) and with them, each then "
                        f"searched with the same seed and budget on error and {cost}, the second with the exit "
                        f"threshold gene{where}.", exits_front_table, command)


def compress_section(task: str, folder: Path) -> list[str]:
    """bench/compress_front.py: compressed points below the pruning front, one table per seed."""
    return run_sections(task, sorted((folder / task).glob("seed*/results.json")), "compress_front.py",
                        "Extreme compression below the front",
                        "Each start point's encoder decomposed (Ren et al., ICLR 2022: tucker matrix bank, shared low "
                        "rank, per-matrix low rank) at the largest rank that fits each target share of the full "
                        "encoder, then recovered by distillation from the start point.", compress_table)


def ode_compensation_section(task: str, folder: Path) -> list[str]:
    """bench/ode_compensation.py: every layer-drop subset plain and ODE-compensated, one table per run."""
    return run_sections(task, sorted((folder / task).glob("seed*/*.json")), "ode_compensation.py",
                        "ODE-compensated against plain layer dropping",
                        "Every proper subset of the layers kept at full width, scored on the trained supernet without "
                        "retraining: plainly, and with each kept layer followed by m dropped ones taking one Euler "
                        "step of 1 + m along its residual branch.", ode_table)


def shared_ode_section(task: str, folder: Path) -> list[str]:
    """bench/shared_ode.py: each `nasprune share` run's model at every step count, by Euler and Heun."""
    return run_sections(task, sorted((folder / task).glob("seed*/*.json")), "shared_ode.py",
                        "Parameter-shared model run as an ODE",
                        "An unshared model's layers tied into shared blocks by `nasprune share` and recovered by "
                        "distillation from it, then integrated in K steps by Euler and by Heun (two evaluations a "
                        "step) without retraining.", shared_table, lambda _file, data: f"--share {data['run']}")


def shared_front_section(task: str, folder: Path) -> list[str]:
    """bench/shared_front.py: the shared family's front against the unshared one at equal MACs and stored params."""
    return run_sections(task, sorted((folder / task).glob("seed*/results.json")), "shared_front.py",
                        "The shared family's front against the unshared front",
                        "Two searches of the task: the unshared model's and the shared model's (its own genes: each "
                        "block's heads and units, the ODE steps, the solver), every trial set against the unshared "
                        "full model in compute (MACs) and in storage (params stored, each shared block once).",
                        shared_front_table,
                        lambda _file, data: f"--unshared {data['unshared_run']} --shared {data['shared_run']}")


def recipes_section(task: str, recipes: Path) -> list[str]:
    """bench/supernet_recipes.py's screening: the same architectures sliced from each recipe's supernet, one
    table per thread count (seed0: 2 threads, as bench/prove.py; seed0-threads<k>: k)."""
    lines: list[str] = []
    for folder in sorted((recipes / task).glob("seed0*")):
        table = recipe_table(folder, [*RECIPES, CONTROL])
        if not table:
            continue
        threads = folder.name.partition("-threads")[2] or "2"
        lines += [f"### Training recipes (`python bench/supernet_recipes.py --task {task.replace('-', '/', 1)} "
                  f"--threads {threads}`, seed 0)", "",
                  "Recipes: learning rate, plain (full-model-only) epochs before Fisher ordering and sandwich "
                  "epochs, sampling floor; `reference-sliced` is no supernet at all (the chosen full fine-tuning, "
                  "Fisher-ordered, sliced); `importance*` train in the importance space, the others in the uniform "
                  "space.", "", *table, ""]
        if threads == "2":
            lines += ["The uniform-space recipes of this table trained two at a time with one thread each (v0, "
                      "importance and reference-sliced are quiet 2-thread runs), so their training times are not "
                      "comparable with the cost table, and differences of ± 0.01 between them are within what a "
                      "thread count alone changes (next table).", ""]
    return lines


COVERED = ("reference", "nasprune_importance", "nasprune_importance_refined", "layer_drop", "oneshot", "oneshot_ft",
           "nas_small")  # the issue's methods: the job, its refined front and every baseline


def coverage_lines(seeds: dict[Path, dict[str, Any]]) -> list[str]:
    """Which of the issue's methods have finished records for which task and seed (`seeds`: every seed folder and
    its `load`, finished methods or not), so a missing run is visible in the report itself (settings.json lists
    every method ever asked for, finished or not)."""
    if not seeds:
        return []
    rows = [f"| {folder.parent.name} | {folder.name.removeprefix('seed')} | "
            + " | ".join("done" if method in seed["methods"] else "**not yet**" for method in COVERED) + " |"
            for folder, seed in seeds.items()]
    return ["## What has been measured", "",
            "A method counts as done for a seed when its whole record (`<method>.json`) exists; a method that "
            "stopped part-way keeps its finished units but is not reported until it completes.", "",
            "| task | seed | " + " | ".join(NAMES[method] for method in COVERED) + " |",
            "|---|---|" + "---|" * len(COVERED), *rows, ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args(argv)
    folders = [settings.parent for settings in sorted(Path(args.out).glob("*/seed*/settings.json"))]
    seeds = {folder: load(folder) for folder in folders}  # every seed, finished methods or not
    runs: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for folder, seed in seeds.items():
        if seed["methods"]:  # a seed whose first unit has not finished yet has nothing to report
            runs[folder.parent.name][int(folder.name.removeprefix("seed"))] = seed
    results = Path(args.results)
    plot_dir = results.parent / "results"
    any_settings = next((s["settings"] for seeds in runs.values() for s in seeds.values()), {})
    lines = ["# Results: nasprune fronts against plain fine-tuning and pruning baselines", "",
             "Generated by `python bench/prove_report.py` from the JSON that `bench/prove.py` writes; do not edit.",
             "", f"Machine: {any_settings.get('machine', platform.machine())} ({EARLIER_CPU} unless a task's "
             f"section names another CPU for a method), torch {any_settings.get('torch')}, "
             f"{any_settings.get('threads')} threads; model {any_settings.get('model')}; max length "
             f"{any_settings.get('max_length')}, batch {any_settings.get('batch_size')}, data split seed 0; "
             f"learning-rate grid {any_settings.get('lrs')}, {any_settings.get('epochs')} epochs (epoch chosen on "
             "validation); nasprune's job on the service's defaults (importance search space, NSGA-II on error and "
             f"encoder params, {any_settings.get('evaluations')} evaluations, ranked in bfloat16 where the CPU has "
             "it) unless a method's name says otherwise.", "", __doc__.split("\n\n", 2)[2], ""]
    lines += coverage_lines(seeds)
    notes = HERE / READING  # the hand-written reading of the figures (what wins, what loses, why)
    if notes.is_file():
        lines += [notes.read_text().strip(), ""]
    for task in sorted(runs):
        first = runs[task][min(runs[task])]
        plots = plot_task(task, first, plot_dir)
        lines += task_section(task, runs[task], plots)
        lines += recipes_section(task, Path(args.out).parent / "recipes")
        lines += search_budget_section(task, Path(args.out).parent / "search_budget")
        lines += elimination_section(task, Path(args.out).parent / "elimination")
        lines += elimination_front_section(task, Path(args.out).parent / "elimination_front")
        lines += exits_front_section(task, Path(args.out).parent / "exits_front")
        for other in sorted(Path(args.out).parent.glob("exits_front_*")):  # --space runs
            lines += exits_front_section(task, other)
        lines += compress_section(task, Path(args.out).parent / "compress_front")
        lines += ode_compensation_section(task, Path(args.out).parent / "ode_compensation")
        lines += shared_ode_section(task, Path(args.out).parent / "shared_ode")
        lines += shared_front_section(task, Path(args.out).parent / "shared_front")
    lines += gpu_section(Path(args.out).parent / "gpu")
    results.write_text("\n".join(lines) + "\n")
    print(f"wrote {results} ({len(runs)} task(s)) and plots in {plot_dir}")


if __name__ == "__main__":
    main()
