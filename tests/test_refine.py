"""supernet.refine on the tiny supernet: the refined model has the point's exact size, learns, leaves the
supernet alone, is reproducible, and stops when asked."""

from __future__ import annotations

import pytest
import torch
from conftest import TOY_SPEC, make_supernet, supernet_config, toy_batches

from supernet.config import SubNetworkConfig
from supernet.counting import count_params
from supernet.evaluation import NonFiniteLogits, evaluate
from supernet.extract import extract
from supernet.importance import task_loss
from supernet.refine import PrunedModel, refine_subnetwork
from supernet.settings import RefineConfig
from supernet.training import TrainingDiverged


def mean_loss(model: torch.nn.Module, batches) -> float:
    wrapped = PrunedModel(model).eval()
    with torch.no_grad():
        return sum(task_loss(wrapped(b["input_ids"], b["attention_mask"], b["token_type_ids"]), b["labels"]).item()
                   for b in batches) / len(batches)


@pytest.fixture
def sub() -> SubNetworkConfig:
    return SubNetworkConfig(layers=(0, 2), heads=(2, 4, 1), units=(20, 48, 7))


def test_refined_model_has_the_exact_size_and_learns(sub) -> None:
    supernet = make_supernet()
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    batches = toy_batches(count=4)
    sliced = extract(supernet, sub)
    refined = refine_subnetwork(supernet, sub, batches, RefineConfig(epochs=8, learning_rate=3e-3), progress=False)
    assert not refined.training
    assert sum(p.numel() for p in refined.parameters()) == count_params(supernet.config, sub).total
    assert refined.config.layer_heads == sliced.config.layer_heads
    assert refined.config.layer_units == sliced.config.layer_units
    assert mean_loss(refined, batches) < 0.9 * mean_loss(sliced, batches)
    assert all(torch.equal(v, before[k]) for k, v in supernet.state_dict().items())  # the supernet is untouched


def test_refining_a_model_with_exits_trains_every_exit_head(sub) -> None:
    supernet = make_supernet(supernet_config(exits=True))
    point = SubNetworkConfig(layers=sub.layers, heads=sub.heads, units=sub.units, exit_threshold=0.3)
    sliced = extract(supernet, point)
    refined = refine_subnetwork(supernet, point, toy_batches(count=4), RefineConfig(epochs=2, learning_rate=3e-3),
                                progress=False)
    assert len(refined.model.exit_heads) == 1 and refined.config.exit_threshold == 0.3
    for name, param in refined.model.exit_heads.named_parameters():
        assert not torch.equal(param, dict(sliced.model.exit_heads.named_parameters())[name]), name
    wrapped = PrunedModel(refined).eval()
    batch = toy_batches(count=1)[0]
    with torch.no_grad():
        answers = wrapped(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], all_exits=True)
    assert answers.shape[0] == 2  # the exit of the first kept layer, then the main head


def test_refining_is_reproducible(sub) -> None:
    supernet, batches = make_supernet(), toy_batches()
    config = RefineConfig(epochs=2, learning_rate=1e-3)
    first = refine_subnetwork(supernet, sub, batches, config, seed=3, progress=False).state_dict()
    second = refine_subnetwork(supernet, sub, batches, config, seed=3, progress=False).state_dict()
    other = refine_subnetwork(supernet, sub, batches, config, seed=4, progress=False).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)  # dropout draws from the seed


def test_stop_returns_nothing(sub) -> None:
    calls = []

    def stop() -> bool:
        calls.append(1)
        return True

    assert refine_subnetwork(make_supernet(), sub, toy_batches(), RefineConfig(epochs=2), should_stop=stop,
                             progress=False) is None
    assert calls == [1]  # after the first step


@pytest.mark.parametrize("fields", [{"epochs": -1}, {"epochs": 101}, {"epochs": 1, "learning_rate": 0}])
def test_bad_settings_are_refused(fields) -> None:
    with pytest.raises(ValueError, match="RefineConfig"):
        RefineConfig(**fields)


def test_nothing_to_refine_at_zero_epochs(sub) -> None:
    assert not RefineConfig().enabled
    with pytest.raises(ValueError, match="nothing to refine"):
        refine_subnetwork(make_supernet(), sub, toy_batches(), RefineConfig(), progress=False)


def test_a_refine_that_diverges_raises_naming_refine_learning_rate() -> None:
    """Regression labels of 1e20 overflow the loss: no refined model comes back to be kept or served."""
    supernet = make_supernet(supernet_config(num_labels=1), seed=2)
    batches = toy_batches(count=2)
    for batch in batches:
        batch["labels"] = batch["labels"].float() * 1e20
    sub = SubNetworkConfig(layers=(0, 2), heads=(2, 4, 1), units=(20, 48, 7))
    with pytest.raises(TrainingDiverged, match=r"^refinement diverged at step 1 of 2: the loss is inf; "
                                               r"lower refine.learning_rate \(now 0.5\)"):
        refine_subnetwork(supernet, sub, batches, RefineConfig(epochs=1, learning_rate=0.5), progress=False)


def test_metrics_are_never_taken_from_logits_that_are_not_finite(sub) -> None:
    """The refined NaN model of the finding scored its split's majority accuracy (argmax of NaN is class 0) and
    tied the slice; now its evaluation refuses."""
    model = extract(make_supernet(), sub)
    batches = toy_batches()
    assert set(evaluate(PrunedModel(model), batches, TOY_SPEC)) >= {"accuracy"}
    with torch.no_grad():
        model.model.head.out.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLogits, match=r"^12 of 24 logits are NaN or inf$"):
        evaluate(PrunedModel(model), batches, TOY_SPEC)
