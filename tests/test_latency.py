"""search.latency: isotonic smoothing, the table's prediction, calibration, the on-disk cache and validation."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import REPO, hand_latency_table, supernet_config

from search import latency
from search.latency import (
    LatencyTable,
    ValidationResult,
    calibrate,
    load_or_calibrate,
    monotone,
    random_subnetworks,
    time_calls,
    validate,
)
from supernet.config import SubNetworkConfig
from supernet.space import make_space

# ---------------------------------------------------------------------------------------------- monotone


@pytest.mark.parametrize(("values", "expected"), [
    ([], []),
    ([3.0], [3.0]),
    ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]),
    ([2.0, 1.0], [1.5, 1.5]),
    ([3.0, 2.0, 1.0], [2.0, 2.0, 2.0]),
    ([1.0, 3.0, 2.0, 4.0], [1.0, 2.5, 2.5, 4.0]),
    ([1.0, 2.0, 2.0, 1.5], [1.0, 5.5 / 3, 5.5 / 3, 5.5 / 3]),
    # a violator that pulls a merged block below its left neighbour: the merge must cascade
    ([1.0, 4.0, 5.0, 0.0], [1.0, 3.0, 3.0, 3.0]),
    ([5.0, 1.0, 1.0, 1.0, 6.0], [2.0, 2.0, 2.0, 2.0, 6.0]),
    ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
])
def test_monotone_hand_cases(values, expected) -> None:
    assert monotone(values) == pytest.approx(expected, abs=1e-12)


def _is_non_decreasing(values) -> bool:
    return all(a <= b + 1e-12 for a, b in zip(values, values[1:], strict=False))


def test_monotone_properties() -> None:
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(1, 30))
        values = rng.normal(size=n) + (0.1 * np.arange(n) if trial % 2 else 0.0)
        out = monotone(values.tolist())
        assert len(out) == n and all(isinstance(v, float) for v in out)
        assert _is_non_decreasing(out)
        assert sum(out) == pytest.approx(values.sum(), abs=1e-9)  # pooling keeps the overall mean
        assert monotone(sorted(values.tolist())) == sorted(values.tolist())  # sorted input is kept as it is
        assert monotone(out) == pytest.approx(out)  # idempotent
        # least squares: no other non-decreasing sequence is closer to the input
        error = np.sum((np.array(out) - values) ** 2)
        for _ in range(5):
            other = np.sort(values + rng.normal(scale=0.3, size=n))
            assert error <= np.sum((other - values) ** 2) + 1e-9
        # each pooled block of equal outputs sits at the mean of the inputs it covers
        start = 0
        for end in range(1, n + 1):
            if end == n or abs(out[end] - out[start]) > 1e-9:
                assert np.mean(values[start:end]) == pytest.approx(out[start], abs=1e-9)
                start = end


# ------------------------------------------------------------------------------------------- the table


def test_predict_on_a_hand_built_table() -> None:
    table = LatencyTable(device="hand", batch_size=1, seq_len=4, tokens=[4], overhead_ms=[2.0],
                         attention_ms=[[0.0], [1.0], [3.0]], ffn_units=[0, 10, 20], ffn_ms=[[0.5], [1.5], [5.5]],
                         scale=2.0, per_layer_ms=0.25)
    full = SubNetworkConfig(layers=(0, 1), heads=(2, 2), units=(20, 20))
    assert table.blocks_ms(full) == pytest.approx(2 * (3.0 + 5.5))
    assert table.predict(full) == pytest.approx(2.0 * 17.0 + 0.25 * 2 + 2.0)
    # units between grid points are interpolated linearly: 5 -> 1.0, 15 -> 3.5, 12 -> 1.5 + 0.2 * 4
    sub = SubNetworkConfig(layers=(0, 1), heads=(1, 0), units=(5, 12))
    assert table.blocks_ms(sub) == pytest.approx((1.0 + 1.0) + (0.0 + 2.3))
    assert table.predict(sub) == pytest.approx(2.0 * 4.3 + 0.5 + 2.0)
    # a dropped layer costs nothing, whatever widths it would have had
    one = SubNetworkConfig(layers=(1,), heads=(2, 1), units=(20, 15))
    assert table.predict(one) == pytest.approx(2.0 * (1.0 + 3.5) + 0.25 + 2.0)
    # scale and per-layer cost are a linear correction of the plain sum of blocks
    plain = LatencyTable(**(table.to_dict() | {"scale": 1.0, "per_layer_ms": 0.0}))
    assert plain.predict(sub) == pytest.approx(4.3 + 2.0)


def test_a_negative_per_layer_correction_never_predicts_less_than_embeddings_and_head() -> None:
    """A least-squares fit may give per_layer_ms < 0; the tiniest sub-networks then stay at the overhead, not at or
    below zero (a speed-up computed from such a figure would be negative or infinite)."""
    table = LatencyTable(device="hand", batch_size=1, seq_len=4, tokens=[4], overhead_ms=[2.0],
                         attention_ms=[[0.0], [1.0], [3.0]], ffn_units=[0, 10, 20], ffn_ms=[[0.0], [1.5], [5.5]],
                         scale=1.0, per_layer_ms=-4.0)
    tiny = SubNetworkConfig(layers=(0, 1), heads=(1, 0), units=(0, 0))
    assert table.blocks_ms(tiny) == pytest.approx(1.0)
    assert table.predict(tiny) == pytest.approx(2.0)  # 1.0 - 8.0 would be -7 ms of layers: floored at none
    full = SubNetworkConfig(layers=(0, 1), heads=(2, 2), units=(20, 20))
    assert table.predict(full) == pytest.approx(17.0 - 8.0 + 2.0)  # the correction still applies where it can


def test_predict_grows_with_the_network(tiny_config) -> None:
    table = hand_latency_table(tiny_config)
    space = make_space("uniform", tiny_config)
    assert table.predict(space.smallest()) < table.predict(space.middle()) < table.predict(space.largest())
    rng = random.Random(0)
    for _ in range(20):
        sub = space.sample(rng)
        wider = SubNetworkConfig(layers=sub.layers, heads=sub.heads, units=tuple(min(48, u + 2) for u in sub.units))
        assert table.predict(wider) >= table.predict(sub)


def test_table_round_trip(tiny_latency_table) -> None:
    data = json.loads(json.dumps(tiny_latency_table.to_dict()))
    again = LatencyTable.from_dict(data)
    assert again == tiny_latency_table
    sub = SubNetworkConfig(layers=(0, 2), heads=(3, 0, 1), units=(7, 0, 48))
    assert again.predict(sub) == tiny_latency_table.predict(sub)


def test_calibrate_tiny_config(tiny_latency_table, tiny_config) -> None:
    table = tiny_latency_table
    assert (table.batch_size, table.seq_len) == (2, 8)
    assert table.tokens == [8] and not table.eliminates  # one shape: no token axis unless asked for
    assert len(table.attention_ms) == 4 + 1  # 0..4 heads
    assert table.ffn_units[0] == 0 and table.ffn_units[-1] == 48 and table.ffn_units == sorted(table.ffn_units)
    assert len(table.ffn_ms) == len(table.ffn_units) == 25  # step 48 // 24 = 2
    attention, ffn = [row[0] for row in table.attention_ms], [row[0] for row in table.ffn_ms]
    assert _is_non_decreasing(attention) and _is_non_decreasing(ffn)
    assert all(v > 0 for v in attention + ffn) and table.overhead_ms[0] > 0
    assert table.scale > 0
    assert table.device == latency.device_name("cpu")
    full = SubNetworkConfig.full(tiny_config)
    assert table.predict(full) > 0


def test_calibrate_respects_unit_step(tiny_config) -> None:
    table = calibrate(tiny_config, batch_size=1, seq_len=4, repeats=1, unit_step=16)
    assert table.ffn_units == [0, 16, 32, 48]
    table = calibrate(supernet_config(intermediate_size=50), batch_size=1, seq_len=4, repeats=1, unit_step=16)
    assert table.ffn_units == [0, 16, 32, 48, 50]  # the full width is always a grid point


# ----------------------------------------------------------------------------------------------- cache


def _no_calibration(*args, **kwargs):
    raise AssertionError("calibrate() was called although the table is cached")


def test_load_or_calibrate_caches_the_table(tmp_path, tiny_config, monkeypatch) -> None:
    calls = []
    real = latency.calibrate

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(latency, "calibrate", counting)
    first = load_or_calibrate(tiny_config, batch_size=2, seq_len=8, repeats=1, cache_dir=tmp_path)
    assert len(calls) == 1
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and not list(tmp_path.glob(".*tmp"))
    assert LatencyTable.from_dict(json.loads(files[0].read_text())) == first

    monkeypatch.setattr(latency, "calibrate", _no_calibration)
    second = load_or_calibrate(tiny_config, batch_size=2, seq_len=8, repeats=1, cache_dir=tmp_path)
    assert second == first

    # another shape is another table (and another file)
    monkeypatch.setattr(latency, "calibrate", counting)
    other = load_or_calibrate(tiny_config, batch_size=1, seq_len=8, repeats=1, cache_dir=tmp_path)
    assert len(calls) == 2 and other.batch_size == 1
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_load_or_calibrate_uses_nasprune_cache(tmp_path, tiny_config, monkeypatch) -> None:
    monkeypatch.setenv("NASPRUNE_CACHE", str(tmp_path))
    assert latency.default_cache_dir() == tmp_path / "latency"
    table = load_or_calibrate(tiny_config, batch_size=1, seq_len=4, repeats=1)
    assert len(list((tmp_path / "latency").glob("*.json"))) == 1
    monkeypatch.setattr(latency, "calibrate", _no_calibration)
    assert load_or_calibrate(tiny_config, batch_size=1, seq_len=4, repeats=1) == table


@pytest.mark.parametrize("garbage", [
    b'{"device": "cpu", "batch_size": 2, "seq_',  # torn write
    b"",
    b"[1, 2, 3]",
    b'{"device": "cpu"}',  # missing fields
    b"\x89\xff\xfe\x00not a table",  # binary junk (not UTF-8)
], ids=["torn", "empty", "list", "missing-fields", "binary"])
def test_corrupted_cache_is_recalibrated(tmp_path, tiny_config, garbage: bytes) -> None:
    first = load_or_calibrate(tiny_config, batch_size=1, seq_len=4, repeats=1, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.json")
    path.write_bytes(garbage)
    again = load_or_calibrate(tiny_config, batch_size=1, seq_len=4, repeats=1, cache_dir=tmp_path)
    assert isinstance(again, LatencyTable) and again.batch_size == 1 and again.seq_len == 4
    assert len(again.attention_ms) == len(first.attention_ms)
    # the unreadable file was replaced by the new table
    assert LatencyTable.from_dict(json.loads(path.read_text())) == again


_CALIBRATING_CHILD = """
import json, sys, time
from pathlib import Path
from conftest import supernet_config
from search import latency

