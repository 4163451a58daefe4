"""Early exits (COST-EFF, Shen et al., EMNLP 2022): an exit head's output by hand, τ off is the plain forward exactly,
every exit's logits from one pass, per-example exiting in mixed batches equal to the offline scoring of those
logits, exact counts, and sliced == exported == reloaded with exits on."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import hand_subs, make_supernet, random_sub, supernet_config
from test_counting import _math_sdpa
from test_elimination import _batch
from torch.utils.flop_counter import FlopCounterMode

from supernet.config import ConfigError, SubNetworkConfig, SupernetConfig
from supernet.counting import count_macs, count_params, expected_macs, layer_macs
from supernet.evaluation import evaluate, exit_positions, metrics_at_threshold, metrics_from_logits, predict_exits
from supernet.extract import SUBNETWORK_FILE, ExportError, export_onnx, export_subnetwork, extract, load_exported
from supernet.model import Supernet
from supernet.modules import ExitHead, normalised_entropy
from supernet.tasks import TaskSpec

LENGTHS = [11, 3, 8, 6, 9, 4, 12, 5]


def _exits_config(num_labels: int = 3, **overrides) -> SupernetConfig:
    return supernet_config(num_labels=num_labels, exits=True, num_layers=4, **overrides)


def _sub(config: SupernetConfig, *, layers: tuple[int, ...] | None = None, threshold: float | None = None,
         keep: float | None = None) -> SubNetworkConfig:
    full = SubNetworkConfig.full(config)
    schedule = None if keep is None else tuple(1.0 if i == 0 else keep for i in range(config.num_layers))
    return SubNetworkConfig(layers=full.layers if layers is None else layers, heads=full.heads, units=full.units,
                            token_keep=schedule, exit_threshold=threshold)


def _manual(supernet: Supernet, ids: torch.Tensor, mask: torch.Tensor, layers: list[int], exit_at: int) -> torch.Tensor:
    """Embeddings, the first `exit_at` of `layers` one by one, then exit head `exit_at` (or the main head after the
    last kept layer): the forward written out by hand."""
    x = supernet.embeddings(ids, None)
    attend = mask.bool()[:, None, None, :]
    for index in layers[:exit_at]:
        x = supernet.layers[index](x, attend)
    if exit_at == len(layers):
        return supernet.head(x)
    return supernet.exit_heads[layers[exit_at - 1]](x)


def _thresholds(entropies: torch.Tensor, count: int = 3) -> list[float]:
    """Thresholds strictly between observed exit entropies (never on one), spread over their range, so that
    some examples leave early and others do not."""
    values = sorted(set(entropies.flatten().tolist()))
    picks = [values[int(len(values) * q)] for q in (0.3, 0.5, 0.7)][:count]
    return [(v + values[values.index(v) - 1]) / 2 for v in picks]


def test_an_exit_head_is_tanh_of_the_first_token_then_a_linear_layer() -> None:
    config = _exits_config()
    head = ExitHead(config).eval()
    assert sum(p.numel() for p in head.parameters()) == config.hidden_size * 3 + 3
    hidden = torch.randn(2, 5, config.hidden_size, generator=torch.Generator().manual_seed(0))
    weight = torch.randn(3, config.hidden_size, generator=torch.Generator().manual_seed(1))
    bias = torch.randn(3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        head.out.weight.copy_(weight)
        head.out.bias.copy_(bias)
        out = head(hidden)
    for row in range(2):
        state = [float(v) for v in hidden[row, 0]]
        expected = [sum(float(weight[c, j]) * torch.tanh(torch.tensor(s)).item() for j, s in enumerate(state))
                    + float(bias[c]) for c in range(3)]
        assert out[row].tolist() == pytest.approx(expected, abs=1e-5)


def test_a_supernet_with_exits_has_an_exit_head_after_every_layer_but_the_last() -> None:
    config = _exits_config()
    assert len(Supernet(config).exit_heads) == config.num_layers - 1
    plain = Supernet(dataclasses.replace(config, exits=False))
    assert len(plain.exit_heads) == 0 and not any("exit" in name for name in plain.state_dict())
    assert SupernetConfig.from_dict(config.to_dict()).exits
    old = {k: v for k, v in config.to_dict().items() if k != "exits"}  # a checkpoint from before exits existed
    assert not SupernetConfig.from_dict(old).exits


@pytest.mark.parametrize("keep", [None, 0.5])
def test_no_threshold_and_a_zero_threshold_are_the_plain_forward_exactly(keep: float | None) -> None:
    config = _exits_config()
    supernet = make_supernet(config)
    ids, mask = _batch(LENGTHS)
    with torch.no_grad():
        with supernet.use(_sub(config, keep=keep)):
            plain = supernet(ids, mask)
            assert supernet.last_exit_layers.tolist() == [config.num_layers] * len(LENGTHS)
        for threshold in (None, 0.0):
            with supernet.use(_sub(config, keep=keep, threshold=threshold)):
                assert supernet.exit_threshold is None
                assert torch.equal(supernet(ids, mask), plain)
        # the same supernet without exit heads computes exactly the same
        same = make_supernet(dataclasses.replace(config, exits=False))
        with same.use(_sub(config, keep=keep)):
            assert torch.equal(same(ids, mask), plain)


def test_all_exits_ends_with_the_plain_answer_and_each_exit_equals_a_manual_forward() -> None:
    config = _exits_config()
    supernet = make_supernet(config)
    ids, mask = _batch(LENGTHS)
    layers = [0, 2, 3]  # layer 1 dropped: layer 2's exit is the second, layer 3 answers with the main head
    with torch.no_grad(), supernet.use(_sub(config, layers=tuple(layers))):
        every = supernet(ids, mask, all_exits=True)
        plain = supernet(ids, mask)
        assert every.shape == (3, len(LENGTHS), 3)
        assert torch.equal(every[-1], plain)
        for k in range(1, 4):
            assert torch.allclose(every[k - 1], _manual(supernet, ids, mask, layers, k), atol=1e-6), k
    # the last kept layer answers with the main head even when it has an exit head of its own (layer 1 here)
    with torch.no_grad(), supernet.use(_sub(config, layers=(0, 1))):
        assert torch.allclose(supernet(ids, mask, all_exits=True)[-1], _manual(supernet, ids, mask, [0, 1], 2))


def test_all_exits_works_for_regression_and_is_refused_without_exit_heads() -> None:
    config = _exits_config(num_labels=1)
    supernet = make_supernet(config)
    ids, mask = _batch([5, 3])
    with torch.no_grad():
        assert supernet(ids, mask, all_exits=True).shape == (4, 2, 1)
        plain = make_supernet(dataclasses.replace(config, exits=False))
        with pytest.raises(ValueError, match="no exits"):
            plain(ids, mask, all_exits=True)


def _mixed_batches(sizes: tuple[int, ...] = (5, 3), seed: int = 4) -> list[dict[str, torch.Tensor]]:
    """Labelled batches of mixed lengths (right-padded), three classes."""
    batches, offset = [], 0
    for k, size in enumerate(sizes):
        lengths = LENGTHS[offset : offset + size]
        offset += size
        ids, mask = _batch(lengths, seed=seed + k)
        labels = torch.arange(size) % 3
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


@pytest.mark.parametrize("keep", [None, 0.5])
def test_each_example_leaves_at_its_first_confident_exit_in_a_mixed_batch(keep: float | None) -> None:
    config = _exits_config()
    supernet = make_supernet(config)
    batches = _mixed_batches()
    with supernet.use(_sub(config, keep=keep)):
        every, labels = predict_exits(supernet, batches)
    assert every.shape == (config.num_layers, len(LENGTHS), 3) and labels.tolist() == [0, 1, 2, 0, 1, 0, 1, 2]
    thresholds = _thresholds(normalised_entropy(torch.from_numpy(every[:-1])))
    early = late = False
    for threshold in thresholds:
        expected_positions = exit_positions(every, threshold)
        expected = every[expected_positions - 1, np.arange(len(LENGTHS))]
        with torch.no_grad(), supernet.use(_sub(config, keep=keep, threshold=threshold)):
            logits, positions = [], []
            for batch in batches:
                logits.append(supernet(batch["input_ids"], batch["attention_mask"]))
                positions.append(supernet.last_exit_layers)
            logits, positions = torch.cat(logits), torch.cat(positions)
        assert positions.tolist() == expected_positions.tolist(), threshold
        assert np.allclose(logits.numpy(), expected, atol=1e-5), threshold
        early |= bool((positions < config.num_layers).any())
        late |= bool((positions == config.num_layers).any())
        # each example exits as if it were alone in its batch
        ids, mask = _batch(LENGTHS[:5], seed=4)
        for row, n in enumerate(LENGTHS[:5]):
            with torch.no_grad(), supernet.use(_sub(config, keep=keep, threshold=threshold)):
                alone = supernet(ids[row : row + 1, :n], mask[row : row + 1, :n])
                assert int(supernet.last_exit_layers[0]) == int(positions[row])
            assert torch.allclose(alone[0], logits[row], atol=1e-5), (threshold, row)
    assert early and late  # some examples left early and some reached the main head: the test can fail


def test_evaluate_with_a_threshold_equals_the_offline_scoring() -> None:
    config = _exits_config()
    supernet = make_supernet(config)
    batches = _mixed_batches()
    with supernet.use(_sub(config)):
        every, labels = predict_exits(supernet, batches)
    spec = TaskSpec("three", False, ("a", "b", "c"), ("accuracy",), "accuracy")
    for threshold in [*_thresholds(normalised_entropy(torch.from_numpy(every[:-1]))), None]:
        offline, positions = metrics_at_threshold(spec, every, labels, threshold)
        assert evaluate(supernet, batches, spec, sub=_sub(config, threshold=threshold)) == offline, threshold
        answered = every[positions - 1, np.arange(len(LENGTHS))]
        assert offline == metrics_from_logits(spec, answered, labels)
    assert metrics_at_threshold(spec, every, labels, None)[0] == evaluate(supernet, batches, spec, sub=_sub(config))
    assert exit_positions(every, 0.0).tolist() == [config.num_layers] * len(LENGTHS)


def test_an_entropy_exactly_at_the_threshold_goes_on() -> None:
    logits = np.zeros((3, 2, 2), dtype=np.float32)  # uniform: normalised entropy exactly 1
    logits[1, 1] = [4.0, -4.0]  # confident at the second exit
    assert exit_positions(logits, 1.0).tolist() == [3, 2]
    with pytest.raises(ValueError, match="classification"):
        exit_positions(np.zeros((3, 2, 1), dtype=np.float32), 0.5)
    with pytest.raises(ValueError, match="exit_threshold"):
        exit_positions(logits, 1.5)


def test_every_example_leaving_at_the_first_exit_skips_the_other_layers() -> None:
    config = _exits_config()
    supernet = make_supernet(config)
    ids, mask = _batch(LENGTHS)
    with torch.no_grad(), supernet.use(_sub(config, threshold=1.0)):  # entropy < 1 almost surely: all leave first
        logits = supernet(ids, mask)
        assert supernet.last_exit_layers.tolist() == [1] * len(LENGTHS)
        assert torch.allclose(logits, _manual(supernet, ids, mask, [0, 1, 2, 3], 1), atol=1e-6)


def test_thresholds_are_refused_where_exiting_cannot_run() -> None:
    ids, mask = _batch([4, 6])
    plain = make_supernet(dataclasses.replace(_exits_config(), exits=False))
    with pytest.raises(ConfigError, match="exit_threshold needs exit heads.*no exits"):
        plain.set_sub_network(_sub(plain.config, threshold=0.3))
    with pytest.raises(ValueError, match="no exits"):
        plain.exit_threshold = 0.3
    regression = make_supernet(_exits_config(num_labels=1))
    with pytest.raises(ConfigError, match="needs a classification task"):
        regression.set_sub_network(_sub(regression.config, threshold=0.3))
    with pytest.raises(ValueError, match="needs a classification task"):
        regression.exit_threshold = 0.3
    supernet = make_supernet(_exits_config())
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="exit_threshold"):
            supernet.exit_threshold = bad
        with pytest.raises(ConfigError, match="exit_threshold"):
            _sub(supernet.config, threshold=bad)
    # a refused sub-network leaves the supernet as it was
    assert supernet.exit_threshold is None and supernet(ids, mask).shape == (2, 3)


def test_a_threshold_with_fewer_than_two_kept_layers_is_canonically_off() -> None:
    config = _exits_config()
    assert _sub(config, layers=(2,), threshold=0.5).exit_threshold is None
    assert _sub(config, layers=(), threshold=0.5).exit_threshold is None
    assert _sub(config, layers=(1, 2), threshold=0.5).exit_threshold == 0.5


def test_reset_clears_the_threshold() -> None:
    config = _exits_config()
    supernet = make_supernet(config)
    supernet.set_sub_network(_sub(config, threshold=0.5))
    assert supernet.exit_threshold == 0.5
    supernet.reset_super_network()
    assert supernet.exit_threshold is None


def test_a_checkpoint_without_exits_gets_fresh_exit_heads_and_keeps_its_answer() -> None:
    from conftest import add_noise, tiny_bert_config
    from transformers import BertForSequenceClassification

    from supernet.convert import supernet_from_hf

    torch.manual_seed(0)
    hf = add_noise(BertForSequenceClassification(tiny_bert_config(num_labels=3))).eval()
    plain, with_exits = supernet_from_hf(hf).eval(), supernet_from_hf(hf, exits=True).eval()
    assert not plain.config.exits and with_exits.config.exits and len(with_exits.exit_heads) == 2
    ids, mask = _batch([7, 4, 9])
    with torch.no_grad():
        assert torch.equal(with_exits(ids, mask), plain(ids, mask))
        assert with_exits(ids, mask, all_exits=True).shape == (3, 3, 3)


# ------------------------------------------------------------------------------------------------ counts


@pytest.mark.parametrize("num_labels", [3, 1])
def test_params_with_exits_equal_the_exported_model_over_random_configs(num_labels: int) -> None:
    config = _exits_config(num_labels=num_labels)
    supernet = make_supernet(config)
    rng = random.Random(num_labels)
    subs = hand_subs(config) + [random_sub(config, rng) for _ in range(16)]
    assert any(len(sub.layers) < config.num_layers and sub.layers and sub.layers[-1] < config.num_layers - 1
               for sub in subs)  # a dropped last layer: the last kept layer has an exit head it does not use
    for sub in subs:
        counts = count_params(config, sub)
        model = extract(supernet, sub)
        assert counts.total == sum(p.numel() for p in model.parameters()), sub
        assert counts.exits == sum(p.numel() for p in model.model.exit_heads.parameters()), sub
        assert counts.exits == max(0, len(sub.layers) - 1) * (config.hidden_size * num_labels + num_labels)
        assert counts.to_dict().get("exits", 0) == counts.exits
    plain = dataclasses.replace(config, exits=False)
    sub = SubNetworkConfig.full(config)
    assert count_params(config, sub).total - count_params(plain, sub).total == 3 * (32 * num_labels + num_labels)
    assert "exits" not in count_params(plain, sub).to_dict()


def test_count_macs_of_an_example_leaving_early_by_hand() -> None:
    config = _exits_config()
    sub = _sub(config, layers=(0, 2, 3), threshold=0.5)
    hidden, labels, n = config.hidden_size, 3, 9
    layer = layer_macs(config, config.num_heads, config.intermediate_size, n)
    exit_head, main = hidden * labels, hidden * hidden + hidden * labels
    assert count_macs(config, sub, seq_len=n, exit_after=1) == layer + exit_head
    assert count_macs(config, sub, seq_len=n, exit_after=2) == 2 * layer + 2 * exit_head
    assert count_macs(config, sub, seq_len=n, exit_after=3) == 3 * layer + 2 * exit_head + main
    assert count_macs(config, sub, seq_len=n) == count_macs(config, sub, seq_len=n, exit_after=3)
    assert count_macs(config, sub, seq_len=n, exit_after=2, encoder_only=True) == 2 * layer
    static = sub.static()  # no threshold: no exit head runs
    assert count_macs(config, static, seq_len=n) == 3 * layer + main
    with pytest.raises(ValueError, match="only under an exit_threshold"):
        count_macs(config, static, seq_len=n, exit_after=1)
    for bad in (0, 4, 1.5):
        with pytest.raises(ValueError, match="exit_after"):
            count_macs(config, sub, seq_len=n, exit_after=bad)
    # with token elimination, the layers an example runs see the tokens the schedule leaves
    eliminating = _sub(config, threshold=0.5, keep=0.5)
    assert count_macs(config, eliminating, seq_len=n, exit_after=2, encoder_only=True) == \
        layer + layer_macs(config, config.num_heads, config.intermediate_size, n, 5)


def test_expected_macs_with_exit_layers_is_the_mean_over_examples() -> None:
    config = _exits_config()
    sub = _sub(config, threshold=0.5, keep=0.6)
    lengths, exits = [5, 12, 12, 30, 7], [1, 4, 2, 4, 1]
    expected = sum(count_macs(config, sub, seq_len=n, exit_after=k) for n, k in zip(lengths, exits, strict=True))
    assert expected_macs(config, sub, lengths, exit_layers=exits) == pytest.approx(expected / 5, rel=1e-12)
    assert expected_macs(config, sub, lengths, exit_layers=np.array(exits)) == \
        expected_macs(config, sub, lengths, exit_layers=exits)
    assert expected_macs(config, sub, lengths) == expected_macs(config, sub, lengths, exit_layers=[4] * 5)
    assert expected_macs(config, sub, lengths, exit_layers=exits) < expected_macs(config, sub, lengths)
    with pytest.raises(ValueError, match="one exit layer per length"):
        expected_macs(config, sub, lengths, exit_layers=[1, 2])


def _measured(model, seq_len: int, monkeypatch) -> int:
    """MACs of one unpadded example, measured by FlopCounterMode (attention written as matmuls)."""
    ids = torch.randint(1, model.config.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0))
    with monkeypatch.context() as patch, FlopCounterMode(display=False) as counter:
        patch.setattr(F, "scaled_dot_product_attention", _math_sdpa)
        model(ids)
    return counter.get_total_flops() // 2


def test_measured_macs_of_an_exiting_model_equal_the_count(monkeypatch) -> None:
    config = _exits_config()
    supernet = make_supernet(config)
    for keep in (None, 0.5):
        model = extract(supernet, _sub(config, layers=(0, 1, 3), keep=keep))
        for threshold, position in ((1.0, 1), (1e-9, 3)):  # every example leaves first / none leaves early
            model.set_exit_threshold(threshold)
            sub = _sub(config, layers=(0, 1, 3), keep=keep, threshold=threshold)
            for n in (4, 11):
                measured = _measured(model, n, monkeypatch)
                assert model.last_exit_layers.tolist() == [position]
                assert measured == count_macs(config, sub, seq_len=n, exit_after=position), (keep, threshold, n)


# ------------------------------------------------------------------------------------------------ export


def _logits_and_exits(model, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    with torch.no_grad():
        out = model(ids, mask)
    return getattr(out, "logits", out), model.last_exit_layers.tolist()


@pytest.mark.parametrize("keep", [None, 0.5])
def test_sliced_exported_and_reloaded_exit_alike_per_example(tmp_path, keep: float | None) -> None:
    from transformers import AutoModelForSequenceClassification

    config = _exits_config()
    supernet = make_supernet(config)
    layers = (0, 1, 3)  # layer 2 dropped: the export renumbers the exit heads
    ids, mask = _batch(LENGTHS, seed=5)
    with torch.no_grad(), supernet.use(_sub(config, layers=layers, keep=keep)):
        every = supernet(ids, mask, all_exits=True)
    threshold = _thresholds(normalised_entropy(every[:-1]), count=2)[1]
    sub = _sub(config, layers=layers, keep=keep, threshold=threshold)
    with supernet.use(sub):
        sliced, positions = _logits_and_exits(supernet, ids, mask)
    assert 1 in positions and 3 in positions  # some rows leave at the first exit, some reach the main head
    folder = export_subnetwork(supernet, sub, tmp_path / "export")
    exported = extract(supernet, sub)
    local = load_exported(folder)
    remote = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    record = json.loads((folder / SUBNETWORK_FILE).read_text())
    assert SubNetworkConfig.from_dict(record["config"]) == sub and record["config"]["exit_threshold"] == threshold
    assert record["params"] == count_params(config, sub).to_dict()
    for model in (exported, local, remote):
        assert model.config.exits and model.config.exit_threshold == threshold
        assert len(model.model.exit_heads) == 2
        logits, exits = _logits_and_exits(model, ids, mask)
        assert exits == positions
        assert torch.allclose(logits, sliced, atol=1e-5)
        with torch.no_grad():
            assert torch.allclose(model.exit_logits(ids, mask), every, atol=1e-5)
            assert torch.allclose(model(ids, mask, all_exits=True).logits, every, atol=1e-5)
        for row, n in enumerate(LENGTHS):  # batch 1
            alone, exit_layer = _logits_and_exits(model, ids[row : row + 1, :n], mask[row : row + 1, :n])
            assert exit_layer == [positions[row]] and torch.allclose(alone[0], sliced[row], atol=1e-5)
    # predict_exits reads an export the same way it reads the supernet
    batches = [{"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(len(LENGTHS), dtype=torch.long)}]
    from_export, _ = predict_exits(local, batches)
    assert np.allclose(from_export, every.numpy(), atol=1e-5)
    assert exit_positions(from_export, threshold).tolist() == positions


def test_set_exit_threshold_changes_answers_and_config_and_survives_save(tmp_path) -> None:
    config = _exits_config()
    supernet = make_supernet(config)
    ids, mask = _batch(LENGTHS, seed=5)
    model = extract(supernet, _sub(config))
    assert model.config.exit_threshold is None
    full, full_exits = _logits_and_exits(model, ids, mask)
    assert full_exits == [4] * len(LENGTHS)
    model.set_exit_threshold(1.0)
    early, early_exits = _logits_and_exits(model, ids, mask)
    assert model.config.exit_threshold == 1.0 and early_exits == [1] * len(LENGTHS)
    assert not torch.allclose(early, full, atol=1e-4)
    with torch.no_grad(), supernet.use(_sub(config, threshold=1.0)):
        assert torch.allclose(supernet(ids, mask), early, atol=1e-5)
    model.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["exit_threshold"] == 1.0
    reloaded = type(model).from_pretrained(tmp_path / "saved").eval()
    assert reloaded.config.exit_threshold == 1.0 and _logits_and_exits(reloaded, ids, mask)[1] == early_exits
    model.set_exit_threshold(0)
    assert model.config.exit_threshold is None and torch.equal(_logits_and_exits(model, ids, mask)[0], full)
    for bad in (-0.5, 2.0, float("inf"), "0.3"):
        with pytest.raises(ValueError, match="exit_threshold"):
            model.set_exit_threshold(bad)
    no_exits = extract(make_supernet(dataclasses.replace(config, exits=False)), SubNetworkConfig.full(config))
    with pytest.raises(ValueError, match="no exits"):
        no_exits.set_exit_threshold(0.5)
    regression = extract(make_supernet(_exits_config(num_labels=1)), SubNetworkConfig.full(config))
    with pytest.raises(ValueError, match="classification task"):
        regression.set_exit_threshold(0.5)
    assert regression.exit_logits(ids, mask).shape == (4, len(LENGTHS), 1)


def test_a_folder_from_before_exits_still_loads(tmp_path) -> None:
    config = supernet_config()
    supernet = make_supernet(config)
    folder = export_subnetwork(supernet, SubNetworkConfig.full(config), tmp_path / "old")
    data = json.loads((folder / "config.json").read_text())
    data.pop("exits", None)
    data.pop("exit_threshold", None)
    (folder / "config.json").write_text(json.dumps(data))
    model = load_exported(folder)
    assert not model.config.exits and model.config.exit_threshold is None and len(model.model.exit_heads) == 0
    ids, mask = _batch([4, 7])
    with torch.no_grad():
        assert torch.allclose(model(ids, mask).logits, supernet(ids, mask), atol=1e-6)


def test_onnx_export_of_an_exiting_model_is_refused(tmp_path) -> None:
    pytest.importorskip("onnx")
    config = _exits_config()
    model = extract(make_supernet(config), _sub(config, threshold=0.4))
    with pytest.raises(ExportError, match="exits early"):
        export_onnx(model, tmp_path / "model.onnx", seq_len=8)
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.slow  # torch.onnx export takes a few seconds
def test_onnx_export_of_a_model_with_exits_at_full_depth(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    config = _exits_config()
    supernet = make_supernet(config)
    sub = _sub(config, layers=(0, 2, 3))
    path = export_onnx(extract(supernet, sub), tmp_path / "model.onnx", seq_len=12)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids, mask = _batch([9, 4, 12], seed=2)
    got = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                   "token_type_ids": torch.zeros_like(ids).numpy()})[0]
    with torch.no_grad(), supernet.use(sub):
        assert np.allclose(got, supernet(ids, mask).numpy(), atol=1e-5)


def test_when_the_longest_example_leaves_the_rest_run_without_its_padding() -> None:
    """The batch drops the padding columns no remaining example needs; each answer stays its own."""
    config = _exits_config()
    supernet = make_supernet(config)
    lengths = [12, 3, 7, 5]
    for seed in range(20):  # find inputs whose longest example is among the most confident at the first exit
        ids, mask = _batch(lengths, seed=seed)
        with torch.no_grad(), supernet.use(_sub(config)):
            first = normalised_entropy(supernet(ids, mask, all_exits=True)[0])
        others = sorted(float(h) for h in first[1:] if h > first[0])
        if others:
            break
    assert others, "no seed gave inputs whose longest example leaves first"
    threshold = (float(first[0]) + others[0]) / 2
    with torch.no_grad(), supernet.use(_sub(config, threshold=threshold)):
        together = supernet(ids, mask)
        positions = supernet.last_exit_layers.tolist()
        assert positions[0] == 1 and max(positions) > 1
        for row, n in enumerate(lengths):
            alone = supernet(ids[row : row + 1, :n], mask[row : row + 1, :n])
            assert supernet.last_exit_layers.tolist() == [positions[row]]
            assert torch.allclose(alone[0], together[row], atol=1e-5), row


def test_thresholds_from_numpy_are_numbers_like_any_other() -> None:
    config = _exits_config()
    assert _sub(config, threshold=np.float32(0.25)).exit_threshold == pytest.approx(0.25)
    model = extract(make_supernet(config), _sub(config))
    model.set_exit_threshold(np.float64(0.5))
    assert model.config.exit_threshold == 0.5
    logits = np.zeros((2, 1, 3), dtype=np.float32)
    logits[0, 0] = [30.0, -30.0, float("-inf")]  # certain: entropy 0, even with an impossible class
    assert exit_positions(logits, np.float32(0.1)).tolist() == [1]


def test_an_export_with_exits_is_a_supernet_source_with_its_exit_heads(tmp_path) -> None:
    from supernet.convert import supernet_from_hf

    config = _exits_config()
    supernet = make_supernet(config)
    sub = _sub(config, layers=(0, 2, 3), threshold=0.5)
    again = supernet_from_hf(load_exported(export_subnetwork(supernet, sub, tmp_path / "export"))).eval()
    assert again.config.exits and len(again.exit_heads) == 2 and again.exit_threshold is None
    ids, mask = _batch([6, 10, 3])
    with torch.no_grad(), supernet.use(sub):
        expected = supernet(ids, mask, all_exits=True)
    with torch.no_grad():
        assert torch.allclose(again(ids, mask, all_exits=True), expected, atol=1e-5)
