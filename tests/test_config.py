"""supernet.config.SubNetworkConfig: canonical form, JSON round trip and validation."""

from __future__ import annotations

import json
import random

import pytest
from conftest import random_sub, supernet_config

from supernet.config import ConfigError, SubNetworkConfig


def test_dropped_layers_are_canonical_and_hash_equal() -> None:
    a = SubNetworkConfig(layers=(2, 0), heads=(3, 4, 1), units=(10, 48, 5))
    b = SubNetworkConfig(layers=[0, 2, 2], heads=[3, 0, 1], units=[10, 7, 5])
    assert a.layers == (0, 2)  # sorted, deduplicated
    assert a.heads == (3, 0, 1) and a.units == (10, 0, 5)  # the dropped layer holds 0 heads / 0 units
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a.kept_heads() == [3, 1] and a.kept_units() == [10, 5] and a.num_layers == 3
    c = SubNetworkConfig(layers=(0, 1, 2), heads=(3, 0, 1), units=(10, 0, 5))  # layer 1 kept with empty blocks
    assert c != a
    assert isinstance(a.heads[0], int) and isinstance(a.layers, tuple)


def test_full_config(tiny_config) -> None:
    full = SubNetworkConfig.full(tiny_config)
    assert full == SubNetworkConfig(layers=(0, 1, 2), heads=(4, 4, 4), units=(48, 48, 48))
    assert full.validate(tiny_config) is full


def test_json_round_trip() -> None:
    rng = random.Random(0)
    config = supernet_config()
    for _ in range(30):
        sub = random_sub(config, rng)
        text = sub.to_json()
        assert json.loads(text) == {"layers": list(sub.layers), "heads": list(sub.heads), "units": list(sub.units)}
        assert SubNetworkConfig.from_json(text) == sub
        assert SubNetworkConfig.from_dict(sub.to_dict()) == sub


def test_validate_rejects_what_does_not_fit(tiny_config) -> None:
    with pytest.raises(ConfigError, match="heads"):
        SubNetworkConfig(layers=(0,), heads=(5, 1, 1), units=(1, 1, 1)).validate(tiny_config)
    with pytest.raises(ConfigError, match="units"):
        SubNetworkConfig(layers=(0, 1, 2), heads=(1, 1, 1), units=(1, 49, 1)).validate(tiny_config)
    with pytest.raises(ConfigError, match="layers"):
        SubNetworkConfig(layers=(0,), heads=(1, 1), units=(1, 1)).validate(tiny_config)
    with pytest.raises(ConfigError, match="layers"):
        SubNetworkConfig(layers=(0,), heads=(1,) * 4, units=(1,) * 4).validate(tiny_config)
    # too many heads in a *dropped* layer is not an error: it is canonicalised away
    assert SubNetworkConfig(layers=(0,), heads=(1, 99, 99), units=(1, 99, 99)).validate(tiny_config)
    # per-layer widths of a non-uniform supernet are respected
    narrow = supernet_config(layer_heads=(4, 2, 4), layer_units=(48, 48, 12))
    SubNetworkConfig(layers=(0, 1, 2), heads=(4, 2, 4), units=(48, 48, 12)).validate(narrow)
    with pytest.raises(ConfigError):
        SubNetworkConfig(layers=(1,), heads=(0, 3, 0), units=(0, 1, 0)).validate(narrow)
    with pytest.raises(ConfigError):
        SubNetworkConfig(layers=(2,), heads=(0, 0, 1), units=(0, 0, 13)).validate(narrow)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(layers=(0,), heads=(1, 1), units=(1,)),  # lengths differ
        dict(layers=(3,), heads=(1, 1, 1), units=(1, 1, 1)),  # layer out of range
        dict(layers=(-1,), heads=(1, 1, 1), units=(1, 1, 1)),
        dict(layers=(0,), heads=(-1, 1, 1), units=(1, 1, 1)),  # negative widths
        dict(layers=(0,), heads=(1, 1, 1), units=(-2, 1, 1)),
    ],
)
def test_construction_errors(kwargs) -> None:
    with pytest.raises(ConfigError):
        SubNetworkConfig(**kwargs)


