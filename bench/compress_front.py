"""Extreme compression (Ren et al., ICLR 2022) below the pruning front: each protocol at about 1/7, 1/20 and 1/48 of
the full encoder's parameters, from the full network and from the ≤ 50 %-params front point, against the pruning
front alone and layer dropping at the same parameters.

Takes a finished search (bench/prove.py's importance job of --task and --seed: its run folder with front.json; or
--run, a search folder; or --tiny's). For each start point, protocol and target fraction it takes the largest rank
whose compressed encoder fits the target (tucker: a bank of min(24, blocks, rank²) cores), compresses the start
point's exported model (search.compression.compress_into: decomposition, then --epochs of distillation from it) and
reports, side by side:

- validation and test metric and encoder params, the metric's retention of the fully fine-tuned model's
  (bench/prove.py's reference; else the supernet's full network), and the best pruning-front point (refined where
  bench/prove.py refined it) and layer-dropping baseline at no more parameters;
- measured latency of the exported compressed model against its start point's exported model, both dynamically
  padded: batch 32 sorted by length (the whole split) and batch 1 (--latency-examples of it spread evenly over
  its lengths, each alone), medians of interleaved repeats (low rank
  can be slower at large ranks: the table says where);
- the compression's cost in seconds beside plain fine-tuning's.

Results go to <out>/<task>/seed<k>/results.json. Checks (bench/checks.py): every compressed model's parameters are
its recorded count, and each is smaller than its start point.

    python bench/compress_front.py --task glue/mrpc --seed 0 --epochs 2
    python bench/compress_front.py --tiny      # seconds: a tiny search, one target, no recovery
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import tiny
import torch
from checks import require
from elimination import batches_of
from elimination_front import time_alone
from prove import add_trained_run_arguments, read_json, seed_folder

from search.compression import compress_into
from search.records import compression_key
from supernet.config import SubNetworkConfig
from supernet.counting import count_params
from supernet.extract import extract, load_exported
from supernet.factors import PROTOCOLS, Compression, block_count, layout
from supernet.metrics import error_from_metrics
from supernet.run import Run
from supernet.settings import DEFAULT_BANK, CompressConfig

FRACTIONS = (1 / 7, 1 / 20, 1 / 48)


def fitting_compression(config, sub: SubNetworkConfig, protocol: str, budget: float) -> Compression | None:
    """The largest-rank compression of `protocol` whose encoder has at most `budget` parameters, or None."""
    blocks = block_count(layout(config.hidden_size, config.head_size, sub.kept_heads(), sub.kept_units()))
    best = None
    for rank in range(1, config.hidden_size + 1):
        bank = min(DEFAULT_BANK, blocks, rank * rank) if protocol == "tucker" else None
        candidate = Compression(protocol, rank, bank=bank)
        if count_params(config, sub, candidate).encoder > budget:
            break
        best = candidate
    return best


def start_points(run: Run, supernet, share: float) -> dict[str, tuple[SubNetworkConfig, dict | None]]:
    """The full network, and the front point of best validation metric within `share` of the full encoder."""
    full = count_params(supernet.config).encoder
    points = [p for p in read_json(run.folder / "front.json")["points"]
              if p["params"]["encoder"] <= share * full and SubNetworkConfig.from_dict(p["config"]).is_static]
    starts: dict[str, tuple[SubNetworkConfig, dict | None]] = {"full": (supernet.full_config(), None)}
    if points:
        best = max(points, key=lambda p: p["validation"][run.task.spec.main_metric])
        starts[f"<= {share:.0%} params"] = (SubNetworkConfig.from_dict(best["config"]), best)
    return starts


def baselines(args: argparse.Namespace, task: str) -> dict[str, list[dict[str, Any]]]:
    """bench/prove.py's records of the pruning front (refined where it was) and of layer dropping, if there."""
    folder = args.prove / seed_folder(task, args.seed)
    found = {}
    for name, files in (("pruning", ("nasprune_importance_refined.json", "nasprune_importance.json")),
                        ("layer_drop", ("layer_drop.json",))):
        for file in files:
            if not args.tiny and (folder / file).is_file():
                found[name] = read_json(folder / file)
                break
    return found


