"""Validate the latency model: predicted versus measured latency of extracted sub-networks.

Calibrates the block table for MiniLM on this machine (batch x seq), then measures >= 20 random
sub-networks (a mix of layer-drop, uniform and per-layer widths) as extracted models and prints the
Spearman correlation and the mean absolute percentage error. Targets: >= 0.95 and <= 10 % at 32 x 128.
The check (bench/checks.py): every timed model is the exported class with its sub-network's sliced widths, one
per sub-network, so the "measured" side is the extracted models and not the supernet.

    python bench/latency_model.py [--samples 24 --batch 32 --seq 128 --threads 2]
    python bench/latency_model.py --tiny      # seconds: a tiny random model, the same check
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from checks import models_called, require_timed_exports
from tiny import tiny_supernet
from tqdm.auto import tqdm

from search.latency import calibrate, device_name, random_subnetworks, validate
from supernet.convert import load_supernet_from_pretrained


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny random model, 4 samples at 2 x 8, 1 repeat")
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.tiny:
        args.samples, args.batch, args.seq, args.repeats = 4, 2, 8, 1
    torch.set_num_threads(args.threads)
    supernet = tiny_supernet() if args.tiny else load_supernet_from_pretrained("minilm", num_labels=2).eval()
    start = time.perf_counter()
    table = calibrate(supernet.config, batch_size=args.batch, seq_len=args.seq, repeats=args.repeats)
    calibration_s = time.perf_counter() - start
    subs = random_subnetworks(supernet.config, args.samples, seed=args.seed)
    bar = tqdm(total=len(subs), desc="extracting sub-networks")
    with models_called() as timed:
        result = validate(supernet, table, subs, repeats=args.repeats, progress=lambda done, total: bar.update(1))
    bar.close()
    require_timed_exports(timed, subs, "latency_model's measured side")
    model_name = "tiny random BERT" if args.tiny else "MiniLM-L6"
    print(f"{device_name()} | {model_name} | batch {args.batch} x seq {args.seq} | {args.threads} threads | "
          f"torch {torch.__version__}")
    print(f"calibration: {calibration_s:.1f} s ({len(table.attention_ms)} attention + {len(table.ffn_ms)} FFN entries)")
    print(f"{len(subs)} sub-networks: Spearman {result.spearman:.3f} (target >= 0.95), "
          f"MAPE {result.mape:.1f} % (target <= 10 %)")
    print(f"measured {min(result.measured_ms):.0f}-{max(result.measured_ms):.0f} ms; "
          f"full-model prediction {table.predict(supernet.full_config()):.0f} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "table": table.to_dict(),
                                         "spearman": result.spearman, "mape": result.mape,
                                         "predicted_ms": result.predicted_ms, "measured_ms": result.measured_ms,
                                         "configs": result.configs}, indent=1))
    return {"spearman": result.spearman, "mape": result.mape, "measured_ms": result.measured_ms}


if __name__ == "__main__":
    main()
