"""Exit-aware supernet training and importance (COST-EFF, Shen et al., EMNLP 2022): every exit trained on the labels
and by distillation from the full network's final logits, gradient equilibrium against a hand computation,
exit-aware Fisher importance against an explicit mask-gradient computation, settings and files that keep `exits`,
and a tiny run on real MRPC rows that saves a supernet with working exits."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import GLUE_DIR, make_supernet, record_sub_networks, supernet_config, toy_batches
from test_training import FakeLoader, toy_data

from supernet.config import SubNetworkConfig, SupernetConfig
from supernet.convert import load_supernet_from_pretrained
from supernet.importance import fisher_importance, weigh_exits
from supernet.model import Supernet
from supernet.run import Run, load_supernet, same_run, save_supernet, spec_differences, train_run
from supernet.settings import RunSpec, TrainingConfig
from supernet.space import make_space
from supernet.training import SupernetTrainer, distillation_loss, gradient_equilibrium

# no dropout: a step's losses and gradients can then be recomputed exactly
STILL = dict(hidden_dropout=0.0, attention_dropout=0.0)


def _exits_supernet(seed: int = 0, num_labels: int = 2, **overrides) -> Supernet:
    return make_supernet(supernet_config(num_labels=num_labels, exits=True, **(STILL | overrides)), seed=seed)


def _trainer(model: Supernet, data: dict[str, torch.Tensor], **config) -> SupernetTrainer:
    settings = dict(epochs=1, plain_fraction=0.0, num_random_subnets=2, learning_rate=1e-2, seed=3) | config
    return SupernetTrainer(model, make_space("uniform", model.config), FakeLoader(data, 4), TrainingConfig(**settings),
                           progress=False)


def _inputs(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------------- training with exits


def test_one_step_trains_every_exit_head_and_every_exits_loss_is_finite() -> None:
    model = _exits_supernet().train()
    before = {n: p.detach().clone() for n, p in model.exit_heads.named_parameters()}
    state = _trainer(model, toy_data(4), exits=True).train()
    assert state.step == 1 and set(state.history[0]) == {"loss_full", "loss_subnets", "step"}
    assert all(torch.isfinite(torch.tensor(v)) for v in state.history[0].values())
    for name, param in model.exit_heads.named_parameters():
        assert not torch.equal(param, before[name]), name
    batch = toy_data(4)
    with torch.no_grad():
        logits = model(*_inputs(batch), all_exits=True)
    assert logits.shape == (3, 4, 2)
    assert all(torch.isfinite(F.cross_entropy(exit_logits, batch["labels"])) for exit_logits in logits)
    assert not model.layers[0].ffn._forward_hooks and not model.exit_heads[0]._forward_pre_hooks  # hooks removed


def test_exit_heads_learn_at_their_scaled_rate_and_the_rest_at_the_base_rate() -> None:
    """exit_learning_rate_scale puts the exit heads in AdamW groups of their own at that multiple of the rate:
    AdamW's first step moves each weight by about its group's rate, so the heads move `scale` times further."""
    moved = {}
    for scale in (1.0, 10.0):
        model = _exits_supernet().train()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainer = _trainer(model, toy_data(4), exits=True, exit_learning_rate_scale=scale, weight_decay=0.0,
                           warmup_ratio=0.0, learning_rate=1e-3)
        exit_params = {id(p) for p in model.exit_heads.parameters()}
        rates = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
        assert {rates[i] for i in exit_params} == {1e-3 * scale}
        assert {r for i, r in rates.items() if i not in exit_params} == {1e-3}
        trainer.train()
        moved[scale] = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    weight = "exit_heads.0.out.weight"
    assert moved[10.0][weight] == pytest.approx(10 * moved[1.0][weight], rel=0.05)
    assert _trainer(_exits_supernet(), toy_data(4), exit_learning_rate_scale=10.0).optimizer.param_groups[0]["lr"] \
        == 1e-2  # without exits training the scale changes nothing


def _weighted_mean(losses: list[torch.Tensor], weighting: str) -> torch.Tensor:
    """mean: every exit alike; depth: the k-th exit (1-based) weighs k (PABEE)."""
    weights = [1.0] * len(losses) if weighting == "mean" else [float(k) for k in range(1, len(losses) + 1)]
    return sum(w * loss for w, loss in zip(weights, losses, strict=True)) / sum(weights)


@pytest.mark.parametrize("weighting", ["mean", "depth"])
@pytest.mark.parametrize("regression", [False, True], ids=["classification", "regression"])
def test_the_full_network_learns_the_labels_at_every_exit_and_subnetworks_distil_its_final_logits(
        regression: bool, weighting: str) -> None:
    """loss_full is the (weighted) mean of the exits' task losses; loss_subnets the mean over the sandwich's members
    of the (weighted) mean over their exits of distillation from the full network's *main head* plus the weighted
    label loss. Depth weighting: the k-th kept layer's exit weighs k, counted among the member's own kept layers."""
    model = _exits_supernet(num_labels=1 if regression else 2).train()
    data = toy_data(4, regression=regression)
    trainer = _trainer(model, data, exits=True, label_loss_weight=0.5, temperature=2.0,
                       exit_loss_weighting=weighting)
    rng = random.Random()
    rng.setstate(trainer.rng.getstate())
    space = trainer.space
    subs = [space.smallest()] + [space.sample(rng) for _ in range(2)]
    labels = data["labels"]

    def label_loss(logits: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits.squeeze(-1), labels) if regression else F.cross_entropy(logits, labels)

    with torch.no_grad():
        full = model(*_inputs(data), all_exits=True)
        expected_full = _weighted_mean([label_loss(e) for e in full], weighting)
        teacher = full[-1]
        expected_subs = []
        for sub in subs:
            model.set_sub_network(sub)
            student = model(*_inputs(data), all_exits=True)
            assert len(student) == len(sub.layers)
            per_exit = [distillation_loss(e, teacher, 2.0) + 0.5 * label_loss(e) for e in student]
            expected_subs.append(_weighted_mean(per_exit, weighting))
        model.reset_super_network()
    losses = trainer._forward_backward(data, 1.0)
    assert losses["loss_full"] == pytest.approx(float(expected_full), rel=1e-5)
    assert losses["loss_subnets"] == pytest.approx(float(sum(expected_subs) / len(subs)), rel=1e-5)


def test_detached_exits_leave_the_backbone_to_the_last_layer_as_without_exits() -> None:
    """detach_exits (DeeBERT's two stages at once): one training step, the sandwich and a tight clip included, moves
    every backbone weight exactly as a run without exits does, and each exit head by its own loss on the detached
    hidden state; its Fisher importance is the last layer's."""
    data = toy_data(4)
    settings = dict(max_grad_norm=1e-3, weight_decay=0.0, warmup_ratio=0.0, learning_rate=1e-3)
    plain, detached = _exits_supernet().train(), _exits_supernet().train()
    before = {n: p.detach().clone() for n, p in detached.exit_heads.named_parameters()}
    _trainer(plain, data, **settings).train()
    _trainer(detached, data, exits=True, detach_exits=True, **settings).train()
    for (name, a), (_, b) in zip(plain.named_parameters(), detached.named_parameters(), strict=True):
        if not name.startswith("exit_heads."):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert all(not torch.equal(p, before[n]) for n, p in detached.exit_heads.named_parameters())
    assert not detached.exit_heads[0]._forward_pre_hooks  # the detaching hooks are gone
    # the full network's loss: the last layer's at full weight plus each head's own
    model = _exits_supernet().train()
    trainer = _trainer(model, data, exits=True, detach_exits=True, num_random_subnets=0)
    with torch.no_grad():
        full = model(*_inputs(data), all_exits=True)
    by_hand = sum(F.cross_entropy(e, data["labels"]) for e in full)
    assert trainer._forward_backward(data, 1.0)["loss_full"] == pytest.approx(float(by_hand), rel=1e-5)
    # importance without the exits' losses
    batches = toy_batches(2, seed=5)
    model = _exits_supernet().eval()
    without = make_supernet(supernet_config(exits=False, **STILL), seed=0)
    without.load_state_dict(model.state_dict(), strict=False)
    last_layer = fisher_importance(model, batches, max_batches=2, progress=False, exit_weighting=None)
    assert last_layer.to_dict() == fisher_importance(without, batches, max_batches=2, progress=False).to_dict()
    assert last_layer.to_dict() != fisher_importance(model, batches, max_batches=2, progress=False).to_dict()


def test_detached_exits_do_nothing_without_exits() -> None:
    assert TrainingConfig(detach_exits=True).canonical() == TrainingConfig()
    assert TrainingConfig(exits=True, detach_exits=True).canonical().detach_exits


def test_exit_losses_are_weighed_alike_or_by_depth_and_nothing_else() -> None:
    losses = torch.tensor([3.0, 2.0, 1.0])
    assert weigh_exits(losses, "mean").item() == pytest.approx(2.0)
    assert weigh_exits(losses, "depth").item() == pytest.approx((3 + 4 + 3) / 6)
    with pytest.raises(ValueError, match="exit loss weighting 'sum'"):
        weigh_exits(losses, "sum")
    with pytest.raises(ValueError, match="exit_loss_weighting"):
        TrainingConfig(exit_loss_weighting="sum")


def test_training_exits_needs_a_supernet_with_exit_heads() -> None:
    with pytest.raises(ValueError, match="training.exits"):
        _trainer(make_supernet(), toy_data(4), exits=True)


def test_without_exits_a_step_is_the_plain_sandwich() -> None:
    """Exits off: the gradients of a step are those of the plain sandwich written out here (labels for the full
    network; distillation from its logits plus the label loss for the smallest and k random members), and no exit
    forward or hook is involved."""
    model = make_supernet(supernet_config(**STILL), seed=2).train()
    data = toy_data(4)
    trainer = _trainer(model, data, label_loss_weight=0.5)
    rng = random.Random()
    rng.setstate(trainer.rng.getstate())
    subs = [trainer.space.smallest()] + [trainer.space.sample(rng) for _ in range(2)]
    trainer._forward_backward(data, 1.0)
    got = _grads(model)
    model.zero_grad(set_to_none=True)
    logits = model(*_inputs(data))
    F.cross_entropy(logits, data["labels"]).backward()
    teacher = logits.detach()
    for sub in subs:
        model.set_sub_network(sub)
        student = model(*_inputs(data))
        (distillation_loss(student, teacher, 1.0) + 0.5 * F.cross_entropy(student, data["labels"])).backward()
    model.reset_super_network()
    expected = _grads(model)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[n], expected[n]) for n in got)


