"""Token-elimination arithmetic: MACs of a layer that drops tokens, keep schedules, and the schedule that reaches
a speed-up; and the steps of a parameter-shared stack integrated as an ODE (`ode_schedule`). Pure Python (no
torch), because three places need it: supernet.counting, the search space's genes (imported by torch-free code)
and every exported model, whose `set_speedup` and `set_ode_steps` work after training (this file is copied into
the export folder beside modules.py).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["kept_count", "layer_macs", "keep_schedule", "tilted_schedule", "expected_encoder_macs",
           "schedule_for_speedup", "ode_schedule", "ode_step_counts", "block_members", "step_keep_layers"]


def kept_count(fraction: float, length: int, reads: int | None = None) -> int:
    """Tokens an example of `length` tokens keeps after a layer with keep fraction `fraction`: ⌈fraction · length⌉
    (of its own length, not of what the layer reads), at least [CLS], never more than the `reads` tokens it has
    left. The one rule; modules.py (torch) and search.latency (numpy) apply it vectorised."""
    reads = length if reads is None else reads
    return min(reads, max(1, math.ceil(fraction * length - 1e-9)))


def layer_macs(hidden: int, heads: int, head_size: int, units: int, reads: int, kept: int | None = None) -> int:
    """Multiply-accumulates of one layer that reads `reads` tokens and passes on `kept` of them (default: all).

    With token elimination the ranking needs the whole attention matrix, so Q, K, V and QKᵀ see every token read;
    only the kept queries need their context (AV), the output projection and the FFN (PoWER-BERT's placement:
    elimination between the attention and the FFN).
    """
    kept = reads if kept is None else kept
    width = heads * head_size
    projections = 3 * reads * hidden * width + kept * width * hidden  # Q, K, V on all; the output on the kept
    return projections + attention_macs(heads, head_size, reads, kept) + 2 * kept * hidden * units


def attention_macs(heads: int, head_size: int, reads: int, kept: int) -> int:
    """The two attention products: QKᵀ over every token read, AV for the kept queries."""
    return heads * reads * reads * head_size + heads * kept * reads * head_size


def keep_schedule(keep: list[float], layers: int) -> list[float] | None:
    """A checked keep schedule: one fraction in (0, 1] per layer, made non-increasing (an eliminated token
    never comes back); all ones is None."""
    values = [float(r) for r in keep]
    if len(values) != layers or not all(0.0 < r <= 1.0 for r in values):
        raise ValueError(f"token_keep needs {layers} fractions in (0, 1], one per layer; got {keep}")
    schedule, current = [], 1.0
    for r in values:
        current = min(current, r)
        schedule.append(current)
    return None if current == 1.0 else schedule


def tilted_schedule(layers: int, start: int, rate: float, floor: float = 0.1) -> list[float] | None:
    """The keep schedule of the search's token-elimination genes: every token through the first `start` layers,
    then a fraction shrinking geometrically by `rate` per layer, never below `floor`:
    r_l = 1 for l < start, r_l = max(floor, (1 - rate) ** (l - start + 1)) after. Two genes (start, rate)
    describe a TiltedBERT-style schedule that keeps more tokens early, where the ranking is least reliable and
    dropping costs most (PoWER-BERT), and fewer deep; None when it drops nothing."""
    if not 0 <= start <= layers or not 0.0 <= rate < 1.0 or not 0.0 < floor <= 1.0:
        raise ValueError(f"a tilted schedule needs 0 <= start <= {layers}, 0 <= rate < 1 and 0 < floor <= 1; "
                         f"got start={start}, rate={rate}, floor={floor}")
    keep = [1.0 if i < start else max(floor, (1.0 - rate) ** (i - start + 1)) for i in range(layers)]
    return None if all(r >= 1.0 for r in keep) else keep


def expected_encoder_macs(config: Any, keep: list[float] | None, lengths: list[int]) -> float:
    """Mean encoder MACs per example of `lengths` tokens under the keep schedule (per layer of `config`)."""
    total = 0
    for n in lengths:
        reads = n
        for i, (heads, units) in enumerate(zip(config.layer_heads, config.layer_units, strict=True)):
            kept = kept_count(1.0 if keep is None or heads == 0 else keep[i], n, reads)
            total += layer_macs(config.hidden_size, heads, config.head_size, units, reads, kept)
            reads = kept
    return total / len(lengths)


def schedule_for_speedup(config: Any, speedup: float, lengths: list[int], *, start: int = 1,
                         floor: float = 0.1) -> list[float] | None:
    """The tilted schedule (`start`, `floor` fixed) with the gentlest rate whose expected encoder MACs over
    `lengths` are at most 1/`speedup` of the model's without elimination: TiltedBERT's offline tuning, one
    trained model set to a latency after training. The speed-up is analytic (MACs); bench/ measures the real
    one. 1 is None; a speed-up beyond the steepest schedule's is refused with the most it can reach."""
    if not math.isfinite(speedup) or speedup < 1.0:
        raise ValueError(f"speed-up must be a finite number >= 1, got {speedup}")
    if not lengths:
        raise ValueError("schedule_for_speedup needs the input lengths it is solved over")
    layers = len(config.layer_heads)
    base = expected_encoder_macs(config, None, lengths)

    def reached(rate: float) -> float:
        return base / expected_encoder_macs(config, tilted_schedule(layers, start, rate, floor), lengths)

    steepest = 1.0 - 1e-6
    if speedup == 1.0:
        return None
    if reached(steepest) < speedup:
        raise ValueError(f"speed-up {speedup:g} is beyond what this model reaches by token elimination from layer "
                         f"{start} down to a floor of {floor:g} (at most {reached(steepest):.2f}x)")
    low, high = 0.0, steepest
    for _ in range(50):  # MACs fall with the rate (stepwise, through the ceilings): bisect for the gentlest
        middle = (low + high) / 2
        low, high = (low, middle) if reached(middle) >= speedup else (middle, high)
    return tilted_schedule(layers, start, high, floor)


