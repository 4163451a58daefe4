"""Prove the fronts: nasprune against plain fine-tuning and the pruning baselines on one GLUE task.

Same pre-trained model (all-MiniLM-L6-v2), same data split (split seed 0), max length 128, batch 32, CPU.
Methods (each yields points: configuration, validation and test metrics, encoder params, MACs, training cost):

  reference   plain fine-tuning of the full model; learning rate from --lrs and epoch chosen on validation
  layer_drop  the full model without its top k layers (k = 1..5), each fine-tuned like the reference
  oneshot     Kwon-style pruning of the best reference model without retraining: Fisher importance of heads and
              units on training batches, masks per MAC budget 0.9 .. 0.2 by importance
  oneshot_ft  the same masks, each pruned model fine-tuned for --short-epochs (a retraining baseline)
  nas_small   a small NAS: uniform sub-networks (75/50/33/25 % of heads and units), each fine-tuned alone
  nasprune    the service's job on default training settings (its epochs, not --epochs) in the uniform space (the
              default until the importance space): supernet training, NSGA-II search (--evaluations) on (error,
              encoder params), test re-evaluation of the front
  nasprune_refined  the same job with its refine stage: each front point fine-tuned for --short-epochs at its own
              size (labels, the default refine rate; what oneshot_ft does to its masks)
  nasprune_importance  the service's own job on its defaults: the same in the importance search space (how many
              heads and units the network keeps, placed across layers by Fisher score: the shapes of Kwon's masks)
  nasprune_importance_refined  that job with its front refined, as nasprune_refined
  nasprune_importance_picks_refined  that job with `refine budgets` PICK_BUDGETS: only the front points best on
              validation within 50 % and 33 % of the encoder refined (what a user at those budgets downloads)
  nasprune_v0 the same job with the first default training recipe (before the fix this benchmark prompted)
  nasprune_v1 the second recipe (3 plain epochs, then 1 sandwich epoch distilling at T = 10 without labels)

Every unit of work (one fine-tuning run, one mask evaluation, the nasprune job) writes its JSON under
bench/out/prove/<task>/seed<k>/ when it ends, so a rerun continues where it stopped. bench/prove_report.py turns
the JSON into bench/RESULTS.md and the plots.

    python bench/prove.py --task glue/mrpc --seed 0
    python bench/prove.py --task glue/sst2 --train-limit 20000
    python bench/prove.py --task glue/rte --methods reference nasprune
    python bench/prove.py --tiny --tiny-root /tmp/tiny   # seconds: reference, oneshot and the default job on a
                                                          # tiny random BERT and a few MRPC rows

Checks (bench/checks.py): every latency is of the point's exported model at its widths; every one-shot mask's
figures come from forwards at its widths. A failed check exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import tiny
import torch
from baselines import (
    FineTuneResult,
    PrunedModel,
    finetune,
    kwon_mask,
    layer_drop_configs,
    uniform_configs,
)
from checks import checked_evaluate, models_called, require_timed_exports
from safetensors.torch import load_file, save_file

from search.job import (
    REFINED_DIR,
    SearchJob,
    budget_points,
    keeps_refined,
    ranked_subset,
    refine_points,
    run_search_job,
)
from search.latency import device_name, time_calls
from search.runner import SearchConfig
from supernet.config import SubNetworkConfig
from supernet.convert import load_supernet_from_pretrained
from supernet.counting import count_macs, count_params
from supernet.extract import SUBNETWORK_FILE, extract
from supernet.files import atomic_write_json
from supernet.importance import fisher_importance, reorder_by_importance
from supernet.metrics import error_from_metrics
from supernet.model import Supernet
from supernet.run import Run, same_run, train_run
from supernet.settings import DEFAULT_SEARCH_EXAMPLES, DEFAULT_VALIDATION_LIMIT, RefineConfig, RunSpec, TrainingConfig

DEFAULT_LRS = [3e-5, 5e-5, 1e-4]
# the CPU of every record that names none (records began to name it later): what device_name() holds on it
EARLIER_CPU_MODEL = "AMD EPYC"
OUT = Path(__file__).resolve().parent / "out" / "prove"
METHODS = ("reference", "layer_drop", "oneshot", "oneshot_ft", "nas_small", "nasprune", "nasprune_refined",
           "nasprune_importance", "nasprune_importance_refined", "nasprune_importance_picks_refined", "nasprune_v0",
           "nasprune_v1")
# the refine budgets of nasprune_importance_picks_refined: the sizes a user downloads, chosen from the whole-front
# refines' records so that refining only those picks stays within the cost target (bench/RESULTS.md compares)
PICK_BUDGETS = (0.5, 0.33)
# nasprune's first default recipe (Fisher order on the random head, then 3 sandwich epochs at 5e-5): the "before"
V0_TRAINING = {"epochs": 3.0, "learning_rate": 5e-5, "plain_fraction": 0.0, "num_random_subnets": 2,
               "temperature": 10.0, "label_loss_weight": 0.0}
# the second (3 plain epochs, Fisher order of the fine-tuned model, 1 sandwich epoch, distillation only at T = 10)
V1_TRAINING = {"epochs": 4.0, "learning_rate": 1e-4, "plain_fraction": 0.75, "num_random_subnets": 2,
               "temperature": 10.0, "label_loss_weight": 0.0}
BUDGETS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)
NAS_FRACTIONS = (0.75, 0.5, 0.33, 0.25)
log = logging.getLogger("prove")


class Stopwatch:
    """Wall seconds, and the share of this process's threads' CPU time it used meanwhile: a share well under 1
    means other work shared the cores, so the wall time is an upper bound, not a cost."""

    def __enter__(self) -> Stopwatch:
        self.started, self.cpu_started = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
        self.cpu_share = (time.process_time() - self.cpu_started) / (self.seconds * torch.get_num_threads())


@dataclass
class GridResult:
    """The learning-rate grid's choice (on validation) and what the whole grid cost."""

    best: dict[str, Any]  # the chosen run's best epoch: validation and test metrics
    learning_rate: float
    cost_s: float
    cpu_share: float | None  # the lowest of the grid's units (None if a unit was timed before it was recorded)

    def extra(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate, "epoch": self.best["epoch"], "cost_s": self.cost_s,
                "cpu_share": self.cpu_share}