# ------------------------------------------------------------------------------------------ gradient equilibrium


def _equilibrium_by_hand(model: Supernet, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor,
                         weights: list[float]) -> dict[str, torch.Tensor]:
    """Li et al.'s gradient equilibrium written out: with every exit's plain gradient g_k (no hooks), a parameter of
    the layer at kept position p gets 1/(E-p)·Σ_{k>=p} w_k·g_k, the embeddings 1/E·Σ_k w_k·g_k, and the heads their
    own exit's w_k·g_k."""
    kept = list(model.active_layers)
    count = len(kept)
    per_exit = []
    for k in range(count):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(*inputs, all_exits=True)[k], labels).backward()
        per_exit.append(_grads(model))
    model.zero_grad(set_to_none=True)
    names = set().union(*per_exit)
    expected = {}
    for name in names:
        def total(start: int, name: str = name) -> torch.Tensor:
            return sum(weights[k] * per_exit[k][name] for k in range(start, count) if name in per_exit[k])

        if name.startswith("layers."):
            at = kept.index(int(name.split(".")[1]))
            expected[name] = total(at) / (count - at)
        elif name.startswith("embeddings."):
            expected[name] = total(0) / count
        else:  # exit heads and the main head: only their own exit reaches them
            expected[name] = total(0)
    return expected


