"""Parameter-shared models (ALBERT) in the supernet, and their stack run as an ODE (issue 34).

ALBERT loads with its layer groups as shared blocks stored once and its logits equal Hugging Face's; the stack
integrated in K steps (Euler or Heun) equals torchdiffeq's integration of the same vector field; K = L with Euler
is the plain stack exactly; the supernet's slice, the exported model and the reloaded folder agree at K < L; params
count each block once and MACs every evaluation."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from conftest import random_inputs, supernet_config
from torchdiffeq import odeint
from transformers import AlbertConfig, AlbertForSequenceClassification, AutoModelForSequenceClassification

from supernet.config import ConfigError, SubNetworkConfig, SupernetConfig
from supernet.convert import supernet_from_hf
from supernet.counting import count_macs, count_params, layer_macs
from supernet.extract import export_subnetwork, extract, load_exported


def albert(groups: int, *, layers: int = 4, num_labels: int = 2, seed: int = 0) -> AlbertForSequenceClassification:
    config = AlbertConfig(vocab_size=99, embedding_size=16, hidden_size=32, num_hidden_layers=layers,
                          num_hidden_groups=groups, num_attention_heads=4, intermediate_size=48,
                          max_position_embeddings=64, num_labels=num_labels, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0)
    torch.manual_seed(seed)
    model = AlbertForSequenceClassification(config).eval()
    with torch.no_grad():  # break the symmetry of fresh LayerNorms and zero biases
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def inputs(batch: int = 3, tokens: int = 11) -> dict[str, torch.Tensor]:
    return random_inputs(batch=batch, tokens=tokens)


@pytest.mark.parametrize(("groups", "num_labels"), [(1, 2), (2, 3), (1, 1), (4, 2), (3, 2)])
def test_albert_loads_with_its_blocks_shared_and_answers_as_hugging_face(groups, num_labels) -> None:
    model = albert(groups, num_labels=num_labels)
    net = supernet_from_hf(model).eval()
    batch = inputs()
    with torch.no_grad():
        want = model(**batch).logits
        got = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # every shared block once: as many parameters as ALBERT, and as counted
    ours = sum(p.numel() for p in net.parameters())
    assert ours == sum(p.numel() for p in model.parameters()) == count_params(net.config).total
    blocks = {n.split(".")[1] for n in net.state_dict() if n.startswith(("blocks.", "layers."))}
    assert len(blocks) == groups
    assert net.config.shared == (groups < 4)


def euler_steps(net, sub: SubNetworkConfig, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The forward written out: embeddings, K Euler steps of each block's residual branch, the head."""
    mask = batch["attention_mask"].bool()[:, None, None, :]
    x = net.embeddings(batch["input_ids"], batch["token_type_ids"])
    with net.use(sub):
        for index, step in sub.schedule(net.config):
            layer = net.layers[index]
            x = x + step * (layer(x, mask) - x)
    return net.head(x)


def test_all_steps_with_euler_is_the_plain_stack_exactly() -> None:
    net = supernet_from_hf(albert(1)).eval()
    full = SubNetworkConfig.full(net.config)
    assert SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units, ode_steps=4,
                            ode_solver="euler") == full  # canonical: K = L and Euler are the defaults
    batch = inputs()
    with torch.no_grad():
        plain = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        with net.use(full):
            stepped = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert torch.equal(stepped, plain)


@pytest.mark.parametrize(("groups", "steps"), [(1, 1), (1, 2), (2, 2)])
def test_fewer_steps_are_larger_euler_steps(groups, steps) -> None:
    net = supernet_from_hf(albert(groups)).eval()
    full = SubNetworkConfig.full(net.config)
    sub = SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units, ode_steps=steps)
    batch = inputs()
    with torch.no_grad(), net.use(sub):
        got = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    with torch.no_grad():
        want = euler_steps(net, sub, batch)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("solver", "method", "steps"), [("euler", "euler", 2), ("heun", "heun2", 2),
                                                         ("heun", "heun2", 4)])
