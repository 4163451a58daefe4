"""Latency model: predict a sub-network's inference time from a per-device table of building blocks.

Timing every candidate during a search would cost more than evaluating it, so the building blocks are
timed once per device and shape (as in HAT, Wang et al., ACL 2020, and Once-for-All's latency lookup
tables): an attention block with h heads for every h, an FFN block with u units on a grid of u, and the
fixed part (embeddings, classification head). A sub-network's latency is the fixed part plus, per kept
layer, its attention and FFN entries (FFN widths between grid points are interpolated linearly).
Blocks are built at their physical (extracted) size, so the table predicts the latency of the exported
model. Tables are cached as JSON per device and shape; `validate` compares predictions with measured
latencies of extracted sub-networks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from filelock import FileLock
from scipy import stats
from scipy.optimize import isotonic_regression

from supernet.config import SubNetworkConfig, SupernetConfig
from supernet.extract import extract
from supernet.files import atomic_write_json
from supernet.model import Supernet
from supernet.modules import ClassificationHead, ElasticBert, ElasticFeedForward, ElasticSelfAttention, Embeddings
from supernet.space import make_space

log = logging.getLogger(__name__)


def device_name(device: torch.device | str = "cpu") -> str:
    """A stable name for the hardware a table belongs to (CPU model and thread count, or GPU name)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda-{torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu-{cpu}-{torch.get_num_threads()}t"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_calls(fns: Sequence[Callable[[], object]], *, repeats: int = 5, warmup: int = 2,
               device: torch.device | str = "cpu") -> list[float]:
    """Wall time (ms) of each `fn()`: the minimum over `repeats` round-robin rounds.

    Round-robin spreads a burst of load from other processes over all items instead of one, and the
    minimum estimates the cost without interference (noise on a shared machine only adds time)."""
    device = torch.device(device)
    for _ in range(warmup):
        for fn in fns:
            fn()
    _synchronize(device)
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            _synchronize(device)
            best[i] = min(best[i], (time.perf_counter() - start) * 1000)
    return best


def _forward(model: torch.nn.Module, batch_size: int, seq_len: int, device: torch.device | str,
             vocab_size: int) -> Callable[[], object]:
    model = model.eval().to(device)
    ids = torch.randint(1, vocab_size, (batch_size, seq_len), device=device)
    mask = torch.ones_like(ids)
    return lambda: model(ids, mask)


def measure_latency(model: torch.nn.Module, *, batch_size: int, seq_len: int, repeats: int = 5,
                    device: torch.device | str = "cpu", vocab_size: int = 1000) -> float:
    """Forward time (ms, minimum of `repeats`) of a model on a full (unpadded) batch of random token ids."""
    return time_calls([_forward(model, batch_size, seq_len, device, vocab_size)], repeats=repeats, device=device)[0]


@dataclass
class LatencyTable:
    device: str
    batch_size: int
    seq_len: int
    overhead_ms: float  # embeddings + classification head
    attention_ms: list[float]  # index h: an attention block with h heads
    ffn_units: list[int]  # grid of FFN widths
    ffn_ms: list[float]  # time of an FFN block of each width in ffn_units
    # Correction fitted on whole anchor models: latency = scale * blocks + per_layer_ms * layers + overhead.
    # Blocks timed alone run on a cache-warm input; inside a model each layer pays a little more.
    scale: float = 1.0
    per_layer_ms: float = 0.0

    def blocks_ms(self, sub: SubNetworkConfig) -> float:
        """Sum of the block times of the kept layers (no correction)."""
        return sum(self.attention_ms[heads] + float(np.interp(units, self.ffn_units, self.ffn_ms))
                   for heads, units in zip(sub.kept_heads(), sub.kept_units(), strict=True))

    def predict(self, sub: SubNetworkConfig) -> float:
        """Predicted latency (ms) of the exported sub-network. Never below the embeddings and head alone: the fitted
        correction may have a negative per-layer term, which would otherwise predict zero or less for the tiniest
        sub-networks, and no model runs faster than its embeddings and head."""
        corrected = self.scale * self.blocks_ms(sub) + self.per_layer_ms * len(sub.layers)
        return max(corrected, 0.0) + self.overhead_ms

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LatencyTable:
        return cls(**data)


