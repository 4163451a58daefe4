"""supernet.counting: parameter and MAC counts equal those of the model `extract` builds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import hand_subs, make_supernet, random_sub, supernet_config
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForSequenceClassification

from supernet.config import ConfigError, SubNetworkConfig, SupernetConfig
from supernet.convert import resolve_model
from supernet.counting import count_macs, count_params, expected_macs, kept_tokens, layer_macs, layer_params
from supernet.extract import extract


def _math_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    """scaled_dot_product_attention written as plain matmuls, which FlopCounterMode counts on CPU."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    scores = query @ key.transpose(-2, -1) * scale
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return scores.softmax(-1) @ value


def _measured_macs(model, seq_len: int, monkeypatch) -> tuple[int, int]:
    """(total MACs, MACs of the classification head) of one unpadded example, measured by FlopCounterMode."""
    ids = torch.randint(1, model.config.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0))
    # (grad mode on: FlopCounterMode's module tracker trips over no_grad views of parameters)
    with monkeypatch.context() as patch, FlopCounterMode(display=False) as counter:
        patch.setattr(F, "scaled_dot_product_attention", _math_sdpa)
        model(ids)
    head = sum(counter.get_flop_counts()[f"{type(model).__name__}.model.head"].values())
    flops = counter.get_total_flops()
    assert flops % 2 == 0 and head % 2 == 0
    return flops // 2, head // 2


def _subs(config: SupernetConfig, n: int = 24, seed: int = 0) -> list[SubNetworkConfig]:
    rng = random.Random(seed)
    return hand_subs(config) + [random_sub(config, rng) for _ in range(n)]


