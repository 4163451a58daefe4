"""The baselines of bench/prove.py on tiny random BERTs: Kwon-style masks under MAC budgets, layer dropping,
uniform sub-networks, and plain fine-tuning of the full supernet and of a physically pruned model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import TOY_SPEC, make_supernet, supernet_config, toy_batches

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/baselines.py: used by bench only
from baselines import (  # noqa: E402
    PrunedModel,
    finetune,
    kwon_mask,
    layer_drop_configs,
    uniform_configs,
)

from supernet.config import SubNetworkConfig  # noqa: E402
from supernet.counting import count_macs  # noqa: E402
from supernet.extract import extract  # noqa: E402
from supernet.importance import Importance, fisher_importance, reorder_by_importance  # noqa: E402
from supernet.settings import TrainingConfig  # noqa: E402


def encoder_macs(config, sub=None) -> int:
    return count_macs(config, sub, seq_len=128, encoder_only=True)


def test_kwon_masks_fit_the_budget_and_keep_the_most_important() -> None:
    config = supernet_config()  # 3 layers x 4 heads x 48 units
    # layer 1 matters most, then layer 0; layer 2's heads matter nothing (its units a little)
    importance = Importance(heads=[torch.tensor([4.0, 3, 2, 1]), torch.tensor([9.0, 8, 7, 6]), torch.zeros(4)],
                            units=[torch.linspace(2, 1, 48), torch.linspace(5, 4, 48), torch.linspace(.1, 0, 48)])
    full = encoder_macs(config)
    assert kwon_mask(config, importance, 1.0) == SubNetworkConfig.full(config)
    previous = full
    for budget in (0.9, 0.7, 0.5, 0.3, 0.2, 0.05):
        sub = kwon_mask(config, importance, budget)
        macs = encoder_macs(config, sub)
        assert macs <= budget * full and macs <= previous
        previous = macs
        assert sub.heads[2] == 0 or sub.heads[1] == 4  # layer 2's heads are the last to be kept
        assert sub.heads[1] >= sub.heads[0] and sub.units[1] >= sub.units[0] >= sub.units[2]
    half = kwon_mask(config, importance, 0.5)
    assert encoder_macs(config, half) > 0.45 * full  # the budget is used, not wasted
    with pytest.raises(ValueError, match="fraction"):
        kwon_mask(config, importance, 0.0)


def test_kwon_mask_uses_the_order_left_by_reordering() -> None:
    supernet = make_supernet(seed=3)
    importance = fisher_importance(supernet, toy_batches(), progress=False)
    reorder_by_importance(supernet, importance)
    ordered = importance.sorted()
    assert all(bool((h[:-1] >= h[1:]).all()) for h in ordered.heads)
    again = fisher_importance(supernet, toy_batches(), progress=False)  # re-scored after the permutation
    for before, after in zip(ordered.heads, again.heads, strict=True):
        torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-10)


def test_layer_drop_and_uniform_configs() -> None:
    config = supernet_config()
    drops = layer_drop_configs(config)
    assert [sub.layers for sub in drops] == [(0, 1), (0,)]
    assert all(sub.kept_heads() == [4] * len(sub.layers) for sub in drops)
    half, quarter = uniform_configs(config, [0.5, 0.25])
    assert half.kept_heads() == [2, 2, 2] and half.kept_units() == [24, 24, 24]
    assert quarter.kept_heads() == [1, 1, 1] and quarter.kept_units() == [12, 12, 12]


def test_pruned_model_computes_the_sliced_sub_network() -> None:
    supernet = make_supernet(seed=1)
    sub = SubNetworkConfig(layers=(0, 2), heads=(2, 0, 1), units=(10, 0, 30))
    batch = toy_batches(1)[0]
    inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    with supernet.use(sub):
        expected = supernet(*inputs)
    pruned = PrunedModel(extract(supernet, sub)).eval()
    torch.testing.assert_close(pruned(*inputs), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("pruned", [False, True])
def test_finetune_records_every_epoch_and_chooses_on_validation(pruned: bool) -> None:
    supernet = make_supernet(seed=2)
    model = PrunedModel(extract(supernet, layer_drop_configs(supernet.config)[0])) if pruned else supernet
    before = [p.detach().clone() for p in model.parameters()]
    train, validation, test = toy_batches(4, seed=0), toy_batches(2, seed=10), toy_batches(2, seed=20)
    config = TrainingConfig(epochs=3, learning_rate=1e-3, num_random_subnets=0, seed=0)
    seen = []
    result = finetune(model, train, validation, test, TOY_SPEC, config, progress=False, on_epoch=seen.append)
    assert [e.epoch for e in result.epochs] == [1, 2, 3] and seen == result.epochs
    assert result.best.validation_error == min(e.validation_error for e in result.epochs)
    assert all(set(e.test) == {"accuracy", "f1"} for e in result.epochs) and result.train_s > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert result.to_dict()["best_epoch"] == result.best.epoch
    with pytest.raises(ValueError, match="plain"):
        finetune(model, train, validation, test, TOY_SPEC, TrainingConfig(num_random_subnets=2), progress=False)
