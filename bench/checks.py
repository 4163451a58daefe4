"""Checks that a benchmark exercised the code path its figure names, so that a change underneath it (a default
that turns a sandwich step into a plain one, an evaluation that silently runs in another precision, a latency
taken of the wrong model) stops the benchmark with the reason instead of letting it print a ratio of something
else (issue 37).

Every check observes the real run through forward hooks: nothing is re-run or mocked. A failed check raises
`CheckFailed`, a SystemExit, so a script ends with status 1 and the reason on stderr and prints no figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from supernet.config import SubNetworkConfig
from supernet.evaluation import evaluate
from supernet.model import Supernet
from supernet.modeling_nasprune import NasPruneForSequenceClassification
from supernet.modules import ElasticBert, ElasticLayer
from supernet.tasks import TaskSpec


class CheckFailed(SystemExit):
    """A benchmark did not measure what it names; the message says what it ran instead."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"benchmark check failed: {reason}")
        self.reason = reason


def require(ok: bool, reason: str) -> None:
    """Stop the benchmark with `reason` unless `ok`."""
    if not ok:
        raise CheckFailed(reason)


# -- how many forward passes ---------------------------------------------------------------------------------
@dataclass
class ForwardCount:
    calls: int = 0


@contextmanager
def count_forwards(module: nn.Module) -> Iterator[ForwardCount]:
    """Count the calls of `module`'s forward inside the block (a sandwich step calls the supernet 2 + k times)."""
    count = ForwardCount()

    def hook(_module: nn.Module, _inputs: object, _output: object) -> None:
        count.calls += 1

    handle = module.register_forward_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


# -- which widths a sliced forward ran at --------------------------------------------------------------------
@dataclass
class WidthTrace:
    """Per forward of an elastic model: (layer index, heads, units) of every layer that ran, in order."""

    forwards: list[list[tuple[int, int, int]]] = field(default_factory=list)


@contextmanager
def trace_widths(model: ElasticBert) -> Iterator[WidthTrace]:
    """Record the widths each layer really computed with (its active heads and units when it ran), per forward."""
    trace = WidthTrace()
    handles = [model.register_forward_pre_hook(lambda _m, _i: trace.forwards.append([]))]
    for index, layer in enumerate(model.layers):
        def hook(module: ElasticLayer, _inputs: object, _output: object, index: int = index) -> None:
            trace.forwards[-1].append((index, module.attention.active_heads, module.ffn.active_units))

        handles.append(layer.register_forward_hook(hook))
    try:
        yield trace
    finally:
        for handle in handles:
            handle.remove()


def expected_widths(sub: SubNetworkConfig) -> list[tuple[int, int, int]]:
    return [(i, sub.heads[i], sub.units[i]) for i in sub.layers]


def require_widths(trace: WidthTrace, sub: SubNetworkConfig, what: str) -> None:
    """Every forward in `trace` ran exactly `sub`'s layers at its heads and units."""
    require(bool(trace.forwards), f"{what}: the model was never called")
    want = expected_widths(sub)
    for ran in trace.forwards:
        require(ran == want, f"{what}: a forward ran (layer, heads, units) {ran}, not the sub-network's {want}")


# -- which model a latency timed ------------------------------------------------------------------------------
EXPORTED = NasPruneForSequenceClassification.__name__


def is_exported(model: nn.Module) -> bool:
    """The exported class, imported from supernet/ or loaded from an export's own modeling file
    (trust_remote_code gives the same class under another module)."""
    return type(model).__name__ == EXPORTED and hasattr(getattr(model, "model", None), "layers")


def exported_widths(model: nn.Module) -> list[tuple[int, int]] | None:
    """(heads, units) per layer read from an exported model's weight shapes; None if it is not an exported model."""
    if not is_exported(model):
        return None
    head_size = model.config.head_size
    return [(layer.attention.query.weight.shape[0] // head_size, layer.ffn.intermediate.weight.shape[0])
            for layer in model.model.layers]


def require_exported(model: nn.Module, sub: SubNetworkConfig, what: str) -> None:
    """`model` is the physically smaller exported class whose weights have `sub`'s widths (not a supernet that
    slices at run time, nor another sub-network's export)."""
    widths = exported_widths(model)
    require(widths is not None, f"{what}: the model is a {type(model).__name__}, not an exported {EXPORTED}")
    want = list(zip(sub.kept_heads(), sub.kept_units(), strict=True))
    require(widths == want, f"{what}: the timed model's weights have (heads, units) {widths}, not {want}")


@contextmanager
def models_called() -> Iterator[list[nn.Module]]:
    """Every exported model whose forward ran inside the block, in order of first call (a global hook: it sees
    models built inside library code, such as search.latency.validate's)."""
    seen: list[nn.Module] = []

    def hook(module: nn.Module, _inputs: object, _output: object) -> None:
        if is_exported(module) and not any(m is module for m in seen):
            seen.append(module)

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def require_timed_exports(models: Sequence[nn.Module], subs: Sequence[SubNetworkConfig], what: str) -> None:
    require(len(models) == len(subs), f"{what}: {len(models)} exported models ran for {len(subs)} sub-networks")
    for k, (model, sub) in enumerate(zip(models, subs, strict=True)):
        require_exported(model, sub, f"{what}, sub-network {k}")


# -- which precision an evaluation computed in ---------------------------------------------------------------
@dataclass
class DtypeTrace:
    dtypes: set[torch.dtype] = field(default_factory=set)


@contextmanager
def output_dtypes(model: nn.Module) -> Iterator[DtypeTrace]:
    """The dtypes of `model`'s raw logits inside the block (evaluation code casts them to float32 afterwards, so
    only the forward's own output shows the precision it computed in)."""
    trace = DtypeTrace()

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        trace.dtypes.add(getattr(output, "logits", output).dtype)

    handle = model.register_forward_hook(hook)
    try:
        yield trace
    finally:
        handle.remove()


def require_dtype(trace: DtypeTrace, dtype: torch.dtype, what: str) -> None:
    require(trace.dtypes == {dtype}, f"{what}: the logits were computed in {sorted(map(str, trace.dtypes))}, "
                                     f"not {dtype}")


def checked_evaluate(model: Supernet, batches: Iterable[Mapping[str, torch.Tensor]], spec: TaskSpec, *,
                     sub: SubNetworkConfig | None = None, what: str = "evaluation") -> dict[str, float]:
    """supernet.evaluation.evaluate of `sub` (None: the full network), refused unless every forward ran at its
    widths: a figure credited to a sub-network is that sub-network's."""
    with trace_widths(model) as trace:
        metrics = evaluate(model, batches, spec, sub=sub)
    require_widths(trace, sub or model.full_config(), what)
    return metrics