folder = Path(sys.argv[1])
real = latency.calibrate

def calibrate_slowly(*args, **kwargs):
    # record every calibration that runs; take long enough that the other process surely asks meanwhile
    with open(folder / "calibrations.txt", "a") as handle:
        handle.write("calibrated\\n")
    time.sleep(1.0)
    return real(*args, **kwargs)

latency.calibrate = calibrate_slowly
(folder / f"ready-{sys.argv[2]}").touch()
while not (folder / "go").exists():
    time.sleep(0.01)
table = latency.load_or_calibrate(supernet_config(), batch_size=1, seq_len=4, repeats=1, cache_dir=folder / "cache")
print(json.dumps(table.to_dict()))
"""


@pytest.mark.slow
def test_processes_asking_for_one_table_at_once_calibrate_it_once(tmp_path) -> None:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "OMP_NUM_THREADS": "1"}
    children = [subprocess.Popen([sys.executable, "-c", _CALIBRATING_CHILD, str(tmp_path), str(i)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(c.poll() is None for c in children), "a child did not start"
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outputs = [c.communicate(timeout=120) for c in children]
    assert [c.returncode for c in children] == [0, 0], [err for _, err in outputs]
    assert (tmp_path / "calibrations.txt").read_text().splitlines() == ["calibrated"]
    first, second = (json.loads(out) for out, _ in outputs)
    assert first == second  # the waiting process read the table the other one wrote
    assert [p.name for p in (tmp_path / "cache").glob("*.json")] != [] and not list((tmp_path / "cache").glob(".*tmp"))


# ------------------------------------------------------------------------------------------ validation


def test_validate_on_the_tiny_supernet(tiny_supernet, tiny_latency_table) -> None:
    subs = random_subnetworks(tiny_supernet.config, 5, seed=1)
    seen = []
    result = validate(tiny_supernet, tiny_latency_table, subs, repeats=1, progress=lambda i, n: seen.append((i, n)))
    assert isinstance(result, ValidationResult)
    assert len(result.predicted_ms) == len(result.measured_ms) == len(result.configs) == 5
    assert result.predicted_ms == [tiny_latency_table.predict(s) for s in subs]
    assert all(m > 0 for m in result.measured_ms)
    assert [SubNetworkConfig.from_dict(c) for c in result.configs] == subs
    assert -1.0 <= result.spearman <= 1.0
    expected = float(np.mean(np.abs(np.array(result.predicted_ms) - result.measured_ms) / result.measured_ms) * 100)
    assert result.mape == pytest.approx(expected) and result.mape >= 0
    assert seen == [(i, 5) for i in range(1, 6)]
    json.dumps(result.configs)  # plain JSON


def test_random_subnetworks_are_valid_and_seeded(tiny_config) -> None:
    subs = random_subnetworks(tiny_config, 12, seed=3)
    assert len(subs) == 12
    assert subs == random_subnetworks(tiny_config, 12, seed=3)
    assert subs != random_subnetworks(tiny_config, 12, seed=4)
    assert random_subnetworks(tiny_config, 0) == []
    spaces = [make_space(name, tiny_config) for name in ("per_layer", "uniform", "layers")]
    for i, sub in enumerate(subs):
        assert sub.validate(tiny_config) is sub
        space = spaces[i % 3]  # the three spaces take turns
        assert space.decode(space.encode(sub)) == sub
    stepped = random_subnetworks(tiny_config, 6, seed=0, unit_step=16)
    assert all(u % 16 == 0 for sub in stepped for u in sub.units)


# ------------------------------------------------------------------------------------------------ timing


def test_time_calls_one_positive_minimum_per_function() -> None:
    counts = [0, 0, 0]

    def make(i: int, sleep_s: float):
        def fn() -> None:
            counts[i] += 1
            time.sleep(sleep_s)
        return fn

    fns = [make(0, 0.0), make(1, 0.002), make(2, 0.0)]
    times = time_calls(fns, repeats=3, warmup=1)
    assert len(times) == 3 and all(isinstance(t, float) and t > 0 for t in times)
    assert counts == [4, 4, 4]  # warmup + repeats, round robin
    assert times[1] >= 2.0  # milliseconds
    assert time_calls([], repeats=2) == []


def test_measure_latency_on_a_small_model(tiny_supernet) -> None:
    ms = latency.measure_latency(tiny_supernet, batch_size=1, seq_len=4, repeats=1, vocab_size=99)
    assert isinstance(ms, float) and ms > 0


# ----------------------------------------------------------------------------------- the token-count axis


def _token_table(**overrides) -> LatencyTable:
    """Two layers of up to 2 heads and 20 units, timed at 4 and 8 tokens: entries proportional to tokens."""
    data = {"device": "hand", "batch_size": 1, "seq_len": 8, "tokens": [4, 8], "overhead_ms": [1.0, 2.0],
            "attention_ms": [[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]], "ffn_units": [0, 20],
            "ffn_ms": [[0.0, 0.0], [4.0, 8.0]], "eliminating_ms": [[0.0, 0.0], [1.5, 3.0], [3.0, 6.0]],
            "eliminating_quarter_ms": [[0.0, 0.0], [1.25, 2.5], [2.5, 5.0]]}
    return LatencyTable(**(data | overrides))


def test_predict_over_real_lengths_interpolates_the_token_axis() -> None:
    table = _token_table()
    full = SubNetworkConfig(layers=(0, 1), heads=(2, 2), units=(20, 20))
    # 6 tokens: halfway between the 4- and 8-token entries: per layer 3 + 6, overhead 1.5
    assert table.predict(full, [6]) == pytest.approx(2 * (3.0 + 6.0) + 1.5)
    # batch 1: the mean over examples, each at its own length (below the grid, np.interp holds the first entry)
    assert table.predict(full, [4, 8, 6]) == pytest.approx(((2 * 6 + 1) + (2 * 12 + 2) + (2 * 9 + 1.5)) / 3)
    assert table.predict(full) == table.predict(full, [8]) == pytest.approx(2 * 12.0 + 2.0)  # no lengths: seq_len
    # batch 2: sorted, each batch as wide as its longest: [4, 6] -> 6, [8] -> 8
    wide = LatencyTable(**(table.to_dict() | {"batch_size": 2}))
    widths, shares = wide.widths([8, 4, 6])
    assert widths.tolist() == [6, 8] and shares.tolist() == [0.5, 0.5]
    assert wide.predict(full, [8, 4, 6]) == pytest.approx(((2 * 9 + 1.5) + (2 * 12 + 2)) / 2)
    with pytest.raises(ValueError, match="at least one input length"):
        table.predict(full, [])


def test_an_eliminating_layer_costs_its_ranking_and_saves_downstream() -> None:
    table = _token_table()
    static = SubNetworkConfig(layers=(0, 1), heads=(2, 2), units=(20, 20))
    dropping = SubNetworkConfig(layers=(0, 1), heads=(2, 2), units=(20, 20), token_keep=(0.5, 0.5))
    # 8 tokens: layer 0 ranks 8 and keeps 4 (between its keep-all 6.0 and keep-a-quarter 5.0: (4-2)/(8-2) of the
    # way), its FFN and layer 1 see 4 tokens, and layer 1 keeps ceil(0.5 * 8) = 4 of its 4: nothing more to drop
    layer0 = 5.0 + (6.0 - 5.0) * (4 - 2) / (8 - 2) + 4.0
    layer1 = 2.0 + 4.0
    assert table.blocks_ms(dropping, 8) == pytest.approx(layer0 + layer1)
    assert table.predict(dropping, [8]) == pytest.approx(layer0 + layer1 + 2.0)
    assert table.predict(dropping, [8]) < table.predict(static, [8])
    # keeping every token runs the plain attention, exactly the static prediction
    keeps_all = SubNetworkConfig(layers=(0, 1), heads=(2, 2), units=(20, 20), token_keep=(1.0, 1.0))
    assert table.predict(keeps_all, [5, 8]) == table.predict(static, [5, 8])
    # a table calibrated without elimination refuses to guess
    plain = _token_table(eliminating_ms=None, eliminating_quarter_ms=None)
    assert plain.predict(static, [8]) == table.predict(static, [8])
    with pytest.raises(ValueError, match="token_axis=True"):
        plain.predict(dropping, [8])


def test_calibrate_with_a_token_axis(tiny_config, tiny_supernet) -> None:
    table = calibrate(tiny_config, batch_size=1, seq_len=8, repeats=1, token_axis=True)
    assert table.tokens == latency.token_grid(8) == [1, 2, 4, 8] and table.eliminates
    for grid in (table.attention_ms, table.ffn_ms, table.eliminating_ms, table.eliminating_quarter_ms):
        assert all(len(row) == 4 and _is_non_decreasing(row) for row in grid)  # more tokens never faster
        assert all(_is_non_decreasing(column) for column in zip(*grid, strict=True))  # nor more heads or units
    assert _is_non_decreasing(table.overhead_ms) and len(table.overhead_ms) == 4
    assert LatencyTable.from_dict(json.loads(json.dumps(table.to_dict()))) == table
    full = SubNetworkConfig.full(tiny_config)
    assert table.predict(full, [2, 5, 8]) <= table.predict(full)  # shorter inputs are never slower (a tiny
    # model's timings may tie: the table is made non-decreasing, so a flat stretch predicts equal times)
    # validated on real inputs: one example at a time at its own length, eliminating sub-networks among them
    subs = random_subnetworks(tiny_config, 6, seed=2, eliminating=True)
    assert any(s.token_keep is not None for s in subs)
    batches = [{"input_ids": torch.randint(5, 90, (1, n)), "attention_mask": torch.ones(1, n, dtype=torch.long)}
               for n in (3, 8, 5, 8)]
    result = validate(tiny_supernet, table, subs, repeats=1, batches=batches)
    assert result.predicted_ms == [table.predict(s, [3, 8, 5, 8]) for s in subs]
    assert all(m > 0 for m in result.measured_ms)


def test_a_token_axis_table_is_cached_apart(tmp_path, tiny_config) -> None:
    one = load_or_calibrate(tiny_config, batch_size=1, seq_len=4, repeats=1, cache_dir=tmp_path)
    axis = load_or_calibrate(tiny_config, batch_size=1, seq_len=4, repeats=1, cache_dir=tmp_path, token_axis=True)
    assert one.tokens == [4] and axis.tokens == [1, 2, 4] and axis.eliminates and not one.eliminates
    assert len(list(tmp_path.glob("*.json"))) == 2
