"""Token elimination (TiltedBERT's latency-adjustable encoder; PoWER-BERT's scoring): the ranking by attention
received, [CLS] kept first, padding never chosen, each example treated as if it were alone in its batch, a keep
fraction of 1 the plain forward exactly, MACs as counted, and sliced == exported == reloaded."""

from __future__ import annotations

import pytest
import torch
from conftest import make_supernet, supernet_config
from test_counting import _measured_macs

from supernet.config import SubNetworkConfig
from supernet.counting import count_macs, expected_macs
from supernet.extract import export_subnetwork, extract, load_exported
from supernet.modules import ElasticSelfAttention
from supernet.schedules import expected_encoder_macs, tilted_schedule


def _batch(lengths: list[int], vocab: int = 99, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask for examples of `lengths` tokens (id 0 is padding)."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1, vocab, (n,), generator=g)
        mask[row, :n] = 1
    return ids, mask


def _eliminating(config, keep: float = 0.5, first: float = 1.0) -> SubNetworkConfig:
    full = SubNetworkConfig.full(config)
    schedule = tuple(first if i == 0 else keep for i in range(config.num_layers))
    return SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units, token_keep=schedule)


def _attention(heads: int = 2, size: int = 8) -> ElasticSelfAttention:
    torch.manual_seed(0)
    return ElasticSelfAttention(hidden_size=16, num_heads=heads, head_size=size, attention_dropout=0.0,
                                hidden_dropout=0.0, layer_norm_eps=1e-12).eval()


def test_the_kept_tokens_are_the_most_attended_by_a_manual_computation() -> None:
    block = _attention()
    x = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(1))
    valid = torch.tensor([[True] * 7, [True] * 5 + [False] * 2])
    keep = torch.tensor([3, 2])
    with torch.no_grad():
        out, kept = block.forward_eliminating(x, valid, keep)
        q = block.query(x).view(2, 7, 2, 8).transpose(1, 2)
        k = block.key(x).view(2, 7, 2, 8).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / 8 ** 0.5
        logits = logits.masked_fill(~valid[:, None, None, :], float("-inf"))
        probs = logits.softmax(-1)  # (B, heads, queries, keys)
    assert kept.tolist() == [[True, True, True], [True, True, False]] and out.shape == (2, 3, 16)
    for row, n in enumerate([7, 5]):
        received = [sum(float(probs[row, h, i, j]) for h in range(2) for i in range(n) if i != j) for j in range(n)]
        best = sorted(range(1, n), key=lambda j: -received[j])[: int(keep[row]) - 1]
        expected = sorted([0, *best])  # [CLS] always, then the most attended, in their original order
        # a kept token's output is the plain block's output at that token (its context reads every key)
        plain = block(x[row : row + 1, :n], None)[0]
        assert torch.allclose(out[row, : len(expected)], plain[expected], atol=1e-5), (row, expected)


def test_cls_stays_first_even_when_it_is_the_least_attended() -> None:
    block = _attention(heads=1)
    with torch.no_grad():
        block.query.weight.zero_()
        block.query.bias.zero_()  # uniform attention: every token receives the same, [CLS] would tie
        block.key.weight.zero_()
        x = torch.randn(1, 6, 16)
        plain = block(x, None)
        out, _ = block.forward_eliminating(x, torch.ones(1, 6, dtype=torch.bool), torch.tensor([1]))
    assert torch.allclose(out[0, 0], plain[0, 0], atol=1e-6)


def test_a_keep_fraction_of_one_is_the_plain_forward_exactly() -> None:
    config = supernet_config()
    supernet = make_supernet(config).eval()
    ids, mask = _batch([9, 4, 7])
    full = SubNetworkConfig.full(config)
    with torch.no_grad():
        plain = supernet(ids, mask)
        supernet.token_keep = [1.0] * config.num_layers  # set by hand: the config would make it None
        assert torch.equal(supernet(ids, mask), plain)
        with supernet.use(SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units,
                                           token_keep=(1.0,) * config.num_layers)):
            assert torch.equal(supernet(ids, mask), plain)


def test_each_example_is_eliminated_as_if_it_were_alone_in_its_batch() -> None:
    config = supernet_config()
    supernet = make_supernet(config).eval()
    lengths = [11, 3, 8, 6]
    ids, mask = _batch(lengths)
    sub = _eliminating(config, keep=0.5)
    with torch.no_grad(), supernet.use(sub):
        together = supernet(ids, mask)
        for row, n in enumerate(lengths):
            alone = supernet(ids[row : row + 1, :n], mask[row : row + 1, :n])
            assert torch.allclose(together[row], alone[0], atol=1e-5), row
    with torch.no_grad(), supernet.use(None):
        assert not torch.allclose(supernet(ids, mask), together, atol=1e-4)  # elimination did change something


