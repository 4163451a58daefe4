"""Screen supernet training recipes on one task without a search: train each recipe's supernet, then slice a
fixed set of architectures out of it (uniform 75/50/33/25 % and, when bench/prove.py has run on this task and
seed, its one-shot Kwon masks at MAC budgets 0.9 .. 0.2) and measure them on validation and test.

The same architectures on every supernet make the recipes comparable at a fraction of a search's cost; the
recipe that wins here becomes nasprune's default and is then proven by bench/prove.py with a full search.

    python bench/supernet_recipes.py --task glue/mrpc --recipes v0 lr1e-4 plain2-lr1e-4

Results: bench/out/recipes/<task>/seed<k>/<recipe>.json (a finished recipe is not retrained or re-measured). The
check (bench/checks.py): every architecture's figures come from forwards at its widths.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import torch
from baselines import uniform_configs
from checks import checked_evaluate
from prove import V0_TRAINING, add_task_arguments, seed_folder
from safetensors.torch import load_file

from supernet.config import SubNetworkConfig
from supernet.convert import load_supernet_from_pretrained
from supernet.counting import count_params
from supernet.importance import fisher_importance, reorder_by_importance
from supernet.model import Supernet
from supernet.run import Run, same_run, train_run
from supernet.settings import RunSpec, TrainingConfig
from supernet.tasks import TaskSpec

OUT = Path(__file__).resolve().parent / "out"
# name -> changes to nasprune's first recipe (prove.V0_TRAINING: 3 epochs, lr 5e-5, Fisher order on the random head,
# sandwich from the first step, distillation only at T = 10), so that a recipe means the same whatever the defaults
RECIPES: dict[str, dict] = {
    "v0": {},
    "lr1e-4": {"learning_rate": 1e-4, "plain_fraction": 0.0},
    "plain1": {"learning_rate": 5e-5, "plain_fraction": 1 / 3},
    "plain1-lr1e-4": {"learning_rate": 1e-4, "plain_fraction": 1 / 3},
    "plain2-lr1e-4": {"learning_rate": 1e-4, "plain_fraction": 2 / 3},
    "plain2-lr1e-4-k1": {"learning_rate": 1e-4, "plain_fraction": 2 / 3, "num_random_subnets": 1},
    "plain2-lr1e-4-ll1": {"learning_rate": 1e-4, "plain_fraction": 2 / 3, "temperature": 1.0, "label_loss_weight": 1.0},
    # 3 plain epochs (as long as the reference fine-tuning) and then half or one sandwich epoch
    "plain3-s0.5-lr1e-4": {"learning_rate": 1e-4, "epochs": 3.5, "plain_fraction": 6 / 7},
    "plain3-s1-lr1e-4": {"learning_rate": 1e-4, "epochs": 4.0, "plain_fraction": 3 / 4},
    # the same with the labels in every sub-network's loss (as the masks + fine-tuning baseline trains) and T = 1
    "plain3-s1-lr1e-4-ll1": {"learning_rate": 1e-4, "epochs": 4.0, "plain_fraction": 3 / 4, "temperature": 1.0,
                             "label_loss_weight": 1.0},
}
# The recipes above were screened in the uniform space (the default then); these train in the importance space,
# nasprune's default since: its default recipe, and the sandwich drawing only members above a floor
# (TrainingConfig.sample_floor; the space's smallest member is ~1 % of the encoder, no better than the majority)
IMPORTANCE_RECIPES = {"importance": RECIPES["plain3-s1-lr1e-4-ll1"]}
IMPORTANCE_RECIPES |= {f"importance-floor{f:g}": IMPORTANCE_RECIPES["importance"] | {"sample_floor": f}
                       for f in (0.1, 0.2, 0.3)}
# a second sandwich epoch (3 plain + 2 sandwich): does more shared training close the gap to the masks + FT
# baseline, whose every mask gets an epoch of its own?
IMPORTANCE_RECIPES["importance-s2"] = IMPORTANCE_RECIPES["importance"] | {"epochs": 5.0, "plain_fraction": 3 / 5}
RECIPES |= IMPORTANCE_RECIPES
# the control: no supernet at all, the best plain fine-tuning of bench/prove.py (its reference), Fisher-ordered
# with the same batches as train_run, sliced
CONTROL = "reference-sliced"
PROVE_THREADS = 2  # bench/prove.py's default --threads
log = logging.getLogger("recipes")


def reference_sliced(run: Run, prove_folder: Path) -> Supernet:
    """The chosen reference model of bench/prove.py, ordered as train_run orders (not retrained)."""
    spec = run.spec
    reference = json.loads((prove_folder / "reference.json").read_text())[0]
    torch.manual_seed(spec.training.seed)  # the head bench/prove.py drew (then overwritten by the weights)
    model = load_supernet_from_pretrained(spec.model, num_labels=run.task.spec.num_labels)
    model.load_state_dict(load_file(prove_folder / "reference" / f"lr{reference['learning_rate']:g}.safetensors"))
    generator = torch.Generator().manual_seed(spec.training.seed)
    batches = run.batches("train", shuffle=True, generator=generator)
    reorder_by_importance(model, fisher_importance(model, batches, max_batches=spec.importance_batches))
    return model.eval()


def reuse_prove_supernet(name: str, spec: RunSpec, folder: Path, prove: Path) -> float | None:
    """The default recipe is what bench/prove.py's importance job trained (same spec and seed: a bitwise equal
    supernet on one CPU's deterministic kernels): copy its supernet instead of training it again, and
    report its training time. None if there is nothing to reuse."""
    job = prove / "nasprune_importance"
    source = job / "run"
    if name != "importance" or folder.exists() or not (source / "training.json").is_file():
        return None
    if not same_run(RunSpec.from_dict(json.loads((source / "run.json").read_text())), spec):
        return None
    folder.mkdir(parents=True)
    for item in ("run.json", "importance.json", "training.json"):
        shutil.copy2(source / item, folder / item)
    shutil.copytree(source / "supernet", folder / "supernet")
    log.info("%s: reusing the supernet of %s", name, source)
    return json.loads((job / "times.json").read_text())["train_s"]


def architectures(config, prove_points: Path) -> list[tuple[str, SubNetworkConfig]]:
    """Uniform 75/50/33/25 %, bench/prove.py's Kwon masks and the front of its importance-space job (the shapes
    the default search finds), where those have run on this task and seed."""
    fractions = (0.75, 0.5, 0.33, 0.25)
    archs = [(f"uniform {f:.0%}", sub) for f, sub in zip(fractions, uniform_configs(config, fractions), strict=True)]
    if prove_points.is_file():
        archs += [(f"kwon {p['label']}", SubNetworkConfig.from_dict(p["config"]))
                  for p in json.loads(prove_points.read_text())]
    front = prove_points.parents[1] / "nasprune_importance.json"
    if front.is_file():
        archs += [(f"importance {p['label']}", SubNetworkConfig.from_dict(p["config"]))
                  for p in json.loads(front.read_text()) if p["label"].startswith("front")]
    return archs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_arguments(parser)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=[*RECIPES, CONTROL])
    parser.add_argument("--threads", type=int, default=PROVE_THREADS,
                        help="other counts write to <seed>-threads<k>/ (compare recipes at one thread count)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    slug = seed_folder(args.task, args.seed)
    # Another thread count sums in another order: the same recipe trains a (slightly) different supernet, so
    # recipes are compared only at one thread count (2 unless said, as bench/prove.py trains)
    folder = OUT / "recipes" / (slug if args.threads == PROVE_THREADS else f"{slug}-threads{args.threads}")
    prove_points = OUT / "prove" / slug / "oneshot" / "points.json"
    for name in args.recipes:
        result_file = folder / f"{name}.json"
        if result_file.is_file():
            continue
        training = TrainingConfig(seed=args.seed, **(V0_TRAINING | RECIPES.get(name, {})))
        spec = RunSpec(model=args.model, task=args.task, data_dir=args.data_dir, train_limit=args.train_limit,
                       training=training, space="importance" if name in IMPORTANCE_RECIPES else "uniform")
        run = Run(folder / name, spec)
        if name == CONTROL:
            model = reference_sliced(run, prove_points.parents[1])
            train_s = json.loads((prove_points.parents[1] / "reference.json").read_text())[0]["plain_train_s"]
        else:
            started = time.perf_counter()
            same_threads = args.threads == PROVE_THREADS
            train_s = reuse_prove_supernet(name, spec, run.folder, prove_points.parents[1]) if same_threads else None
            train_run(spec, run.folder)
            train_s = train_s or time.perf_counter() - started
            model = run.load_supernet()
        task = run.task
        validation, test = list(run.batches("validation")), list(run.batches(next(iter(task.test))))
        points = measure(model, architectures(model.config, prove_points), validation, test, task.spec)
        result_file.write_text(json.dumps({"recipe": name, "training": RECIPES.get(name, {}), "train_s": train_s,
                                           "points": points}, indent=2))
    print("\n".join(recipe_table(folder, [*args.recipes])))


def measure(model: Supernet, archs: list[tuple[str, SubNetworkConfig]], validation: list, test: list,
            spec: TaskSpec) -> list[dict]:
    """Validation and test figures of each architecture sliced out of `model`, each checked to come from forwards
    at its widths (bench/checks.py)."""
    full = count_params(model.config).encoder
    points = []
    for label, sub in archs:
        points.append({"label": label, "config": sub.to_dict(),
                       "params_fraction": count_params(model.config, sub).encoder / full,
                       "validation": checked_evaluate(model, validation, spec, sub=sub, what=label),
                       "test": checked_evaluate(model, test, spec, sub=sub, what=label)})
        log.info("%s: %s", label, points[-1]["test"])
    return points


def recipe_table(folder: Path, names: list[str]) -> list[str]:
    """Markdown rows: validation / test main metric of every architecture under each finished recipe of `names`
    (recipes screened before an architecture was added show "-" for it)."""
    rows = {n: json.loads((folder / f"{n}.json").read_text()) for n in names if (folder / f"{n}.json").is_file()}
    if not rows:
        return []
    by_label = {name: {p["label"]: p for p in r["points"]} for name, r in rows.items()}
    labels = list(dict.fromkeys(p["label"] for r in rows.values() for p in r["points"]))
    fraction = {p["label"]: p["params_fraction"] for r in rows.values() for p in r["points"]}
    metric = next(iter(next(iter(rows.values()))["points"][0]["test"]))
    lines = [f"Validation / test {metric} of the same architectures sliced out of each recipe's supernet, no "
             "search.", "", "| architecture | params | " + " | ".join(rows) + " |", "|---|---|" + "---|" * len(rows)]
    for label in labels:
        cells = [f"{p['validation'][metric]:.3f} / {p['test'][metric]:.3f}" if (p := points.get(label)) else "-"
                 for points in by_label.values()]
        lines.append(f"| {label} | {fraction[label]:.0%} | " + " | ".join(cells) + " |")
    lines.append("| training time (s) | | " + " | ".join(f"{r['train_s']:.0f}" for r in rows.values()) + " |")
    return lines


if __name__ == "__main__":
    main()