@pytest.mark.parametrize("sub", [
    None,
    SubNetworkConfig(layers=(0, 2), heads=(4, 3, 2), units=(48, 20, 30)),  # a dropped layer: positions are kept ones
    SubNetworkConfig(layers=(0, 1, 2), heads=(4, 4, 4), units=(48, 48, 48), token_keep=(1.0, 0.5, 0.5)),
], ids=["full", "dropped-layer", "token-elimination"])
def test_gradient_equilibrium_equals_the_hand_computation(sub: SubNetworkConfig | None) -> None:
    model = _exits_supernet(seed=4, num_labels=3)
    batch = toy_batches(1, size=4, tokens=10)[0]
    inputs, labels = _inputs(batch), batch["labels"]
    if sub is not None:
        model.set_sub_network(sub)
    count = len(model.active_layers)
    weights = [0.5, 1.5, 2.0][:count]  # unequal, so each exit's share is checked
    with gradient_equilibrium(model):
        logits = model(*inputs, all_exits=True)
        sum(w * F.cross_entropy(e, labels) for w, e in zip(weights, logits, strict=True)).backward()
    got = _grads(model)
    expected = _equilibrium_by_hand(model, inputs, labels, weights)
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-7, msg=name)
    # and it is not the plain gradient: the first layer's is scaled down
    model.zero_grad(set_to_none=True)
    logits = model(*inputs, all_exits=True)
    sum(w * F.cross_entropy(e, labels) for w, e in zip(weights, logits, strict=True)).backward()
    first = f"layers.{model.active_layers[0]}.ffn.output.weight"
    assert not torch.allclose(_grads(model)[first], got[first])