def test_the_integrator_agrees_with_torchdiffeq(solver, method, steps) -> None:
    """A fully shared stack of L layers is dx/dt = f(x) = Layer(x) − x on [0, L]; torchdiffeq integrates it with
    the same fixed step L / K."""
    net = supernet_from_hf(albert(1)).eval()
    full = SubNetworkConfig.full(net.config)
    sub = SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units, ode_steps=steps,
                           ode_solver=solver)
    batch = inputs()
    mask = batch["attention_mask"].bool()[:, None, None, :]
    block = net.blocks[0]
    with torch.no_grad():
        with net.use(sub):
            got = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        x0 = net.embeddings(batch["input_ids"], batch["token_type_ids"])
        path = odeint(lambda t, x: block(x, mask) - x, x0, torch.tensor([0.0, 4.0]), method=method,
                      options={"step_size": 4.0 / steps})
        want = net.head(path[-1])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def narrower(config: SupernetConfig, steps: int | None, solver: str | None = None) -> SubNetworkConfig:
    """Each shared block at fewer heads and units (the same in all of its layers), integrated in `steps`."""
    heads = tuple(max(1, h - 1 - g) for h, g in zip(config.layer_heads, config.layer_groups or range(4), strict=True))
    units = tuple(u // 2 + 3 * g for u, g in zip(config.layer_units, config.layer_groups or range(4), strict=True))
    return SubNetworkConfig(layers=tuple(range(config.num_layers)), heads=heads, units=units, ode_steps=steps,
                            ode_solver=solver)


@pytest.mark.parametrize(("groups", "steps", "solver"), [(1, 2, None), (2, 2, "heun"), (1, 3, None)])
def test_sliced_exported_and_reloaded_agree_at_fewer_steps(groups, steps, solver, tmp_path) -> None:
    net = supernet_from_hf(albert(groups)).eval()
    sub = narrower(net.config, steps, solver)
    batch = inputs()
    folder = export_subnetwork(net, sub, tmp_path / "export", seq_len=11)
    with torch.no_grad():
        with net.use(sub):
            want = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        exported = extract(net, sub)(**batch).logits
        own = load_exported(folder)
        reloaded = own(**batch).logits
        remote = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)(**batch).logits
    for got in (exported, reloaded, remote):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # each block stored once, and counted so
    params = count_params(net.config, sub)
    assert sum(p.numel() for p in own.parameters()) == params.total
    assert own.config.ode_steps == sub.ode_steps and own.config.ode_solver == sub.ode_solver

    # the steps changed after loading, as at export
    other = narrower(net.config, None)
    own.set_ode_steps(None, "euler")
    with torch.no_grad(), net.use(other):
        torch.testing.assert_close(own(**batch).logits,
                                   net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]),
                                   atol=1e-5, rtol=1e-5)
    assert own.config.ode_steps is None and own.config.ode_solver is None
    with pytest.raises(ValueError, match="ode_steps"):
        own.set_ode_steps(5)