def test_sliced_exported_and_reloaded_agree_with_elimination_on(tmp_path) -> None:
    config = supernet_config()
    supernet = make_supernet(config).eval()
    sub = SubNetworkConfig(layers=(0, 2), heads=(4, 0, 2), units=(32, 0, 16), token_keep=(0.8, 0.8, 0.4))
    assert sub.token_keep == (0.8, 0.8, 0.4)
    ids, mask = _batch([12, 5, 9, 7], seed=3)
    with torch.no_grad():
        with supernet.use(sub):
            sliced = supernet(ids, mask)
        exported = extract(supernet, sub)
        assert exported.config.token_keep == [0.8, 0.4]
        assert torch.allclose(exported(ids, mask).logits, sliced, atol=1e-5)
        folder = export_subnetwork(supernet, sub, tmp_path / "export", token_lengths=[5, 7, 9, 12])
        reloaded = load_exported(folder)
        assert reloaded.config.token_keep == [0.8, 0.4] and reloaded.config.token_lengths == [5, 7, 9, 12]
        assert torch.allclose(reloaded(ids, mask).logits, sliced, atol=1e-5)
        static = extract(supernet, sub.static())(ids, mask).logits
        reloaded.set_token_keep(None)
        assert reloaded.config.token_keep is None
        assert torch.allclose(reloaded(ids, mask).logits, static, atol=1e-5)
        reloaded.set_token_keep([0.8, 0.4])
        assert torch.allclose(reloaded(ids, mask).logits, sliced, atol=1e-5)
        # as a user loads it: the folder's own modeling files (schedules.py among them), no nasprune installed
        from transformers import AutoModelForSequenceClassification

        remote = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
        assert torch.allclose(remote(ids, mask).logits, sliced, atol=1e-5)
        assert remote.set_speedup(1.1) is not None and remote.config.token_keep[0] == 1.0


def test_set_token_keep_refuses_schedules_it_cannot_run() -> None:
    config = supernet_config()
    model = extract(make_supernet(config), SubNetworkConfig.full(config))
    for bad in ([0.5, 0.5], [0.5, 0.0, 0.5], [1.5, 1.0, 1.0], [float("nan")] * 3):
        with pytest.raises(ValueError, match="one per layer"):
            model.set_token_keep(bad)
    model.set_token_keep([0.9, 1.0, 0.5])
    assert model.config.token_keep == [0.9, 0.9, 0.5]  # never more tokens than the layer before kept


def test_measured_macs_of_an_eliminating_model_equal_the_count(monkeypatch) -> None:
    config = supernet_config()
    supernet = make_supernet(config)
    sub = _eliminating(config, keep=0.4, first=0.7)
    model = extract(supernet, sub)
    for n in (5, 10, 13):
        measured, _ = _measured_macs(model, n, monkeypatch)
        assert measured == count_macs(config, sub, seq_len=n), n


# ------------------------------------------------------------------------------------------------ schedules


def test_the_tilted_schedule_keeps_everything_before_start_then_shrinks_to_its_floor() -> None:
    assert tilted_schedule(5, 2, 0.5, floor=0.2) == [1.0, 1.0, 0.5, 0.25, 0.2]
    assert tilted_schedule(4, 4, 0.5) is None and tilted_schedule(4, 1, 0.0) is None
    with pytest.raises(ValueError, match="0 <= rate < 1"):
        tilted_schedule(4, 1, 1.0)


def test_set_speedup_solves_the_gentlest_schedule_over_the_saved_lengths() -> None:
    config = supernet_config()
    model = extract(make_supernet(config), SubNetworkConfig.full(config))
    model.config.token_lengths = [8, 20, 33, 47, 64]
    base = expected_encoder_macs(model.config, None, model.config.token_lengths)
    schedule = model.set_speedup(1.6)
    assert model.config.token_keep == schedule == model.model.token_keep and schedule[0] == 1.0
    reached = base / expected_encoder_macs(model.config, schedule, model.config.token_lengths)
    assert reached >= 1.6
    rate = 1 - schedule[1]
    gentler = tilted_schedule(config.num_layers, 1, rate - 0.01)
    assert base / expected_encoder_macs(model.config, gentler, model.config.token_lengths) < 1.6
    assert model.set_speedup(1.0) is None and model.config.token_keep is None
    with pytest.raises(ValueError, match=r"at most \d\.\d\dx"):
        model.set_speedup(50.0)
    with pytest.raises(ValueError, match=">= 1"):
        model.set_speedup(0.5)
    model.config.token_lengths = None
    with pytest.raises(ValueError, match="needs input lengths"):
        model.set_speedup(1.5)
    assert model.set_speedup(1.2, lengths=[30, 40]) is not None


def test_the_analytic_model_of_an_export_agrees_with_the_supernet_count() -> None:
    config = supernet_config()
    sub = SubNetworkConfig(layers=(0, 2), heads=(4, 0, 2), units=(32, 0, 16), token_keep=(0.8, 0.8, 0.4))
    model = extract(make_supernet(config), sub)
    lengths = [3, 9, 17]
    assert expected_encoder_macs(model.config, model.config.token_keep, lengths) == \
        expected_macs(config, sub, lengths, encoder_only=True)
