"""`nasprune` command line: the same pipeline as the service, run locally.

    nasprune train  --model minilm --task glue/rte --data-dir ../shared/data/glue --out runs/rte
    nasprune export --run runs/rte --config middle --out runs/rte/export-middle [--format hf|onnx]
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

from supernet.config import ConfigError, SubNetworkConfig
from supernet.convert import ModelLoadError
from supernet.data import DataError
from supernet.evaluation import evaluate
from supernet.extract import ExportError, export_onnx, export_subnetwork, load_exported
from supernet.run import CustomTask, Run, RunSpec, train_run
from supernet.training import TrainingConfig

log = logging.getLogger("nasprune")


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="minilm", help="'minilm', a local folder or a hub id (BERT/RoBERTa family)")
    p.add_argument("--task", default="glue/rte", help="glue/<name>, or custom/<name> with --train-file etc.")
    p.add_argument("--data-dir", default=None, help="GLUE folder (classic TSV layout); default $GLUE_DIR or the hub")
    p.add_argument("--train-file", help="custom task: training file (.csv, .tsv or .jsonl)")
    p.add_argument("--test-file", help="custom task: test file")
    p.add_argument("--text-columns", default="text", help="custom task: one or two comma-separated columns")
    p.add_argument("--label-column", default="label", help="custom task: label column")
    p.add_argument("--task-type", choices=["classification", "regression"], default="classification")
    p.add_argument("--space", default="uniform", choices=["uniform", "per_layer", "layers"])
    p.add_argument("--epochs", type=float, default=3.0, help="supernet epochs (may be fractional)")
    p.add_argument("--train-limit", type=int, default=None, help="cap on training examples")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--num-random-subnets", type=int, default=2, help="k of the sandwich rule; 0 = plain fine-tuning")
    p.add_argument("--temperature", type=float, default=10.0)
    p.add_argument("--label-loss-weight", type=float, default=0.0)
    p.add_argument("--importance", choices=["fisher", "none"], default="fisher")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run folder (rerun with the same folder to resume)")


def _spec_from_args(args: argparse.Namespace) -> RunSpec:
    custom = None
    if args.task.startswith("custom/"):
        if not args.train_file or not args.test_file:
            raise DataError("a custom task needs --train-file and --test-file")
        custom = CustomTask(name=args.task.split("/", 1)[1], train_file=args.train_file, test_file=args.test_file,
                            text_columns=[c for c in args.text_columns.split(",") if c],
                            label_column=args.label_column, task_type=args.task_type)
    training = TrainingConfig(epochs=args.epochs, learning_rate=args.lr, gradient_accumulation=args.grad_accum,
                              num_random_subnets=args.num_random_subnets, temperature=args.temperature,
                              label_loss_weight=args.label_loss_weight, seed=args.seed)
    return RunSpec(model=args.model, task=args.task, data_dir=args.data_dir, custom=custom, space=args.space,
                   max_length=args.max_length, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
                   train_limit=args.train_limit, split_seed=args.split_seed, importance=args.importance,
                   training=training)


def cmd_train(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args)
    interrupted = {"flag": False}

    def stop(*_: object) -> None:
        interrupted["flag"] = True
        log.warning("interrupted: finishing the current step and writing a checkpoint")

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    start = time.perf_counter()
    state = train_run(spec, args.out, should_stop=lambda: interrupted["flag"])
    if state.stopped:
        print(f"stopped at step {state.step}/{state.total_steps}; rerun the same command to resume")
        return 130
    summary = json.loads((Path(args.out) / "training.json").read_text())
    print(f"trained in {time.perf_counter() - start:.0f} s; validation metrics:")
    for name, metrics in summary["validation"].items():
        print(f"  {name:9s} " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    print("  majority  " + ", ".join(f"{k}={v:.4f}" for k, v in summary["majority_baseline"].items()))
    return 0


def _parse_sub(text: str, run: Run, config) -> SubNetworkConfig:
    space = run.space(config)
    if text in ("smallest", "middle", "largest"):
        return getattr(space, text)()
    path = Path(text)
    raw = path.read_text() if path.is_file() else text
    try:
        return SubNetworkConfig.from_json(raw).validate(config)
    except json.JSONDecodeError:
        raise ConfigError(
            f"--config must be smallest, middle, largest, a JSON object or a JSON file, not {text!r}"
        ) from None


def cmd_export(args: argparse.Namespace) -> int:
    run = Run(args.run)
    supernet = run.load_supernet()
    sub = _parse_sub(args.config, run, supernet.config)
    validation = run.batches("validation")
    spec = run.task.spec
    sliced = evaluate(supernet, validation, spec, sub=sub, progress=True)
    out = export_subnetwork(supernet, sub, args.out, tokenizer=run.tokenizer, seq_len=run.spec.max_length,
                            metrics={"validation": sliced})
    exported = evaluate(load_exported(out), validation, spec, progress=True)
    print(f"exported {sub.to_json()} to {out}")
    print("  validation, sliced in the supernet: " + ", ".join(f"{k}={v:.4f}" for k, v in sliced.items()))
    print("  validation, exported model:         " + ", ".join(f"{k}={v:.4f}" for k, v in exported.items()))
    if args.format == "onnx":
        path = export_onnx(load_exported(out), Path(out) / "model.onnx", seq_len=run.spec.max_length)
        print(f"  ONNX: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nasprune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="fine-tune the weight-sharing supernet of a model on a task")
    _add_training_flags(train)
    train.set_defaults(func=cmd_train)
    export = sub.add_parser("export", help="export a sub-network of a trained run as a smaller model")
    export.add_argument("--run", required=True, help="run folder written by `nasprune train`")
    export.add_argument("--config", default="middle",
                        help="smallest | middle | largest | a SubNetworkConfig as JSON or a JSON file")
    export.add_argument("--out", required=True, help="folder for the exported model")
    export.add_argument("--format", choices=["hf", "onnx"], default="hf")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (DataError, ConfigError, ModelLoadError, ExportError, FileNotFoundError, ValueError) as exc:
        print(f"nasprune: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
