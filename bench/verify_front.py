"""Check a finished search: the front is non-dominated, and every front point, exported and reloaded with plain
transformers (trust_remote_code=True), reproduces its recorded validation metrics. The check (bench/checks.py):
each reloaded model is the exported class with its point's sliced widths; a front that is not the non-dominated
trials, or a metric off by more than --tolerance, exits non-zero.

A point that drops tokens (`token_keep` in its config) is checked three ways: in the run's evaluation batches
(sorted by length, as the search scored it), at batch 1 (every example alone, unpadded) and at batch 32 in the
split's own order (mixed lengths, each batch padded to its longest). Elimination keeps ⌈r · length⌉ tokens of
each example's own length, so neither padding nor the company an example keeps may change its prediction; a
static point keeps the first check only. Each point's line says which checks ran.

A point that exits early (`exit_threshold` in its config) runs the same three checks, and in each the exported
model's mean exit layer (`model.last_exit_layers`, examples leaving per row as the batch shrinks) must equal the
point's recorded `dynamics.mean_exit_layer`: where an example leaves may depend neither on its padding nor on the
other rows of its batch.

A compressed point (`nasprune compress`, under the run's compressed/) is reloaded the same way and must reproduce
the validation metrics its subnetwork.json records, with the factorisation its config names.

    python bench/verify_front.py --run runs/rte
    python bench/verify_front.py --tiny       # seconds: a tiny search job with token elimination, then the same
    python bench/verify_front.py --tiny-exits # seconds: a tiny search job with exit thresholds, then the same
    python bench/verify_front.py --tiny-compress  # seconds: a tiny search job, its point 0 compressed, the same
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tiny
import torch
from checks import require, require_exported
from transformers import AutoModelForSequenceClassification

from search.compression import compress_point
from search.pareto import distinct_non_dominated
from search.records import COMPRESSED_DIR, SUBNETWORK_FILE
from supernet.batching import make_batches
from supernet.config import SubNetworkConfig
from supernet.evaluation import metrics_from_logits, predict
from supernet.extract import export_subnetwork
from supernet.run import Run
from supernet.settings import CompressConfig

SEARCHED = "as searched"  # the run's evaluation batches, sorted by length: how the search scored the point
ALONE = "batch 1"  # every example alone, unpadded
MIXED = "batch 32 mixed"  # the split's own order, each batch of 32 padded to its longest example


def _key(config: dict[str, Any], *, full_depth: bool = False) -> str:
    """A trial's config as its front point names it: open exits are chosen once the front is known (a point opens
    the exits its examples left at), and a point at which no one left is its structure at full depth."""
    dropped = ("open_exits", "exit_threshold") if full_depth else ("open_exits",)
    return json.dumps({k: v for k, v in config.items() if k not in dropped}, sort_keys=True)


def check_front_is_non_dominated(folder: Path, front: dict[str, Any]) -> None:
    trials = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]
    names = front["objectives"]
    values = np.array([[t["objectives"][n] for n in names] for t in trials])
    front_configs = {_key(p["config"]) for p in front["points"]}
    mask = distinct_non_dominated(values)
    expected = [t["config"] for t, keep in zip(trials, mask, strict=True) if keep]
    named = {_key(c) for c in expected} | {_key(c, full_depth=True) for c in expected}
    same = front_configs <= named and all(_key(c) in front_configs or _key(c, full_depth=True) in front_configs
                                          for c in expected)
    print(f"{len(trials)} trials, {len(front['points'])} front points; front == non-dominated trials: {same}")
    require(same, f"{folder}: the front is not the non-dominated trials")


def batchings(run: Run) -> dict[str, list]:
    """The validation split in each batching a check runs (tokenised once)."""
    examples, tokenizer, spec = run.task.validation, run.tokenizer, run.spec

    def batches(size: int) -> list:
        return list(make_batches(examples, tokenizer, batch_size=size, max_length=spec.max_length,
                                 is_regression=run.task.spec.is_regression))

    return {SEARCHED: list(run.batches("validation")), ALONE: batches(1), MIXED: batches(32)}


def predict_with_exits(model: Any, batches: list) -> tuple[tuple[np.ndarray, np.ndarray], float]:
    """(logits, labels) as `predict` gives them, and the mean of `model.last_exit_layers` over every example."""
    out, layers = predict(model, batches), []
    with torch.no_grad():
        for batch in batches:
            model(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
            layers += model.last_exit_layers.tolist()
    return out, float(np.mean(layers))


def verify_points(folder: Path) -> list[dict[str, Any]]:
    """Per front point: whether it drops tokens or exits early, and the largest difference of each check that ran
    (a metric, or for an exiting point the mean exit layer, whichever is further off)."""
    front = json.loads((folder / "front.json").read_text())
    check_front_is_non_dominated(folder, front)
    run = Run(folder)
    supernet = run.load_supernet()
    data = batchings(run)
    full_encoder = front["reference"]["params"]["encoder"]
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, point in enumerate(front["points"]):
            sub = SubNetworkConfig.from_dict(point["config"])
            exported = export_subnetwork(supernet, sub, Path(tmp) / f"point-{k}", tokenizer=run.tokenizer)
            model = AutoModelForSequenceClassification.from_pretrained(exported, trust_remote_code=True)
            require_exported(model, sub, f"point {k}, reloaded")
            eliminating = sub.token_keep is not None
            require((model.config.token_keep is not None) == eliminating,
                    f"point {k}: the reloaded config's token_keep is {model.config.token_keep}, the point's "
                    f"{sub.token_keep}")
            exiting = sub.exit_threshold is not None
            require(getattr(model.config, "exit_threshold", None) == sub.exit_threshold,
                    f"point {k}: the reloaded config's exit_threshold is "
                    f"{getattr(model.config, 'exit_threshold', None)}, the point's {sub.exit_threshold}")
            opened = None if sub.open_exits is None else list(sub.open_rows())  # export's indices
            require(getattr(model.config, "open_exits", None) == opened,
                    f"point {k}: the reloaded config's open_exits is {getattr(model.config, 'open_exits', None)}, "
                    f"the point's {opened} (layers {sub.open_exits} of the supernet)")
            checks = (SEARCHED, ALONE, MIXED) if eliminating or exiting else (SEARCHED,)
            logits, layers = {}, {}
            for name in checks:
                if exiting:
                    logits[name], layers[name] = predict_with_exits(model, data[name])
                else:
                    logits[name] = predict(model, data[name])
            got = {name: metrics_from_logits(run.task.spec, *logits[name]) for name in checks}
            diffs = {name: max(abs(metrics[m] - point["validation"][m]) for m in metrics)
                     for name, metrics in got.items()}
            if exiting:
                recorded = point["dynamics"]["mean_exit_layer"]
                diffs = {name: max(diff, abs(layers[name] - recorded)) for name, diff in diffs.items()}
            # the same examples in the same order at batch 1 and 32: how far padding moved any logit
            apart = float(np.abs(logits[ALONE][0] - logits[MIXED][0]).max()) if eliminating else None
            share = point["params"]["encoder"] / full_encoder
            keep = "" if not eliminating else f", keep {[round(r, 2) for r in sub.token_keep or ()]}"
            if exiting:
                keep += (f", exit threshold {sub.exit_threshold}, mean exit layer "
                         f"{point['dynamics']['mean_exit_layer']:.3f} (" + ", ".join(
                             f"{name}: {layers[name]:.3f}" for name in checks) + ")")
            print(f"point {k}: encoder params {share:6.1%}{keep}, recorded {point['validation']}; "
                  + "; ".join(f"{name}: {got[name]} (off by {diffs[name]:.1e})" for name in checks)
                  + ("" if apart is None else f"; logits at batch 1 vs 32 differ by at most {apart:.1e}"))
            reports.append({"point": k, "eliminating": eliminating, "exiting": exiting, "params_share": share,
                            "differences": diffs, "logits_batch1_vs_32": apart,
                            "mean_exit_layers": layers or None})
    return reports


def verify_compressed(folder: Path) -> list[dict[str, Any]]:
    """Every compressed model of the run (compressed/<point>/<key>/): reloaded with plain transformers, it has the
    recorded factorisation and parameters and reproduces its recorded validation metrics."""
    records = sorted((folder / COMPRESSED_DIR).glob(f"*/*/{SUBNETWORK_FILE}"))
    if not records:
        return []
    run = Run(folder)
    batches = list(run.batches("validation"))
    reports = []
    for record_file in records:
        record = json.loads(record_file.read_text())
        model = AutoModelForSequenceClassification.from_pretrained(record_file.parent, trust_remote_code=True)
        compression = CompressConfig.model_validate(record["compression"]).compression()
        require(model.config.compression == compression, f"{record_file.parent}: the reloaded config's compression "
                                                         f"is {model.config.compression}, the record's {compression}")
        params = sum(p.numel() for p in model.parameters())
        require(params == record["params"]["total"], f"{record_file.parent}: {params} parameters reloaded, "
                                                     f"{record['params']['total']} recorded")
        got = metrics_from_logits(run.task.spec, *predict(model, batches))
        recorded = record["metrics"]["validation"]
        diff = max(abs(got[m] - recorded[m]) for m in recorded)
        print(f"compressed point {record_file.parent.parent.name} ({compression}): {params:,} params, recorded "
              f"{recorded}, reloaded {got} (off by {diff:.1e})")
        reports.append({"folder": str(record_file.parent.relative_to(folder)), "difference": diff})
    return reports


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a finished search's run folder")
    parser.add_argument("--tiny", action="store_true",
                        help="run a tiny search job with token elimination first and verify its front")
    parser.add_argument("--tiny-exits", action="store_true",
                        help="run a tiny search job with exit thresholds first and verify its front")
    parser.add_argument("--tiny-compress", action="store_true",
                        help="run a tiny search job, compress its point 0 (tucker, no recovery), verify both")
    parser.add_argument("--tiny-root", type=Path, default=None, help="where --tiny / --tiny-exits run the search")
    parser.add_argument("--tolerance", type=float, default=1e-9)
    args = parser.parse_args(argv)
    if args.tiny or args.tiny_exits:
        args.run = tiny.tiny_search(args.tiny_root or Path(tempfile.mkdtemp(prefix="nasprune-tiny-")),
                                    evaluations=TINY_EVALUATIONS, token_elimination=args.tiny,
                                    exits=args.tiny_exits)
    if args.tiny_compress:
        args.run = tiny.tiny_search(args.tiny_root or Path(tempfile.mkdtemp(prefix="nasprune-tiny-")))
        compress_point(args.run, 0, CompressConfig(protocol="tucker", rank=4, bank=3, epochs=0), progress=False)
    if args.run is None:
        parser.error("--run is required (or --tiny, --tiny-exits, --tiny-compress)")
    reports = verify_points(args.run)
    compressed = verify_compressed(args.run)
    if args.tiny_compress:
        require(bool(compressed), "the tiny run has no compressed point: nothing compressed was checked")
    worst = max([d for r in reports for d in r["differences"].values()] + [r["difference"] for r in compressed],
                default=0.0)
    eliminating = [r for r in reports if r["eliminating"]]
    exiting = [r for r in reports if r["exiting"]]
    front = json.loads((args.run / "front.json").read_text())
    print(f"largest metric difference: {worst:.2e} ({'OK' if worst <= args.tolerance else 'MISMATCH'}); "
          f"points below 50 % of the encoder: {sum(r['params_share'] < 0.5 for r in reports)}; points dropping "
          f"tokens (checked at batch 1 and 32 too): {len(eliminating)} of {len(front['points'])}; points exiting "
          f"early (the same, with their mean exit layer): {len(exiting)}; compressed points: {len(compressed)}")
    if args.tiny_exits:
        require(bool(exiting), "the tiny exits search's front has no point that exits early: the batch-1 and "
                               "batch-32 checks did not run")
    if args.tiny:
        require(bool(eliminating), "the tiny search's front has no point that drops tokens: the batch-1 and "
                                   "batch-32 checks did not run")
    require(worst <= args.tolerance, f"a reloaded front point's metrics differ from its record by {worst:.2e}")
    return worst


TINY_EVALUATIONS = 12  # enough for the tiny token-elimination search to put schedules on its front


if __name__ == "__main__":
    main()