# ------------------------------------------------------------------------------------------ exit-aware importance


def _explicit_fisher(model: Supernet, batches: list[dict[str, torch.Tensor]],
                     weighting: str = "mean") -> tuple[list, list]:
    """The Fisher scores from real mask variables: multiply each head's columns of the attention output projection
    and each unit's column of the FFN down projection by a mask at 1 (torch.func.functional_call), take the
    (weighted) mean of every exit's loss, and sum the squared mask gradients over the batches."""
    model.eval()
    d = model.config.head_size
    heads = [torch.zeros(h) for h in model.config.layer_heads]
    units = [torch.zeros(u) for u in model.config.layer_units]
    params = dict(model.named_parameters())
    for batch in batches:
        head_masks = [torch.ones(h, requires_grad=True) for h in model.config.layer_heads]
        unit_masks = [torch.ones(u, requires_grad=True) for u in model.config.layer_units]
        masked = dict(params)
        for i in range(model.config.num_layers):
            masked[f"layers.{i}.attention.dense.weight"] = (params[f"layers.{i}.attention.dense.weight"]
                                                            * head_masks[i].repeat_interleave(d)[None, :])
            masked[f"layers.{i}.ffn.output.weight"] = params[f"layers.{i}.ffn.output.weight"] * unit_masks[i][None, :]
        logits = torch.func.functional_call(model, masked, _inputs(batch), {"all_exits": True})
        loss = _weighted_mean([F.cross_entropy(e, batch["labels"]) for e in logits], weighting)
        grads = torch.autograd.grad(loss, head_masks + unit_masks)
        for i in range(model.config.num_layers):
            heads[i] += grads[i].pow(2)
            units[i] += grads[model.config.num_layers + i].pow(2)
    return heads, units


def test_exit_aware_importance_scores_what_early_exits_need_and_equals_the_mask_gradients() -> None:
    """The main head is silenced (zero weights), so the last layer's loss depends on no head or unit: scored on it
    alone every score is 0 and the order stays as it is. With exits, the first layers' heads and units matter to
    the early exits, so the exit-aware order differs, and equals the explicit mask-gradient computation."""
    model = _exits_supernet(seed=5)
    with torch.no_grad():
        model.head.out.weight.zero_()
    plain = Supernet(supernet_config(**STILL))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("exit_heads.")})
    batches = toy_batches(3, size=4, tokens=9)

    last_only = fisher_importance(plain, batches, progress=False)
    exit_aware = fisher_importance(model, batches, progress=False)

    assert all(not s.any() for s in last_only.heads + last_only.units)
    for i in (0, 1):  # layers 0 and 1 feed exits 0 and 1; layer 2 only the silenced main head
        assert (exit_aware.heads[i] > 0).all() and (exit_aware.units[i] > 0).all()
        assert not torch.equal(torch.argsort(exit_aware.units[i], descending=True, stable=True),
                               torch.argsort(last_only.units[i], descending=True, stable=True))
    assert not exit_aware.heads[2].any() and not exit_aware.units[2].any()
    heads, units = _explicit_fisher(model, batches)
    for got, expected in zip(exit_aware.heads + exit_aware.units, heads + units, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-12)
    # weighed by depth, as a supernet trained so scores them: the explicit computation with the same weights, and a
    # different order from the mean's somewhere (the deep exits count more)
    by_depth = fisher_importance(model, batches, progress=False, exit_weighting="depth")
    heads, units = _explicit_fisher(model, batches, "depth")
    for got, expected in zip(by_depth.heads + by_depth.units, heads + units, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-12)
    assert any(not torch.allclose(a, b) for a, b in zip(by_depth.units, exit_aware.units, strict=True))


# ---------------------------------------------------------------------------------- composition with elimination


def test_elimination_aware_training_composes_with_exits() -> None:
    model = _exits_supernet(seed=6).train()
    trainer = _trainer(model, toy_data(8, tokens=10), exits=True, token_elimination=True, num_random_subnets=3)
    drawn = record_sub_networks(model)
    state = trainer.train()
    assert state.step == 2 and all(torch.isfinite(torch.tensor(v)) for h in state.history for v in h.values())
    assert any(sub.token_keep is not None for sub in drawn)  # a random member eliminated tokens, with exits on


# --------------------------------------------------------------------------------------------- settings and files