def _cache_key(config: SupernetConfig, device: str, batch_size: int, seq_len: int, unit_step: int) -> str:
    shape = json.dumps([device, batch_size, seq_len, unit_step, config.hidden_size, config.head_size,
                        max(config.layer_heads), max(config.layer_units), config.hidden_act, config.vocab_size,
                        config.num_labels, torch.__version__])
    return hashlib.sha256(shape.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(os.environ.get("NASPRUNE_CACHE", Path.home() / ".cache" / "nasprune")) / "latency"


def calibrate(config: SupernetConfig, *, batch_size: int = 32, seq_len: int = 128, unit_step: int | None = None,
              repeats: int = 5, device: torch.device | str = "cpu") -> LatencyTable:
    """Time every building block once at its physical size (dropout off, no autograd)."""
    device = torch.device(device)
    cfg = SimpleNamespace(**config.to_dict())
    cfg.hidden_dropout = cfg.attention_dropout = 0.0
    hidden = config.hidden_size
    x = torch.randn(batch_size, seq_len, hidden, device=device)
    ids = torch.randint(1, config.vocab_size, (batch_size, seq_len), device=device)
    max_heads, max_units = max(config.layer_heads), max(config.layer_units)
    step = unit_step or max(1, max_units // 24)
    attention = [ElasticSelfAttention(hidden, h, config.head_size, 0.0, 0.0, config.layer_norm_eps).to(device).eval()
                 for h in range(max_heads + 1)]
    ffn_units = sorted(set(range(0, max_units + 1, step)) | {max_units})
    ffns = [ElasticFeedForward(hidden, u, config.hidden_act, 0.0, config.layer_norm_eps).to(device).eval()
            for u in ffn_units]
    embeddings, head = Embeddings(cfg).to(device).eval(), ClassificationHead(cfg).to(device).eval()
    calls = [lambda block=block: block(x, None) for block in attention]
    calls += [lambda block=block: block(x) for block in ffns]
    times = time_calls([*calls, lambda: head(embeddings(ids, None))], repeats=repeats, device=device)
    attention_ms, ffn_ms, overhead = times[:len(attention)], times[len(attention):-1], times[-1]
    table = LatencyTable(device=device_name(device), batch_size=batch_size, seq_len=seq_len, overhead_ms=overhead,
                         attention_ms=monotone(attention_ms), ffn_units=ffn_units, ffn_ms=monotone(ffn_ms))
    _fit_correction(table, config, repeats=repeats, device=device)
    return table


def anchor_subnetworks(config: SupernetConfig) -> list[SubNetworkConfig]:
    """Whole models of varied depth and width that calibrate the table's correction."""
    n, h, u = config.num_layers, max(config.layer_heads), max(config.layer_units)
    shapes = [(1, h, u), (n, h, u), (max(1, n // 2), h, u), (n, max(1, h // 2), u // 2), (n, max(1, h // 4), u // 4),
              (max(1, n // 3), max(1, h // 2), u // 2), (n, 1, max(1, u // 12)), (max(1, (2 * n) // 3), h, u // 4)]
    return [SubNetworkConfig(layers=tuple(range(k)), heads=(heads,) * n, units=(units,) * n)
            for k, heads, units in shapes]


def _fit_correction(table: LatencyTable, config: SupernetConfig, *, repeats: int, device: torch.device | str) -> None:
    """Least-squares fit of scale and per-layer cost on anchor models built at their physical size."""
    anchors = anchor_subnetworks(config)
    calls = []
    for sub in anchors:
        cfg = SimpleNamespace(**(config.to_dict() | {"layer_heads": sub.kept_heads(), "layer_units": sub.kept_units(),
                                                     "hidden_dropout": 0.0, "attention_dropout": 0.0}))
        calls.append(_forward(ElasticBert(cfg), table.batch_size, table.seq_len, device, config.vocab_size))
    measured = np.array(time_calls(calls, repeats=repeats, device=device)) - table.overhead_ms
    design = np.array([[table.blocks_ms(sub), len(sub.layers)] for sub in anchors])
    (scale, per_layer), *_ = np.linalg.lstsq(design, measured, rcond=None)
    if scale > 0:  # a degenerate fit (absurdly noisy timings) keeps the plain sum of blocks
        table.scale, table.per_layer_ms = float(scale), float(per_layer)


def monotone(values: Sequence[float]) -> list[float]:
    """The closest non-decreasing sequence in least squares (isotonic regression, scipy's pool-adjacent-violators):
    a wider block is never faster, and averaging violators removes timing noise without amplifying it."""
    return [float(v) for v in isotonic_regression(np.asarray(values, dtype=float)).x]


def _read_table(path: Path) -> LatencyTable | None:
    """The table cached at `path`, or None when there is none or it cannot be read (then it is calibrated anew)."""
    if not path.is_file():
        return None
    try:
        return LatencyTable.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:  # bad JSON, bad UTF-8, wrong fields
        log.warning("ignoring unreadable latency table %s: %s", path, exc)
        return None


def load_or_calibrate(config: SupernetConfig, *, batch_size: int = 32, seq_len: int = 128,
                      unit_step: int | None = None, device: torch.device | str = "cpu",
                      cache_dir: str | Path | None = None, repeats: int = 5) -> LatencyTable:
    """The cached table for this device and shape, calibrating (and caching) it on first use.

    A file lock per table makes workers that need the same table at once calibrate it once: the others wait,
    then read it. Two calibrations running side by side would also time each other's load into the table."""
    name = device_name(device)
    step = unit_step or max(1, max(config.layer_units) // 24)
    path = Path(cache_dir or default_cache_dir()) / f"{_cache_key(config, name, batch_size, seq_len, step)}.json"
    table = _read_table(path)
    if table is not None:
        return table
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f".{path.name}.lock")):
        table = _read_table(path)  # written by another process while this one waited for the lock
        if table is not None:
            return table
        log.info("calibrating the latency table for %s at batch %d x %d tokens", name, batch_size, seq_len)
        table = calibrate(config, batch_size=batch_size, seq_len=seq_len, unit_step=step, repeats=repeats,
                          device=device)
        atomic_write_json(path, table.to_dict(), indent=1)
    return table


@dataclass
class ValidationResult:
    spearman: float
    mape: float  # mean absolute percentage error, in percent
    predicted_ms: list[float]
    measured_ms: list[float]
    configs: list[dict]


def validate(supernet: Supernet, table: LatencyTable, subs: Sequence[SubNetworkConfig], *, repeats: int = 5,
             device: torch.device | str = "cpu", progress: Callable[[int, int], None] | None = None
             ) -> ValidationResult:
    """Measure each sub-network's extracted model and compare with the table's prediction."""
    calls = []
    for index, sub in enumerate(subs):
        calls.append(_forward(extract(supernet, sub), table.batch_size, table.seq_len, device,
                              supernet.config.vocab_size))
        if progress:
            progress(index + 1, len(subs))
    measured = time_calls(calls, repeats=repeats, device=device)
    predicted = [table.predict(sub) for sub in subs]
    p, m = np.array(predicted), np.array(measured)
    rho = float(stats.spearmanr(p, m).statistic) if len(p) > 1 else float("nan")
    mape = float(np.mean(np.abs(p - m) / m) * 100)
    return ValidationResult(spearman=rho, mape=mape, predicted_ms=predicted, measured_ms=measured,
                            configs=[s.to_dict() for s in subs])


def random_subnetworks(config: SupernetConfig, count: int, *, seed: int = 0, unit_step: int | None = None
                       ) -> list[SubNetworkConfig]:
    """A mix of the three spaces' random members (layer drop, uniform and per-layer widths)."""
    rng = random.Random(seed)
    spaces = [make_space(name, config, unit_step=unit_step) for name in ("per_layer", "uniform", "layers")]
    return [spaces[i % len(spaces)].sample(rng) for i in range(count)]
