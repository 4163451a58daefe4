"""Evaluate the supernet (or one of its sub-networks) on a split: predictions, then task metrics.

`dtype=torch.bfloat16` evaluates under autocast (matrix products in bfloat16, normalisation and softmax in float32):
on a CPU with native bfloat16 (AVX512-BF16 or AMX) it is several times faster and leaves almost every prediction
unchanged (bench/eval_precision.py measures both; figures in bench/RESULTS.md), so the search ranks its candidates
that way, and reports float32 figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import SubNetworkConfig
from .metrics import compute_metrics
from .model import Supernet
from .modules import check_exit_threshold, normalised_entropy
from .settings import EVALUATION_DTYPES
from .tasks import TaskSpec

# the names of supernet.settings.EVALUATION_DTYPES but "auto", as torch dtypes
DTYPES = {name: getattr(torch, name) for name in EVALUATION_DTYPES if name != "auto"}


def dtype_name(dtype: torch.dtype) -> str:
    """The name a dtype has in DTYPES, settings and JSON files: 'bfloat16' for torch.bfloat16."""
    return str(dtype).removeprefix("torch.")


def fast_bfloat16(device: str | torch.device = "cpu") -> bool:
    """Whether `device` computes bfloat16 natively (a CPU with AVX512-BF16 or AMX, a CUDA GPU that supports it);
    elsewhere bfloat16 is emulated and slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and check() for check in checks)


def resolve_dtype(name: str, device: str | torch.device = "cpu") -> torch.dtype:
    """'float32', 'bfloat16', or 'auto': bfloat16 where `device` computes it natively, float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if fast_bfloat16(device) else torch.float32
    if name not in DTYPES:
        raise ValueError(f"evaluation dtype must be auto, {' or '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


def _precision(model: torch.nn.Module, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    device = next(model.parameters()).device.type
    return torch.autocast(device, dtype=dtype)


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], *, progress: bool = False,
            dtype: torch.dtype = torch.float32) -> tuple[np.ndarray, np.ndarray]:
    """Logits (float32) and labels of every example, in loader order; `dtype` as in the module's docstring."""
    model.eval()
    logits, labels = [], []
    with _precision(model, dtype):
        for batch in tqdm(batches, desc="evaluating", disable=not progress, leave=False):
            out = model(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
            logits.append(getattr(out, "logits", out).float().cpu().numpy())
            labels.append(batch["labels"].cpu().numpy())
    return np.concatenate(logits), np.concatenate(labels)


@torch.no_grad()
def predict_exits(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], *, progress: bool = False,
                  dtype: torch.dtype = torch.float32) -> tuple[np.ndarray, np.ndarray]:
    """Every exit's logits (float32, (E, N, C): E answering heads, the last the main head) and the labels, in
    loader order, from one pass with no example leaving. A Supernet answers for its active sub-network (inside
    `use(sub)`); an exported model for itself. Exiting never changes a later layer, so every threshold is
    scored from this one array (metrics_at_threshold) with no other forward pass."""
    model.eval()
    logits, labels = [], []
    with _precision(model, dtype):
        for batch in tqdm(batches, desc="evaluating exits", disable=not progress, leave=False):
            out = model(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"),
                        all_exits=True)
            logits.append(getattr(out, "logits", out).float().cpu().numpy())
            labels.append(batch["labels"].cpu().numpy())
    return np.concatenate(logits, axis=1), np.concatenate(labels)


def exit_positions(exit_logits: np.ndarray, threshold: float | None,
                   open_positions: Sequence[int] | None = None) -> np.ndarray:
    """Where each example leaves under `threshold` τ (N,), 1-based: the first open exit (`open_positions`, 1-based
    kept-layer positions; None: all) whose normalised prediction entropy is strictly below τ (an entropy exactly at
    τ goes on), else E, the main head. The forward's rule, computed by the same function
    (modules.normalised_entropy) on the same float32 logits. τ None or 0: E."""
    answers, count = exit_logits.shape[0], exit_logits.shape[1]
    threshold = check_exit_threshold(threshold, exits=True, num_labels=exit_logits.shape[-1])
    if threshold is None or answers == 1:
        return np.full(count, answers, dtype=np.int64)
    confident = (normalised_entropy(torch.from_numpy(np.ascontiguousarray(exit_logits[:-1], dtype=np.float32)))
                 < threshold).numpy()  # (E-1, N)
    if open_positions is not None:
        closed = np.ones(answers - 1, dtype=bool)
        closed[[p - 1 for p in open_positions]] = False
        confident[closed] = False
    confident = np.concatenate([confident, np.ones((1, count), dtype=bool)])
    return confident.argmax(axis=0).astype(np.int64) + 1


def metrics_at_threshold(spec: TaskSpec, exit_logits: np.ndarray, labels: np.ndarray,
                         threshold: float | None, open_positions: Sequence[int] | None = None
                         ) -> tuple[dict[str, float], np.ndarray]:
    """The task's metrics when every example answers at its exit under `threshold`, and those exits (N,), from
    predict_exits' logits alone: what `evaluate` measures with the exiting forward, without running it."""
    positions = exit_positions(exit_logits, threshold, open_positions)
    answered = exit_logits[positions - 1, np.arange(exit_logits.shape[1])]  # (N, C)
    return metrics_from_logits(spec, answered, labels), positions


class NonFiniteLogits(ValueError):
    """A model's logits hold NaN or infinity: its weights diverged (or overflow on these inputs). Metrics from such
    logits would be meaningless yet look plausible (argmax of NaN is class 0, which can tie a real model's accuracy
    on an unbalanced split), so nothing is scored, kept or served from them."""


def metrics_from_logits(spec: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics; NonFiniteLogits if any logit is NaN or inf."""
    bad = int(np.count_nonzero(~np.isfinite(logits)))
    if bad:
        raise NonFiniteLogits(f"{bad:,} of {logits.size:,} logits are NaN or inf")
    predictions = logits[:, 0] if spec.is_regression else logits.argmax(-1)
    return compute_metrics(spec, predictions, labels)


def evaluate(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], spec: TaskSpec, *,
             sub: SubNetworkConfig | None = None, progress: bool = False,
             dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Task metrics of `model`; for a Supernet, of sub-network `sub` (None: the full network). A `sub` with an
    exit_threshold runs the exiting forward, each example answering at its own exit."""
    if isinstance(model, Supernet):
        with model.use(sub):
            return metrics_from_logits(spec, *predict(model, batches, progress=progress, dtype=dtype))
    if sub is not None:
        raise ValueError("a sub-network can only be chosen inside a Supernet")
    return metrics_from_logits(spec, *predict(model, batches, progress=progress, dtype=dtype))
