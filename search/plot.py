"""The Pareto plot of a search: error against each cost objective, all trials and the front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from supernet.files import atomic_path

from .pareto import non_dominated

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_COST_LABELS = {"params": "parameters (fraction of the full model)", "macs": "MACs (fraction of the full model)",
                "latency": "predicted latency (fraction of the full model)"}


def plot_front(front: dict[str, Any], trials: list[dict[str, Any]], path: str | Path) -> Path:
    """One panel per cost objective: x = cost relative to the full model, y = validation error."""
    names = front["objectives"]
    costs = [n for n in names if n != "error"] or names[1:]
    y_name = "error" if "error" in names else names[0]
    reference = front["reference"]["objectives"]
    # the search's figures (its subset, its precision) and the front's (float32 on the whole split) may differ
    searched, examples = front.get("search_examples"), front.get("validation_examples")
    dtype = front.get("search_dtype", "float32")
    trials_label = "evaluated" + (f" (search: {searched} examples, {dtype})" if searched != examples
                                  else f" (search: {dtype})" if dtype != "float32" else "")
    front_label = "Pareto front (all objectives" + (f"; float32, all {examples} examples)"
                                                    if trials_label != "evaluated" else ")")
    fig, axes = plt.subplots(1, len(costs), figsize=(5.5 * len(costs), 4.2), squeeze=False)
    for ax, cost in zip(axes[0], costs, strict=True):
        scale = reference[cost] or 1.0
        ax.scatter([t["objectives"][cost] / scale for t in trials], [t["objectives"][y_name] for t in trials],
                   s=12, color="0.7", label=trials_label)
        xy = np.array([[t["objectives"][cost] / scale, t["objectives"][y_name]] for t in trials])
        if len(xy):  # the 2-D front of this panel as a staircase
            staircase = xy[non_dominated(xy)]
            staircase = staircase[np.argsort(staircase[:, 0])]
            ax.step(staircase[:, 0], staircase[:, 1], where="post", color="tab:blue", alpha=0.6)
        points = front["points"]
        ax.scatter([p["objectives"][cost] / scale for p in points], [p["objectives"][y_name] for p in points],
                   s=22, color="tab:blue", label=front_label, zorder=2)
        ax.scatter([1.0], [reference[y_name]], marker="*", s=160, color="tab:red", label="full model", zorder=3)
        ax.set_xlabel(_COST_LABELS.get(cost, cost))
        ax.set_ylabel(f"validation {y_name}" if y_name == "error" else y_name)
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="best")
    fig.suptitle(f"{front['task']}: {len(trials)} sub-networks, hypervolume {front['hypervolume']:.4f}")
    fig.tight_layout()
    path = Path(path)
    try:  # the API may serve the plot while a search rewrites it: never show a half-written image
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path