def retentions(spec, metrics: dict[str, Any], reference: dict[str, Any] | None,
               majority: dict[str, float]) -> dict[str, float | None]:
    """Validation and test retention of the fully fine-tuned reference's main metric, raw and normalised."""
    out: dict[str, float | None] = {}
    for split in ("validation", "test"):
        if reference is None or not metrics.get(split) or reference.get(f"{split}_error") is None:
            out[f"retention_{split}"] = out[f"normalised_retention_{split}"] = None
            continue
        value = 1.0 - error_from_metrics(spec, metrics[split])
        full, base = 1.0 - reference[f"{split}_error"], majority.get(spec.main_metric)
        out[f"retention_{split}"] = value / full
        out[f"normalised_retention_{split}"] = (None if base is None or full == base
                                                else (value - base) / (full - base))
    return out


def best_at(rows: list[dict[str, Any]], params: int) -> dict[str, Any] | None:
    """The baseline row of least validation error among those with at most `params` encoder parameters."""
    fitting = [r for r in rows if r["params_encoder"] <= params]
    return min(fitting, key=lambda r: r["validation_error"]) if fitting else None


def _baseline_cell(baselines: dict[str, Any], name: str) -> str:
    """A baseline's test metric at no more params; "none this small" where it was measured but none fits, empty
    where it was not measured."""
    if name in baselines and baselines[name] is None:
        return "none this small"
    test_error = (baselines.get(name) or {}).get("test_error")
    return _cell(None if test_error is None else 1 - test_error)


def _cell(value: Any, spec: str = ".4f") -> str:
    return "" if value is None else format(value, spec)


def table_lines(results: Path) -> list[str]:
    """The Markdown table of one task and seed's results.json (for bench/RESULTS.md)."""
    if not results.is_file():
        return []
    data = json.loads(results.read_text())
    metric, reference = data["metric"], data.get("reference") or {}
    full = None if reference.get("test_error") is None else 1 - reference["test_error"]
    recipe = ", ".join(f"{k} {v}" for k, v in (data.get("recipe") or {}).items()) or "the defaults"
    lines = [f"{data['epochs']:g} epoch(s) of recovery by distillation from the start point ({recipe}); "
             f"{data['threads']} "
             f"thread(s); {data['examples']} validation examples. Encoder params as a fraction of the full encoder "
             f"({data['full_encoder']:,}); normalised retention (metric - majority) / (full - majority) against the "
             f"fully fine-tuned model (test {metric} {_cell(full)}); speed-ups of the exported compressed model over "
             "its exported start point, both dynamically padded, batch 32 sorted by length and batch 1 (medians of "
             "interleaved repeats); baselines: the best pruning-front point (refined) and layer-dropping model at "
             "no more encoder params (none this small: below 1/L of the encoder no layer-dropped model of L layers "
             "fits). Compression (s): decomposition and recovery, beside plain fine-tuning of the "
             f"full model: {_cell(reference.get('plain_train_s'), '.0f') or 'not measured'} s.", "",
             f"| start | protocol | target | rank / bank | encoder share | validation {metric} | test {metric} | "
             "normalised retention (test) | b32 speed-up | b1 speed-up | compression (s) | pruning front at ≤ params "
             "(test) | layer dropping at ≤ params (test) |",
             "|---" * 13 + "|"]
    protocols = PROTOCOLS[::-1]  # the paper's order: per matrix (II), shared factors (III), the bank (IV)
    # a grid run in parts writes its rows in any order: the full network's first, then by protocol and target
    for row in sorted(data["rows"], key=lambda r: (r["start"] != "full", protocols.index(r["protocol"]),
                                                   -r["fraction"])):
        target = f"1/{1 / row['fraction']:.0f}"
        if not row["fits"]:
            lines.append(f"| {row['start']} | {row['protocol']} | {target} | does not fit (or already smaller) |"
                         + " |" * 9)
            continue
        c = row["compression"]
        shape = f"{c['rank']}" + (f" / {c['bank']}" if c.get("bank") else "")
        test_metric = (row.get("test") or {}).get(metric)
        base_cells = [_baseline_cell(row["baselines"], name) for name in ("pruning", "layer_drop")]
        lines.append(f"| {row['start']} | {row['protocol']} | {target} | {shape} | {row['encoder_fraction']:.3f} | "
                     f"{row['validation'][metric]:.4f} | {_cell(test_metric)} | "
                     f"{_cell(row.get('normalised_retention_test'), '.1%')} | {row['speedup_b32']:.2f}x | "
                     f"{row['speedup_b1']:.2f}x | {row['train_s']:.0f} | {base_cells[0]} | {base_cells[1]} |")
    return lines