def test_training_exits_is_part_of_the_run() -> None:
    with_exits = RunSpec(training=TrainingConfig(exits=True))
    plain = RunSpec()
    assert not same_run(plain, with_exits)
    assert spec_differences(plain, with_exits) == "training.exits: False stored, True asked"
    old = plain.to_dict()
    del old["training"]["exits"]  # a run.json written before exits existed
    assert RunSpec.from_dict(old).training.exits is False
    assert same_run(RunSpec.from_dict(old), plain)
    assert RunSpec.from_dict(json.loads(json.dumps(with_exits.to_dict()))) == with_exits


def test_the_cli_flag_sets_training_exits() -> None:
    from service.cli import _parse_settings, build_parser

    args = build_parser().parse_args(["train", "--model", "minilm", "--task", "glue/rte", "--out", "x",
                                      "--train-exits"])
    _parse_settings(args)
    assert args.settings.training.exits is True
    assert "exits" in TrainingConfig.model_json_schema()["properties"]


def test_supernet_config_and_folder_keep_exits(tmp_path) -> None:
    config = supernet_config(exits=True)
    assert SupernetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    old = supernet_config().to_dict()
    del old["exits"]  # a supernet_config.json written before exits existed
    assert SupernetConfig.from_dict(old).exits is False
    model = _exits_supernet(seed=7)
    save_supernet(model, tmp_path / "supernet")
    loaded = load_supernet(tmp_path / "supernet")
    assert loaded.config.exits and len(loaded.exit_heads) == 2
    batch = toy_data(4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*_inputs(batch), all_exits=True), model(*_inputs(batch), all_exits=True))


def test_a_checkpoint_from_before_exits_resumes(tmp_path) -> None:
    """A checkpoint's supernet config written before SupernetConfig had `exits` has no key for it: a job resumed
    after the upgrade goes on; an exits supernet still refuses a checkpoint of one without."""
    model = make_supernet(supernet_config(**STILL), seed=8)
    trainer = _trainer(model, toy_data(4), epochs=2)
    path = trainer.save_checkpoint(tmp_path / "checkpoint.pt")
    data = torch.load(path, weights_only=True)
    del data["supernet_config"]["exits"]
    torch.save(data, path)
    resumed = _trainer(make_supernet(supernet_config(**STILL), seed=8), toy_data(4), epochs=2)
    assert resumed.load_checkpoint(path).step == 0
    with pytest.raises(ValueError, match="different supernet"):
        _trainer(_exits_supernet(seed=8), toy_data(4), epochs=2, exits=True).load_checkpoint(path)


def test_fresh_exit_heads_start_like_the_checkpoints_linear_layers(workspace) -> None:
    model = load_supernet_from_pretrained(str(workspace / "model"), exits=True)
    assert model.config.exits and len(model.exit_heads) == 2
    weights = torch.cat([head.out.weight.detach().flatten() for head in model.exit_heads])
    assert all(not head.out.bias.any() for head in model.exit_heads)
    assert 0.015 < float(weights.std()) < 0.025  # BERT's initializer_range, 0.02 (not PyTorch's default)


@pytest.mark.skipif(not (GLUE_DIR / "MRPC" / "train.tsv").is_file(), reason=f"GLUE data not found at {GLUE_DIR}")
def test_a_tiny_run_with_exits_on_real_mrpc_rows_saves_working_exits(workspace, tmp_path) -> None:
    spec = RunSpec(model=str(workspace / "model"), task="glue/mrpc", data_dir=str(GLUE_DIR), train_limit=16,
                   validation_limit=16, max_length=32, batch_size=8, eval_batch_size=16, importance_batches=1,
                   training=TrainingConfig(epochs=2, plain_fraction=0.5, num_random_subnets=1, exits=True))
    state = train_run(spec, tmp_path / "run", progress=False)
    assert state.step == 4 and all(torch.isfinite(torch.tensor(v)) for h in state.history for v in h.values())
    assert json.loads((tmp_path / "run" / "run.json").read_text())["training"]["exits"] is True
    model = Run(tmp_path / "run").load_supernet()
    assert model.config.exits and len(model.exit_heads) == model.config.num_layers - 1
    batch = next(iter(Run(tmp_path / "run").batches("validation")))
    with torch.no_grad():
        logits = model(*_inputs(batch), all_exits=True)
    assert logits.shape == (model.config.num_layers, len(batch["labels"]), 2) and torch.isfinite(logits).all()
    model.set_sub_network(SubNetworkConfig(layers=(0, 2), heads=model.config.layer_heads,
                                           units=model.config.layer_units, exit_threshold=0.5))
    with torch.no_grad():
        model(*_inputs(batch))
    assert set(model.last_exit_layers.tolist()) <= {1, 2}