def copy_trained(source: Path, folder: Path, spec: RunSpec) -> None:
    """A new run folder for `spec` holding `source`'s trained supernet: `spec` may differ from the source's in
    `validation_limit` only, which the training never reads (the search does). The supernet folder appears last
    and whole (copied beside it, then renamed): callers take its presence to mean the copy is complete."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("importance.json", "training.json"):
        if (source / name).is_file():
            shutil.copy2(source / name, folder / name)
    write_json(folder / "run.json", spec.to_dict())
    partial = folder / ".supernet.partial"
    shutil.rmtree(partial, ignore_errors=True)  # left by a copy that was killed
    shutil.copytree(source / "supernet", partial)
    partial.rename(folder / "supernet")


def write_json(path: Path, data: Any) -> None:
    atomic_write_json(path, data)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    """What defines an experiment's data and model (shared with bench/supernet_recipes.py)."""
    parser.add_argument("--task", default="glue/mrpc")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/glue"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-limit", type=int, default=None)


def plain_rate(lrs: list[float]) -> float:
    """The rate whose reference run times plain fine-tuning (the cost ratio's denominator): 5e-5, or the grid's
    first rate if 5e-5 is not in it."""
    return 5e-5 if 5e-5 in lrs else lrs[0]


def seed_folder(task: str, seed: int) -> str:
    """<task>/seed<k> under bench/out/prove (and bench/out/recipes)."""
    return f"{task.replace('/', '-')}/seed{seed}"


def add_trained_run_arguments(parser: argparse.ArgumentParser, *, task: str, out: str) -> None:
    """The arguments of a benchmark that measures a trained supernet: bench/prove.py's importance job of --task and
    --seed (or --run, or --tiny's), --repeats, --threads and its --out folder under bench/out."""
    parser.add_argument("--tiny", action="store_true", help="a tiny supernet trained on a few rows, 1 repeat")
    parser.add_argument("--tiny-root", type=Path, default=None, help="where --tiny trains its supernet")
    parser.add_argument("--run", type=Path, default=None,
                        help="a trained run folder (default: bench/prove.py's importance job of --task, --seed)")
    parser.add_argument("--prove", type=Path, default=OUT, help="bench/prove.py's output folder")
    parser.add_argument("--task", default=task)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(OUT.parent / out))