def write_results(out: Path, data: dict[str, Any], earlier: list[dict[str, Any]]) -> None:
    """results.json: this run's rows after the rows of earlier runs it did not redo (another protocol, start or
    target: a grid may be measured in parts)."""
    done = {(r["start"], r["protocol"], r["fraction"]) for r in data["rows"]}
    kept = [r for r in earlier if (r["start"], r["protocol"], r["fraction"]) not in done]
    (out / "results.json").write_text(json.dumps(data | {"rows": kept + data["rows"]}, indent=1))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_trained_run_arguments(parser, task="glue/mrpc", out="compress_front")
    parser.add_argument("--epochs", type=float, default=2.0, help="epochs of recovery by distillation")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--params-share", type=float, default=0.5, help="the smaller start point's encoder share")
    parser.add_argument("--latency-examples", type=int, default=200,
                        help="batch 1 times the first N validation examples, each alone")
    parser.add_argument("--fractions", type=lambda v: tuple(1 / float(x) for x in v.split(",")), default=FRACTIONS,
                        help="target encoder shares as denominators, e.g. 7,20,48 (the default)")
    parser.add_argument("--starts", default="full,smaller", help="start points: full and/or smaller (the ≤ "
                                                                 "--params-share front point)")
    parser.add_argument("--recipe", type=json.loads, default={},
                        help="CompressConfig settings beside the protocol and rank, as JSON (e.g. "
                             "'{\"learning_rate\": 1e-3}')")
    args = parser.parse_args(argv)
    fractions = args.fractions
    if args.tiny:
        root = args.tiny_root or Path(tempfile.mkdtemp(prefix="nasprune-tiny-compress-"))
        args.run, args.repeats, args.out, args.epochs = tiny.tiny_search(root), 1, str(root / "out"), 0.0
        fractions = (1 / 3,)
    folder = args.run or args.prove / seed_folder(args.task, args.seed) / "nasprune_importance" / "run"
    require((folder / "front.json").is_file(), f"{folder}: no front.json (a finished search is needed)")
    torch.set_num_threads(args.threads)
    run = Run(folder)
    supernet = run.load_supernet().eval()
    spec, metric = run.task.spec, run.task.spec.main_metric
    full_encoder = count_params(supernet.config).encoder
    reference_file = args.prove / seed_folder(run.spec.task, args.seed) / "reference.json"
    reference = read_json(reference_file)[0] if not args.tiny and reference_file.is_file() else None
    found = baselines(args, run.spec.task)
    by_32, alone = batches_of(run, 32), batches_of(run, 1)
    by_1 = alone[::max(1, len(alone) // args.latency_examples)][:args.latency_examples]  # spread over the lengths
    out = Path(args.out) / seed_folder(run.spec.task, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    data = {"task": run.spec.task, "run": None if args.tiny else str(folder), "threads": args.threads,
            "torch": torch.__version__, "epochs": args.epochs, "recipe": args.recipe, "metric": metric,
            "full_encoder": full_encoder,
            "reference": reference and {"validation_error": reference["validation_error"],
                                        "test_error": reference.get("test_error"),
                                        "plain_train_s": reference.get("plain_train_s")},
            "majority_baseline": run.task.majority_baseline,
            "examples": sum(len(b["labels"]) for b in by_32), "rows": rows}
    earlier = read_json(out / "results.json")["rows"] if (out / "results.json").is_file() else []
    starts = args.starts.split(",")
    for start, (sub, point) in start_points(run, supernet, args.params_share).items():
        if ("full" if start == "full" else "smaller") not in starts:
            continue
        dense = extract(supernet, sub)
        for protocol in args.protocols.split(","):
            for fraction in fractions:
                budget = fraction * full_encoder
                compression = (None if budget >= count_params(supernet.config, sub).encoder  # already that small
                               else fitting_compression(supernet.config, sub, protocol, budget))
                if compression is None:
                    rows.append({"start": start, "protocol": protocol, "fraction": fraction, "fits": False})
                    continue
                config = CompressConfig(**(args.recipe | compression.to_dict() | {"epochs": args.epochs}))
                key = compression_key(config.to_dict(), 0)
                target = out / "models" / f"{'full' if start == 'full' else 'smaller'}-{key}"
                record_file = target / "subnetwork.json"
                record = read_json(record_file) if record_file.is_file() else compress_into(
                    run, supernet, sub, dense, config, target, source="sliced", progress=False,
                    point_metrics=None if point is None else {"validation": point["validation"]})
                model = load_exported(target)
                params = sum(p.numel() for p in model.parameters())
                require(params == record["params"]["total"], f"{target}: {params} params, recorded "
                                                             f"{record['params']['total']}")
                require(record["params"]["encoder"] < count_params(supernet.config, sub).encoder,
                        f"{target}: the compressed encoder is not smaller than its start point's")
                seconds = {size: time_alone({"start": dense, "compressed": model}, batches, args.repeats)[0]
                           for size, batches in ((32, by_32), (1, by_1))}
                encoder = record["params"]["encoder"]
                row = {"start": start, "protocol": protocol, "fraction": fraction, "fits": True,
                       "compression": compression.to_dict(), "epochs": args.epochs, "recipe": args.recipe,
                       "encoder_params": encoder,
                       "encoder_fraction": encoder / full_encoder, "total_params": record["params"]["total"],
                       "validation": record["metrics"]["validation"], "test": record["metrics"].get("test"),
                       "train_s": record["train_s"],
                       "speedup_b32": seconds[32]["start"] / seconds[32]["compressed"],
                       "speedup_b1": seconds[1]["start"] / seconds[1]["compressed"],
                       # the share of the fully fine-tuned model's quality kept: raw, and normalised against the
                       # majority class ((m - majority) / (full - majority), as bench/prove_report.py reads it)
                       **retentions(spec, record["metrics"], reference, run.task.majority_baseline),
                       "baselines": {name: best_at(rows_, encoder) for name, rows_ in found.items()}}
                rows.append(row)
                write_results(out, data, earlier)  # a long run's rows so far
                print(f"{start:>16} {protocol:>14} 1/{1 / fraction:.0f}: rank {compression.rank}, encoder "
                      f"{encoder:,} ({row['encoder_fraction']:.3f}), {metric} {row['validation'][metric]:.4f} "
                      f"(normalised retention {row['normalised_retention_validation']}), "
                      f"b32 {row['speedup_b32']:.2f}x, b1 {row['speedup_b1']:.2f}x, {row['train_s']:.0f} s",
                      flush=True)
    write_results(out, data, earlier)
    return data


if __name__ == "__main__":
    main()
