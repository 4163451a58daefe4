"""Early exits (COST-EFF, Shen et al., EMNLP 2022): an exit head's output by hand, τ off is the plain forward exactly,
every exit's logits from one pass, per-example exiting in mixed batches equal to the offline scoring of those
logits, exact counts, and sliced == exported == reloaded with exits on."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import make_supernet, supernet_config
from test_elimination import _batch

from supernet.config import ConfigError, SubNetworkConfig, SupernetConfig
from supernet.model import Supernet
from supernet.modules import ExitHead, normalised_entropy

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


def _offline(every: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each example leaves by the exit rule applied to stored logits, and the logits it leaves with."""
    confident = normalised_entropy(every[:-1]) < threshold  # (E-1, B)
    confident = torch.cat([confident, torch.ones_like(confident[:1])])
    positions = confident.float().argmax(dim=0) + 1
    return positions, every[positions - 1, torch.arange(every.shape[1])]


@pytest.mark.parametrize("keep", [None, 0.5])
def test_each_example_leaves_at_its_first_confident_exit_in_a_mixed_batch(keep: float | None) -> None:
    config = _exits_config()
    supernet = make_supernet(config)
    ids, mask = _batch(LENGTHS, seed=4)
    with torch.no_grad(), supernet.use(_sub(config, keep=keep)):
        every = supernet(ids, mask, all_exits=True)
    thresholds = _thresholds(normalised_entropy(every[:-1]))
    early = late = False
    for threshold in thresholds:
        with torch.no_grad(), supernet.use(_sub(config, keep=keep, threshold=threshold)):
            logits = supernet(ids, mask)
            positions = supernet.last_exit_layers
        expected_positions, expected = _offline(every, threshold)
        assert positions.tolist() == expected_positions.tolist(), threshold
        assert torch.allclose(logits, expected, atol=1e-5), threshold
        early |= bool((positions < config.num_layers).any())
        late |= bool((positions == config.num_layers).any())
        # each example exits as if it were alone in its batch
        for row, n in enumerate(LENGTHS):
            with torch.no_grad(), supernet.use(_sub(config, keep=keep, threshold=threshold)):
                alone = supernet(ids[row : row + 1, :n], mask[row : row + 1, :n])
                assert int(supernet.last_exit_layers[0]) == int(positions[row])
            assert torch.allclose(alone[0], logits[row], atol=1e-5), (threshold, row)
    assert early and late  # some examples left early and some reached the main head: the test can fail


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
