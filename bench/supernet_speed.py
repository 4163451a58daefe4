"""Does slicing really buy speed? Three ratios on the offline MiniLM, measured side by side in one run.

1. forward time of a sliced sub-network inside the supernet / (full forward time x its MAC share)   target <= 1.2
2. speed-up of the extracted sub-network / its MAC reduction                                         target >= 0.9
3. one sandwich step (full + smallest + 2 random) / one plain fine-tuning step                       target <= 2.3

Runs are interleaved (full, sub, full, sub, ...) and every figure is a median, because these machines are
shared and noisy. Each figure is checked against the path it names (bench/checks.py): the sliced forward ran at
the sub-network's widths, the extracted model is the exported class with the sliced weights, the sandwich step
ran 2 + k forward passes and returned sub-network losses (its trainer has `plain_fraction` 0, else the default
recipe's plain phase would time a plain step); a failed check exits non-zero instead of printing the figure.

    python bench/supernet_speed.py [--threads 2 --batch 32 --seq 128 --repeats 7]
    python bench/supernet_speed.py --tiny          # seconds: a tiny random model, the same checks
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from checks import count_forwards, require, require_exported, require_widths, trace_widths
from tiny import tiny_supernet

from supernet.config import SubNetworkConfig
from supernet.convert import load_supernet_from_pretrained
from supernet.counting import count_macs
from supernet.extract import extract
from supernet.settings import TrainingConfig
from supernet.space import make_space
from supernet.training import SupernetTrainer


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny random model, batch 4 x 16, 2 repeats")
    parser.add_argument("--num-random", type=int, default=2, help="k: random sub-networks per sandwich step")
    parser.add_argument("--plain-fraction", type=float, default=0.0,
                        help="the sandwich trainer's plain phase; above 0 its first steps are plain, which the "
                             "check refuses to time as sandwich steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--train-repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch, args.seq, args.repeats, args.train_repeats = 4, 16, 2, 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = tiny_supernet() if args.tiny else load_supernet_from_pretrained("minilm", num_labels=2).eval()
    cfg = model.config
    n, h, u = cfg.num_layers, cfg.num_heads, cfg.intermediate_size
    subs = {
        "50% heads + 50% units": SubNetworkConfig(tuple(range(n)), (h // 2,) * n, (u // 2,) * n),
        "25% heads + 25% units": SubNetworkConfig(tuple(range(n)), (h // 4,) * n, (u // 4,) * n),
        f"{n // 2} of {n} layers": SubNetworkConfig(tuple(range(n // 2)), (h,) * n, (u,) * n),
    }
    ids = torch.randint(1, cfg.vocab_size, (args.batch, args.seq))
    mask = torch.ones_like(ids)
    full_macs = count_macs(cfg, seq_len=args.seq)
    results: dict[str, dict] = {}

    def run_full():
        with torch.no_grad():
            model.reset_super_network()
            model(ids, mask)

    name = "tiny random BERT" if args.tiny else "MiniLM-L6"
    print(f"{name} (hidden {cfg.hidden_size}), batch {args.batch} x seq {args.seq}, {args.threads} threads, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, median of {args.repeats}")
    print("\n| sub-network | MAC share | sliced / (full x share) | extracted speed-up | speed-up / MAC reduction |")
    print("|---|---|---|---|---|")
    for name, sub in subs.items():
        share = count_macs(cfg, sub, seq_len=args.seq) / full_macs
        small = extract(model, sub)

        def run_sliced(sub=sub):
            with torch.no_grad():
                model.set_sub_network(sub)
                model(ids, mask)
            model.reset_super_network()

        def run_extracted(small=small):
            with torch.no_grad():
                small(ids, mask)

        require_exported(small, sub, f"extracted {name}")
        with trace_widths(model) as trace:
            run_sliced()  # the function timed below, once, traced
        require_widths(trace, sub, f"sliced {name}")
        t = interleaved({"full": run_full, "sliced": run_sliced, "extracted": run_extracted}, args.repeats)
        sliced_ratio = t["sliced"] / (t["full"] * share)
        speedup = t["full"] / t["extracted"]
        results[name] = {"mac_share": share, "full_s": t["full"], "sliced_s": t["sliced"],
                         "extracted_s": t["extracted"], "sliced_over_share": sliced_ratio,
                         "speedup": speedup, "speedup_over_mac_reduction": speedup * share}
        print(f"| {name} | {share:.3f} | {sliced_ratio:.2f} | {speedup:.2f}x | {speedup * share:.2f} |")

    # Training steps: the same trainer code path, k=2 (sandwich) versus k=0 (plain fine-tuning).
    labels = torch.randint(0, 2, (args.batch,))
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    space = make_space("uniform", cfg)
    k = args.num_random
    # plain_fraction is the sandwich phase's start: at the default recipe's, the first steps of a k > 0 trainer
    # are plain, so it is set explicitly and the step below checks what ran
    trainers = {
        kind: SupernetTrainer(model, space, [batch], TrainingConfig(
            num_random_subnets=subnets, epochs=100, plain_fraction=args.plain_fraction), progress=False)
        for kind, subnets in (("plain", 0), ("sandwich", k))
    }
    model.train()
    rng_state = random.Random(0)
    for trainer in trainers.values():
        trainer.rng = rng_state  # same stream of random sub-networks for a fair median

    passes = {"plain": 1, "sandwich": 2 + k}  # the full network, then the smallest and k random ones

    def step(kind: str) -> None:
        trainer = trainers[kind]
        with count_forwards(model) as forwards:
            losses = trainer._forward_backward(batch, 1.0)
        trainer._optimizer_step(1)
        require(forwards.calls == passes[kind], f"a {kind} step ran {forwards.calls} forward passes, not "
                                                f"{passes[kind]} (plain_fraction {args.plain_fraction})")
        require(("loss_subnets" in losses) == (kind == "sandwich"),
                f"a {kind} step returned losses {sorted(losses)}: the sandwich phase has "
                f"{'not ' if kind == 'sandwich' else ''}begun (plain_fraction {args.plain_fraction})")

    t = interleaved({"plain": lambda: step("plain"), "sandwich": lambda: step("sandwich")}, args.train_repeats)
    results["training_step"] = {"plain_s": t["plain"], "sandwich_s": t["sandwich"],
                                "ratio": t["sandwich"] / t["plain"], "space": "uniform"}
    print(f"\nsandwich step (full + smallest + {k} random, uniform space) / plain step: "
          f"{t['sandwich'] / t['plain']:.2f}  (plain {t['plain']:.2f} s, sandwich {t['sandwich']:.2f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
