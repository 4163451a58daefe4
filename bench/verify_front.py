"""Check a finished search: the front is non-dominated, and every front point, exported and reloaded with plain
transformers (trust_remote_code=True), reproduces its recorded validation metrics. The check (bench/checks.py):
each reloaded model is the exported class with its point's sliced widths; a front that is not the non-dominated
trials, or a metric off by more than --tolerance, exits non-zero.

    python bench/verify_front.py --run runs/rte
    python bench/verify_front.py --tiny       # seconds: a tiny search job on a few MRPC rows, then the same
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import tiny
from checks import require, require_exported
from transformers import AutoModelForSequenceClassification

from search.pareto import non_dominated
from supernet.config import SubNetworkConfig
from supernet.evaluation import evaluate
from supernet.extract import export_subnetwork
from supernet.run import Run


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a finished search's run folder")
    parser.add_argument("--tiny", action="store_true", help="run a tiny search job first and verify its front")
    parser.add_argument("--tiny-root", type=Path, default=None, help="where --tiny runs its search")
    parser.add_argument("--tolerance", type=float, default=1e-9)
    args = parser.parse_args(argv)
    if args.tiny:
        args.run = tiny.tiny_search(args.tiny_root or Path(tempfile.mkdtemp(prefix="nasprune-tiny-")))
    if args.run is None:
        parser.error("--run is required (or --tiny)")
    front = json.loads((args.run / "front.json").read_text())
    trials = [json.loads(line) for line in (args.run / "trials.jsonl").read_text().splitlines()]
    names = front["objectives"]
    values = np.array([[t["objectives"][n] for n in names] for t in trials])
    front_configs = {json.dumps(p["config"], sort_keys=True) for p in front["points"]}
    mask = non_dominated(values)
    expected = {json.dumps(t["config"], sort_keys=True) for t, keep in zip(trials, mask, strict=True) if keep}
    print(f"{len(trials)} trials, {len(front['points'])} front points; front == non-dominated trials: "
          f"{front_configs == expected}")
    require(front_configs == expected, f"{args.run}: the front is not the non-dominated trials")
    run = Run(args.run)
    supernet = run.load_supernet()
    validation = run.batches("validation")
    full_encoder = front["reference"]["params"]["encoder"]
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for k, point in enumerate(front["points"]):
            sub = SubNetworkConfig.from_dict(point["config"])
            folder = export_subnetwork(supernet, sub, Path(tmp) / f"point-{k}", tokenizer=run.tokenizer)
            model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
            require_exported(model, sub, f"point {k}, reloaded")
            got = evaluate(model, validation, run.task.spec)
            diff = max(abs(got[m] - point["validation"][m]) for m in got)
            worst = max(worst, diff)
            share = point["params"]["encoder"] / full_encoder
            print(f"point {k}: encoder params {share:6.1%}, recorded {point['validation']}, exported {got}")
    print(f"largest metric difference: {worst:.2e} ({'OK' if worst <= args.tolerance else 'MISMATCH'}); "
          f"points below 50 % of the encoder: "
          f"{sum(p['params']['encoder'] < 0.5 * full_encoder for p in front['points'])}")
    require(worst <= args.tolerance, f"a reloaded front point's metrics differ from its record by {worst:.2e}")
    return worst


if __name__ == "__main__":
    main()
