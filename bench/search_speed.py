"""How fast is one search evaluation, and does it cost in proportion to the sub-network's MACs?

Evaluates the MiniLM supernet's full network and sub-networks (fixed 50 % / 25 % widths, 3 of 6 layers,
and random members of the search space) on RTE's validation split (747 examples, batches sorted by length),
interleaved, median of `--repeats`. Prints evaluations per minute and, per sub-network,
time ÷ (full-model time × MAC share), where the MAC share counts the real padded batch lengths. Target <= 1.2.
The check (bench/checks.py): every timed evaluation's forwards ran the sub-network's layers at its widths.

    python bench/search_speed.py [--task glue/rte --data-dir ../shared/data/glue --threads 2 --repeats 3]
    python bench/search_speed.py --tiny       # seconds: a tiny random model on a few RTE rows, the same check
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import tiny
import torch
from checks import require_widths, trace_widths

from supernet.config import SubNetworkConfig
from supernet.convert import load_supernet_from_pretrained
from supernet.counting import count_macs
from supernet.evaluation import evaluate
from supernet.run import Run
from supernet.settings import RunSpec
from supernet.space import make_space


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny random model on a few rows, 1 repeat")
    parser.add_argument("--tiny-root", type=Path, default=None, help="where --tiny writes its model and data")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="glue/rte")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/glue"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--random", type=int, default=6, help="random members of the uniform space")
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    max_length = 128
    if args.tiny:
        args.model, args.data_dir = tiny.workspace(args.tiny_root)
        args.repeats, args.random, args.eval_batch_size, max_length = 1, 2, 8, tiny.TINY_MAX_LENGTH
    torch.set_num_threads(args.threads)
    run = Run("/nonexistent", RunSpec(model=args.model, task=args.task, data_dir=args.data_dir,
                                      eval_batch_size=args.eval_batch_size, max_length=max_length))
    batches = list(run.batches("validation"))  # collated once, as search.objectives.Measurements does
    lengths = [(batch["input_ids"].shape[0], batch["input_ids"].shape[1]) for batch in batches]
    model = load_supernet_from_pretrained(args.model, num_labels=run.task.spec.num_labels).eval()
    cfg = model.config
    n, h, u = cfg.num_layers, cfg.num_heads, cfg.intermediate_size
    space = make_space("uniform", cfg)
    rng = random.Random(0)
    subs = {
        "full": None,
        "50% heads + 50% units": SubNetworkConfig(tuple(range(n)), (h // 2,) * n, (u // 2,) * n),
        "25% heads + 25% units": SubNetworkConfig(tuple(range(n)), (h // 4,) * n, (u // 4,) * n),
        f"{n // 2} of {n} layers": SubNetworkConfig(tuple(range(n // 2)), (h,) * n, (u,) * n),
    } | {f"random {i}": space.sample(rng) for i in range(args.random)}

    def macs(sub: SubNetworkConfig | None) -> int:
        return sum(b * count_macs(cfg, sub, seq_len=t) for b, t in lengths)

    times: dict[str, list[float]] = {name: [] for name in subs}
    evaluate(model, batches, run.task.spec)  # warm-up
    for _ in range(args.repeats):
        for name, sub in subs.items():
            with trace_widths(model) as trace:
                start = time.perf_counter()
                evaluate(model, batches, run.task.spec, sub=sub)
                times[name].append(time.perf_counter() - start)
            require_widths(trace, sub or model.full_config(), f"evaluation of {name}")
    median = {name: statistics.median(values) for name, values in times.items()}
    full_time, full_macs = median["full"], macs(None)
    print(f"{run.task.spec.name} validation ({len(run.task.validation)} examples, batch {args.eval_batch_size}, "
          f"sorted by length), {args.model}, {args.threads} threads, torch {torch.__version__}, "
          f"median of {args.repeats}")
    print("| sub-network | MAC share | eval time | time / (full time x MAC share) |")
    print("|---|---|---|---|")
    rows = {}
    for name, sub in subs.items():
        share = macs(sub) / full_macs
        ratio = median[name] / (full_time * share)
        rows[name] = {"config": sub.to_dict() if sub else None, "mac_share": share, "seconds": median[name],
                      "ratio": ratio}
        print(f"| {name} | {share:.3f} | {median[name]:.2f} s | {ratio:.2f} |")
    random_times = [median[name] for name in subs if name.startswith("random")]
    per_minute = 60 / statistics.mean(random_times) if random_times else float("nan")
    print(f"\nevaluations per minute (random uniform-space sub-networks): {per_minute:.1f}; "
          f"full model: {60 / full_time:.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows,
                                         "evaluations_per_minute": per_minute}, indent=1))
    return rows


if __name__ == "__main__":
    main()