def test_blocks_of_unequal_sizes_take_the_steps_that_end_on_their_boundaries(tmp_path) -> None:
    """ALBERT's own mapping of 3 groups over 4 layers is [0, 0, 1, 2]; a mapping of blocks of 2 and 4 layers is
    integrated in 3 steps of 2 (one for the first block, two for the second), and a step of 1.5 or 3 that would
    straddle their boundary is refused; sliced, manual, exported and reloaded agree there."""
    from conftest import make_supernet

    from supernet.schedules import ode_schedule, ode_step_counts

    assert SupernetConfig.from_hf(albert(3).config).layer_groups == (0, 0, 1, 2)
    assert ode_step_counts((0, 0, 1, 2), 4) == [4] and ode_step_counts((0, 0, 0, 1, 1, 1), 6) == [2, 4, 6]
    groups = (0, 0, 1, 1, 1, 1)
    assert ode_step_counts(groups, 6) == [3, 6]
    assert ode_schedule(groups, 6, 3) == [(0, 2.0), (2, 2.0), (3, 2.0)]
    net = make_supernet(supernet_config(num_layers=6, layer_groups=groups))
    with pytest.raises(ConfigError, match=r"ode_steps must be one of \[3, 6\]"):
        SubNetworkConfig(layers=tuple(range(6)), heads=(4,) * 6, units=(48,) * 6, ode_steps=2).validate(net.config)
    sub = SubNetworkConfig(layers=tuple(range(6)), heads=(3, 3, 2, 2, 2, 2), units=(24,) * 2 + (36,) * 4,
                           ode_steps=3)
    batch = inputs()
    folder = export_subnetwork(net, sub, tmp_path / "export", seq_len=11)
    with torch.no_grad():
        with net.use(sub):
            want = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        manual = euler_steps(net, sub, batch)
        reloaded = load_exported(folder)(**batch).logits
        remote = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)(**batch).logits
    for got in (manual, reloaded, remote):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert count_macs(net.config, sub, seq_len=11) < count_macs(net.config, None, seq_len=11)


