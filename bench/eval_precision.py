"""What bfloat16 buys the search's evaluations on this CPU: time and agreement against float32.

The search evaluates every sub-network it tries on the validation split, a large share of a job's time
(bench/RESULTS.md); a CPU with native bfloat16 (AVX512-BF16, AMX) can do it faster. This script takes a trained
supernet (bench/prove.py's importance job of --task and --seed, or --run, or --tiny's)
and evaluates the same sub-networks on the same validation batches in float32, under CPU autocast to bfloat16,
and with a bfloat16 copy of the weights, interleaved (float32, autocast, bf16 weights, then again) so that the
three are timed side by side, and prints each mode's median time, its speed-up, its metric and how many
predictions agree with float32's. The check (bench/checks.py): every timed evaluation's raw logits are in the
precision its mode names (float32, or bfloat16 for autocast and bfloat16 weights).

    python bench/eval_precision.py --task glue/mrpc --seed 0
    python bench/eval_precision.py --tiny      # seconds: a tiny supernet trained on a few MRPC rows
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from checks import output_dtypes, require_dtype
from prove import add_trained_run_arguments, seed_folder, trained_run_folder

from supernet.evaluation import metrics_from_logits, predict
from supernet.run import Run


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_trained_run_arguments(parser, task="glue/mrpc", out="eval_precision")
    parser.add_argument("--subnetworks", type=int, default=6, help="random members of the space, beside full/middle")
    args = parser.parse_args(argv)
    folder = trained_run_folder(args)
    if args.tiny:
        args.subnetworks = 1
    torch.set_num_threads(args.threads)

    run = Run(folder)
    model = run.load_supernet().eval()
    bf16 = copy.deepcopy(model).to(torch.bfloat16).eval()
    batches = list(run.batches("validation"))
    space, spec = run.space(model.config), run.task.spec
    rng = random.Random(0)
    subs = [("full", space.largest()), ("middle", space.middle())]
    subs += [(f"random {i}", space.sample(rng)) for i in range(args.subnetworks)]
    full_params = sum(p.numel() for p in model.parameters())

    modes = {"float32": (model, nullcontext), "autocast bf16": (model, lambda: torch.autocast("cpu", torch.bfloat16)),
             "bf16 weights": (bf16, nullcontext)}
    named = {"float32": torch.float32, "autocast bf16": torch.bfloat16, "bf16 weights": torch.bfloat16}
    rows = []
    for name, sub in subs:
        times = {mode: [] for mode in modes}
        logits = {}
        for _ in range(args.repeats):
            for mode, (net, context) in modes.items():
                with net.use(sub), context(), output_dtypes(net) as computed:
                    started = time.perf_counter()
                    out, labels = predict(net, batches)
                    times[mode].append(time.perf_counter() - started)
                require_dtype(computed, named[mode], f"{name}, {mode}")
                logits[mode] = out
        base = logits["float32"].argmax(-1)
        row = {"sub": name, "config": sub.to_dict(), "examples": len(labels)}
        for mode in modes:
            row[mode] = {"median_s": statistics.median(times[mode]),
                         "metrics": metrics_from_logits(spec, logits[mode], labels),
                         "agreement": float(np.mean(logits[mode].argmax(-1) == base))}
        rows.append(row)
        print(f"{name:>9}: " + "; ".join(
            f"{mode} {row[mode]['median_s']:.2f} s ({row['float32']['median_s'] / row[mode]['median_s']:.2f} x), "
            f"{spec.main_metric} {row[mode]['metrics'][spec.main_metric]:.4f}, agree {row[mode]['agreement']:.3f}"
            for mode in modes), flush=True)
    total = {mode: sum(r[mode]["median_s"] for r in rows) for mode in modes}
    print("all sub-networks: " + ", ".join(f"{mode} {total[mode]:.1f} s ({total['float32'] / total[mode]:.2f} x)"
                                           for mode in modes))
    out = Path(args.out) / seed_folder(args.task, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"threads": args.threads, "torch": torch.__version__,
                                                  "parameters": full_params, "rows": rows, "total_s": total},
                                                 indent=1))
    return rows


if __name__ == "__main__":
    main()
