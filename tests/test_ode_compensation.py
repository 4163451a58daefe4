"""ODE-compensated layer dropping (the ODE view of residual networks, Chen et al., Findings of EMNLP 2023): a kept
layer followed by m dropped ones takes one Euler step x + (1 + m)·(Layer(x) − x). Its canonical form and steps,
the forward against a hand computation, supernet == extracted == exported folder (with and without remote code,
with token elimination and exits too), and its gene in the search spaces."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch
from conftest import make_supernet, random_inputs, supernet_config
from transformers import AutoModelForSequenceClassification

from supernet.config import ConfigError, SubNetworkConfig
from supernet.extract import export_subnetwork, extract, load_exported
from supernet.modeling_nasprune import NasPruneConfig
from supernet.space import ExitSpace, LayerSpace, OdeCompensationSpace, TokenEliminationSpace, make_space

FULL = (4, 4, 4, 4)
UNITS = (48, 48, 48, 48)
STILL = dict(hidden_dropout=0.0, attention_dropout=0.0)


def sub(layers: tuple[int, ...], compensate: bool = True, **extra) -> SubNetworkConfig:
    return SubNetworkConfig(layers=layers, heads=FULL, units=UNITS, ode_compensation=compensate, **extra)


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"))
    return getattr(out, "logits", out)


# ------------------------------------------------------------------------------------------ the configuration


@pytest.mark.parametrize(("layers", "steps"), [((0, 2), (2.0, 2.0)), ((1, 2), (1.0, 2.0)), ((0,), (4.0,)),
                                               ((0, 1, 3), (1.0, 2.0, 1.0)), ((3,), (1.0,))])
def test_each_kept_layer_steps_to_the_next_kept_one(layers, steps) -> None:
    assert sub(layers).step_sizes() == steps
    assert sub(layers, compensate=False).step_sizes() == (1.0,) * len(layers)


def test_compensation_is_off_where_it_changes_nothing_and_round_trips() -> None:
    assert not sub((0, 1, 2, 3)).ode_compensation  # nothing dropped
    assert not sub((2, 3)).ode_compensation  # only leading layers dropped: no kept layer stands in for them
    assert sub((2, 3)).to_dict() == sub((2, 3), compensate=False).to_dict()  # one key for one computation
    on = sub((0, 2))
    assert on.to_dict()["ode_compensation"] is True and "ode_compensation" not in sub((0, 2), False).to_dict()
    assert SubNetworkConfig.from_dict(on.to_dict()) == on and on.is_static and on.static() == on
    with pytest.raises(ConfigError, match="ode_compensation must be true or false"):
        SubNetworkConfig.from_dict(on.to_dict() | {"ode_compensation": "yes"})
    with pytest.raises(ValueError, match="layer_steps needs one step >= 1 per layer"):
        NasPruneConfig(num_layers=2, layer_steps=[1.0])


# ------------------------------------------------------------------------------------------ the forward


def test_the_forward_is_the_euler_step_along_each_kept_layers_residual_branch() -> None:
    net = make_supernet(supernet_config(num_layers=4, **STILL)).eval()
    inputs = random_inputs(3, 9)
    mask = inputs["attention_mask"].bool()[:, None, None, :]
    point = sub((0, 2))
    with torch.no_grad():
        x = net.embeddings(inputs["input_ids"], inputs["token_type_ids"])
        for index, step in zip(point.layers, point.step_sizes(), strict=True):
            x = x + step * (net.layers[index](x, mask) - x)
        expected = net.head(x)
        with net.use(point):
            torch.testing.assert_close(_logits(net, inputs), expected, rtol=0, atol=1e-6)
        with net.use(replace(point, ode_compensation=False)):
            plain = _logits(net, inputs)
        full = _logits(net, inputs)
        x = net.embeddings(inputs["input_ids"], inputs["token_type_ids"])
        for index in range(4):
            x = x + 1.0 * (net.layers[index](x, mask) - x)  # step 1 everywhere: the plain stack
        torch.testing.assert_close(net.head(x), full, rtol=0, atol=1e-6)
        with net.use(sub((0, 1, 2, 3))):  # compensation with nothing dropped is the plain stack exactly
            assert torch.equal(_logits(net, inputs), full)
    assert not torch.allclose(plain, expected)  # the steps change the answer
    assert net.layer_steps is None  # back to the full network


@pytest.mark.parametrize("extra", [{}, {"token_keep": (1.0, 0.6, 0.6, 0.4)}, {"exit_threshold": 0.5}],
                         ids=["static", "token elimination", "exits"])
def test_sliced_extracted_and_exported_agree(extra, tmp_path) -> None:
    net = make_supernet(supernet_config(num_layers=4, exits="exit_threshold" in extra, **STILL), seed=2).eval()
    inputs = random_inputs(4, 12, seed=1)
    rng = random.Random(0)
    for i, layers in enumerate([(0, 2), (1,), (0, 1, 3)]):
        point = SubNetworkConfig(layers=layers, heads=tuple(rng.randint(1, 4) for _ in range(4)),
                                 units=tuple(rng.randint(0, 48) for _ in range(4)), ode_compensation=True, **extra)
        assert point.ode_compensation
        with net.use(point):
            sliced = _logits(net, inputs)
        torch.testing.assert_close(_logits(extract(net, point), inputs), sliced, rtol=0, atol=1e-5)
        folder = export_subnetwork(net, point, tmp_path / str(i))
        local = load_exported(folder)
        assert local.config.layer_steps == list(point.step_sizes())
        torch.testing.assert_close(_logits(local, inputs), sliced, rtol=0, atol=1e-5)
        remote = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
        torch.testing.assert_close(_logits(remote, inputs), sliced, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------ the gene


def test_the_gene_decodes_encodes_and_composes_with_the_dynamic_genes() -> None:
    config = supernet_config(num_layers=4)
    space = OdeCompensationSpace(LayerSpace(config))
    assert space.name == "layers+ode" and space.lower == [0] * 5 and space.upper == [1] * 5
    point = space.decode([1, 0, 1, 0, 1])
    assert point.layers == (0, 2) and point.ode_compensation and space.encode(point) == [1, 0, 1, 0, 1]
    assert not space.decode([1, 0, 1, 0, 0]).ode_compensation
    assert space.largest() == LayerSpace(config).largest()  # the same network: nothing is dropped
    stacked = ExitSpace(TokenEliminationSpace(OdeCompensationSpace(make_space("per_layer", config))), [0.0, 0.3])
    rng = random.Random(1)
    for _ in range(30):
        drawn = stacked.sample(rng)
        assert stacked.decode(stacked.encode(drawn)) == drawn


def test_a_layers_search_with_the_gene_scores_compensated_points_as_their_exports_run(workspace, tmp_path,
                                                                                       monkeypatch) -> None:
    from conftest import cli, task_args

    from search.job import read_trials
    from supernet.counting import count_params
    from supernet.evaluation import evaluate
    from supernet.run import Run

    monkeypatch.setenv("NASPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert cli(["search", *task_args(workspace), "--epochs", "1", "--batch-size", "8", "--evaluations", "8",
                "--objectives", "error,params", "--max-length", "16", "--space", "layers", "--ode-compensation",
                "--evaluation-dtype", "float32", "--out", str(out)]) == 0
    run = Run(out)
    supernet = run.load_supernet()
    trials = read_trials(out)
    compensated = [t for t in trials if t.config.ode_compensation]
    assert compensated and len(compensated) < len(trials)
    point = compensated[0]
    assert evaluate(extract(supernet, point.config), run.batches("validation"), run.task.spec) == point.validation
    plain = replace(point.config, ode_compensation=False)  # the same layers dropped plainly: the same size
    assert point.params == count_params(supernet.config, plain).to_dict() == count_params(supernet.config,
                                                                                          point.config).to_dict()