def trained_run_folder(args: argparse.Namespace) -> Path:
    """The run folder those arguments name; with --tiny, a tiny run trained now, one repeat, output beside it."""
    if args.tiny:
        root = args.tiny_root or Path(tempfile.mkdtemp(prefix="nasprune-tiny-"))
        args.run, args.repeats, args.out = tiny.tiny_run(root), 1, str(root / "out")
    return args.run or args.prove / seed_folder(args.task, args.seed) / "nasprune_importance" / "run"


def config_key(sub: SubNetworkConfig) -> str:
    return json.dumps(sub.to_dict(), sort_keys=True, separators=(",", ":"))


def point_key(point: dict[str, Any]) -> str:
    """A recorded point's sub-network as config_key: equal networks, equal keys, whatever the JSON's layout."""
    return config_key(SubNetworkConfig.from_dict(point["config"]))


class Experiment:
    """One task and seed: the data, the pre-trained model, and the folder where every unit's result lands."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.folder = Path(args.out) / seed_folder(args.task, args.seed)
        # space: the uniform space of the earlier defaults; nasprune_importance runs the current default. The
        # baselines choose learning rates, epochs and points on the whole validation split; the nasprune jobs
        # search on the service's default subset of it (job_spec)
        self.spec = RunSpec(model=args.model, task=args.task, data_dir=args.data_dir, train_limit=args.train_limit,
                            space="uniform", max_length=args.max_length, batch_size=args.batch_size,
                            validation_limit=None, training=TrainingConfig(epochs=args.epochs, seed=args.seed))
        self.run = Run(self.folder / "data", self.spec)  # data and tokenizer only (nothing is trained there)
        self.task = self.run.task
        self.generator = torch.Generator()
        self.train = self.run.batches("train", shuffle=True, generator=self.generator)
        self.validation = list(self.run.batches("validation"))
        test_split = next(iter(self.task.test))
        self.test = list(self.run.batches(test_split))

    # -- models ---------------------------------------------------------------------------------------------
    def pretrained(self) -> Supernet:
        """The pre-trained model with a classifier head drawn from the seed (the same head for every method)."""
        torch.manual_seed(self.args.seed)
        return load_supernet_from_pretrained(self.spec.model, num_labels=self.task.spec.num_labels)

    def training(self, learning_rate: float, epochs: float) -> TrainingConfig:
        return TrainingConfig(epochs=epochs, learning_rate=learning_rate, num_random_subnets=0, seed=self.args.seed)

    def point(self, method: str, label: str, sub: SubNetworkConfig, validation: dict[str, float],
              test: dict[str, float], **extra: Any) -> dict[str, Any]:
        config = self.pretrained_config
        params = count_params(config, sub)
        full = count_params(config)
        macs = count_macs(config, sub, seq_len=self.spec.max_length)
        return {"method": method, "label": label, "config": sub.to_dict(), "validation": validation, "test": test,
                "validation_error": error_from_metrics(self.task.spec, validation),
                "test_error": error_from_metrics(self.task.spec, test),
                "params_encoder": params.encoder, "params_fraction": params.encoder / full.encoder,
                "macs": macs, "macs_fraction": macs / count_macs(config, seq_len=self.spec.max_length)} | extra

    @cached_property
    def extraction_source(self) -> Supernet:
        """The pre-trained model to slice pruned models from (extract copies, so one instance serves all)."""
        return self.pretrained()

    @property
    def pretrained_config(self):
        return self.extraction_source.config

    # -- one fine-tuning run --------------------------------------------------------------------------------
    def finetune_unit(self, path: Path, build_model, learning_rate: float, epochs: float,
                      keep_best: Path | None = None, again: bool = False) -> dict[str, Any]:
        """Fine-tune the model `build_model()` returns, unless `path` already holds the result (or `again`)."""
        if path.is_file() and not again:
            return read_json(path)
        model = build_model()
        best_error = [float("inf")]

        def on_epoch(epoch) -> None:
            if keep_best is not None and epoch.validation_error < best_error[0]:
                best_error[0] = epoch.validation_error
                keep_best.parent.mkdir(parents=True, exist_ok=True)
                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, keep_best)

        log.info("%s: lr %g, %g epochs", path.relative_to(self.folder), learning_rate, epochs)
        with Stopwatch() as watch:
            result: FineTuneResult = finetune(model, self.train, self.validation, self.test, self.task.spec,
                                              self.training(learning_rate, epochs), generator=self.generator,
                                              on_epoch=on_epoch)
        # how the time was measured: a unit that shared the cores with other work is slower than a quiet one
        data = result.to_dict() | {"threads": torch.get_num_threads(), "load_average": os.getloadavg()[0],
                                   "cpu_share": watch.cpu_share}
        write_json(path, data)
        return data

    def best_of_grid(self, folder: Path, build_model, epochs: float, *, keep_best: bool = False) -> GridResult:
        """Fine-tune over the learning-rate grid; the run and epoch chosen on validation, and the grid's cost."""
        runs = []
        for lr in self.args.lrs:
            weights = folder / f"lr{lr:g}.safetensors" if keep_best else None
            runs.append(self.finetune_unit(folder / f"lr{lr:g}.json", build_model, lr, epochs, keep_best=weights))
        chosen = min(runs, key=lambda r: min(e["validation_error"] for e in r["epochs"]))
        best = next(e for e in chosen["epochs"] if e["epoch"] == chosen["best_epoch"])
        shares = [r.get("cpu_share") for r in runs]
        return GridResult(best, chosen["learning_rate"], sum(r["train_s"] for r in runs),
                          None if None in shares else min(shares))

    # -- methods --------------------------------------------------------------------------------------------
    def reference(self) -> list[dict[str, Any]]:
        folder = self.folder / "reference"
        grid = self.best_of_grid(folder, self.pretrained, self.args.epochs, keep_best=True)
        full = SubNetworkConfig.full(self.pretrained_config)
        # the plain fine-tuning time (it does not depend on the rate): the denominator of the cost ratio
        plain = read_json(folder / f"lr{plain_rate(self.args.lrs):g}.json")
        return [self.point("reference", "full", full, grid.best["validation"], grid.best["test"], **grid.extra(),
                           plain_train_s=plain["train_s"], plain_cpu_share=plain.get("cpu_share"))]

    def best_reference(self) -> Supernet:
        """The fine-tuned full model of the learning rate and epoch chosen on validation."""
        point = self.reference()[0]
        weights = self.folder / "reference" / f"lr{point['learning_rate']:g}.safetensors"
        if not weights.is_file():  # the records are committed, the weights are not: a new checkout trains it again
            log.warning("%s is missing: fine-tuning the chosen reference run again", weights)
            self.finetune_unit(weights.with_suffix(".json"), self.pretrained, point["learning_rate"],
                               self.args.epochs, keep_best=weights, again=True)
        model = self.pretrained()
        model.load_state_dict(load_file(weights))
        return model.eval()

    def layer_drop(self) -> list[dict[str, Any]]:
        points = []
        pretrained = self.extraction_source
        for sub in layer_drop_configs(pretrained.config):
            k = pretrained.config.num_layers - len(sub.layers)
            grid = self.best_of_grid(self.folder / "layer_drop" / f"drop{k}",
                                     lambda sub=sub: PrunedModel(extract(pretrained, sub)), self.args.epochs)
            points.append(self.point("layer_drop", f"drop top {k}", sub, grid.best["validation"], grid.best["test"],
                                     **grid.extra()))
        return points

    def ordered_reference(self) -> tuple[Supernet, list[SubNetworkConfig], float]:
        """The best reference model ordered by Fisher importance on training batches, and the masks per budget."""
        model = self.best_reference()
        started = time.perf_counter()
        self.generator.manual_seed(self.args.seed)
        importance = fisher_importance(model, self.train, max_batches=self.args.importance_batches)
        reorder_by_importance(model, importance)
        ordered = importance.sorted()
        masks = [kwon_mask(model.config, ordered, b, seq_len=self.spec.max_length) for b in BUDGETS]
        return model.eval(), masks, time.perf_counter() - started

    def oneshot(self) -> list[dict[str, Any]]:
        path = self.folder / "oneshot" / "points.json"
        if path.is_file():
            return read_json(path)
        model, masks, scoring_s = self.ordered_reference()
        points = []
        for budget, sub in zip(BUDGETS, masks, strict=True):
            validation = checked_evaluate(model, self.validation, self.task.spec, sub=sub, what=f"mask {budget}")
            test = checked_evaluate(model, self.test, self.task.spec, sub=sub, what=f"mask {budget}")
            points.append(self.point("oneshot", f"MACs {budget:.0%}", sub, validation, test, budget=budget,
                                     cost_s=scoring_s))
        write_json(path, points)
        return points

    def oneshot_ft(self) -> list[dict[str, Any]]:
        masks = [SubNetworkConfig.from_dict(p["config"]) for p in self.oneshot()]
        model: Supernet | None = None
        points = []
        for budget, sub in zip(BUDGETS, masks, strict=True):
            folder = self.folder / "oneshot_ft" / f"macs{round(budget * 100)}"
            if model is None and not all((folder / f"lr{lr:g}.json").is_file() for lr in self.args.lrs):
                model, _, _ = self.ordered_reference()

            def build(sub=sub, model=model):
                return PrunedModel(extract(model, sub))

            grid = self.best_of_grid(folder, build, self.args.short_epochs)
            points.append(self.point("oneshot_ft", f"MACs {budget:.0%} + {self.args.short_epochs:g} ep", sub,
                                     grid.best["validation"], grid.best["test"], budget=budget, **grid.extra()))
        return points

    @cached_property
    def ordered_pretrained(self) -> Supernet:
        """The pre-trained model ordered by Fisher importance, as nasprune orders it before supernet training
        (scored once; extract copies the slices)."""
        model = self.pretrained()
        self.generator.manual_seed(self.args.seed)
        reorder_by_importance(model, fisher_importance(model, self.train, max_batches=self.spec.importance_batches))
        return model

    def nas_small(self) -> list[dict[str, Any]]:
        points = []
        for fraction, sub in zip(NAS_FRACTIONS, uniform_configs(self.pretrained_config, NAS_FRACTIONS), strict=True):
            folder = self.folder / "nas_small" / f"uniform{round(fraction * 100)}"
            grid = self.best_of_grid(
                folder, lambda sub=sub: PrunedModel(extract(self.ordered_pretrained, sub)), self.args.epochs)
            points.append(self.point("nas_small", f"uniform {fraction:.0%}", sub, grid.best["validation"],
                                     grid.best["test"], **grid.extra()))
        return points

    def job_spec(self, **changes: Any) -> RunSpec:
        """The spec of a nasprune job: the service's defaults (its validation subset included) and `changes`."""
        return self.spec.model_copy(update={"validation_limit": DEFAULT_VALIDATION_LIMIT, **changes})

    def nasprune(self) -> list[dict[str, Any]]:
        """The job as the service ran it before the importance space: default training settings (their epochs, not
        --epochs), uniform space."""
        return self.nasprune_job("nasprune", self.job_spec(training=TrainingConfig(seed=self.args.seed)))

    def nasprune_importance(self) -> list[dict[str, Any]]:
        """The job exactly as the service runs it now: default training settings, the importance space (heads and
        units placed across layers by Fisher score)."""
        return self.nasprune_job("nasprune_importance", self.job_spec(space="importance",
                                                                training=TrainingConfig(seed=self.args.seed)))

    def nasprune_v0(self) -> list[dict[str, Any]]:
        return self.nasprune_job("nasprune_v0", self.job_spec(training=TrainingConfig(seed=self.args.seed,
                                                                                           **V0_TRAINING)))

    def nasprune_v1(self) -> list[dict[str, Any]]:
        return self.nasprune_job("nasprune_v1", self.job_spec(training=TrainingConfig(seed=self.args.seed,
                                                                                           **V1_TRAINING)))

    def nasprune_refined(self) -> list[dict[str, Any]]:
        """nasprune's job, then each front point refined (`--refine-epochs`: --short-epochs at the default rate,
        labels only): the same last step as oneshot_ft, from the supernet's weights and the searched shapes."""
        self.nasprune()
        return self.refined_job("nasprune_refined", "nasprune", self.job_spec())

    def nasprune_importance_refined(self) -> list[dict[str, Any]]:
        """nasprune_importance's job with its front refined, as nasprune_refined."""
        self.nasprune_importance()
        return self.refined_job("nasprune_importance_refined", "nasprune_importance",
                                self.job_spec(space="importance"))

    def nasprune_importance_picks_refined(self) -> list[dict[str, Any]]:
        """nasprune_importance's job with refine budgets PICK_BUDGETS, in a copy of its folder (trained supernet,
        trials: the search resumes finished) so that no model of the whole-front refine is reused; its cost is the
        job's plus this refine stage."""
        self.nasprune_importance()
        source, folder = self.folder / "nasprune_importance", self.folder / "nasprune_importance_picks"
        spec = self.job_spec(space="importance", training=TrainingConfig(seed=self.args.seed))
        if not (folder / "times.json").is_file():
            self.ensure_supernet(source, spec)
            copy_trained(source / "run", folder / "run", spec)
            for name in ("search.json", "trials.jsonl"):
                shutil.copy2(source / "run" / name, folder / "run" / name)
            times = read_json(source / "times.json")
            write_json(folder / "times.json", {k: times[k] for k in ("train_s", "train_cpu_share", "search_and_test_s",
                                                                      "search_and_test_cpu_share") if k in times})
        return self.refined_job("nasprune_importance_picks_refined", "nasprune_importance_picks", spec,
                                budgets=PICK_BUDGETS)

    @staticmethod
    def ensure_supernet(folder: Path, spec: RunSpec) -> None:
        """A new checkout has a finished job's records, not its weights: train its supernet again (seeded: bitwise
        the same on one CPU, close on another), before and outside any refine's clock,
        whose cost must not count the job's training twice."""
        if not (folder / "run" / "supernet").is_dir():
            log.info("%s: the job's supernet is not here; training it again (seeded)", folder)
            train_run(spec, folder / "run")

    def refined_job(self, method: str, job_method: str, spec: RunSpec,
                    budgets: tuple[float, ...] = ()) -> list[dict[str, Any]]:
        """Refine the front of `job_method`'s finished job in its own folder (its cost adds the refining): every
        point, or with `budgets` the best on validation within each (the other points stay slices)."""
        folder = self.folder / job_method
        times = read_json(folder / "times.json")
        refine = RefineConfig(epochs=self.args.short_epochs, budgets=budgets)
        if "refine_s" not in times:
            seeded = spec.model_copy(update={"training": TrainingConfig(seed=self.args.seed)})
            self.ensure_supernet(folder, seeded)
            job = SearchJob(search=SearchConfig(evaluations=self.args.evaluations, seed=self.args.seed), refine=refine)
            earlier_s = times.get("refine_partial_s", 0.0)  # earlier, stopped runs of this refine
            started_at = time.time()
            front_file = folder / "run" / "front.json"
            started_front = read_json(front_file) if "refine_partial_s" in times and front_file.is_file() else None
            try:
                with Stopwatch() as watch:
                    if started_front is not None:
                        # resume on the front the stopped refine began: rerunning the job would write the front
                        # again from a supernet trained again, which on another CPU is close but not bitwise the
                        # same, and a point that moved would lose its refined record (they are kept by position)
                        positions = (budget_points(started_front, budgets, self.task.spec) if budgets
                                     else list(range(len(started_front["points"]))))
                        refine_points(folder / "run", positions, refine)
                    else:
                        run_search_job(seeded, job, folder / "run")
            except BaseException:
                # the refine resumes at its next unrefined point, so keep the time up to the last point it finished
                # (a point stopped half-way is trained again, and counted then)
                finished = [f.stat().st_mtime for f in (folder / "run" / REFINED_DIR).glob(f"*/{SUBNETWORK_FILE}")
                            if f.stat().st_mtime >= started_at]
                if finished:
                    times["refine_partial_s"] = earlier_s + max(finished) - started_at
                    write_json(folder / "times.json", times)
                    log.info("%s: refine stopped; %.0f s of it kept for the resumed run", method,
                             times["refine_partial_s"])
                raise
            times["refine_s"] = earlier_s + watch.seconds  # a job's run re-tests the front too (a small share)
            times["refine_cpu_share"] = watch.cpu_share
            times["refine_load_average"] = os.getloadavg()[0]  # 1-minute load at the end: was the machine shared?
            write_json(folder / "times.json", times)
        front = read_json(folder / "run" / "front.json")
        cost = times["train_s"] + times["search_and_test_s"] + times["refine_s"]
        job_times = {f"job_{k}": v for k, v in times.items()}
        points = []
        for i, p in enumerate(front["points"]):
            refined, label, chosen, extra = p.get("refined"), f"front {i}", p, {}
            if refined is not None:  # else not one of the budgets' picks: the slice, as the job left it
                # what the job serves: the refined model only if at least as good on validation ("kept"; fronts
                # refined before that rule have no flag and get it computed here the same way)
                kept = refined.get("kept", keeps_refined(self.task.spec, refined["validation"], p["validation"]))
                chosen = refined if kept else p
                label += " refined" if kept else " slice kept"
                extra = {"refine_kept": kept, "refine_train_s": refined["train_s"]}
            points.append(self.point(method, label, SubNetworkConfig.from_dict(p["config"]), chosen["validation"],
                                     chosen["test"], cost_s=cost, **extra, **job_times))
        return points

    @staticmethod
    def set_search_aside(folder: Path, spec: RunSpec, times: dict[str, Any], earlier: str) -> None:
        """Keep a job's earlier search (run folder and time, and the refining of its front) beside it as
        run-`earlier`, so that its trained supernet is searched again on the current defaults."""
        run_folder = folder / "run"
        run_folder.rename(folder / f"run-{earlier}")
        copy_trained(folder / f"run-{earlier}", run_folder, spec)
        for key in ("search_and_test_s", "search_and_test_cpu_share", "refine_s", "refine_cpu_share",
                    "refine_load_average"):
            if key in times:
                times[f"{key}_{earlier}"] = times.pop(key)
        write_json(folder / "times.json", times)

    def nasprune_job(self, method: str, spec: RunSpec) -> list[dict[str, Any]]:
        folder = self.folder / method
        times_file = folder / "times.json"
        times = read_json(times_file) if times_file.is_file() else {}
        run_folder = folder / "run"
        stored = RunSpec.from_dict(read_json(run_folder / "run.json")) if (run_folder / "run.json").is_file() else None
        if (stored is not None and "search_and_test_s" in times and not same_run(stored, spec)
                and stored.model_copy(update={"validation_limit": spec.validation_limit}) == spec):
            # the default validation cap changed since this job ran: search its trained supernet again
            self.set_search_aside(folder, spec, times, f"validation{stored.validation_limit}")
        if "search_and_test_s" in times:
            searched = SearchJob.from_dict(read_json(run_folder / "search.json")).search_examples
            size = len(Run(run_folder, spec).task.validation)
            if searched != ranked_subset(self.args.search_examples, size):
                # so did the validation subset the search ranks on
                self.set_search_aside(folder, spec, times, f"search{searched or size}")
        if "train_s" not in times:
            with Stopwatch() as watch:
                train_run(spec, run_folder)
            times["train_s"], times["train_cpu_share"] = watch.seconds, watch.cpu_share
            write_json(times_file, times)
        if "search_and_test_s" not in times:
            job = SearchJob(search=SearchConfig(evaluations=self.args.evaluations, seed=self.args.seed),
                            search_examples=self.args.search_examples)
            with Stopwatch() as watch:
                run_search_job(spec, job, run_folder)
            times["search_and_test_s"], times["search_and_test_cpu_share"] = watch.seconds, watch.cpu_share
            write_json(times_file, times)
        front = read_json(run_folder / "front.json")
        cost = times["train_s"] + times["search_and_test_s"]
        points = [self.point(method, f"front {i}", SubNetworkConfig.from_dict(p["config"]), p["validation"],
                             p["test"], cost_s=cost, **{f"job_{k}": v for k, v in times.items()})
                  for i, p in enumerate(front["points"])]
        reference = front["reference"]
        points.append(self.point(method, "supernet full", SubNetworkConfig.from_dict(reference["config"]),
                                 reference["validation"], reference["test"], cost_s=cost, on_front=False))
        return points

    # -- latency --------------------------------------------------------------------------------------------
    def add_latency(self, points: list[dict[str, Any]], *, fresh: bool = False) -> None:
        """Measured forward latency (ms) of each point's physically pruned model at batch 1 and 32 x seq len.

        Configurations not yet in the cache (all of them with `fresh`) are timed together, round-robin, so the
        speed-ups within one method are measured side by side under the same machine load. The cache is kept per
        CPU model and thread count, and each point records the device it was timed on (`latency_device`): a
        host name can be the same on two machines with different CPUs."""
        device = device_name()
        cache_file = Path(self.args.out) / latency_cache_name(device)
        cache = read_json(cache_file) if cache_file.is_file() else {}
        keys = [point_key(point) for point in points]
        todo = sorted({key for key in keys if fresh or key not in cache})
        if todo:
            pretrained = self.extraction_source
            subs = [SubNetworkConfig.from_dict(json.loads(key)) for key in todo]
            models = [extract(pretrained, sub).eval() for sub in subs]
            measured: dict[str, dict[str, float]] = {key: {} for key in todo}
            for batch in (1, 32):
                ids = torch.randint(1, pretrained.config.vocab_size, (batch, self.spec.max_length))
                mask = torch.ones_like(ids)
                with torch.inference_mode(), models_called() as timed:
                    times = time_calls([lambda m=m, i=ids, a=mask: m(i, a) for m in models],
                                       repeats=self.args.latency_repeats)
                require_timed_exports(timed, subs, f"latency at batch {batch}")
                for key, ms in zip(todo, times, strict=True):
                    measured[key][str(batch)] = ms
            cache.update(measured)
            write_json(cache_file, cache)
        for point, key in zip(points, keys, strict=True):
            point["latency_ms"] = cache[key]
            point["latency_device"] = device