def ode_step_counts(groups: list[int] | tuple[int, ...] | None, num_layers: int) -> list[int]:
    """The step counts K a stack of `num_layers` layers tied into `groups` (the block of each layer; None: one per
    layer) can be integrated in with one step size L / K: those whose steps end on every block boundary, where the
    vector field changes (each block's n layers take n·K / L whole steps). Equal blocks: the multiples of their
    count."""
    sizes = [len(layers) for layers in block_members(groups, num_layers)]
    return [k for k in range(1, num_layers + 1) if all(n * k % num_layers == 0 for n in sizes)]


def block_members(groups: list[int] | tuple[int, ...] | None, num_layers: int) -> list[list[int]]:
    """The layers of each shared block, in order, from the block of each layer (`groups`; None: one block per
    layer)."""
    if groups is None:
        return [[i] for i in range(num_layers)]
    members: list[list[int]] = [[] for _ in range(max(groups) + 1)] if groups else []
    for index, group in enumerate(groups):
        members[group].append(index)
    return members


def ode_schedule(groups: list[int] | tuple[int, ...] | None, num_layers: int,
                 steps: int | None) -> list[tuple[int, float]]:
    """The steps a parameter-shared stack runs, in order: (layer index, step size). `groups` maps each layer to its
    shared block (contiguous blocks in order; None: one block per layer); `steps` K (None: one per layer)
    integrates the stack over [0, L] with one step size L / K: each block's n layers in n·K / L steps, run as the
    first of its layers (they are one block). Chen et al., Findings of EMNLP 2023: a shared residual layer is an
    Euler step of dx/dt = f(x), which fewer, larger steps can integrate."""
    steps = num_layers if steps is None else int(steps)
    if num_layers == 0:
        return []
    counts = ode_step_counts(groups, num_layers)
    if steps not in counts:
        raise ValueError(f"ode_steps must be one of {counts} (the step counts whose steps end on every shared "
                         f"block's boundary; {num_layers} layers), got {steps}")
    size = num_layers / steps
    return [(index, size) for layers in block_members(groups, num_layers)
            for index in layers[:len(layers) * steps // num_layers]]


def step_keep_layers(schedule: list[tuple[int, float]] | tuple[tuple[int, float], ...]) -> list[int]:
    """Per step of a parameter-shared stack's schedule (ode_schedule), the layer whose token-keep fraction applies
    after it: the one the step ends in (a step ending at ODE time t reads layer ⌈t⌉ − 1's), so a keep schedule over
    the L layers means the same elimination at any step count; one step per layer reads each layer's own."""
    layers, time = [], 0.0
    for _, step in schedule:
        time += step
        layers.append(max(0, math.ceil(time - 1e-9) - 1))
    return layers
