"""supernet.importance: Fisher scores of heads and units, and permutations that leave the function unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_supernet, random_inputs, supernet_config
from torch.func import functional_call

from supernet.config import SubNetworkConfig
from supernet.importance import (
    Importance,
    fisher_importance,
    permute_heads,
    permute_units,
    reorder_by_importance,
    task_loss,
)


def _batches(n: int = 3, num_labels: int = 2, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    out = []
    gen = torch.Generator().manual_seed(seed)
    for i in range(n):
        batch = random_inputs(4, 10, seed=seed * 100 + i)
        if num_labels == 1:
            batch["labels"] = torch.randn(4, generator=gen)
        else:
            batch["labels"] = torch.randint(0, num_labels, (4,), generator=gen)
        out.append(batch)
    return out


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])


def test_permutations_leave_the_function_unchanged(tiny_supernet) -> None:
    inputs = random_inputs(5, 12)
    expected = _logits(tiny_supernet, inputs)
    before = {k: v.clone() for k, v in tiny_supernet.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    for i in range(3):
        permute_heads(tiny_supernet, i, torch.randperm(4, generator=gen))
        permute_units(tiny_supernet, i, torch.randperm(48, generator=gen))
    torch.testing.assert_close(_logits(tiny_supernet, inputs), expected, rtol=0, atol=1e-5)
    changed = [k for k, v in tiny_supernet.state_dict().items() if not torch.equal(v, before[k])]
    assert any("attention.query" in k for k in changed) and any("ffn.intermediate" in k for k in changed)
    # a sub-network does change under a permutation: the first k heads are now other heads
    sub = SubNetworkConfig(layers=(0, 1, 2), heads=(2, 2, 2), units=(12, 12, 12))
    with tiny_supernet.use(sub):
        permuted = _logits(tiny_supernet, inputs)
    tiny_supernet.load_state_dict(before)
    with tiny_supernet.use(sub):
        original = _logits(tiny_supernet, inputs)
    assert not torch.allclose(permuted, original, atol=1e-4)


def test_permute_heads_moves_whole_heads(tiny_supernet) -> None:
    attention = tiny_supernet.layers[1].attention
    old_q, old_dense = attention.query.weight.clone(), attention.dense.weight.clone()
    order = torch.tensor([2, 0, 3, 1])
    permute_heads(tiny_supernet, 1, order)
    for new, old in enumerate(order.tolist()):
        torch.testing.assert_close(attention.query.weight[new * 8:(new + 1) * 8], old_q[old * 8:(old + 1) * 8])
        torch.testing.assert_close(attention.dense.weight[:, new * 8:(new + 1) * 8],
                                   old_dense[:, old * 8:(old + 1) * 8])
    ffn = tiny_supernet.layers[0].ffn
    old_up = ffn.intermediate.weight.clone()
    order = torch.arange(47, -1, -1)
    permute_units(tiny_supernet, 0, order)
    torch.testing.assert_close(ffn.intermediate.weight, old_up.flip(0))


@pytest.mark.parametrize("num_labels", [2, 1])
def test_reorder_by_random_importance_keeps_logits(num_labels: int) -> None:
    net = make_supernet(supernet_config(num_labels=num_labels), seed=3)
    inputs = random_inputs(4, 9, seed=2)
    expected = _logits(net, inputs)
    gen = torch.Generator().manual_seed(1)
    fake = Importance(heads=[torch.rand(4, generator=gen) for _ in range(3)],
                      units=[torch.rand(48, generator=gen) for _ in range(3)])
    reorder_by_importance(net, fake)
    torch.testing.assert_close(_logits(net, inputs), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("num_labels", [2, 1])
def test_fisher_importance_shapes_and_signs(num_labels: int) -> None:
    net = make_supernet(supernet_config(num_labels=num_labels), seed=1)
    net.train()
    importance = fisher_importance(net, _batches(3, num_labels), max_batches=8, progress=False)
    assert len(importance.heads) == len(importance.units) == 3
    for heads, units in zip(importance.heads, importance.units, strict=True):
        assert heads.shape == (4,) and units.shape == (48,)
        assert (heads >= 0).all() and (units >= 0).all()
        assert heads.sum() > 0 and units.sum() > 0
        assert torch.isfinite(heads).all() and torch.isfinite(units).all()
    assert net.training  # the mode is restored
    assert all(p.grad is None for p in net.parameters())  # no gradients left behind
    assert net.sub_network is None


def _mask_gradients(net, batches) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Σ over batches of (dL/dm)² for explicit multiplicative masks on each head and FFN unit, at m = 1."""
    net.eval()
    d = net.config.head_size
    heads_total = [torch.zeros(4) for _ in range(3)]
    units_total = [torch.zeros(48) for _ in range(3)]
    params = dict(net.named_parameters())
    for batch in batches:
        head_masks = [torch.ones(4, requires_grad=True) for _ in range(3)]
        unit_masks = [torch.ones(48, requires_grad=True) for _ in range(3)]
        overrides = {}
        for i in range(3):
            dense = f"layers.{i}.attention.dense.weight"
            overrides[dense] = params[dense] * head_masks[i].repeat_interleave(d)
            down = f"layers.{i}.ffn.output.weight"
            overrides[down] = params[down] * unit_masks[i]
        logits = functional_call(net, overrides, (batch["input_ids"], batch["attention_mask"],
                                                  batch["token_type_ids"]))
        grads = torch.autograd.grad(task_loss(logits, batch["labels"]), head_masks + unit_masks)
        for i in range(3):
            heads_total[i] += grads[i] ** 2
            units_total[i] += grads[3 + i] ** 2
    return heads_total, units_total


