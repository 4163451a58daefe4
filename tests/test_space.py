"""supernet.space: encode/decode round trips, bounds, sampling and the special members of each space."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import supernet_config

from supernet.config import ConfigError, SubNetworkConfig, SupernetConfig
from supernet.counting import count_params
from supernet.importance import Importance
from supernet.space import (
    KEEP_RATES,
    SPACES,
    ImportanceSpace,
    LayerSpace,
    PerLayerSpace,
    TokenEliminationSpace,
    UniformSpace,
    make_space,
)

BERT_BASE = SupernetConfig(num_layers=12, hidden_size=768, num_heads=12, head_size=64, intermediate_size=3072,
                           vocab_size=30522, max_position_embeddings=512, type_vocab_size=2, num_labels=2)
MINILM = SupernetConfig(num_layers=6, hidden_size=384, num_heads=12, head_size=32, intermediate_size=1536,
                        vocab_size=30522, max_position_embeddings=512, type_vocab_size=2, num_labels=2)
CONFIGS = {"tiny": supernet_config(), "bert-base": BERT_BASE, "minilm": MINILM}


@pytest.fixture(params=sorted(CONFIGS))
def config(request) -> SupernetConfig:
    return CONFIGS[request.param]


def random_scores(config: SupernetConfig, seed: int = 0) -> Importance:
    """Importance scores sorted most important first in every layer, as an ordered supernet's are."""
    g = torch.Generator().manual_seed(seed)
    return Importance(heads=[torch.rand(h, generator=g) for h in config.layer_heads],
                      units=[torch.rand(u, generator=g) for u in config.layer_units]).sorted()


def space_of(name: str, config: SupernetConfig):
    """Every space, the importance one with random (sorted) scores."""
    return make_space(name, config, **({"importance": random_scores(config)} if name == "importance" else {}))


@pytest.mark.parametrize("name", ["uniform", "per_layer", "layers", "importance"])
def test_round_trips(name: str, config: SupernetConfig) -> None:
    space = space_of(name, config)
    assert space.name == name and isinstance(space, SPACES[name])
    assert len(space.lower) == len(space.upper) == space.dimension
    rng = random.Random(0)
    for _ in range(200):
        vector = [rng.randint(lo, hi) for lo, hi in zip(space.lower, space.upper, strict=True)]
        if name == "layers" and not any(vector):
            continue  # all-zero decodes to "keep layer 0" (tested below)
        sub = space.decode(vector)
        assert sub.validate(config) is sub
        assert space.encode(sub) == vector
    for _ in range(100):
        sub = space.sample(rng)
        assert space.decode(space.encode(sub)) == sub
        assert sub.validate(config) and sub.layers


@pytest.mark.parametrize("name", ["uniform", "per_layer", "layers", "importance"])
def test_smallest_middle_largest(name: str, config: SupernetConfig) -> None:
    space = space_of(name, config)
    smallest, middle, largest = space.smallest(), space.middle(), space.largest()
    for sub in (smallest, middle, largest):
        sub.validate(config)
        assert space.decode(space.encode(sub)) == sub
    sizes = [count_params(config, s).total for s in (smallest, middle, largest)]
    assert sizes[0] <= sizes[1] <= sizes[2]
    assert sizes[0] < sizes[2]
    assert largest == SubNetworkConfig.full(config)
    rng = random.Random(1)
    for _ in range(50):  # nothing the space samples is smaller or larger than its extremes
        assert sizes[0] <= count_params(config, space.sample(rng)).total <= sizes[2]


