"""Where a stage runs, and in which precision it trains: `--device auto|cpu|cuda|cuda:N`, `--precision
auto|float32|bfloat16` (supernet.settings.Compute).

Batches are built on the host (tokenised once, padded per batch) and copied to the device as they are used: from
pinned host memory and without blocking, so the copy of the next batch overlaps the work on the last. Weights,
checkpoints and exports stay device-neutral: a checkpoint written on a GPU resumes on a CPU and the other way round.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from typing import Any

import torch

from .evaluation import fast_bfloat16
from .hardware import DeviceUnavailable, check_device
from .settings import TRAINING_PRECISIONS


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None): the first visible CUDA GPU when torch sees one, else the CPU; 'cuda' is 'cuda:0'.
    DeviceUnavailable for a CUDA device that torch cannot use here."""
    if isinstance(name, torch.device):
        return name
    name = name or "auto"
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    check_device(name)  # the pattern (and a clear message where the driver has no GPU)
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceUnavailable(f"device {name!r}: torch sees no CUDA GPU here (torch {torch.__version__}, built "
                                f"{'with' if torch.version.cuda else 'without'} CUDA); use device auto or cpu")
    index = int(name.split(":", 1)[1]) if ":" in name else 0
    if index >= torch.cuda.device_count():
        raise DeviceUnavailable(f"device {name!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s) here")
    return torch.device("cuda", index)


def training_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of training: 'auto' is bfloat16 on a CUDA GPU that computes it natively (matrix
    products in bfloat16, weights, optimizer and reductions in float32), float32 elsewhere: on CPUs without native
    bfloat16 it is slower, and even on those with it, training in it is not what the recipes were measured in."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and fast_bfloat16(device) else torch.float32
    if precision not in TRAINING_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(TRAINING_PRECISIONS)}, got {precision!r}")
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for the forward passes (a no-op for float32)."""
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch's tensors on `device` (the same dict's tensors where they are there already)."""
    if device.type == "cpu":
        return dict(batch)
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


class DeviceBatches:
    """A re-iterable loader whose batches arrive on `device`; on a GPU the loader pins them first, so that the
    copy runs without blocking. Its length is the loader's (the trainer needs it)."""

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.loader:
            yield to_device(batch, self.device)


def on_device(loader: Any, device: torch.device | None) -> Any:
    """`loader` itself on the CPU; its batches copied to `device` otherwise."""
    return loader if device is None or device.type == "cpu" else DeviceBatches(loader, device)


def describe(device: torch.device) -> str:
    """What a job records it ran on: 'cpu', or 'cuda:0 (NVIDIA H200)'."""
    if device.type == "cuda":
        return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device)})"
    return device.type


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """The training record's memory figures: the device's peak allocation on a GPU (since reset_peak_memory);
    the process's peak resident memory on the host either way."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    peak = {"device": describe(device), "peak_host_memory_bytes": int(rss)}
    if device.type == "cuda":
        peak["peak_device_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return peak
