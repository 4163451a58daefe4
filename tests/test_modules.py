"""supernet.modules / supernet.model: slicing weight views computes what a smaller block computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import add_noise, random_inputs

from supernet.config import ConfigError, SubNetworkConfig
from supernet.modules import ElasticFeedForward, ElasticSelfAttention

HIDDEN, HEADS, HEAD_SIZE, UNITS = 32, 4, 8, 48


def _ffn(units: int, seed: int = 0) -> ElasticFeedForward:
    return add_noise(ElasticFeedForward(HIDDEN, units, "gelu", 0.1, 1e-12), seed).eval()


def _attention(heads: int, seed: int = 0) -> ElasticSelfAttention:
    return add_noise(ElasticSelfAttention(HIDDEN, heads, HEAD_SIZE, 0.1, 0.1, 1e-12), seed).eval()


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 7, HIDDEN, generator=torch.Generator().manual_seed(seed))


def _mask() -> torch.Tensor:
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 2:] = False
    return mask[:, None, None, :]


@pytest.mark.parametrize("units", [1, 7, 24, 47, 48])
def test_ffn_slice_equals_small_ffn(units: int) -> None:
    big = _ffn(UNITS)
    big.set_sub_network(units)
    small = _ffn(units, seed=99)
    with torch.no_grad():
        small.intermediate.weight.copy_(big.intermediate.weight[:units])
        small.intermediate.bias.copy_(big.intermediate.bias[:units])
        small.output.weight.copy_(big.output.weight[:, :units])
        small.output.bias.copy_(big.output.bias)
        small.norm.load_state_dict(big.norm.state_dict())
    x = _x()
    torch.testing.assert_close(big(x), small(x), rtol=0, atol=1e-6)
    # and the plain formula
    h = F.gelu(x @ big.intermediate.weight[:units].T + big.intermediate.bias[:units])
    out = h @ big.output.weight[:, :units].T + big.output.bias
    torch.testing.assert_close(big(x), F.layer_norm(x + out, (HIDDEN,), big.norm.weight, big.norm.bias, 1e-12),
                               rtol=0, atol=1e-5)
    if units < UNITS:  # the slice really drops something
        big.reset_super_network()
        assert big.active_units == UNITS
        assert not torch.allclose(big(x), small(x), atol=1e-4)


def _manual_attention(block: ElasticSelfAttention, x: torch.Tensor, mask: torch.Tensor | None, k: int):
    width = k * HEAD_SIZE
    b, t, _ = x.shape

    def split(linear):
        return (x @ linear.weight[:width].T + linear.bias[:width]).view(b, t, k, HEAD_SIZE).transpose(1, 2)

    q, kk, v = split(block.query), split(block.key), split(block.value)
    scores = q @ kk.transpose(-2, -1) / HEAD_SIZE**0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, width)
    out = context @ block.dense.weight[:, :width].T + block.dense.bias
    return F.layer_norm(x + out, (HIDDEN,), block.norm.weight, block.norm.bias, 1e-12)


@pytest.mark.parametrize("heads", [1, 2, 3, 4])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_slice_equals_small_attention(heads: int, masked: bool) -> None:
    big = _attention(HEADS)
    big.set_sub_network(heads)
    small = _attention(heads, seed=99)
    width = heads * HEAD_SIZE
    with torch.no_grad():
        for name in ("query", "key", "value"):
            getattr(small, name).weight.copy_(getattr(big, name).weight[:width])
            getattr(small, name).bias.copy_(getattr(big, name).bias[:width])
        small.dense.weight.copy_(big.dense.weight[:, :width])
        small.dense.bias.copy_(big.dense.bias)
        small.norm.load_state_dict(big.norm.state_dict())
    x, mask = _x(1), (_mask() if masked else None)
    torch.testing.assert_close(big(x, mask), small(x, mask), rtol=0, atol=1e-6)
    torch.testing.assert_close(big(x, mask), _manual_attention(big, x, mask, heads), rtol=0, atol=1e-5)
    if masked:  # padding keys really are ignored: changing them does not change the unpadded rows' outputs
        x2 = x.clone()
        x2[2, 2:] += 5.0
        torch.testing.assert_close(big(x2, mask)[2, :2], big(x, mask)[2, :2], rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_zero_heads_and_zero_units_add_only_the_bias() -> None:
    x = _x(2)
    attention = _attention(HEADS)
    attention.set_sub_network(0)
    expected = F.layer_norm(x + attention.dense.bias, (HIDDEN,), attention.norm.weight, attention.norm.bias, 1e-12)
    torch.testing.assert_close(attention(x, _mask()), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(attention(x, None), expected, rtol=0, atol=1e-6)
    ffn = _ffn(UNITS)
    ffn.set_sub_network(0)
    expected = F.layer_norm(x + ffn.output.bias, (HIDDEN,), ffn.norm.weight, ffn.norm.bias, 1e-12)
    torch.testing.assert_close(ffn(x), expected, rtol=0, atol=1e-6)
    # a block built with 0 heads / 0 units (as in an export) computes the same
    empty = ElasticSelfAttention(HIDDEN, 0, HEAD_SIZE, 0.1, 0.1, 1e-12).eval()
    empty.load_state_dict({k: v[:0] if k.split(".")[0] in ("query", "key", "value") and v.ndim
                           else (v[:, :0] if k == "dense.weight" else v) for k, v in attention.state_dict().items()})
    torch.testing.assert_close(empty(x, None), attention(x, None), rtol=0, atol=0)


def test_set_sub_network_out_of_range_raises() -> None:
    attention, ffn = _attention(HEADS), _ffn(UNITS)
    for bad in (-1, HEADS + 1):
        with pytest.raises(ValueError, match="heads"):
            attention.set_sub_network(bad)
    for bad in (-1, UNITS + 1):
        with pytest.raises(ValueError, match="units"):
            ffn.set_sub_network(bad)
    assert attention.active_heads == HEADS and ffn.active_units == UNITS  # unchanged by the failed calls
    attention.set_sub_network(HEADS)
    ffn.set_sub_network(0)
    assert (attention.active_heads, ffn.active_units) == (HEADS, 0)


def test_supernet_sub_network_skips_layers_and_slices(tiny_supernet) -> None:
    sub = SubNetworkConfig(layers=(0, 2), heads=(2, 4, 0), units=(48, 48, 5))
    inputs = random_inputs()
    with torch.no_grad():
        full = tiny_supernet(**inputs)
        with tiny_supernet.use(sub) as model:
            assert model is tiny_supernet and tiny_supernet.sub_network == sub
            assert tiny_supernet.active_layers == [0, 2]
            assert tiny_supernet.layers[0].attention.active_heads == 2
            assert tiny_supernet.layers[2].ffn.active_units == 5
            sliced = tiny_supernet(**inputs)
        # by hand: embeddings, layer 0 with 2 heads, layer 2 with 0 heads and 5 units, head
        mask = inputs["attention_mask"].bool()[:, None, None, :]
        x = tiny_supernet.embeddings(inputs["input_ids"], inputs["token_type_ids"])
        layer0, layer2 = tiny_supernet.layers[0], tiny_supernet.layers[2]
        x = layer0.ffn(_manual_attention(layer0.attention, x, mask, 2))
        x = layer2.attention.norm(x + layer2.attention.dense.bias)
        layer2.ffn.set_sub_network(5)
        x = layer2.ffn(x)
        layer2.ffn.reset_super_network()
        expected = tiny_supernet.head(x)
    torch.testing.assert_close(sliced, expected, rtol=0, atol=1e-5)
    assert tiny_supernet.sub_network is None and tiny_supernet.active_layers == [0, 1, 2]
    with torch.no_grad():
        torch.testing.assert_close(tiny_supernet(**inputs), full, rtol=0, atol=0)
    with torch.no_grad(), tiny_supernet.use(None):
        torch.testing.assert_close(tiny_supernet(**inputs), full, rtol=0, atol=0)
    with torch.no_grad(), tiny_supernet.use(tiny_supernet.full_config()):
        torch.testing.assert_close(tiny_supernet(**inputs), full, rtol=0, atol=0)


def test_use_restores_the_full_network_after_an_error(tiny_supernet) -> None:
    sub = SubNetworkConfig(layers=(1,), heads=(1, 1, 1), units=(1, 1, 1))
    with pytest.raises(RuntimeError), tiny_supernet.use(sub):
        raise RuntimeError("boom")
    assert tiny_supernet.sub_network is None and tiny_supernet.active_layers == [0, 1, 2]
    assert all(layer.attention.active_heads == 4 and layer.ffn.active_units == 48 for layer in tiny_supernet.layers)


def test_supernet_rejects_subnets_that_do_not_fit(tiny_supernet) -> None:
    with pytest.raises(ConfigError):
        tiny_supernet.set_sub_network(SubNetworkConfig(layers=(0,), heads=(5, 4, 4), units=(48, 48, 48)))
    with pytest.raises(ConfigError):
        tiny_supernet.set_sub_network(SubNetworkConfig(layers=(0,), heads=(4, 4, 4), units=(49, 48, 48)))
    with pytest.raises(ConfigError):
        tiny_supernet.set_sub_network(SubNetworkConfig(layers=(0,), heads=(4, 4), units=(48, 48)))
    assert tiny_supernet.sub_network is None


def test_dropout_is_active_only_in_training(tiny_supernet) -> None:
    inputs = random_inputs()
    with torch.no_grad():
        a, b = tiny_supernet(**inputs), tiny_supernet(**inputs)
        assert torch.equal(a, b)
        tiny_supernet.train()
        torch.manual_seed(0)
        c = tiny_supernet(**inputs)
        torch.manual_seed(1)
        d = tiny_supernet(**inputs)
    assert not torch.allclose(c, d)
