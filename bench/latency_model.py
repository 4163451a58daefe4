"""Validate the latency model: predicted versus measured latency of extracted sub-networks.

Calibrates the block table for MiniLM on this machine (batch x seq), then measures >= 20 random
sub-networks (a mix of layer-drop, uniform and per-layer widths) as extracted models and prints the
Spearman correlation and the mean absolute percentage error. Targets: >= 0.95 and <= 10 % at 32 x 128.

`--lengths validation --task glue/mrpc` validates the table with a token-count axis instead: the random
sub-networks also drop tokens (the search's schedule genes, `--no-eliminating` to leave them out), and each is
timed on the task's first `--examples` validation examples at their own lengths, sorted into batches of `--batch`
(batch 1: every example alone), against the prediction over the same lengths. Targets: Spearman >= 0.9 and
MAPE <= 15 %.

The check (bench/checks.py): every timed model is the exported class with its sub-network's sliced widths, one
per sub-network, so the "measured" side is the extracted models and not the supernet.

    python bench/latency_model.py [--samples 24 --batch 32 --seq 128 --threads 2]
    python bench/latency_model.py --lengths validation --task glue/mrpc --batch 1 --examples 200
    python bench/latency_model.py --tiny      # seconds: a tiny random model, the same check
    python bench/latency_model.py --tiny --lengths validation
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
from supernet.batching import make_batches
from supernet.convert import load_supernet_from_pretrained, load_tokenizer
from supernet.loading import load_task

HERE = Path(__file__).resolve().parent


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
    parser.add_argument("--lengths", choices=("fixed", "validation"), default="fixed",
                        help="fixed: full batches of --seq random tokens; validation: the task's examples")
    parser.add_argument("--task", default="glue/mrpc", help="with --lengths validation: whose validation examples")
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data" / "glue")
    parser.add_argument("--examples", type=int, default=200, help="with --lengths validation: how many")
    parser.add_argument("--no-eliminating", dest="eliminating", action="store_false",
                        help="with --lengths validation: sub-networks without token elimination only")
    args = parser.parse_args(argv)
    real = args.lengths == "validation"
    if args.tiny:
        args.samples, args.batch, args.seq, args.repeats = 4, 2, 8, 1
        args.examples = min(args.examples, 12)
    torch.set_num_threads(args.threads)
    supernet = tiny_supernet() if args.tiny else load_supernet_from_pretrained("minilm", num_labels=2).eval()
    batches = validation_batches(args, supernet.config.vocab_size) if real else None
    start = time.perf_counter()
    table = calibrate(supernet.config, batch_size=args.batch, seq_len=args.seq, repeats=args.repeats,
                      token_axis=real)
    calibration_s = time.perf_counter() - start
    subs = random_subnetworks(supernet.config, args.samples, seed=args.seed, eliminating=real and args.eliminating)
    bar = tqdm(total=len(subs), desc="extracting sub-networks")
    with models_called() as timed:
        result = validate(supernet, table, subs, repeats=args.repeats, progress=lambda done, total: bar.update(1),
                          batches=batches)
    bar.close()
    require_timed_exports(timed, subs, "latency_model's measured side")
    model_name = "tiny random BERT" if args.tiny else "MiniLM-L6"
    examples = "random inputs" if args.tiny else f"{args.task} validation examples"
    shape = (f"{len(batches)} batches of {args.batch} {examples} at their own lengths"
             if real else f"batch {args.batch} x seq {args.seq}")
    print(f"{device_name()} | {model_name} | {shape} | {args.threads} threads | torch {torch.__version__}")
    print(f"calibration: {calibration_s:.1f} s ({len(table.attention_ms)} attention + {len(table.ffn_ms)} FFN entries"
          f" x {len(table.tokens)} token counts)")
    targets = (0.9, 15) if real else (0.95, 10)
    eliminating = sum(s.token_keep is not None for s in subs)
    print(f"{len(subs)} sub-networks ({eliminating} dropping tokens): Spearman {result.spearman:.3f} "
          f"(target >= {targets[0]}), MAPE {result.mape:.1f} % (target <= {targets[1]} %)")
    print(f"measured {min(result.measured_ms):.0f}-{max(result.measured_ms):.0f} ms; "
          f"full-model prediction {table.predict(supernet.full_config()):.0f} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "table": table.to_dict(),
                                         "spearman": result.spearman, "mape": result.mape,
                                         "predicted_ms": result.predicted_ms, "measured_ms": result.measured_ms,
                                         "configs": result.configs}, indent=1, default=str))
    return {"spearman": result.spearman, "mape": result.mape, "measured_ms": result.measured_ms,
            "eliminating": eliminating}


def validation_batches(args: argparse.Namespace, vocab_size: int) -> list[dict[str, torch.Tensor]]:
    """The first --examples validation examples of --task, sorted by length in batches of --batch, each padded to
    its longest (with --tiny: random token ids of varied lengths up to --seq)."""
    if args.tiny:
        generator = torch.Generator().manual_seed(args.seed)
        lengths = sorted(int(n) for n in torch.randint(2, args.seq + 1, (args.examples,), generator=generator))
        batches = []
        for i in range(0, len(lengths), args.batch):
            chunk = lengths[i:i + args.batch]
            mask = torch.tensor([[1] * n + [0] * (chunk[-1] - n) for n in chunk])
            batches.append({"input_ids": torch.randint(1, vocab_size, mask.shape, generator=generator) * mask,
                            "attention_mask": mask})
        return batches
    task = load_task(args.task, data_dir=args.data_dir)
    tokenizer = load_tokenizer("minilm")
    return list(make_batches(task.validation[:args.examples], tokenizer, batch_size=args.batch,
                             max_length=args.seq, sort_by_length=True))


if __name__ == "__main__":
    main()
