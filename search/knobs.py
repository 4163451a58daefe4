"""A front point's runtime knobs, turned after the search: what the point would score and cost with another exit
threshold, another token keep rate or another number of ODE steps, each measured like the point itself.

The three papers' runtime settings are chosen after training and can be changed after export
(`model.set_exit_threshold`, a token-keep schedule, `model.set_ode_steps`): COST-EFF's entropy threshold τ
(Shen et al., EMNLP 2022), the latency-adjustable encoder's keep schedule (token elimination), a parameter-shared
stack's step count (Chen et al., Findings of EMNLP 2023). A user choosing a point wants to see what turning them
does before downloading it, so the search measures, for each front point that has a knob, every setting of it:

- `exit_threshold`: every threshold of the search's grid (0: full depth), scored from the structure's one pass
  over its exits (search.objectives.ExitPasses: no forward pass per threshold);
- `token_keep_scale`: the point's keep schedule scaled by each of TOKEN_KEEP_SCALES (each fraction times the
  scale, between the search's keep floor and 1; 1 is the point), one evaluation each;
- `ode_steps`: each step count a shared stack can run (SupernetConfig.ode_step_counts), with the
  point's solver, one evaluation each.

Each setting is a dict with its value and the figures the front shows (validation metrics, params, MACs,
predicted latency, dynamics: expected MACs, mean exit layer). Measured on the validation examples the search ranked
on, in its precision: the page's sliders read them (GET /searches/{id}/pareto/{k}/knobs).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from supernet.config import SubNetworkConfig

from .objectives import Measurements, figures_dict

__all__ = ["TOKEN_KEEP_SCALES", "knob_table"]

TOKEN_KEEP_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)


def _setting(value: Any, sub: SubNetworkConfig, measurements: Measurements) -> dict[str, Any]:
    return {"value": value, **figures_dict(measurements.figures(sub))}


def _scaled_keep(keep: tuple[float, ...], scale: float, floor: float) -> tuple[float, ...]:
    """Each fraction times `scale`, between the floor (or the point's own lowest, where that is lower: scale 1 is
    the point itself) and 1."""
    floor = min(floor, *keep)
    return tuple(min(1.0, max(floor, round(r * scale, 4))) for r in keep)


def knob_table(sub: SubNetworkConfig, measurements: Measurements, *, exit_thresholds: tuple[float, ...] = (),
               keep_floor: float = 0.1) -> dict[str, list[dict[str, Any]]]:
    """Every setting of each knob `sub` has (see the module's docstring); {} for a point without one."""
    config = measurements.supernet.config
    table: dict[str, list[dict[str, Any]]] = {}
    if sub.exit_threshold is not None and exit_thresholds:
        values = sorted({0.0, *exit_thresholds, sub.exit_threshold})
        table["exit_threshold"] = [_setting(tau, replace(sub, exit_threshold=tau or None), measurements)
                                   for tau in values]
    if sub.token_keep is not None:
        table["token_keep_scale"] = [
            _setting(scale, SubNetworkConfig.from_dict(sub.to_dict() | {
                "token_keep": list(_scaled_keep(sub.token_keep, scale, keep_floor))}), measurements)
            for scale in TOKEN_KEEP_SCALES]
    if config.shared:
        table["ode_steps"] = [
            _setting(steps, SubNetworkConfig.from_dict(sub.to_dict() | {
                "ode_steps": None if steps == config.num_layers else steps}), measurements)
            for steps in config.ode_step_counts()]
    return table
