"""What token elimination buys on this CPU: a sub-network that drops tokens against the same sub-network without
it, both with dynamic padding (each batch padded to its longest example, never to max_length).

Takes a trained supernet (bench/prove.py's importance job of --task and --seed, retrained if its weights were
removed; or --run; or --tiny's), exports two structures (the full network and the front point with at most
--params-share of the full encoder's parameters, from the run's front.json when it has one, else the space's
middle) and, for each speed-up target, sets the exported model's keep schedule the way a user would
(`model.set_speedup(x)` over the validation lengths: TiltedBERT's offline tuning, no retraining). For each it
reports the validation metric beside the static model's, the analytic speed-up (expected MACs) and the measured
one at batch 32 sorted by length and at batch 1 (every example alone), medians of interleaved repeats.

The checks (bench/checks.py): the timed models are exported models of the structure named, and the eliminating
ones really ran fewer tokens through their FFNs than the static ones (token counts seen by forward hooks).

    python bench/elimination.py --task glue/rte --seed 0
    python bench/elimination.py --tiny      # seconds: a tiny supernet trained on a few MRPC rows
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from checks import require, require_exported
from prove import add_trained_run_arguments, seed_folder, trained_run_folder

from supernet.batching import make_batches, token_counts
from supernet.config import SubNetworkConfig
from supernet.counting import count_params
from supernet.evaluation import metrics_from_logits
from supernet.extract import extract
from supernet.run import Run, train_run
from supernet.schedules import expected_encoder_macs


@contextmanager
def ffn_tokens(model: torch.nn.Module):
    """Tokens (batch rows x sequence positions) each FFN of `model` is given while the block runs."""
    seen = [0]

    def hook(_module, inputs, _output) -> None:
        seen[0] += int(inputs[0].shape[0] * inputs[0].shape[1])

    handles = [layer.ffn.register_forward_hook(hook) for layer in model.model.layers]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def batches_of(run: Run, size: int) -> list[dict[str, torch.Tensor]]:
    """The validation split sorted by length in batches of `size`, each padded to its own longest example."""
    return list(make_batches(run.task.validation, run.tokenizer, max_length=run.spec.max_length, batch_size=size,
                             sort_by_length=True))


@torch.inference_mode()
def run_all(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    logits, labels = [], []
    for b in batches:
        logits.append(model(b["input_ids"], b["attention_mask"], b.get("token_type_ids")).logits)
        labels.append(b["labels"])
    return torch.cat(logits), torch.cat(labels)


def structure(run: Run, supernet, share: float) -> SubNetworkConfig:
    """The front point with the best validation metric among those at most `share` of the full encoder's
    parameters (the run's front.json), else the space's middle."""
    full = count_params(supernet.config).encoder
    front = run.folder / "front.json"
    if front.is_file():
        points = [p for p in json.loads(front.read_text())["points"]
                  if p["params"]["encoder"] <= share * full and "token_keep" not in p["config"]]
        if points:
            main = run.task.spec.main_metric
            return SubNetworkConfig.from_dict(max(points, key=lambda p: p["validation"][main])["config"])
    return run.space(supernet.config).middle()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_trained_run_arguments(parser, task="glue/rte", out="elimination")
    parser.add_argument("--speedups", default=None, help="analytic speed-up targets (set_speedup; default "
                                                           "1.25,1.5,2.0, with --tiny 1.1)")
    parser.add_argument("--params-share", type=float, default=0.5, help="the smaller structure's encoder share")
    args = parser.parse_args(argv)
    folder = trained_run_folder(args)
    if args.tiny:
        args.speedups = args.speedups or "1.1"
    torch.set_num_threads(args.threads)

    run = Run(folder)
    train_run(run.spec, folder, progress=False)  # a run whose weights were removed trains the same ones again
    supernet = run.load_supernet().eval()
    spec = run.task.spec
    by_32, by_1 = batches_of(run, 32), batches_of(run, 1)
    lengths = token_counts(by_32)
    targets = [float(x) for x in (args.speedups or "1.25,1.5,2.0").split(",")]
    subs = {"full": supernet.full_config(), f"<= {args.params_share:.0%} params": structure(run, supernet,
                                                                                            args.params_share)}
    rows = []
    for name, sub in subs.items():
        static = extract(supernet, sub)
        require_exported(static, sub, f"{name}, static")
        static_logits, labels = run_all(static, by_32)
        static_metrics = metrics_from_logits(spec, static_logits.numpy(), labels.numpy())
        for target in targets:
            model = extract(supernet, sub)
            require_exported(model, sub, f"{name}, {target}x")
            schedule = model.set_speedup(target, lengths)
            analytic = (expected_encoder_macs(model.config, None, lengths)
                        / expected_encoder_macs(model.config, schedule, lengths))
            with ffn_tokens(model) as dropped, ffn_tokens(static) as kept:
                logits, _ = run_all(model, by_32)
                run_all(static, by_32)
            require(dropped[0] < kept[0], f"{name}, {target}x: the eliminating model's FFNs saw {dropped[0]} "
                                          f"tokens, the static one's {kept[0]}: nothing was eliminated")
            metrics = metrics_from_logits(spec, logits.numpy(), labels.numpy())
            times = {(kind, size): [] for kind in ("static", "eliminating") for size in (32, 1)}
            for _ in range(args.repeats):  # interleaved: a burst of load hits both sides alike
                for size, batches in ((32, by_32), (1, by_1)):
                    for kind, net in (("static", static), ("eliminating", model)):
                        started = time.perf_counter()
                        run_all(net, batches)
                        times[(kind, size)].append(time.perf_counter() - started)
            median = {key: statistics.median(values) for key, values in times.items()}
            row = {"structure": name, "config": sub.to_dict(), "target": target, "schedule": schedule,
                   "analytic_speedup": analytic,
                   "measured_speedup_b32": median[("static", 32)] / median[("eliminating", 32)],
                   "measured_speedup_b1": median[("static", 1)] / median[("eliminating", 1)],
                   "static_s": {"b32": median[("static", 32)], "b1": median[("static", 1)]},
                   "eliminating_s": {"b32": median[("eliminating", 32)], "b1": median[("eliminating", 1)]},
                   "metric": spec.main_metric, "static_metrics": static_metrics, "metrics": metrics,
                   "ffn_tokens": {"static": kept[0], "eliminating": dropped[0]}}
            rows.append(row)
            main_metric = spec.main_metric
            print(f"{name:>14} x{target:.2f}: analytic {analytic:.2f}x, measured {row['measured_speedup_b32']:.2f}x "
                  f"(batch 32 by length), {row['measured_speedup_b1']:.2f}x (batch 1); {main_metric} "
                  f"{static_metrics[main_metric]:.4f} -> {metrics[main_metric]:.4f}; keep "
                  f"{[round(r, 2) for r in schedule or []]}", flush=True)
    out = Path(args.out) / seed_folder(args.task, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {"threads": args.threads, "torch": torch.__version__, "examples": len(lengths),
         "mean_length": statistics.mean(lengths), "rows": rows,
         # a supernet other than bench/prove.py's importance job: the report names it and its training
         "run": None if args.run is None or args.tiny else str(args.run), "epochs": run.spec.training.epochs},
        indent=1))
    return rows


def table_lines(results: Path) -> list[str]:
    """The Markdown table of one task and seed's results.json (bench/prove_report.py puts it in RESULTS.md)."""
    if not results.is_file():
        return []
    data = json.loads(results.read_text())
    rows = data["rows"]
    if not rows:
        return []
    metric = rows[0]["metric"]
    lines = [f"{len(rows)} settings, {data['examples']} validation examples (mean {data['mean_length']:.0f} tokens), "
             f"{data['threads']} threads; medians of interleaved repeats; both sides padded per batch.", "",
             f"| structure | speed-up asked (analytic) | measured, batch 32 by length | measured, batch 1 "
             f"| {metric} static | {metric} eliminating | keep per layer |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        keep = " ".join(f"{r:.2f}" for r in row["schedule"] or [])
        lines.append(f"| {row['structure']} | {row['analytic_speedup']:.2f}x | {row['measured_speedup_b32']:.2f}x "
                     f"| {row['measured_speedup_b1']:.2f}x | {row['static_metrics'][metric]:.4f} "
                     f"| {row['metrics'][metric]:.4f} | {keep} |")
    return lines


if __name__ == "__main__":
    main()
