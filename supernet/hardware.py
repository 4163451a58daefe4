"""Which CUDA GPUs this machine has, without importing torch.

The API server and `nasprune serve` need the answer (to refuse a job that asks for CUDA where there is none, and
to start one worker per GPU) but must start without torch (tests/test_api_torch_free.py). NVIDIA's management
library (NVML, `libnvidia-ml.so.1`, installed with the driver) counts the GPUs without creating a CUDA context, so
it is also safe before worker processes are started. `CUDA_VISIBLE_DEVICES` limits what CUDA programs see, and
torch obeys it; so does this count.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d{1,2})?)$"


class DeviceUnavailable(ValueError):
    """A stage asked for a CUDA device that this machine does not have; the message says what it has."""


@functools.cache
def _nvml_count() -> int:
    """GPUs the driver knows (0 where there is no NVIDIA driver)."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return 0
    count = ctypes.c_uint(0)
    try:
        if nvml.nvmlInit_v2() != 0:
            return 0
        try:
            return count.value if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0 else 0
        finally:
            nvml.nvmlShutdown()
    except AttributeError:  # a library too old to have the v2 calls
        return 0


def visible_gpus() -> list[str]:
    """The GPUs a CUDA program started now would see, as the ids `CUDA_VISIBLE_DEVICES` names them (physical
    indices, or UUIDs where the variable uses them); the i-th is that program's `cuda:i`. `NASPRUNE_GPUS` (a number)
    overrides the driver's count, for machines whose NVML is missing or hidden."""
    override = os.environ.get("NASPRUNE_GPUS")
    physical = int(override) if override is not None and override.isdigit() else _nvml_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(physical)]
    ids = []
    for item in (part.strip() for part in listed.split(",")):
        # CUDA stops at the first entry that is not a valid device (e.g. -1, or an index past the last GPU)
        if not item or (item.lstrip("-").isdigit() and not 0 <= int(item) < physical):
            break
        ids.append(item)
    return ids if physical else []


def check_device(device: str) -> str:
    """`device` if this machine can run it: 'auto' and 'cpu' always, 'cuda' and 'cuda:N' where such a GPU is
    visible; DeviceUnavailable otherwise, saying what there is."""
    if not re.match(DEVICE_PATTERN, device):
        raise DeviceUnavailable(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if not device.startswith("cuda"):
        return device
    gpus = visible_gpus()
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if not gpus:
        raise DeviceUnavailable(f"device {device!r}: this machine has no CUDA GPU visible (no NVIDIA driver, or "
                                "CUDA_VISIBLE_DEVICES hides them); use device auto or cpu")
    if index >= len(gpus):
        raise DeviceUnavailable(f"device {device!r}: this machine has {len(gpus)} CUDA GPU(s) visible, "
                                f"cuda:0 to cuda:{len(gpus) - 1}")
    return device