def test_the_flop_counter_sees_both_attention_products(monkeypatch) -> None:
    """Guard for the measurement itself: without the patch, CPU SDPA is not counted."""
    config = supernet_config()
    model = extract(make_supernet(config), SubNetworkConfig.full(config))
    with_attention, _ = _measured_macs(model, 10, monkeypatch)
    ids = torch.ones(1, 10, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(ids)
    without = counter.get_total_flops() // 2
    assert with_attention - without == 3 * 2 * 4 * 10 * 10 * 8  # layers * (QK^T, AV) * heads * T * T * d


@pytest.mark.parametrize("num_labels", [2, 1])
def test_params_equal_extracted_model(num_labels: int) -> None:
    config = supernet_config(num_labels=num_labels)
    supernet = make_supernet(config)
    subs = _subs(config)
    assert len(subs) >= 26
    assert any(0 in sub.kept_heads() for sub in subs) and any(0 in sub.kept_units() for sub in subs)
    assert any(len(sub.layers) < config.num_layers for sub in subs)
    for sub in subs:
        counts = count_params(config, sub)
        model = extract(supernet, sub)
        assert counts.total == sum(p.numel() for p in model.parameters()), sub
        assert counts.encoder == sum(p.numel() for p in model.model.layers.parameters()), sub
        assert counts.embeddings == sum(p.numel() for p in model.model.embeddings.parameters())
        assert counts.head == sum(p.numel() for p in model.model.head.parameters())
        assert counts.to_dict() == {"encoder": counts.encoder, "total": counts.total}
        assert counts.encoder == sum(layer_params(config, h, u) for h, u in zip(sub.kept_heads(), sub.kept_units(),
                                                                                strict=True))


@pytest.mark.parametrize("seq_len", [1, 7, 16])
def test_macs_equal_measured_on_extracted_model(seq_len: int, monkeypatch) -> None:
    config = supernet_config(num_labels=3)
    supernet = make_supernet(config)
    for sub in _subs(config, n=20, seed=seq_len):
        model = extract(supernet, sub)
        total, head = _measured_macs(model, seq_len, monkeypatch)
        assert count_macs(config, sub, seq_len=seq_len) == total, sub
        assert count_macs(config, sub, seq_len=seq_len, encoder_only=True) == total - head, sub


def test_counts_of_the_full_network_default_and_monotone() -> None:
    config = supernet_config()
    full = SubNetworkConfig.full(config)
    assert count_params(config) == count_params(config, full)
    assert count_macs(config) == count_macs(config, full, seq_len=128)
    smaller = SubNetworkConfig(layers=(0, 1, 2), heads=(4, 3, 4), units=(48, 48, 48))
    assert count_params(config, smaller).total < count_params(config).total
    assert count_macs(config, smaller) < count_macs(config)
    assert layer_params(config, 0, 0) == 2 * config.hidden_size + 2 * 2 * config.hidden_size  # biases + 2 LayerNorms
    assert layer_macs(config, 0, 0, 128) == 0
    with pytest.raises(ConfigError):
        count_params(config, SubNetworkConfig(layers=(0,), heads=(5, 0, 0), units=(1, 0, 0)))
    with pytest.raises(ConfigError):
        count_macs(config, SubNetworkConfig(layers=(0,), heads=(1, 0), units=(1, 0)))


def _minilm_hf_config(num_labels: int = 2) -> BertConfig:
    return BertConfig(**(json.loads((Path(resolve_model("minilm")) / "config.json").read_text())
                         | {"num_labels": num_labels}))


def test_minilm_counts_equal_hf_model() -> None:
    """Counts for the full MiniLM dims (22.71M parameters): equal to an HF BERT built from its config.json."""
    hf_config = _minilm_hf_config(num_labels=2)
    config = SupernetConfig.from_hf(hf_config)
    counts = count_params(config)
    assert counts.total == 22_713_986
    # by hand: embeddings (30522 + 512 + 2) * 384 + LayerNorm; 6 layers; pooler + classifier
    hidden, units = 384, 1536
    attention = 4 * (hidden * hidden + hidden) + 2 * hidden  # Q, K, V, output projection, LayerNorm
    layer = attention + (hidden * units + units + units * hidden + hidden) + 2 * hidden
    assert counts.embeddings == (30522 + 512 + 2) * hidden + 2 * hidden
    assert counts.encoder == 6 * layer
    assert counts.head == hidden * hidden + hidden + hidden * 2 + 2
    hf = BertForSequenceClassification(hf_config)
    assert counts.total == sum(p.numel() for p in hf.parameters())  # buffers (position ids) are not parameters
    assert counts.encoder == sum(p.numel() for p in hf.bert.encoder.parameters())
    assert round(counts.total / 1e6, 2) == 22.71
    # MACs of one 128-token example: 6 * (4*T*H*H + 2*T*T*H + 2*T*H*U) + H*H + 2*H
    t = 128
    assert count_macs(config) == 6 * (4 * t * hidden * hidden + 2 * t * t * hidden + 2 * t * hidden * units) \
        + hidden * hidden + 2 * hidden


@pytest.mark.parametrize("num_labels", [2, 1])
def test_bert_base_full_counts_equal_hf(num_labels: int) -> None:
    """BERT-base dims (110M): the full count equals the HF model's parameters, without instantiating it twice."""
    hf_config = BertConfig(num_labels=num_labels)
    counts = count_params(SupernetConfig.from_hf(hf_config))
    with torch.device("meta"):
        hf = BertForSequenceClassification(hf_config)
    assert counts.total == sum(p.numel() for p in hf.parameters())


# ------------------------------------------------------------------------------------------------ token elimination


def test_layer_macs_with_elimination_by_hand() -> None:
    config = supernet_config()
    h, d, hidden = 2, config.head_size, config.hidden_size
    n, k, units = 10, 4, 6
    by_hand = (3 * n * hidden * h * d + k * h * d * hidden  # Q, K, V on all tokens; the output on the kept
               + h * n * n * d + h * k * n * d  # QKᵀ for the ranking; AV for the kept queries
               + 2 * k * hidden * units)
    assert layer_macs(config, h, units, n, k) == by_hand
    assert layer_macs(config, h, units, n, n) == layer_macs(config, h, units, n)


def test_count_macs_follows_the_kept_tokens_layer_by_layer() -> None:
    config = supernet_config()
    full = SubNetworkConfig.full(config)
    layers = config.num_layers
    keep = tuple(0.5 if i else 1.0 for i in range(layers))  # layer 0 keeps all, later layers half
    sub = SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units, token_keep=keep)
    assert kept_tokens(sub, 9) == [9] + [5] * (layers - 1)  # ⌈0.5 · 9⌉
    expected = layer_macs(config, full.heads[0], full.units[0], 9, 9)
    expected += layer_macs(config, full.heads[1], full.units[1], 9, 5)
    expected += sum(layer_macs(config, full.heads[i], full.units[i], 5, 5) for i in range(2, layers))
    assert count_macs(config, sub, seq_len=9, encoder_only=True) == expected
    assert count_macs(config, sub, seq_len=9) < count_macs(config, full, seq_len=9)
    assert kept_tokens(SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units,
                                        token_keep=(0.01,) * layers), 9) == [1] * layers  # [CLS] stays


def test_expected_macs_is_the_mean_over_real_lengths() -> None:
    config = supernet_config()
    full = SubNetworkConfig.full(config)
    lengths = [5, 12, 12, 30]
    assert expected_macs(config, full, lengths) == sum(count_macs(config, full, seq_len=n) for n in lengths) / 4
    with pytest.raises(ValueError, match="at least one"):
        expected_macs(config, full, [])
