"""Latency model: predict a sub-network's inference time from a per-device table of building blocks.

Timing every candidate during a search would cost more than evaluating it, so the building blocks are
timed once per device and shape (as in HAT, Wang et al., ACL 2020, and Once-for-All's latency lookup
tables): an attention block with h heads for every h, an FFN block with u units on a grid of u, and the
fixed part (embeddings, classification head), and for a supernet with exits one exit's work (its head, the
entropy, the decision). A sub-network's latency is the fixed part plus, per kept layer, its attention and FFN
entries (FFN widths between grid points are interpolated linearly), plus the exits its examples read.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from filelock import FileLock
from scipy import stats
from scipy.optimize import isotonic_regression

from supernet.batching import token_counts
from supernet.config import SubNetworkConfig, SupernetConfig
from supernet.extract import extract
from supernet.files import atomic_write_json
from supernet.model import Supernet
from supernet.modules import (
    ClassificationHead,
    ElasticBert,
    ElasticFeedForward,
    ElasticSelfAttention,
    Embeddings,
    ExitHead,
    normalised_entropy,
)
from supernet.schedules import tilted_schedule
from supernet.space import TokenEliminationSpace, make_space

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


TOKEN_GRID = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 448, 512)


def token_grid(seq_len: int) -> list[int]:
    """The token counts a table with a token axis is timed at: dense where real sentences are (short), up to
    `seq_len`. Counts in between are interpolated linearly (block time is close to linear in tokens there)."""
    return sorted({t for t in TOKEN_GRID if t < seq_len} | {seq_len})


def _row(values: Sequence[float] | Sequence[Sequence[float]]) -> np.ndarray:
    return np.asarray(values, dtype=float)


@dataclass
class LatencyTable:
    """Block times on a grid of token counts (`tokens`): one count (`seq_len`) for inputs that always have it, a
    grid up to `seq_len` where inputs keep their own lengths or tokens are eliminated. Times are in ms for one
    batch of `batch_size` inputs."""

    device: str
    batch_size: int
    seq_len: int
    tokens: list[int]  # the token-count axis of every entry below
    overhead_ms: list[float]  # per token count: embeddings + classification head
    attention_ms: list[list[float]]  # [h][t]: an attention block with h heads reading tokens[t] tokens
    ffn_units: list[int]  # grid of FFN widths
    ffn_ms: list[list[float]]  # [i][t]: an FFN block of ffn_units[i] units on tokens[t] tokens
    # An attention block that ranks its tokens and passes on only some (token elimination): [h][t] when it keeps
    # all tokens[t] and when it keeps a quarter of them; a keep count in between is interpolated. None: the table
    # was calibrated without elimination and cannot predict it.
    eliminating_ms: list[list[float]] | None = None
    eliminating_quarter_ms: list[list[float]] | None = None
    # Correction fitted on whole anchor models: latency = scale * blocks + per_layer_ms * layers + overhead.
    # Blocks timed alone run on a cache-warm input; inside a model each layer pays a little more.
    scale: float = 1.0
    per_layer_ms: float = 0.0
    # One exit read by a batch of `batch_size` rows (the exit head on the first token, the normalised entropy and
    # the comparison with τ): timed on its own at calibration rather than left to the per-layer correction, which
    # is fitted on models that read no exit and so cannot see it; an exit costs the same at any token count (it
    # reads one token). 0 for a table calibrated without exits.
    exit_ms: float = 0.0

    @property
    def eliminates(self) -> bool:
        return self.eliminating_ms is not None and self.eliminating_quarter_ms is not None

    def _at(self, rows: Sequence[float], widths: np.ndarray) -> np.ndarray:
        """One row of the table (over `tokens`) at each token count in `widths`, interpolated."""
        return np.interp(widths, self.tokens, _row(rows))

    def _ffn(self, units: int, widths: np.ndarray) -> np.ndarray:
        return np.interp(widths, self.tokens, self._ffn_row(units))

    def _ffn_row(self, units: int) -> np.ndarray:
        """An FFN of `units` units over the token axis, interpolated between the timed widths (asked for once per
        layer of every sub-network the search predicts, for a handful of distinct widths)."""
        rows = self.__dict__.setdefault("_ffn_rows", {})  # not a field: asdict and the cache file never see it
        if units not in rows:
            table = _row(self.ffn_ms)  # (units grid, tokens)
            rows[units] = np.array([np.interp(units, self.ffn_units, table[:, t]) for t in range(len(self.tokens))])
        return rows[units]

    def _eliminating(self, heads: int, reads: np.ndarray, kept: np.ndarray) -> np.ndarray:
        if not self.eliminates:
            raise ValueError("this latency table was calibrated without token elimination; calibrate one with "
                             "token_axis=True to predict a sub-network that drops tokens")
        everything = self._at(self.eliminating_ms[heads], reads)
        quarter = self._at(self.eliminating_quarter_ms[heads], reads)
        lowest = np.ceil(reads / 4)
        share = np.where(reads > lowest, (kept - lowest) / np.maximum(reads - lowest, 1), 1.0)
        return quarter + (everything - quarter) * share

    def layer_blocks(self, sub: SubNetworkConfig, widths: np.ndarray) -> np.ndarray:
        """Block times of each kept layer (no correction), (kept layers, len(widths)), for batches `widths` tokens
        wide: an eliminating layer reads the batch's width and passes on the tokens its longest example keeps."""
        rows = [np.zeros_like(widths, dtype=float)] if not sub.layers else []
        reads = widths.astype(float)
        keep = sub.token_keep
        for index, heads, units in zip(sub.layers, sub.kept_heads(), sub.kept_units(), strict=True):
            r = 1.0 if keep is None else keep[index]
            kept = np.minimum(reads, np.maximum(1.0, np.ceil(r * widths - 1e-9)))  # supernet.schedules.kept_count
            dropping = kept < reads
            plain = self._at(self.attention_ms[heads], reads)
            attention = np.where(dropping, self._eliminating(heads, reads, kept), plain) if dropping.any() else plain
            rows.append(attention + self._ffn(units, kept))
            reads = kept
        return np.array(rows)

    def blocks(self, sub: SubNetworkConfig, widths: np.ndarray) -> np.ndarray:
        """Sum of the block times of the kept layers (no correction) for batches `widths` tokens wide."""
        return self.layer_blocks(sub, widths).sum(axis=0)

    def blocks_ms(self, sub: SubNetworkConfig, width: int | None = None) -> float:
        """Sum of the block times of the kept layers for one batch `width` tokens wide (default: seq_len)."""
        return float(self.blocks(sub, np.array([width or self.seq_len]))[0])

    def widths(self, lengths: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
        """The batch widths a set of inputs runs at and each one's share of the batches: every batch `seq_len`
        wide without lengths; else the lengths sorted into batches of `batch_size`, each padded to its longest
        (dynamic padding; batch 1 is every input alone at its own length)."""
        if lengths is None:
            return np.array([self.seq_len]), np.array([1.0])
        sizes = np.asarray(lengths, dtype=int)
        if sizes.size == 0:
            raise ValueError("latency over real lengths needs at least one input length")
        values, counts = np.unique([sizes[rows].max() for rows in self.batches(sizes)], return_counts=True)
        return values, counts / counts.sum()

    def batches(self, lengths: Sequence[int]) -> list[np.ndarray]:
        """The inputs (indices into `lengths`) of each batch they run in: sorted by length, `batch_size` at a time
        (dynamic padding), as `widths` and `exit_batches` read them."""
        order = np.argsort(np.asarray(lengths, dtype=int), kind="stable")
        return [order[start:start + self.batch_size] for start in range(0, order.size, self.batch_size)]

    def predict(self, sub: SubNetworkConfig, lengths: Sequence[int] | None = None,
                exit_layers: Sequence[int] | None = None, evaluations: int = 1) -> float:
        """Predicted latency (ms per batch) of the exported sub-network: of a full batch of `seq_len` tokens, or,
        given real input lengths, the mean over their batches (see `widths`).

        `exit_layers`: where each input (in the order of `lengths`, which it needs) leaves under the sub-network's
        exit_threshold, 1-based kept-layer positions (supernet.evaluation.exit_positions). An input that leaves after
        its k-th kept layer costs the layers up to k and the open exits it read on the way (among the first k, or
        k - 1 when it reaches the main head), plus the fixed part whole (embeddings and main head are timed as one;
        the head is a small share of it). At batch 1 that is exact per input. In a larger batch the rows that leave are
        taken out and the batch shrinks: each layer's time (and each exit's) is scaled by the share of the batch's
        rows still in it, a linear model of a batch that runs narrower. Without `exit_layers`, a sub-network with
        an exit_threshold runs every layer and reads every exit (nobody leaves).

        Never below the embeddings and head alone: the fitted correction may have a negative per-layer term, which
        would otherwise predict zero or less for the tiniest sub-networks, and no model runs faster than its
        embeddings and head.

        `evaluations`: how many times each layer runs (a parameter-shared stack under Heun's method: 2; see
        SubNetworkConfig.unrolled, which turns its steps into layers)."""
        if exit_layers is not None:
            return self._predict_exiting(sub, lengths, exit_layers)
        widths, shares = self.widths(lengths)
        corrected = evaluations * (self.scale * self.blocks(sub, widths) + self.per_layer_ms * len(sub.layers))
        exits = 0.0 if sub.exit_threshold is None else self.exit_ms * len(_open_rows(sub))
        return float(np.sum((np.maximum(corrected, 0.0) + self._at(self.overhead_ms, widths) + exits) * shares))

    def exit_batches(self, lengths: Sequence[int], exit_layers: Sequence[int], answers: int
                     ) -> tuple[np.ndarray, np.ndarray]:
        """The batches the inputs run in (sorted by length, `batch_size` at a time, as `widths`): each batch's width
        (B,) and, per kept-layer position, the share of its rows that run it (answers, B)."""
        sizes, exits = np.asarray(lengths, dtype=int), np.asarray(exit_layers, dtype=int)
        if sizes.size == 0 or sizes.shape != exits.shape:
            raise ValueError(f"latency with exits needs one exit layer per input length: {exits.size} exit layers "
                             f"for {sizes.size} lengths")
        if exits.min() < 1 or exits.max() > answers:
            raise ValueError(f"exit layers are kept-layer positions from 1 to {answers}, got {exits.min()} to "
                             f"{exits.max()}")
        batches = self.batches(sizes)
        widths = np.array([sizes[rows].max() for rows in batches])
        running = np.array([[(exits[rows] >= position).mean() for position in range(1, answers + 1)]
                            for rows in batches])
        return widths, running.T

    def _predict_exiting(self, sub: SubNetworkConfig, lengths: Sequence[int] | None,
                         exit_layers: Sequence[int]) -> float:
        if lengths is None:
            raise ValueError("latency with exit layers needs the inputs' lengths, one per exit layer")
        answers = max(1, len(sub.layers))
        widths, running = self.exit_batches(lengths, exit_layers, answers)  # (B,), (answers, B)
        if not sub.layers or (sub.exit_threshold is None and running[-1].min() < 1):
            raise ValueError("only a sub-network with kept layers and an exit_threshold has inputs that leave early")
        corrected = (running * (self.scale * self.layer_blocks(sub, widths) + self.per_layer_ms)).sum(axis=0)
        # a running row reads the open exit of each layer but the last, when there are exits to read
        exits = 0.0 if sub.exit_threshold is None else self.exit_ms * running[_open_rows(sub)].sum(axis=0)
        return float(np.mean(np.maximum(corrected, 0.0) + self._at(self.overhead_ms, widths) + exits))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LatencyTable:
        return cls(**data)


def _open_rows(sub: SubNetworkConfig) -> list[int]:
    """The 0-based kept-layer positions whose exits a threshold reads (SubNetworkConfig.open_exits)."""
    rows = sub.open_rows()
    return list(range(max(0, len(sub.layers) - 1))) if rows is None else list(rows)


def _cache_key(config: SupernetConfig, device: str, batch_size: int, seq_len: int, unit_step: int,
               token_axis: bool) -> str:
    shape = json.dumps([device, batch_size, seq_len, unit_step, config.hidden_size, config.head_size,
                        max(config.layer_heads), max(config.layer_units), config.hidden_act, config.vocab_size,
                        config.num_labels, torch.__version__, token_grid(seq_len) if token_axis else [seq_len]]
                       + (["exits"] if config.exits else []))  # a key without exits is the one it always was
    return hashlib.sha256(shape.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(os.environ.get("NASPRUNE_CACHE", Path.home() / ".cache" / "nasprune")) / "latency"


def calibrate(config: SupernetConfig, *, batch_size: int = 32, seq_len: int = 128, unit_step: int | None = None,
              repeats: int = 5, device: torch.device | str = "cpu", token_axis: bool = False) -> LatencyTable:
    """Time every building block once at its physical size (dropout off, no autograd), at `seq_len` tokens or,
    with `token_axis`, on the token grid up to it, eliminating attention blocks included."""
    device = torch.device(device)
    cfg = SimpleNamespace(**config.to_dict())
    cfg.hidden_dropout = cfg.attention_dropout = 0.0
    hidden = config.hidden_size
    tokens = token_grid(seq_len) if token_axis else [seq_len]
    max_heads, max_units = max(config.layer_heads), max(config.layer_units)
    step = unit_step or max(1, max_units // 24)
    attention = [ElasticSelfAttention(hidden, h, config.head_size, 0.0, 0.0, config.layer_norm_eps).to(device).eval()
                 for h in range(max_heads + 1)]
    ffn_units = sorted(set(range(0, max_units + 1, step)) | {max_units})
    ffns = [ElasticFeedForward(hidden, u, config.hidden_act, 0.0, config.layer_norm_eps).to(device).eval()
            for u in ffn_units]
    embeddings, head = Embeddings(cfg).to(device).eval(), ClassificationHead(cfg).to(device).eval()
    calls: list[Callable[[], object]] = []
    if config.exits:  # one exit read by a full batch: its head on the first token, the entropy, the decision
        exit_head = ExitHead(cfg).to(device).eval()
        first = torch.randn(batch_size, 1, hidden, device=device)
        calls.append(lambda: bool((normalised_entropy(exit_head(first)) < 0.5).any()))
    for t in tokens:
        x = torch.randn(batch_size, t, hidden, device=device)
        ids = torch.randint(1, config.vocab_size, (batch_size, t), device=device)
        calls.append(lambda ids=ids: head(embeddings(ids, None)))
        calls += [lambda block=block, x=x: block(x, None) for block in attention]
        calls += [lambda block=block, x=x: block(x) for block in ffns]
        if token_axis:
            valid = torch.ones(batch_size, t, dtype=torch.bool, device=device)
            for kept in (t, -(-t // 4)):
                keep = torch.full((batch_size,), kept, dtype=torch.long, device=device)
                calls += [lambda block=block, x=x, valid=valid, keep=keep: block.forward_eliminating(x, valid, keep)
                          for block in attention[1:]]
    times = iter(time_calls(calls, repeats=repeats, device=device))
    exit_ms = next(times) if config.exits else 0.0
    overhead, attention_ms, ffn_ms = [], [[] for _ in attention], [[] for _ in ffns]
    eliminating = [[[] for _ in attention] for _ in range(2)] if token_axis else None
    for _ in tokens:
        overhead.append(next(times))
        for row in attention_ms:
            row.append(next(times))
        for row in ffn_ms:
            row.append(next(times))
        if eliminating is not None:
            for which in eliminating:
                which[0].append(attention_ms[0][-1])  # no heads: nothing is ranked or dropped
                for row in which[1:]:
                    row.append(next(times))
    table = LatencyTable(device=device_name(device), batch_size=batch_size, seq_len=seq_len, tokens=tokens,
                         overhead_ms=monotone(overhead), attention_ms=monotone_grid(attention_ms),
                         ffn_units=ffn_units, ffn_ms=monotone_grid(ffn_ms),
                         eliminating_ms=None if eliminating is None else monotone_grid(eliminating[0]),
                         eliminating_quarter_ms=None if eliminating is None else monotone_grid(eliminating[1]),
                         exit_ms=exit_ms)
    _fit_correction(table, config, repeats=repeats, device=device)
    return table


def anchor_subnetworks(config: SupernetConfig, *, eliminating: bool = False) -> list[SubNetworkConfig]:
    """Whole models of varied depth and width that calibrate the table's correction (with `eliminating`, two of
    them also drop tokens on a tilted schedule)."""
    n, h, u = config.num_layers, max(config.layer_heads), max(config.layer_units)
    shapes = [(1, h, u), (n, h, u), (max(1, n // 2), h, u), (n, max(1, h // 2), u // 2), (n, max(1, h // 4), u // 4),
              (max(1, n // 3), max(1, h // 2), u // 2), (n, 1, max(1, u // 12)), (max(1, (2 * n) // 3), h, u // 4)]
    anchors = [SubNetworkConfig(layers=tuple(range(k)), heads=(heads,) * n, units=(units,) * n)
               for k, heads, units in shapes]
    if eliminating:
        for anchor, rate in ((anchors[1], 0.25), (anchors[3], 0.5)):
            keep = tilted_schedule(n, 1, rate)
            anchors.append(SubNetworkConfig(layers=anchor.layers, heads=anchor.heads, units=anchor.units,
                                            token_keep=None if keep is None else tuple(keep)))
    return anchors


def _physical(config: SupernetConfig, sub: SubNetworkConfig) -> ElasticBert:
    """The sub-network built at its physical size (what extraction exports), dropout off; unshared (a shared block
    computes what its own copy would: sharing changes storage, not time)."""
    keep = None if sub.token_keep is None else [sub.token_keep[i] for i in sub.layers]
    cfg = SimpleNamespace(**(config.to_dict() | {"layer_heads": sub.kept_heads(), "layer_units": sub.kept_units(),
                                                 "hidden_dropout": 0.0, "attention_dropout": 0.0,
                                                 "token_keep": keep, "layer_groups": None}))
    return ElasticBert(cfg)


def anchor_widths(table: LatencyTable) -> list[int]:
    """The batch widths the correction is fitted at: the table's one, or three spanning its token axis."""
    if len(table.tokens) == 1:
        return [table.seq_len]
    return sorted({table.seq_len, max(1, table.seq_len // 2), max(1, table.seq_len // 4)})


def _fit_correction(table: LatencyTable, config: SupernetConfig, *, repeats: int, device: torch.device | str) -> None:
    """Least-squares fit of scale and per-layer cost on anchor models built at their physical size."""
    anchors = anchor_subnetworks(config, eliminating=table.eliminates)
    rows = [(sub, width) for width in anchor_widths(table) for sub in anchors]
    calls = [_forward(_physical(config, sub), table.batch_size, width, device, config.vocab_size)
             for sub, width in rows]
    measured = np.array(time_calls(calls, repeats=repeats, device=device))
    measured -= np.array([table._at(table.overhead_ms, np.array([width]))[0] for _, width in rows])
    design = np.array([[table.blocks_ms(sub, width), len(sub.layers)] for sub, width in rows])
    (scale, per_layer), *_ = np.linalg.lstsq(design, measured, rcond=None)
    if scale > 0:  # a degenerate fit (absurdly noisy timings) keeps the plain sum of blocks
        table.scale, table.per_layer_ms = float(scale), float(per_layer)


def monotone(values: Sequence[float]) -> list[float]:
    """The closest non-decreasing sequence in least squares (isotonic regression, scipy's pool-adjacent-violators):
    a wider block is never faster, and averaging violators removes timing noise without amplifying it."""
    return [float(v) for v in isotonic_regression(np.asarray(values, dtype=float)).x]


def monotone_grid(rows: Sequence[Sequence[float]]) -> list[list[float]]:
    """A [width][tokens] grid made non-decreasing along tokens in each row, then along widths at each token count:
    more heads, units or tokens never make a block faster."""
    along_tokens = np.array([monotone(row) for row in rows])
    return np.array([monotone(column) for column in along_tokens.T]).T.tolist()


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
                      cache_dir: str | Path | None = None, repeats: int = 5, token_axis: bool = False
                      ) -> LatencyTable:
    """The cached table for this device and shape, calibrating (and caching) it on first use. `token_axis`: a
    table that predicts inputs of their own lengths and token elimination (see `calibrate`).

    A file lock per table makes workers that need the same table at once calibrate it once: the others wait,
    then read it. Two calibrations running side by side would also time each other's load into the table."""
    name = device_name(device)
    step = unit_step or max(1, max(config.layer_units) // 24)
    key = _cache_key(config, name, batch_size, seq_len, step, token_axis)
    path = Path(cache_dir or default_cache_dir()) / f"{key}.json"
    table = _read_table(path)
    if table is not None:
        return table
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f".{path.name}.lock")):
        table = _read_table(path)  # written by another process while this one waited for the lock
        if table is not None:
            return table
        log.info("calibrating the latency table for %s at batch %d x %s%d tokens", name, batch_size,
                 "up to " if token_axis else "", seq_len)
        table = calibrate(config, batch_size=batch_size, seq_len=seq_len, unit_step=step, repeats=repeats,
                          device=device, token_axis=token_axis)
        atomic_write_json(path, table.to_dict(), indent=1)
    return table


@dataclass
class ValidationResult:
    spearman: float
    mape: float  # mean absolute percentage error, in percent
    predicted_ms: list[float]
    measured_ms: list[float]
    configs: list[dict]


def _run_batches(model: torch.nn.Module, batches: Sequence[Mapping[str, torch.Tensor]],
                 device: torch.device | str) -> Callable[[], object]:
    model = model.eval().to(device)
    moved = [{k: v.to(device) for k, v in b.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
             for b in batches]
    return lambda: [model(b["input_ids"], b["attention_mask"], b.get("token_type_ids")) for b in moved]


def validate(supernet: Supernet, table: LatencyTable, subs: Sequence[SubNetworkConfig], *, repeats: int = 5,
             device: torch.device | str = "cpu", progress: Callable[[int, int], None] | None = None,
             batches: Sequence[Mapping[str, torch.Tensor]] | None = None) -> ValidationResult:
    """Measure each sub-network's extracted model and compare with the table's prediction: on a full batch of
    `seq_len` random tokens, or on real inputs (`batches`, each padded to its longest; batch 1 is every example
    alone), then per batch on average and predicted over the same lengths."""
    calls = []
    for index, sub in enumerate(subs):
        model = extract(supernet, sub)
        calls.append(_forward(model, table.batch_size, table.seq_len, device, supernet.config.vocab_size)
                     if batches is None else _run_batches(model, batches, device))
        if progress:
            progress(index + 1, len(subs))
    measured = time_calls(calls, repeats=repeats, device=device)
    lengths = None
    if batches is not None:
        measured = [ms / len(batches) for ms in measured]
        lengths = token_counts(batches)
    predicted = [table.predict(sub, lengths) for sub in subs]
    rho, mape = agreement(predicted, measured)
    return ValidationResult(spearman=rho, mape=mape, predicted_ms=predicted, measured_ms=measured,
                            configs=[s.to_dict() for s in subs])


def agreement(predicted: Sequence[float], measured: Sequence[float]) -> tuple[float, float]:
    """How well predictions rank and size measurements: Spearman's rank correlation (nan for fewer than two) and the
    mean absolute percentage error, in percent."""
    p, m = np.array(predicted, dtype=float), np.array(measured, dtype=float)
    rho = float(stats.spearmanr(p, m).statistic) if len(p) > 1 else float("nan")
    return rho, float(np.mean(np.abs(p - m) / m) * 100)


def measure_subnetworks(supernet: Supernet, table: LatencyTable, subs: Sequence[SubNetworkConfig], *,
                        repeats: int = 3, device: torch.device | str = "cpu") -> list[float | None]:
    """Each sub-network's extracted model timed on this machine at the table's shape (a full batch of `seq_len`
    random tokens; the calls interleaved, each the minimum of its rounds), in ms: what the predictions are checked
    against. None for one that changes with its input (token elimination, early exits): random tokens say nothing
    of it."""
    static = [i for i, sub in enumerate(subs) if sub.is_static]
    if not static:
        return [None] * len(subs)
    timed = validate(supernet, table, [subs[i] for i in static], repeats=repeats, device=device).measured_ms
    measured: list[float | None] = [None] * len(subs)
    for i, ms in zip(static, timed, strict=True):
        measured[i] = ms
    return measured


def random_subnetworks(config: SupernetConfig, count: int, *, seed: int = 0, unit_step: int | None = None,
                       eliminating: bool = False) -> list[SubNetworkConfig]:
    """A mix of the three spaces' random members (layer drop, uniform and per-layer widths); with `eliminating`,
    each with a random token-elimination schedule too (the search's genes)."""
    rng = random.Random(seed)
    spaces = [make_space(name, config, unit_step=unit_step) for name in ("per_layer", "uniform", "layers")]
    if eliminating:
        spaces = [TokenEliminationSpace(space) for space in spaces]
    return [spaces[i % len(spaces)].sample(rng) for i in range(count)]