def latency_cache_name(device: str) -> str:
    """The latency cache's file name for a device name such as "cpu-Intel(R) Xeon(R) Processor-2t"."""
    return "latency-" + re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") + ".json"


TINY_METHODS = ["reference", "oneshot", "nasprune_importance"]


def tiny_settings(args: argparse.Namespace) -> None:
    """The smallest setting: a tiny random BERT and a few MRPC rows, one short run of each unit (seconds)."""
    root = Path(args.tiny_root or tempfile.mkdtemp(prefix="nasprune-tiny-"))
    args.model, args.data_dir = tiny.workspace(root)
    args.task, args.out, args.methods = "glue/mrpc", str(root / "prove"), args.methods or TINY_METHODS
    args.max_length, args.batch_size, args.epochs, args.short_epochs = tiny.TINY_MAX_LENGTH, 8, 1.0, 0.5
    args.lrs, args.evaluations, args.importance_batches, args.latency_repeats = [1e-4], 8, 2, 1
    args.search_examples = 8  # of the 14 validation rows: a subset, as the service's job ranks on


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the smallest setting (tiny model, a few rows)")
    parser.add_argument("--tiny-root", default=None, help="where --tiny writes its model, data and out")
    add_task_arguments(parser)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=3.0, help="epochs of every full-length fine-tuning run")
    parser.add_argument("--short-epochs", type=float, default=1.0, help="epochs of the oneshot_ft fine-tuning")
    parser.add_argument("--lrs", type=float, nargs="+", default=DEFAULT_LRS)
    parser.add_argument("--evaluations", type=int, default=100)
    parser.add_argument("--search-examples", type=int, default=DEFAULT_SEARCH_EXAMPLES,
                        help="validation examples the nasprune jobs rank on (the service's default)")
    parser.add_argument("--importance-batches", type=int, default=64, help="batches for the oneshot Fisher")
    parser.add_argument("--methods", nargs="+", default=None, choices=METHODS, help="default: every method")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-repeats", type=int, default=7)
    parser.add_argument("--fresh-latency", action="store_true",
                        help="then re-time every point of the chosen methods together, round-robin (on a quiet "
                             "machine, after they have finished)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    if args.tiny:
        tiny_settings(args)
    args.methods = args.methods or list(METHODS)
    # a stop by kill runs the cleanup of a stopped run (the refine keeps its time) as Ctrl-C does
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    experiment = Experiment(args)
    settings_path = experiment.folder / "settings.json"
    stored = read_json(settings_path) if settings_path.exists() else {}
    earlier = set(stored.get("methods", []))
    # which CPU each method last ran on: a seed's methods may run at different times, on different machines
    cpu = device_name("cpu")
    write_json(settings_path, vars(args) | {
        "methods": [m for m in METHODS if m in earlier | set(args.methods)], "methods_this_run": args.methods,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or
        platform.machine(), "cpu": cpu,
        "cpu_by_method": stored.get("cpu_by_method", {}) | dict.fromkeys(args.methods, cpu),
        "majority_baseline": experiment.task.majority_baseline,
        "main_metric": experiment.task.spec.main_metric,
        "sizes": {"train": len(experiment.task.train), "validation": len(experiment.task.validation),
                  "test": sum(len(b["labels"]) for b in experiment.test)}})
    results = {}
    for method in args.methods:
        started = time.perf_counter()
        results[method] = points = getattr(experiment, method)()
        experiment.add_latency(points)
        write_json(experiment.folder / f"{method}.json", points)
        log.info("%s: %d point(s) in %.0f s", method, len(points), time.perf_counter() - started)
    if args.fresh_latency:  # every point of every chosen method timed again, side by side in one pass
        experiment.add_latency([p for points in results.values() for p in points], fresh=True)
        for method, points in results.items():
            write_json(experiment.folder / f"{method}.json", points)
    return results


if __name__ == "__main__":
    main()