@pytest.mark.parametrize("num_labels", [3, 1])
def test_fisher_importance_equals_explicit_mask_gradients(num_labels: int) -> None:
    net = make_supernet(supernet_config(num_labels=num_labels), seed=4)
    batches = _batches(4, num_labels, seed=1)
    importance = fisher_importance(net, batches, max_batches=3, progress=False)  # only the first 3 batches
    heads, units = _mask_gradients(net, batches[:3])
    for i in range(3):
        torch.testing.assert_close(importance.heads[i], heads[i], rtol=1e-4, atol=1e-10)
        torch.testing.assert_close(importance.units[i], units[i], rtol=1e-4, atol=1e-10)


def test_reorder_sorts_importance_and_keeps_logits() -> None:
    net = make_supernet(seed=6)
    batches = _batches(4)
    inputs = random_inputs(5, 11, seed=7)
    expected = _logits(net, inputs)
    importance = fisher_importance(net, batches, progress=False)
    reorder_by_importance(net, importance)
    torch.testing.assert_close(_logits(net, inputs), expected, rtol=0, atol=1e-5)
    again = fisher_importance(net, batches, progress=False)
    for i in range(3):
        for before, after in ((importance.heads[i], again.heads[i]), (importance.units[i], again.units[i])):
            assert after[0] >= after[-1]
            # the scores travel with their heads/units: the new scores are the old ones, sorted
            torch.testing.assert_close(after, before.sort(descending=True).values, rtol=1e-3, atol=1e-9)


def test_fisher_importance_needs_a_batch(tiny_supernet) -> None:
    with pytest.raises(ValueError, match="at least one"):
        fisher_importance(tiny_supernet, [], progress=False)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_fisher_importance_on_a_supernet_with_an_empty_block() -> None:
    """A supernet converted from an export can have a layer with 0 heads or 0 units; scoring must not crash."""
    config = supernet_config(layer_heads=(4, 0, 4), layer_units=(48, 48, 0))
    net = make_supernet(config, seed=2)
    importance = fisher_importance(net, _batches(2), progress=False)
    assert importance.heads[1].shape == (0,) and importance.units[2].shape == (0,)
    assert importance.heads[0].shape == (4,) and importance.units[0].shape == (48,)


def test_task_loss() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    labels = torch.tensor([0, 1])
    torch.testing.assert_close(task_loss(logits, labels), F.cross_entropy(logits, labels))
    torch.testing.assert_close(task_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0])), torch.tensor(2.5))
