"""The compress stage: one front point of a finished search, decomposed and recovered (supernet/compress.py), measured
on the task's validation and test splits and kept as a model folder beside the run.

Each (point, settings) pair has one folder, compressed/<point>/<key>/, key a digest of the settings and the run's
seed: a repeated request returns what is there (idempotent), and a stopped recovery resumes from its checkpoint
beside it. The point's model is its refined one where the front serves that, else the supernet's slice; either way
the teacher is what a user would have downloaded.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from supernet.batching import token_counts
from supernet.compress import compress_model
from supernet.config import SubNetworkConfig
from supernet.counting import count_macs, count_params, expected_macs
from supernet.devices import resolve_device, training_dtype
from supernet.evaluation import evaluate
from supernet.extract import extract, load_exported, save_folder
from supernet.factors import Compression
from supernet.files import atomic_path
from supernet.refine import PrunedModel
from supernet.run import Run
from supernet.settings import CompressConfig, Compute
from supernet.training import TrainState

from .job import metrics_on_test_splits
from .records import REFINED_DIR, SUBNETWORK_FILE, compressed_folder, serves_refined
from .store import FileStore, Store

log = logging.getLogger(__name__)


def _point(folder: Path, position: int, store: Store | None) -> dict[str, Any]:
    front = (store if store is not None else FileStore(folder)).load_front()
    if front is None:
        raise FileNotFoundError(f"{folder}: no front here; run the search first")
    points = front["points"]
    if not 0 <= position < len(points):
        raise ValueError(f"point must be between 0 and {len(points) - 1} (the front's points), got {position}")
    return points[position]


def compress_point(folder: str | Path, position: int, config: CompressConfig, *, progress: bool = True,
                   on_step: Callable[[TrainState], None] | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   compute: Compute | None = None, store: Store | None = None) -> dict[str, Any] | None:
    """Compress front point `position` of the search in `folder` with `config`; returns the compressed model's
    record (its subnetwork.json, with "folder" relative to the run), or None if stopped (a later call resumes).
    CompressionError names a setting that does not fit the point. `compute`: where the recovery runs (default
    auto); `store`: where the front is (default: front.json in `folder`)."""
    folder = Path(folder)
    point = _point(folder, position, store)
    compute = compute or Compute()
    run = Run(folder, device=resolve_device(compute.device))
    target = compressed_folder(folder, position, config.to_dict(), run.spec.training.seed)
    if (target / SUBNETWORK_FILE).is_file():
        return json.loads((target / SUBNETWORK_FILE).read_text()) | {"folder": str(target.relative_to(folder))}
    supernet = run.load_supernet()
    sub = SubNetworkConfig.from_dict(point["config"]).validate(supernet.config)
    refined = serves_refined(point)
    dense = load_exported(folder / REFINED_DIR / str(position)) if refined else extract(supernet, sub)
    record = compress_into(run, supernet, sub, dense, config, target, progress=progress, on_step=on_step,
                           should_stop=should_stop, precision=compute.precision,
                           source="refined" if refined else "sliced",
                           point_metrics={"validation": point["validation"], "test": point.get("test")})
    return None if record is None else record | {"folder": str(target.relative_to(folder))}


def compress_into(run: Run, supernet, sub: SubNetworkConfig, dense, config: CompressConfig, target: Path, *,
                  source: str, point_metrics: dict[str, Any] | None = None, progress: bool = True,
                  on_step: Callable[[TrainState], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, precision: str = "auto") -> dict[str, Any] | None:
    """Compress `dense` (the model of `sub` in `supernet`) into the folder `target` and measure it; its record, or
    None if stopped (its recovery checkpoint waits beside `target`). The recovery runs on the run's device, in
    `precision` (training_dtype); the figures are measured in float32."""
    compression = Compression.from_dict(config.compression())
    count_params(supernet.config, sub, compression)  # the ranks checked before any training (CompressionError)
    generator = torch.Generator()
    device = run.device or torch.device("cpu")
    loader = run.batches("train", shuffle=True, generator=generator) if config.epochs else None
    started = time.perf_counter()
    checkpoint = target.with_suffix(".pt")
    if checkpoint.is_file():
        log.info("resuming the recovery of %s from its checkpoint", target.name)
    model = compress_model(dense, config, loader, seed=run.spec.training.seed, generator=generator,
                           checkpoint_path=checkpoint, on_step=on_step, should_stop=should_stop,
                           progress=progress, device=device, dtype=training_dtype(precision, device))
    if model is None:
        return None
    train_s = time.perf_counter() - started
    validation = list(run.batches("validation"))
    metrics = {"validation": evaluate(PrunedModel(model), validation, run.task.spec)}
    if run.task.test:
        metrics["test"] = metrics_on_test_splits(run, PrunedModel(model), None,
                                                 {split: list(run.batches(split)) for split in run.task.test})
    lengths = token_counts(validation)
    record = {
        "config": sub.to_dict(), "compression": config.to_dict(), "source": source,
        "params": count_params(supernet.config, sub, compression).to_dict(),
        "point_params": count_params(supernet.config, sub).to_dict(),
        "macs": count_macs(supernet.config, sub, seq_len=run.spec.max_length, compression=compression),
        "seq_len": run.spec.max_length,
        "expected_macs": expected_macs(supernet.config, sub.static(), lengths, compression=compression),
        "metrics": metrics, "point_metrics": point_metrics or {}, "train_s": train_s,
    }
    save_folder(model.cpu(), target, tokenizer=run.tokenizer, record=record)
    return record


def export_compressed(folder: str | Path, record: dict[str, Any], out: str | Path) -> Path:
    """Copy a compressed point's model folder (weights, modeling files, tokenizer, subnetwork.json) to `out`
    (what `nasprune compress --out` writes), atomically."""
    with atomic_path(out) as tmp:
        shutil.copytree(Path(folder) / record["folder"], tmp)
    return Path(out)
