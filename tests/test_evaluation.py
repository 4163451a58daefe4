"""supernet.evaluation: predictions in loader order, metrics of a sub-network, the supernet restored afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_supernet, random_inputs, supernet_config

from supernet.config import SubNetworkConfig
from supernet.evaluation import evaluate, metrics_from_logits, predict
from supernet.extract import extract
from supernet.metrics import compute_metrics
from supernet.tasks import TaskSpec


def _batches(num_labels: int = 2) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(3):
        batch = random_inputs(4, 9, seed=i)
        gen = torch.Generator().manual_seed(i)
        batch["labels"] = torch.randn(4, generator=gen) if num_labels == 1 else torch.randint(0, 2, (4,), generator=gen)
        out.append(batch)
    return out


CLASSIFICATION = TaskSpec("custom/x", False, ("a", "b"), ("accuracy", "f1"), "accuracy")
REGRESSION = TaskSpec("custom/y", True, (), ("pearson", "spearman"), "spearman")


def test_predict_concatenates_in_order(tiny_supernet) -> None:
    batches = _batches()
    logits, labels = predict(tiny_supernet, batches)
    assert logits.shape == (12, 2) and labels.shape == (12,)
    with torch.no_grad():
        expected = torch.cat([tiny_supernet(b["input_ids"], b["attention_mask"], b["token_type_ids"]) for b in batches])
    np.testing.assert_allclose(logits, expected.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(labels, torch.cat([b["labels"] for b in batches]).numpy())


def test_evaluate_sub_network_equals_extracted_model(tiny_supernet) -> None:
    batches = _batches()
    sub = SubNetworkConfig(layers=(0, 2), heads=(1, 0, 4), units=(48, 0, 3))
    tiny_supernet.train()
    sliced = evaluate(tiny_supernet, batches, CLASSIFICATION, sub=sub)
    assert tiny_supernet.sub_network is None and not tiny_supernet.training  # full network, eval mode
    model = extract(tiny_supernet, sub)
    assert evaluate(model, batches, CLASSIFICATION) == sliced
    logits, labels = predict(model, batches)
    assert sliced == compute_metrics(CLASSIFICATION, logits.argmax(-1), labels)
    with pytest.raises(ValueError, match="Supernet"):
        evaluate(model, batches, CLASSIFICATION, sub=sub)


def test_regression_metrics_use_the_single_output() -> None:
    net = make_supernet(supernet_config(num_labels=1), seed=3)
    batches = _batches(num_labels=1)
    metrics = evaluate(net, batches, REGRESSION)
    logits, labels = predict(net, batches)
    assert logits.shape == (12, 1)
    assert metrics == compute_metrics(REGRESSION, logits[:, 0], labels)
    assert metrics == metrics_from_logits(REGRESSION, logits, labels)