@pytest.mark.slow  # torch.onnx export takes a few seconds
def test_a_shared_model_at_fewer_steps_exports_to_onnx(tmp_path) -> None:
    """The ONNX graph unrolls the steps: each evaluation of a shared block is a node reading the same weights, so the
    file holds every block once and answers as the module does (Heun at 2 of 4 steps)."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from supernet.extract import export_onnx

    net = supernet_from_hf(albert(2)).eval()
    sub = narrower(net.config, 2, "heun")
    model = load_exported(export_subnetwork(net, sub, tmp_path / "export", seq_len=11))
    path = export_onnx(model, tmp_path / "export" / "model.onnx", seq_len=11)
    stored = sum(math.prod(t.dims) for t in onnx.load(str(path)).graph.initializer)
    params = count_params(net.config, sub)
    # each block once: beyond the model's parameters only a few scalar and shape constants, far less than a block
    assert params.total <= stored < params.total + params.encoder // 2 // 10
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, tokens in ((3, 11), (1, 7)):
        feed = inputs(batch, tokens)
        got = session.run(["logits"], {k: v.numpy() for k, v in feed.items()})[0]
        with torch.no_grad():
            want = model(**feed).logits
        torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=1e-4)


def test_params_count_blocks_once_and_macs_count_every_evaluation() -> None:
    net = supernet_from_hf(albert(2)).eval()
    config = net.config
    one = layer_params = count_params(config, narrower(config, None)).encoder
    assert count_params(config, narrower(config, 2)).encoder == one  # steps change compute, not storage
    del layer_params
    sub = narrower(config, 2, "heun")
    per_block = [layer_macs(config, sub.heads[i], sub.units[i], 20) for i in (0, 2)]
    encoder = count_macs(config, sub, seq_len=20, encoder_only=True)
    assert encoder == 2 * sum(per_block)  # one step per block, two evaluations a step
    assert count_macs(config, narrower(config, None), seq_len=20, encoder_only=True) == 2 * sum(per_block)
    projection = 20 * 16 * 32
    assert count_macs(config, sub, seq_len=20) - encoder == projection + 32 * 32 + 32 * 2


def test_bad_ode_settings_name_the_field() -> None:
    net = supernet_from_hf(albert(2))
    config = net.config
    full = SubNetworkConfig.full(config)
    with pytest.raises(ConfigError, match="ode_steps"):
        SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units, ode_steps=0)
    with pytest.raises(ConfigError, match="ode_steps"):
        SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units, ode_steps=5)
    with pytest.raises(ConfigError, match="ode_solver"):
        SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units, ode_solver="rk4")
    with pytest.raises(ConfigError, match=r"ode_steps must be one of \[2, 4\]"):
        SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units, ode_steps=3).validate(config)
    with pytest.raises(ConfigError, match="keeps every layer"):
        SubNetworkConfig(layers=(0, 1, 2), heads=full.heads, units=full.units).validate(config)
    with pytest.raises(ConfigError, match="same heads and units"):
        SubNetworkConfig(layers=full.layers, heads=(4, 3, 4, 4), units=full.units).validate(config)
    unshared = SupernetConfig(num_layers=2, hidden_size=32, num_heads=4, head_size=8, intermediate_size=48,
                              vocab_size=99, max_position_embeddings=64, type_vocab_size=2, num_labels=2)
    with pytest.raises(ConfigError, match="parameter-shared"):
        SubNetworkConfig(layers=(0, 1), heads=(4, 4), units=(48, 48), ode_steps=1).validate(unshared)
    with pytest.raises(ConfigError, match="between 1 and the layers"):
        SupernetConfig.from_hf(AlbertConfig(num_hidden_layers=4, num_hidden_groups=5, hidden_size=32,
                                            num_attention_heads=4))
    with pytest.raises(ConfigError, match="contiguous"):
        SupernetConfig(num_layers=4, hidden_size=32, num_heads=4, head_size=8, intermediate_size=48, vocab_size=99,
                       max_position_embeddings=64, type_vocab_size=2, num_labels=2, layer_groups=(0, 1, 0, 1))
    keep = (1.0, 0.5, 0.5, 0.25)
    with pytest.raises(ConfigError, match="token elimination runs with Euler steps"):
        SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units, token_keep=keep,
                         ode_steps=2, ode_solver="heun").validate(config)
    exiting = supernet_config(num_layers=4, layer_groups=(0, 0, 1, 1), exits=True)
    with pytest.raises(ConfigError, match="early exits do not run with ode_steps"):
        SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units, exit_threshold=0.3,
                         ode_steps=2).validate(exiting)


def test_tokens_leave_a_shared_stack_at_the_odes_times_whatever_the_steps() -> None:
    """A keep schedule is over the L layers' times: a step ending at time t keeps what layer ⌈t⌉ − 1 would. Fully
    shared, 4 layers in 2 steps of 2: after the first step the schedule's second entry (12 -> 6 tokens), after the
    second its fourth (6 -> 3), not the first two entries the steps' own layer indices would read."""
    from supernet.schedules import step_keep_layers

    assert step_keep_layers([(0, 2.0), (1, 2.0)]) == [1, 3]
    assert step_keep_layers([(i, 1.0) for i in range(4)]) == [0, 1, 2, 3]
    assert step_keep_layers([(0, 1.5), (1, 1.5), (2, 1.5), (3, 1.5)]) == [1, 2, 4, 5]
    net = supernet_from_hf(albert(1)).eval()
    full = SubNetworkConfig.full(net.config)
    sub = SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units, token_keep=(1.0, 0.5, 0.5, 0.25),
                           ode_steps=2)
    kept = []  # the FFN runs on the tokens each step keeps
    hook = net.blocks[0].ffn.register_forward_pre_hook(lambda _m, args: kept.append(args[0].shape[1]))
    batch = random_inputs(batch=1, tokens=12)
    with torch.no_grad(), net.use(sub):
        net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    hook.remove()
    assert kept == [6, 3]
    timed, evaluations = sub.unrolled(net.config)
    assert timed.layers == (0, 1) and timed.token_keep[:2] == (0.5, 0.25) and evaluations == 1
    h, u = full.heads[0], full.units[0]
    assert count_macs(net.config, sub, seq_len=12, encoder_only=True) == (
        layer_macs(net.config, h, u, 12, 6) + layer_macs(net.config, h, u, 6, 3))
    assert count_macs(net.config, replace(sub, token_keep=None), seq_len=12, encoder_only=True) == (
        2 * layer_macs(net.config, h, u, 12))