@pytest.mark.parametrize(
    "data",
    [
        {"heads": [1], "units": [1]},  # missing key
        {"layers": [0], "units": [1]},
        {"layers": [0], "heads": [1]},
        {"layers": [0], "heads": 3, "units": [1]},  # not a list
        {"layers": None, "heads": [1], "units": [1]},
        {"layers": [0], "heads": [None], "units": [1]},
        {"layers": [0], "heads": [1, 1], "units": [1]},
        {"layers": [0], "heads": [1], "units": [-1]},
        [0, 1, 2],  # not an object
        "layers",
        None,
    ],
)
def test_from_dict_malformed_raises_config_error(data) -> None:
    with pytest.raises(ConfigError):
        SubNetworkConfig.from_dict(data)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        {"layers": ["a"], "heads": [1], "units": [1]},  # not a number
        {"layers": [0], "heads": ["two"], "units": [1]},
    ],
)
def test_from_dict_non_numeric_raises_config_error(data) -> None:
    """Non-numeric entries are as malformed as missing keys and must give a ConfigError too."""
    with pytest.raises(ConfigError):
        SubNetworkConfig.from_dict(data)


@pytest.mark.parametrize(
    "data",
    [
        {"layers": [0], "heads": [2.7], "units": [1]},  # would silently become 2 heads
        {"layers": [0.5], "heads": [1], "units": [1]},
    ],
)
def test_from_dict_non_integral_raises_config_error(data) -> None:
    """A fractional head/unit count or layer index is not a sub-network; it must not be truncated silently."""
    with pytest.raises(ConfigError):
        SubNetworkConfig.from_dict(data)


def test_from_json_errors() -> None:
    with pytest.raises(ConfigError):
        SubNetworkConfig.from_json('{"layers": [0], "heads": [1]}')
    with pytest.raises(ValueError):  # json.JSONDecodeError is a ValueError
        SubNetworkConfig.from_json("{not json")


# ------------------------------------------------------------------------------------------------ runtime fields


def test_a_static_network_writes_the_same_json_as_before_runtime_fields_existed() -> None:
    sub = SubNetworkConfig(layers=(0, 2), heads=(2, 1, 4), units=(8, 8, 16))
    assert sub.to_json() == '{"layers": [0, 2], "heads": [2, 0, 4], "units": [8, 0, 16]}'
    assert sub.is_static and SubNetworkConfig.from_json(sub.to_json()) == sub


def test_token_keep_is_canonical_so_equal_computations_compare_and_hash_equal() -> None:
    base = {"layers": (0, 2, 3), "heads": (2, 2, 0, 2), "units": (4, 4, 4, 4)}
    sub = SubNetworkConfig(**base, token_keep=(0.9, 0.1, 0.95, 0.5))
    # layer 1 is dropped and layer 2 has no heads: each keeps what it reads; elimination is never undone
    assert sub.token_keep == (0.9, 0.9, 0.9, 0.5)
    assert sub == SubNetworkConfig(**base, token_keep=(0.9, 0.3, 1.0, 0.5))
    assert hash(sub) == hash(SubNetworkConfig(**base, token_keep=(0.9, 0.3, 1.0, 0.5)))
    assert SubNetworkConfig(**base, token_keep=(1.0, 0.2, 0.2, 1.0)).token_keep is None  # nothing eliminated
    assert SubNetworkConfig(**base, exit_threshold=0.0).exit_threshold is None
    assert sub.static() == SubNetworkConfig(**base) and not sub.is_static
    data = SubNetworkConfig(**base, token_keep=(0.9, 1, 1, 0.5), exit_threshold=0.25).to_dict()
    assert data["token_keep"] == [0.9, 0.9, 0.9, 0.5] and data["exit_threshold"] == 0.25
    assert SubNetworkConfig.from_dict(data).to_dict() == data


@pytest.mark.parametrize(("field", "value", "message"), [
    ("token_keep", (0.5, 0.5), "2 entries"),
    ("token_keep", (0.5, 0.0, 0.5), r"\(0, 1\]"),
    ("token_keep", (0.5, 1.5, 0.5), r"\(0, 1\]"),
    ("token_keep", (0.5, float("nan"), 0.5), "finite"),
    ("token_keep", (0.5, True, 0.5), "finite number"),
    ("exit_threshold", -0.1, r"\[0, 1\]"),
    ("exit_threshold", float("inf"), "finite"),
    ("exit_threshold", "0.3", "finite number"),
])
def test_runtime_fields_out_of_range_are_refused(field, value, message) -> None:
    with pytest.raises(ConfigError, match=message):
        SubNetworkConfig(layers=(0, 1, 2), heads=(1, 1, 1), units=(1, 1, 1), **{field: value})


def test_an_exit_threshold_is_refused_by_a_supernet_without_exits() -> None:
    from conftest import make_supernet

    from supernet.extract import extract

    supernet = make_supernet()
    full = SubNetworkConfig.full(supernet.config)
    dynamic = SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units, exit_threshold=0.3)
    with pytest.raises(ConfigError, match="no exits"):
        supernet.set_sub_network(dynamic)
    with pytest.raises(ConfigError, match="no exits"):
        extract(supernet, dynamic)