def test_uniform_space_members(config: SupernetConfig) -> None:
    space = UniformSpace(config)
    step = config.intermediate_size // 24
    assert space.unit_step == step and space.max_unit_steps == 24
    assert space.upper == [config.num_layers, config.num_heads, 24]
    assert space.smallest() == SubNetworkConfig(layers=(0,), heads=(1,) * config.num_layers,
                                                units=(step,) * config.num_layers)
    n = config.num_layers
    middle = space.middle()
    assert middle.layers == tuple(range((1 + n + 1) // 2))
    assert set(middle.kept_heads()) == {(1 + config.num_heads + 1) // 2}
    assert set(middle.kept_units()) == {step * 13}
    assert space.decode([2, 3, 5]) == SubNetworkConfig(layers=(0, 1), heads=(3,) * n, units=(5 * step,) * n)


def test_dims_of_the_reference_models() -> None:
    assert UniformSpace(BERT_BASE).unit_step == 128 and UniformSpace(MINILM).unit_step == 64
    assert PerLayerSpace(BERT_BASE).dimension == 24 and LayerSpace(BERT_BASE).dimension == 12
    assert UniformSpace(supernet_config()).unit_step == 2
    assert UniformSpace(BERT_BASE, unit_step=256).max_unit_steps == 12
    with pytest.raises(ConfigError, match="divide"):
        UniformSpace(BERT_BASE, unit_step=100)


def test_per_layer_space_min_bounds() -> None:
    config = supernet_config()
    space = PerLayerSpace(config, min_heads=0, min_unit_steps=0)
    assert space.lower == [0] * 6
    smallest = space.smallest()
    assert smallest == SubNetworkConfig(layers=(0, 1, 2), heads=(0, 0, 0), units=(0, 0, 0))
    assert space.encode(SubNetworkConfig(layers=(0, 1, 2), heads=(0, 4, 1), units=(2, 0, 48))) == [0, 4, 1, 1, 0, 24]
    with pytest.raises(ConfigError):  # default bounds forbid empty blocks
        PerLayerSpace(config).encode(SubNetworkConfig(layers=(0, 1, 2), heads=(0, 4, 1), units=(2, 2, 48)))


def test_sampling_is_deterministic(config: SupernetConfig) -> None:
    for name in SPACES:
        space = space_of(name, config)
        first = [space.sample(random.Random(7)) for _ in range(3)]
        rng_a, rng_b = random.Random(42), random.Random(42)
        a = [space.sample(rng_a) for _ in range(30)]
        b = [space.sample(rng_b) for _ in range(30)]
        assert a == b and first[0] == first[1] == first[2]
        assert len(set(a)) > 1  # it does vary
        rng_c = random.Random(43)
        assert [space.sample(rng_c) for _ in range(30)] != a  # another seed, another sequence


@pytest.mark.parametrize("name", ["uniform", "per_layer", "layers", "importance"])
def test_out_of_bounds_vectors_raise(name: str, config: SupernetConfig) -> None:
    space = space_of(name, config)
    for i in range(space.dimension):
        low, high = list(space.lower), list(space.upper)
        low[i] -= 1
        high[i] += 1
        for vector in (low, high):
            with pytest.raises(ConfigError, match="outside"):
                space.decode(vector)
    with pytest.raises(ConfigError, match="expects"):
        space.decode(space.lower[:-1])
    with pytest.raises(ConfigError, match="expects"):
        space.decode(space.upper + [1])


def test_layers_space_zero_vector_keeps_layer_zero(config: SupernetConfig) -> None:
    space = LayerSpace(config)
    sub = space.decode([0] * config.num_layers)
    assert sub.layers == (0,) and sub.kept_heads() == [config.num_heads] and sub.kept_units() == [
        config.intermediate_size]
    assert space.smallest() == sub
    assert space.encode(sub) == [1] + [0] * (config.num_layers - 1)
    bits = [i % 2 for i in range(config.num_layers)]
    assert space.decode(bits).layers == tuple(i for i in range(config.num_layers) if i % 2)


def test_encode_rejects_members_of_other_spaces() -> None:
    config = supernet_config()
    pruned = SubNetworkConfig(layers=(0, 1, 2), heads=(4, 2, 4), units=(48, 48, 48))
    dropped = SubNetworkConfig(layers=(0, 2), heads=(4, 4, 4), units=(48, 48, 48))
    odd_units = SubNetworkConfig(layers=(0, 1, 2), heads=(4, 4, 4), units=(47, 47, 47))
    with pytest.raises(ConfigError):
        UniformSpace(config).encode(pruned)  # unequal widths
    with pytest.raises(ConfigError):
        UniformSpace(config).encode(dropped)  # not the first n layers
    with pytest.raises(ConfigError):
        UniformSpace(config).encode(odd_units)  # not a multiple of the unit step
    with pytest.raises(ConfigError):
        PerLayerSpace(config).encode(dropped)
    with pytest.raises(ConfigError):
        LayerSpace(config).encode(pruned)
    assert LayerSpace(config).encode(dropped) == [1, 0, 1]
    assert UniformSpace(config).encode(SubNetworkConfig(layers=(0, 1), heads=(2, 2, 0), units=(4, 4, 0))) == [2, 2, 2]


def test_uniform_spaces_need_uniform_supernets() -> None:
    narrow = supernet_config(layer_heads=(4, 2, 4))
    with pytest.raises(ConfigError, match="same width"):
        UniformSpace(narrow)
    with pytest.raises(ConfigError, match="same width"):
        PerLayerSpace(narrow)
    space = LayerSpace(narrow)  # full widths per layer are fine
    assert space.largest() == SubNetworkConfig.full(narrow)


def test_make_space_unknown_name() -> None:
    with pytest.raises(ConfigError, match="unknown search space"):
        make_space("nope", supernet_config())
    assert make_space("per_layer", supernet_config(), min_heads=0).lower[0] == 0


# ------------------------------------------------------------------------------------------- importance space


def test_importance_space_keeps_the_globally_most_important() -> None:
    config = supernet_config()  # 3 layers x 4 heads x 48 units, unit step 2
    # layer 1's heads matter most, then layer 0's; layer 2's units matter most, layer 1's least
    scores = Importance(heads=[torch.tensor([4.0, 3, 2, 1]), torch.tensor([9.0, 8, 7, 6]), torch.tensor([.5] * 4)],
                        units=[torch.linspace(5, 4, 48), torch.linspace(1, 0, 48), torch.linspace(9, 8, 48)])
    space = ImportanceSpace(config, importance=scores)
    assert space.lower == [1, 1] and space.upper == [12, 72]
    assert space.decode([3, 10]) == SubNetworkConfig(layers=(0, 1, 2), heads=(0, 3, 0), units=(0, 0, 20))
    assert space.decode([6, 30]) == SubNetworkConfig(layers=(0, 1, 2), heads=(2, 4, 0), units=(12, 0, 48))
    assert space.decode([10, 72]) == SubNetworkConfig(layers=(0, 1, 2), heads=(4, 4, 2), units=(48, 48, 48))
    assert space.largest() == SubNetworkConfig.full(config)
    # ties go to the lower layer: layer 2's four equal heads are taken in order
    assert space.decode([9, 1]).heads == (4, 4, 1)
    with pytest.raises(ConfigError, match="not in the importance space"):
        space.encode(SubNetworkConfig(layers=(0, 1, 2), heads=(3, 0, 0), units=(0, 0, 20)))  # not the top 3 heads
    with pytest.raises(ConfigError, match="not in the importance space"):
        space.encode(SubNetworkConfig(layers=(1, 2), heads=(0, 3, 0), units=(0, 0, 20)))  # a layer dropped


def test_importance_space_needs_sorted_matching_scores() -> None:
    config = supernet_config()
    space = ImportanceSpace(config)
    with pytest.raises(ConfigError, match="importance scores"):
        space.sample(random.Random(0))  # nothing decodes before the scores are set
    scores = random_scores(config)
    unsorted = Importance(heads=[h.flip(0) for h in scores.heads], units=scores.units)
    with pytest.raises(ConfigError, match="sorted"):
        space.set_importance(unsorted)
    with pytest.raises(ConfigError, match="do not match"):
        space.set_importance(random_scores(supernet_config(num_layers=2)))
    space.set_importance(scores)
    assert space.sample(random.Random(0)).validate(config)
    assert Importance.from_dict(scores.to_dict()).to_dict() == scores.to_dict()


@pytest.mark.parametrize("name", ["uniform", "per_layer", "layers", "importance"])
def test_a_sampling_floor_keeps_training_samples_above_it(name: str) -> None:
    space = space_of(name, MINILM)
    assert space.floor(0.0) == space.lower and space.floor(1.0) == space.upper
    assert space.smallest(0.0) == space.smallest()
    params = count_params(MINILM).encoder
    small = count_params(MINILM, space.smallest()).encoder / params
    floored = count_params(MINILM, space.smallest(0.25)).encoder / params
    assert floored > small
    assert floored >= (2 / 6 if name == "layers" else 0.25 ** (2 if name == "uniform" else 1)) - 0.02
    rng = random.Random(0)
    for _ in range(100):
        if name == "layers":
            assert len(space.sample(rng, 0.25).layers) >= 2  # ceil(0.25 * 6)
            with pytest.raises(ConfigError, match="no per-gene floor"):
                space.floor(0.25)
        else:
            vector = space.encode(space.sample(rng, 0.25))
            assert all(v >= f for v, f in zip(vector, space.floor(0.25), strict=True))
    # without a floor the draws (and so training) are exactly as before the floor existed
    assert [space.sample(random.Random(1)) for _ in range(5)] == [space.sample(random.Random(1), 0.0)
                                                                  for _ in range(5)]
    with pytest.raises(ConfigError, match="fraction in"):
        space.floor(1.5)


# ------------------------------------------------------------------------------------------------ token elimination


@pytest.mark.parametrize("name", ["uniform", "per_layer", "layers", "importance"])
def test_token_elimination_appends_two_genes_to_any_space(name: str, config: SupernetConfig) -> None:
    base = space_of(name, config)
    space = TokenEliminationSpace(base)
    assert space.name == f"{name}+tokens" and space.dimension == base.dimension + 2
    assert space.largest() == base.largest() and space.largest().token_keep is None  # the corner eliminates nothing
    smallest = space.smallest()
    assert smallest.static() == base.smallest()
    # the steepest schedule, unless no kept layer past the first has heads to rank tokens with
    assert (smallest.token_keep is not None) == any(smallest.heads[i] for i in smallest.layers if i >= 1)
    rng = random.Random(1)
    kinds = set()
    for _ in range(200):
        vector = [rng.randint(lo, hi) for lo, hi in zip(space.lower, space.upper, strict=True)]
        if name == "layers" and not any(vector[:-2]):
            continue
        sub = space.decode(vector)
        assert sub.validate(config) is sub and sub.static() == base.decode(vector[:-2])
        assert space.decode(space.encode(sub)) == sub
        kinds.add(sub.token_keep is None)
    assert kinds == {True, False}


def test_the_elimination_genes_decode_to_the_tilted_schedule() -> None:
    space = TokenEliminationSpace(make_space("per_layer", MINILM), floor=0.2)
    full = space.base.encode(space.base.largest())
    sub = space.decode([*full, 2, KEEP_RATES.index(0.5)])
    assert sub.token_keep == (1.0, 1.0, 0.5, 0.25, 0.2, 0.2)
    assert space.decode([*full, 6, 0]).token_keep is None  # starting after the last layer eliminates nothing
    foreign = SubNetworkConfig(layers=sub.layers, heads=sub.heads, units=sub.units, token_keep=(1, 1, 1, 1, 1, 0.33))
    with pytest.raises(ConfigError, match="not a schedule of the per_layer\\+tokens space"):
        space.encode(foreign)
    with pytest.raises(ConfigError, match="keep floor"):
        TokenEliminationSpace(space.base, floor=0.0)