@pytest.mark.parametrize(("groups", "steps"), [(1, 2), (2, 2), (1, 3)])
def test_a_shared_stack_eliminating_tokens_in_fewer_steps_exports_and_reloads_alike(groups, steps, tmp_path) -> None:
    net = supernet_from_hf(albert(groups)).eval()
    sub = replace(narrower(net.config, steps), token_keep=(0.9, 0.7, 0.6, 0.4))
    batch = inputs(batch=4, tokens=13)
    folder = export_subnetwork(net, sub, tmp_path / "export", seq_len=13)
    with torch.no_grad():
        with net.use(sub):
            want = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            alone = [net(*(batch[k][i:i + 1] for k in ("input_ids", "attention_mask", "token_type_ids")))
                     for i in range(4)]
        reloaded = load_exported(folder)(**batch).logits
        remote = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)(**batch).logits
    for got in (torch.cat(alone), reloaded, remote):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad(), net.use(replace(sub, token_keep=None)):
        assert not torch.allclose(net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]), want)


def test_the_shared_space_searches_block_widths_steps_and_solver() -> None:
    import random

    from supernet.space import SharedSpace, make_space

    config = supernet_from_hf(albert(2)).config
    space = make_space("importance", config, importance=None)
    assert isinstance(space, SharedSpace) and isinstance(make_space("per_layer", config), SharedSpace)
    assert space.upper == [4, 4, 24, 24, 2, 1] and space.lower == [1, 1, 1, 1, 1, 0]
    assert space.largest() == SubNetworkConfig(layers=(0, 1, 2, 3), heads=(4,) * 4, units=(48,) * 4,
                                               ode_solver="heun")
    rng = random.Random(0)
    for _ in range(20):
        sub = space.sample(rng)
        sub.validate(config)
        assert space.decode(space.encode(sub)) == sub and sub.ode_steps in (None, 2)
    # blocks of 2 and 4 layers: the step gene indexes the counts they take (3 and 6)
    uneven = SharedSpace(supernet_config(num_layers=6, layer_groups=(0, 0, 1, 1, 1, 1)))
    assert uneven.upper[-2:] == [2, 1] and uneven.lower[-2:] == [1, 0]
    steps = set()
    for _ in range(20):
        sub = uneven.sample(rng)
        sub.validate(uneven.config)
        assert uneven.decode(uneven.encode(sub)) == sub
        steps.add(sub.ode_steps)
    assert steps == {None, 3}
    for name in ("uniform", "layers"):
        with pytest.raises(ConfigError, match="parameter-shared"):
            make_space(name, config)


def test_importance_reorders_each_shared_block_once() -> None:
    """The permutation leaves the function unchanged only when a block shared by two layers is permuted once."""
    from supernet.importance import Importance, reorder_by_importance

    net = supernet_from_hf(albert(1)).eval()
    batch = inputs()
    scores = Importance(heads=[torch.tensor([0.1, 0.4, 0.3, 0.2])] * 4, units=[torch.arange(48.0)] * 4)
    with torch.no_grad():
        want = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        before = net.blocks[0].attention.query.weight.clone()
        reorder_by_importance(net, scores)
        got = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(net.blocks[0].attention.query.weight[:8], before[8:16])  # head 1 first, once


def test_the_latency_table_prices_steps_as_the_layers_they_run() -> None:
    from search.latency import calibrate

    config = supernet_from_hf(albert(1)).config
    table = calibrate(config, batch_size=1, seq_len=4, repeats=1, unit_step=16)
    full = SubNetworkConfig.full(config)
    fewer = SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units, ode_steps=2)
    unrolled, evaluations = fewer.unrolled(config)
    assert unrolled.layers == (0, 1) and evaluations == 1
    heun, twice = SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units, ode_steps=2,
                                   ode_solver="heun").unrolled(config)
    assert heun == unrolled and twice == 2
    assert table.predict(unrolled) < table.predict(unrolled, evaluations=2) == pytest.approx(
        table.predict(SubNetworkConfig.full(config)), rel=1e-9)  # 2 steps x 2 evaluations = 4 layers


