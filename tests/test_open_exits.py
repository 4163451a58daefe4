"""Open exits (issue 32): a point reads only the exits its validation examples leave at. The canonical form and its
refusals, the forward never reading a closed exit and agreeing with the offline scoring per example, sliced ==
exported == reloaded, exact MACs and latency by hand, and the search opening exactly the exits examples took without
changing one answer."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TOY_SPEC, make_supernet
from test_elimination import _batch
from test_exits import LENGTHS, _exits_config, _mixed_batches, _sub, _thresholds
from test_exits_search import _batches, _measurements, _spread_thresholds, _table
from test_exits_search import _config as _search_config

from supernet.config import ConfigError, SubNetworkConfig
from supernet.counting import count_macs, layer_macs
from supernet.evaluation import evaluate, exit_positions, metrics_at_threshold, predict_exits
from supernet.extract import export_subnetwork, extract, load_exported
from supernet.modules import normalised_entropy


def _opened(config, layers=None, *, threshold=0.5, opened=None, keep=None) -> SubNetworkConfig:
    return replace(_sub(config, layers=layers, threshold=threshold, keep=keep), open_exits=opened)


def test_open_exits_are_canonical_and_bad_ones_are_refused_by_name() -> None:
    config = _exits_config()
    sub = _opened(config, (0, 1, 3), opened=[1, 0, 1])
    assert sub.open_exits is None  # every kept layer's exit but the last: the same as all open
    sub = _opened(config, (0, 1, 3), opened=[1])
    assert sub.open_exits == (1,) and sub.open_rows() == (1,) and sub.open_positions() == (2,)
    skipping = _opened(config, (0, 2, 3), opened=[2])  # layer 2 is the second kept one: the export's layer 1
    assert skipping.open_rows() == (1,) and skipping.open_positions() == (2,)
    assert SubNetworkConfig.from_dict(sub.to_dict()) == sub and sub.to_dict()["open_exits"] == [1]
    assert _opened(config, (0, 1, 3), threshold=None, opened=[1]).open_exits is None  # no threshold reads no exit
    assert "open_exits" not in _sub(config, threshold=0.5).to_dict()
    assert replace(sub, exit_threshold=None).open_exits is None
    for bad, words in (([], "empty"), ([3], "other than the last"), ([2], "other than the last"),
                       ([True], "integer"), ("1", "list")):
        with pytest.raises(ConfigError, match=words):
            _opened(config, (0, 1, 3), opened=bad)


def test_the_forward_reads_only_open_exits_and_agrees_with_the_offline_scoring_per_example() -> None:
    config = _exits_config()
    supernet = make_supernet(config)
    batches = _mixed_batches()
    with supernet.use(_sub(config)):
        every, labels = predict_exits(supernet, batches)
    read = []
    hooks = [head.register_forward_hook(lambda module, args, out, i=i: read.append(i))
             for i, head in enumerate(supernet.exit_heads)]
    # τ = 1: every example is confident at the first exit it reads, so all leave at the first open one
    with torch.no_grad(), supernet.use(_opened(config, threshold=1.0, opened=[1])):
        supernet(batches[0]["input_ids"], batches[0]["attention_mask"])
        assert supernet.last_exit_layers.tolist() == [2] * 5 and set(read) == {1}
    read.clear()
    for threshold in _thresholds(normalised_entropy(torch.from_numpy(every[:-1]))):
        for opened in ([1], [0, 2], [2]):
            sub = _opened(config, threshold=threshold, opened=opened)
            expected = exit_positions(every, threshold, sub.open_positions())
            assert set(expected.tolist()) <= {p + 1 for p in opened} | {config.num_layers}
            with torch.no_grad(), supernet.use(sub):
                logits, positions = [], []
                for batch in batches:
                    logits.append(supernet(batch["input_ids"], batch["attention_mask"]))
                    positions += supernet.last_exit_layers.tolist()
            assert positions == expected.tolist(), (threshold, opened)
            answered = every[expected - 1, np.arange(len(LENGTHS))]
            assert np.allclose(torch.cat(logits).numpy(), answered, atol=1e-5)
            assert set(read) <= set(opened)
            read.clear()
    for hook in hooks:
        hook.remove()


def test_sliced_exported_and_reloaded_read_the_same_open_exits(tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification

    config = _exits_config()
    supernet = make_supernet(config)
    layers = (0, 1, 3)  # layer 2 dropped: the export renumbers layer 1's exit as its second layer's
    ids, mask = _batch(LENGTHS, seed=5)
    with torch.no_grad(), supernet.use(_sub(config, layers=layers)):
        every = supernet(ids, mask, all_exits=True)
    threshold = _thresholds(normalised_entropy(every[:-1]), count=3)[2]
    sub = _opened(config, layers, threshold=threshold, opened=[1])
    with torch.no_grad(), supernet.use(sub):
        sliced = supernet(ids, mask)
        positions = supernet.last_exit_layers.tolist()
    assert set(positions) == {2, 3}  # some leave at the open exit, the rest reach the main head
    folder = export_subnetwork(supernet, sub, tmp_path / "export")
    assert json.loads((folder / "config.json").read_text())["open_exits"] == [1]
    for model in (extract(supernet, sub), load_exported(folder),
                  AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()):
        assert model.config.open_exits == [1] and len(model.model.exit_heads) == 2  # every kept exit is carried
        with torch.no_grad():
            assert torch.allclose(model(ids, mask).logits, sliced, atol=1e-5)
            assert model.last_exit_layers.tolist() == positions
            for row, n in enumerate(LENGTHS):  # batch 1
                alone = model(ids[row : row + 1, :n], mask[row : row + 1, :n]).logits
                assert model.last_exit_layers.tolist() == [positions[row]]
                assert torch.allclose(alone[0], sliced[row], atol=1e-5)
    model = load_exported(folder)
    model.set_open_exits(None)  # every exit read again: the threshold's plain rule
    with torch.no_grad():
        model(ids, mask)
    assert model.config.open_exits is None
    assert model.last_exit_layers.tolist() == exit_positions(every.numpy(), threshold).tolist()
    model.set_open_exits([0])
    model.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["open_exits"] == [0]
    assert type(model).from_pretrained(tmp_path / "saved").model.open_exits == frozenset({0})
    for bad, words in (([], "empty"), ([2], "from 0 to 1"), ([-1], "from 0 to 1"), ([0.5], "integers")):
        with pytest.raises(ValueError, match=words):
            model.set_open_exits(bad)
    no_exits = extract(make_supernet(replace(config, exits=False)), SubNetworkConfig.full(config))
    with pytest.raises(ValueError, match="open_exits needs exit heads"):
        no_exits.set_open_exits([0])


def test_macs_count_only_the_open_exit_heads_an_example_reads() -> None:
    config = _exits_config()
    sub = _opened(config, (0, 1, 2, 3), opened=[1, 2])
    hidden, labels, n = config.hidden_size, 3, 7
    layer = layer_macs(config, config.num_heads, config.intermediate_size, n)
    exit_head, main = hidden * labels, hidden * hidden + hidden * labels
    assert count_macs(config, sub, seq_len=n, exit_after=2) == 2 * layer + exit_head
    assert count_macs(config, sub, seq_len=n, exit_after=3) == 3 * layer + 2 * exit_head
    assert count_macs(config, sub, seq_len=n) == 4 * layer + 2 * exit_head + main
    every = replace(sub, open_exits=None)
    assert count_macs(config, every, seq_len=n) == count_macs(config, sub, seq_len=n) + exit_head


def test_latency_prices_a_check_per_open_exit_read() -> None:
    config = _search_config()
    table = _table(config)
    every = SubNetworkConfig(layers=(0, 1, 2, 3), heads=(4, 2, 1, 3), units=(48, 24, 8, 16), exit_threshold=0.5)
    sub = replace(every, open_exits=(2,))
    assert table.predict(every) - table.predict(sub) == pytest.approx(2 * 0.0625)  # two of three exits closed
    # at batch 1 each example reads all three exits, or only the open one: two checks fewer wherever it leaves
    exits = [3, 4, 4, 3]
    assert table.predict(every, [16] * 4, exits) - table.predict(sub, [16] * 4, exits) == pytest.approx(2 * 0.0625)


def test_the_search_opens_the_exits_examples_left_at_and_changes_no_answer() -> None:
    config = _search_config()
    supernet, batches = make_supernet(config), _batches()
    structure = SubNetworkConfig(layers=(0, 1, 2, 3), heads=(4, 2, 1, 3), units=(48, 24, 8, 16))
    m = _measurements(supernet, batches, config)
    for threshold in _spread_thresholds(supernet, batches, structure):
        sub = replace(structure, exit_threshold=threshold)
        figures = m.figures(sub)
        opened = m.opened(sub)
        left = sorted({int(p) for p in figures.exit_positions if p < 4})
        assert left and opened.open_positions() in (None, tuple(left))
        assert opened == replace(sub, open_exits=tuple(structure.layers[p - 1] for p in left))
        after = m.figures(opened)
        assert after.validation == figures.validation == evaluate(supernet, batches, TOY_SPEC, sub=opened)
        assert after.exit_positions.tolist() == figures.exit_positions.tolist()
        assert after.dynamics["mean_exit_layer"] == figures.dynamics["mean_exit_layer"]
        closed = 3 - len(left)
        assert after.latency_ms <= figures.latency_ms and after.dynamics["expected_macs"] <= \
            figures.dynamics["expected_macs"]
        if closed:
            assert after.latency_ms < figures.latency_ms
        assert m.opened(opened) == opened
    # no one leaves early at a threshold below every exit's entropy: the point is its structure at full depth
    logits, labels = m._passes.exit_logits(structure)
    low = float(normalised_entropy(torch.from_numpy(logits[:-1])).min()) / 2
    assert metrics_at_threshold(TOY_SPEC, logits, labels, low)[1].tolist() == [4] * len(labels)
    assert m.opened(replace(structure, exit_threshold=low)) == structure
