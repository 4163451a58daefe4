"""Shared fixtures: tiny random BERT configs, supernets with every parameter noised, the MiniLM tokenizer.

Every parameter (LayerNorm weights and biases included) gets random noise, so a parity test cannot pass
by accident because some bias is zero or some LayerNorm is the identity.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network, whatever the caller's environment

import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from supernet.config import SubNetworkConfig, SupernetConfig  # noqa: E402
from supernet.model import Supernet  # noqa: E402

# The models here are tiny: one intra-op thread is fastest, and it keeps timings stable on a busy machine
# (OpenMP threads spin-waiting for a contended core made each tiny op take milliseconds).
torch.set_num_threads(1)

GLUE_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/glue"

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=64)


def tiny_bert_config(**overrides):
    from transformers import BertConfig

    return BertConfig(**(TINY | overrides))


def tiny_roberta_config(**overrides):
    from transformers import RobertaConfig

    return RobertaConfig(**(TINY | {"pad_token_id": 1, "type_vocab_size": 1} | overrides))


@torch.no_grad()
def add_noise(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Add Gaussian noise to every parameter (biases, LayerNorm weights, embeddings, ...)."""
    gen = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(torch.randn(param.shape, generator=gen) * scale)
    return model


def supernet_config(num_labels: int = 2, **overrides) -> SupernetConfig:
    """The SupernetConfig of the tiny BERT (3 layers, hidden 32, 4 heads of 8, 48 FFN units)."""
    values = dict(num_layers=3, hidden_size=32, num_heads=4, head_size=8, intermediate_size=48, vocab_size=99,
                  max_position_embeddings=64, type_vocab_size=2, num_labels=num_labels)
    return SupernetConfig(**(values | overrides))


def make_supernet(config: SupernetConfig | None = None, seed: int = 0) -> Supernet:
    """A supernet whose weights depend only on `seed` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Supernet(config or supernet_config())
    return add_noise(model, seed).eval()


def random_inputs(batch: int = 4, tokens: int = 11, *, vocab_size: int = 99, pad_token_id: int = 0,
                  type_vocab_size: int = 2, seed: int = 0, padded: bool = True) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / token_type_ids with right padding in all but the first row."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab_size, (batch, tokens), generator=gen)
    mask = torch.ones_like(ids)
    if padded:
        for row in range(1, batch):
            mask[row, max(2, tokens - 3 * row):] = 0
    ids = ids.masked_fill(mask == 0, pad_token_id)
    types = torch.zeros_like(ids)
    if type_vocab_size > 1:
        types[:, tokens // 2:] = 1
        types = types * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def random_sub(config: SupernetConfig, rng: random.Random, *, allow_zero: bool = True) -> SubNetworkConfig:
    """A random sub-network: any non-empty set of layers, any widths (0 allowed)."""
    n = config.num_layers
    layers = tuple(i for i in range(n) if rng.random() < 0.7) or (rng.randrange(n),)
    low = 0 if allow_zero else 1
    heads = tuple(rng.randint(low, h) for h in config.layer_heads)
    units = tuple(rng.randint(low, u) for u in config.layer_units)
    return SubNetworkConfig(layers=layers, heads=heads, units=units)


def hand_subs(config: SupernetConfig) -> list[SubNetworkConfig]:
    """Hand-picked corner cases: a 0-head layer, a 0-unit layer, dropped layers, a single layer, the full net."""
    n, h, u = config.num_layers, config.num_heads, config.intermediate_size
    return [
        SubNetworkConfig.full(config),
        SubNetworkConfig(layers=tuple(range(n)), heads=(0,) + (h,) * (n - 1), units=(u,) * n),
        SubNetworkConfig(layers=tuple(range(n)), heads=(h,) * n, units=(u,) * (n - 1) + (0,)),
        SubNetworkConfig(layers=tuple(range(1, n)), heads=(h,) * n, units=(u,) * n),  # layer 0 dropped
        SubNetworkConfig(layers=(n - 1,), heads=(1,) * n, units=(1,) * n),
        SubNetworkConfig(layers=(0, n - 1), heads=(0,) * n, units=(0,) * n),  # kept layers with empty blocks
    ]


@pytest.fixture
def tiny_config() -> SupernetConfig:
    return supernet_config()


@pytest.fixture
def tiny_supernet() -> Supernet:
    """A tiny supernet (3 layers, hidden 32, 4 heads, 48 units), all parameters noised, in eval mode."""
    return make_supernet()


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from supernet.convert import load_tokenizer

    return load_tokenizer("minilm")