@pytest.mark.slow
def test_a_search_on_a_shared_model_searches_its_steps(workspace, tmp_path, monkeypatch) -> None:
    """The whole job on a tiny ALBERT of two layer groups (MiniLM's vocabulary): trained, searched with the step
    genes and token elimination's (each block's layers alike; Euler, the solver tokens are dropped in), a point
    that does both exported with its steps and schedule, counted exactly and answering as the supernet's slice."""
    import json

    from conftest import cli

    monkeypatch.setenv("NASPRUNE_CACHE", str(tmp_path / "cache"))
    from supernet.convert import load_tokenizer

    tokenizer = load_tokenizer(str(workspace / "model"))
    model = AlbertForSequenceClassification(AlbertConfig(
        vocab_size=tokenizer.vocab_size, embedding_size=16, hidden_size=32, num_hidden_layers=4, num_hidden_groups=2,
        num_attention_heads=4, intermediate_size=48, max_position_embeddings=64))
    model.save_pretrained(tmp_path / "albert")
    tokenizer.save_pretrained(tmp_path / "albert")
    args = ["--model", str(tmp_path / "albert"), "--task", "custom/toy", "--train-file", str(workspace / "train.csv"),
            "--test-file", str(workspace / "test.csv"), "--text-columns", "text", "--max-length", "16",
            "--epochs", "1", "--evaluations", "16", "--latency-batch-size", "2", "--token-elimination",
            "--objectives", "error,expected_macs"]
    out = tmp_path / "run"
    assert cli(["search", *args, "--out", str(out)]) == 0
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    configs = [SubNetworkConfig.from_dict(t["config"]) for t in trials]
    assert {c.ode_steps for c in configs} > {None} and {c.ode_solver for c in configs} == {None}
    assert all(len(c.layers) == 4 and c.heads[0] == c.heads[1] and c.heads[2] == c.heads[3] for c in configs)
    both = [t for t, c in zip(trials, configs, strict=True) if c.ode_steps and c.token_keep]
    assert both and all(len(t["dynamics"]["mean_tokens"]) == 2 for t in both)  # per step: 2 steps of 2 layers
    front = json.loads((out / "front.json").read_text())["points"]
    position = next((k for k, p in enumerate(front) if p["config"].get("token_keep")), 0)
    assert cli(["export", "--run", str(out), "--point", str(position), "--sliced",
                "--out", str(tmp_path / "export")]) == 0
    record = json.loads((tmp_path / "export" / "subnetwork.json").read_text())
    point = SubNetworkConfig.from_dict(record["config"])
    exported = load_exported(tmp_path / "export")
    assert exported.config.ode_steps == point.ode_steps and exported.config.ode_solver == point.ode_solver
    assert exported.config.token_keep == (None if point.token_keep is None else list(point.token_keep))
    assert sum(p.numel() for p in exported.parameters()) == record["params"]["total"]


@pytest.mark.slow
def test_dynamic_options_on_a_shared_model_are_refused_clearly(workspace, tmp_path, capsys) -> None:
    from conftest import cli

    from supernet.convert import load_tokenizer

    tokenizer = load_tokenizer(str(workspace / "model"))
    AlbertForSequenceClassification(AlbertConfig(
        vocab_size=tokenizer.vocab_size, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_hidden_groups=1,
        num_attention_heads=4, intermediate_size=48, max_position_embeddings=64)).save_pretrained(tmp_path / "albert")
    tokenizer.save_pretrained(tmp_path / "albert")
    args = ["--model", str(tmp_path / "albert"), "--task", "custom/toy", "--train-file", str(workspace / "train.csv"),
            "--test-file", str(workspace / "test.csv"), "--text-columns", "text", "--max-length", "16"]
    assert cli(["train", *args, "--train-token-elimination", "--out", str(tmp_path / "t")]) == 2
    assert "parameter-shared" in capsys.readouterr().err
    assert cli(["search", *args, "--epochs", "1", "--evaluations", "2", "--ode-compensation",
                "--out", str(tmp_path / "s")]) == 2
    assert "parameter-shared" in capsys.readouterr().err
