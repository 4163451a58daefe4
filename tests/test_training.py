"""supernet.training: the sandwich rule, gradient accumulation, checkpoints and exact resumption."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_supernet, record_sub_networks, supernet_config

from supernet.config import SubNetworkConfig
from supernet.settings import TrainingConfig
from supernet.space import make_space
from supernet.training import SupernetTrainer, TrainingDiverged, TrainState, count_nonfinite, distillation_loss


class FakeLoader:
    """Like a shuffling DataLoader: a length, and a fresh order drawn from `generator` on every pass."""

    def __init__(self, data: dict[str, torch.Tensor], batch_size: int, generator: torch.Generator | None = None):
        self.data, self.batch_size, self.generator = data, batch_size, generator
        self.n = len(data["labels"])

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator) if self.generator is not None else torch.arange(self.n)
        for start in range(0, self.n, self.batch_size):
            index = order[start:start + self.batch_size]
            yield {k: v[index] for k, v in self.data.items()}


def toy_data(n: int = 18, tokens: int = 8, seed: int = 0, regression: bool = False) -> dict[str, torch.Tensor]:
    """An easy task: the first token (the one the head reads) is 10 (class 0) or 20 (class 1); the rest is noise."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(30, 99, (n, tokens), generator=gen)
    labels = torch.randint(0, 2, (n,), generator=gen)
    ids[:, 0] = torch.where(labels == 1, 20, 10)
    mask = torch.ones_like(ids)
    lengths = torch.randint(3, tokens + 1, (n,), generator=gen)
    mask[torch.arange(tokens)[None, :] >= lengths[:, None]] = 0
    ids = ids.masked_fill(mask == 0, 0)
    data = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": labels}
    if regression:
        data["labels"] = labels.float() * 2 - 1
    return data


def _trainer(model, loader, config: TrainingConfig, space_name: str = "uniform", **kwargs) -> SupernetTrainer:
    return SupernetTrainer(model, make_space(space_name, model.config), loader, config, progress=False, **kwargs)


def _equal_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


RESUME_CONFIG = dict(epochs=2.5, plain_fraction=0.0, gradient_accumulation=2, num_random_subnets=2, learning_rate=2e-3,
                     warmup_ratio=0.2, seed=3, label_loss_weight=0.5)


def _full_run(tmp_path, data) -> tuple[torch.nn.Module, TrainState]:
    model = make_supernet(seed=1)
    generator = torch.Generator()
    trainer = _trainer(model, FakeLoader(data, 4, generator), TrainingConfig(**RESUME_CONFIG), generator=generator,
                       checkpoint_path=tmp_path / "uninterrupted.pt")
    return model, trainer.train()


@pytest.mark.parametrize("stops", [[2], [3], [1, 4, 7]], ids=["mid-epoch", "epoch-end", "three-times"])
def test_interrupted_and_resumed_run_is_bitwise_identical(tmp_path, stops: list[int]) -> None:
    data = toy_data(18)  # 5 batches of 4 (odd), accumulation 2: steps of 2, 2, 1 micro-batches
    reference, ref_state = _full_run(tmp_path, data)
    assert ref_state.total_steps == math.ceil(2.5 * 3) == 8
    assert ref_state.step == 8 and len(ref_state.history) == 8 and not ref_state.stopped
    assert (ref_state.epoch, ref_state.batch_in_epoch) == (2, 4)  # half of the third epoch
    assert [h["step"] for h in ref_state.history] == list(range(1, 9))

    path = tmp_path / "checkpoint.pt"
    model = make_supernet(seed=1)
    remaining = list(stops)
    trainers: list[SupernetTrainer] = []

    def should_stop() -> bool:
        return bool(remaining) and trainers[-1].state.step >= remaining[0]

    for attempt in range(len(stops) + 1):
        if attempt:  # a new process: new model (other weights), new generator, new trainer
            model = make_supernet(seed=100 + attempt)
        generator = torch.Generator()
        trainer = _trainer(model, FakeLoader(data, 4, generator), TrainingConfig(**RESUME_CONFIG),
                           generator=generator, checkpoint_path=path, should_stop=should_stop)
        trainers.append(trainer)
        if attempt:
            torch.rand(100)  # the new process has used the global RNG differently: resumption must not depend on it
            trainer.load_checkpoint()
        state = trainer.train()
        if remaining:
            assert state.stopped and state.step == remaining.pop(0)
            assert path.is_file()
        else:
            assert not state.stopped
    assert state.step == ref_state.step and state.history == ref_state.history
    assert (state.epoch, state.batch_in_epoch) == (ref_state.epoch, ref_state.batch_in_epoch)
    assert _equal_state(model, reference)
    assert not _equal_state(model, make_supernet(seed=1))  # it did train


def test_gradient_accumulation_equals_larger_batches() -> None:
    """Accumulating 2 batches of 4 is one batch of 8, including the short last group of an epoch.

    The learning rate is 0, so the weights stay put and the gradient handed to every optimizer step can be
    compared exactly (Adam itself would hide a constant gradient scale)."""
    data = toy_data(20)  # batches of 4: 5 -> groups of 2, 2, 1; batches of 8: 8, 8, 4
    no_dropout = supernet_config(hidden_dropout=0.0, attention_dropout=0.0)
    grads, histories = [], []
    for batch_size, accumulation in ((4, 2), (8, 1)):
        model = make_supernet(no_dropout, seed=2)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        generator = torch.Generator()
        config = TrainingConfig(epochs=2, plain_fraction=0.0, gradient_accumulation=accumulation, num_random_subnets=1,
                                learning_rate=0.0, max_grad_norm=1e9, seed=0)
        trainer = _trainer(model, FakeLoader(data, batch_size, generator), config, generator=generator)
        assert trainer.steps_per_epoch == 3 and trainer.state.total_steps == 6
        # one "random" sub-network per micro-batch would differ between the runs: make it a fixed one
        fixed = SubNetworkConfig(layers=(0, 2), heads=(2, 0, 3), units=(10, 0, 30))
        trainer.space.sample = lambda rng, floor=0.0, fixed=fixed: fixed
        recorded = []
        trainer.optimizer.register_step_pre_hook(
            lambda *_, recorded=recorded, model=model: recorded.append(
                {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
        histories.append(trainer.train().history)
        grads.append(recorded)
        assert all(torch.equal(v, initial[k]) for k, v in model.state_dict().items())
    assert len(grads[0]) == len(grads[1]) == 6
    for step_a, step_b in zip(*grads, strict=True):
        assert step_a.keys() == step_b.keys()
        for name, grad in step_a.items():
            torch.testing.assert_close(grad, step_b[name], rtol=1e-4, atol=1e-7, msg=name)
    for a, b in zip(*histories, strict=True):
        assert a["loss_full"] == pytest.approx(b["loss_full"], rel=1e-5)
        assert a["loss_subnets"] == pytest.approx(b["loss_subnets"], rel=1e-4)


def test_plain_fine_tuning_has_only_the_full_loss() -> None:
    model = make_supernet(seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    model.set_sub_network = lambda sub: calls.append(sub)  # type: ignore[method-assign]
    config = TrainingConfig(epochs=1, num_random_subnets=0, learning_rate=1e-3)
    state = _trainer(model, FakeLoader(toy_data(12), 4), config).train()
    assert state.step == 3 and all(set(h) == {"loss_full", "step"} for h in state.history)
    assert calls == []  # no sub-network ever ran
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training


def test_sandwich_trains_the_full_net_the_smallest_and_random_subnets() -> None:
    torch.manual_seed(0)
    model = make_supernet(seed=4)
    space = make_space("uniform", model.config)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    seen = record_sub_networks(model)
    data = toy_data(32, seed=1)
    config = TrainingConfig(epochs=8, plain_fraction=0.0, num_random_subnets=2, learning_rate=3e-3, warmup_ratio=0.0,
                            temperature=2.0, seed=1)
    trainer = SupernetTrainer(model, space, FakeLoader(data, 8, torch.Generator()), config, progress=False)
    state = trainer.train()
    assert state.step == 32 and all(set(h) == {"loss_full", "loss_subnets", "step"} for h in state.history)
    # one smallest and two random sub-networks per micro-batch, the smallest first
    assert len(seen) == 3 * 32
    assert all(seen[i] == space.smallest() for i in range(0, len(seen), 3))
    assert len(set(seen)) > 3  # the random ones vary
    assert model.sub_network is None and model.active_layers == [0, 1, 2]  # the full network is restored
    assert all(not torch.equal(v, initial[k]) for k, v in model.state_dict().items() if "word_embeddings" not in k)

    def mean_loss(key: str, epoch: int) -> float:
        values = [h[key] for h in state.history[epoch * 4:(epoch + 1) * 4]]
        return sum(values) / len(values)

    assert mean_loss("loss_full", 7) < 0.5 * mean_loss("loss_full", 0)
    assert mean_loss("loss_full", 7) < 0.2
    # the sub-networks learn the task too: the smallest one classifies the training data
    with torch.no_grad(), model.use(space.smallest()):
        logits = model(data["input_ids"], data["attention_mask"], data["token_type_ids"])
    assert (logits.argmax(-1) == data["labels"]).float().mean() >= 0.9


def test_sandwich_gradients_differ_from_plain_fine_tuning() -> None:
    data = toy_data(12)
    results = []
    for k in (0, 1):
        model = make_supernet(seed=5)
        config = TrainingConfig(epochs=1, plain_fraction=0.0, num_random_subnets=k, seed=0)
        _trainer(model, FakeLoader(data, 4), config).train()
        results.append(model)
    assert not _equal_state(*results)


def test_regression_training() -> None:
    model = make_supernet(supernet_config(num_labels=1), seed=6)
    config = TrainingConfig(epochs=6, plain_fraction=0.0, num_random_subnets=1, learning_rate=3e-3, warmup_ratio=0.0)
    state = _trainer(model, FakeLoader(toy_data(16, regression=True), 8, torch.Generator()), config).train()
    assert all(math.isfinite(h["loss_full"]) and math.isfinite(h["loss_subnets"]) for h in state.history)
    assert state.history[-1]["loss_full"] < state.history[0]["loss_full"]


def test_distillation_loss() -> None:
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(6, 3, generator=gen)
    assert distillation_loss(teacher.clone(), teacher, 10.0).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(6, 3, generator=gen)
    for t in (1.0, 2.0, 10.0):
        loss = distillation_loss(student, teacher, t)
        assert loss.item() > 0
        p = F.softmax(teacher / t, -1)
        expected = (p * (p.log() - F.log_softmax(student / t, -1))).sum(-1).mean() * t * t
        torch.testing.assert_close(loss, expected)
    # shifting logits by a constant does not change the distributions
    assert distillation_loss(teacher + 3.0, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-5)
    # regression: mean squared error
    s, te = torch.randn(5, 1, generator=gen), torch.randn(5, 1, generator=gen)
    torch.testing.assert_close(distillation_loss(s, te, 10.0), ((s - te) ** 2).mean())
    assert distillation_loss(te, te, 10.0).item() == 0.0
    # gradients flow into the student only
    student.requires_grad_(True)
    distillation_loss(student, teacher, 2.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


class RecordingTrainer(SupernetTrainer):
    """Records (step, epoch, batch_in_epoch) of every checkpoint written."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.saved: list[tuple[int, int, int]] = []

    def save_checkpoint(self, path=None):
        written = super().save_checkpoint(path)
        if written is not None:
            self.saved.append((self.state.step, self.state.epoch, self.state.batch_in_epoch))
        return written


def _recording(model, loader, config, **kwargs) -> RecordingTrainer:
    return RecordingTrainer(model, make_space("uniform", model.config), loader, config, progress=False, **kwargs)


def test_checkpoint_after_each_epoch(tmp_path) -> None:
    path = tmp_path / "ck" / "checkpoint.pt"
    model = make_supernet(seed=7)
    seen_on_disk = []

    def on_step(state: TrainState) -> None:
        if path.is_file():
            seen_on_disk.append((state.step, torch.load(path, weights_only=True)["state"]["step"]))

    trainer = _recording(model, FakeLoader(toy_data(10), 4, torch.Generator()),  # 3 batches per epoch
                         TrainingConfig(epochs=3, plain_fraction=0.0, num_random_subnets=1), checkpoint_path=path,
                         on_step=on_step)
    state = trainer.train()
    assert state.step == 9
    assert trainer.saved == [(3, 1, 0), (6, 2, 0), (9, 3, 0)]  # two epoch ends, then the final checkpoint
    assert seen_on_disk[0] == (4, 3)  # the first epoch's checkpoint is on disk during the second epoch
    data = torch.load(path, weights_only=True)
    assert data["state"]["step"] == 9 and data["state"]["epoch"] == 3
    assert data["supernet_config"] == model.config.to_dict()
    assert data["training_config"]["epochs"] == 3
    for key, value in model.state_dict().items():
        assert torch.equal(data["model"][key], value)
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, nothing left over


def test_checkpoint_every_steps_and_on_request(tmp_path) -> None:
    path = tmp_path / "checkpoint.pt"
    trainer = _recording(make_supernet(seed=8), FakeLoader(toy_data(20), 4), TrainingConfig(
        epochs=2, num_random_subnets=0, checkpoint_every_steps=3), checkpoint_path=path)
    trainer.train()
    assert [s for s, _, _ in trainer.saved] == [3, 5, 6, 9, 10]  # every 3 steps, the epoch end, the final one

    path2 = tmp_path / "requested.pt"
    on_disk = {}

    def on_step(state: TrainState) -> None:
        if state.step == 2:
            trainer2.request_checkpoint()
        if state.step == 3:
            on_disk["step"] = torch.load(path2, weights_only=True)["state"]["step"] if path2.is_file() else None

    trainer2 = _recording(make_supernet(seed=8), FakeLoader(toy_data(20), 4),
                          TrainingConfig(epochs=1, num_random_subnets=0), checkpoint_path=path2, on_step=on_step)
    trainer2.train()
    assert on_disk["step"] == 2
    assert [s for s, _, _ in trainer2.saved] == [2, 5]
    # a should_checkpoint callback (the CLI's SIGUSR1) asks for a checkpoint after the step it returns True
    answers = iter([False, False, True, False, False])
    trainer4 = _recording(make_supernet(seed=8), FakeLoader(toy_data(20), 4),
                          TrainingConfig(epochs=1, num_random_subnets=0), checkpoint_path=tmp_path / "usr1.pt",
                          should_checkpoint=lambda: next(answers))
    trainer4.train()
    assert [s for s, _, _ in trainer4.saved] == [3, 5]
    # without a checkpoint path nothing is written, but an explicit path works
    trainer3 = _trainer(make_supernet(), FakeLoader(toy_data(4), 4), TrainingConfig(epochs=1, num_random_subnets=0))
    assert trainer3.save_checkpoint() is None
    assert trainer3.save_checkpoint(tmp_path / "explicit.pt") == tmp_path / "explicit.pt"
    assert (tmp_path / "explicit.pt").is_file()


def test_load_checkpoint_errors(tmp_path) -> None:
    path = tmp_path / "checkpoint.pt"
    trainer = _trainer(make_supernet(), FakeLoader(toy_data(8), 4), TrainingConfig(epochs=1), checkpoint_path=path)
    with pytest.raises(FileNotFoundError):
        trainer.load_checkpoint()
    trainer.train()
    other = make_supernet(supernet_config(intermediate_size=24), seed=1)
    other_trainer = _trainer(other, FakeLoader(toy_data(8), 4), TrainingConfig(epochs=1), checkpoint_path=path)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="different supernet"):
        other_trainer.load_checkpoint()
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())  # nothing was loaded
    # the same dimensions but another head (regression) is a different supernet too
    regression = _trainer(make_supernet(supernet_config(num_labels=1)), FakeLoader(toy_data(8), 4),
                          TrainingConfig(epochs=1))
    with pytest.raises(ValueError, match="different supernet"):
        regression.load_checkpoint(path)


def test_config_and_loader_validation() -> None:
    for bad in (dict(epochs=0), dict(gradient_accumulation=0), dict(num_random_subnets=-1), dict(temperature=0)):
        with pytest.raises(ValueError):
            TrainingConfig(**bad)
    with pytest.raises(ValueError, match="empty"):
        _trainer(make_supernet(), [], TrainingConfig())
    with pytest.raises(ValueError, match="empty"):
        _trainer(make_supernet(), iter([{"labels": torch.zeros(1)}]), TrainingConfig())  # no length
    tiny = _trainer(make_supernet(), FakeLoader(toy_data(4), 4), TrainingConfig(epochs=0.01))
    assert tiny.state.total_steps == 1


PLAIN_CONFIG = dict(epochs=2.5, plain_fraction=0.375, gradient_accumulation=2, num_random_subnets=2, learning_rate=2e-3,
                    warmup_ratio=0.2, seed=3)


def _reorder_hook(loader, calls: list[int]):
    """Fisher-reorder the model on the training loader (as train_run does), recording each call."""
    from supernet.importance import fisher_importance, reorder_by_importance

    def hook(model) -> None:
        calls.append(1)
        reorder_by_importance(model, fisher_importance(model, loader, max_batches=2, progress=False))
    return hook


def test_plain_steps_come_first_then_the_hook_then_sandwich_with_fresh_moments(tmp_path) -> None:
    data = toy_data(18)
    model = make_supernet(seed=1)
    generator = torch.Generator()
    loader = FakeLoader(data, 4, generator)
    calls: list[int] = []
    adam_steps: dict[int, int] = {}

    def on_step(state: TrainState) -> None:
        moments = list(trainer.optimizer.state.values())
        adam_steps[state.step] = int(moments[0]["step"]) if moments else 0

    trainer = _trainer(model, loader, TrainingConfig(**PLAIN_CONFIG), generator=generator,
                       on_plain_end=_reorder_hook(loader, calls), on_step=on_step,
                       checkpoint_path=tmp_path / "checkpoint.pt")
    assert trainer.plain_steps == 3 and trainer.state.total_steps == 8
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = trainer.train()
    assert calls == [1]
    assert [set(h) for h in state.history[:3]] == [{"loss_full", "step"}] * 3
    assert all("loss_subnets" in h for h in state.history[3:])
    assert [adam_steps[s] for s in range(1, 9)] == [1, 2, 0, 1, 2, 3, 4, 5]  # cleared at the hook
    lr = trainer.scheduler.lr_lambdas[0]
    # each phase has its own warm-up (20 % of its steps, rounded down) and decays to zero at its end
    assert [lr(s) for s in range(3)] == [1.0, 2 / 3, 1 / 3]
    assert [lr(s) for s in range(3, 8)] == [1 / 2, 1.0, 3 / 4, 2 / 4, 1 / 4]
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_plain_fraction_zero_keeps_the_single_schedule() -> None:
    trainer = _trainer(make_supernet(seed=1), FakeLoader(toy_data(18), 4), TrainingConfig(**RESUME_CONFIG))
    lr, total = trainer.scheduler.lr_lambdas[0], trainer.state.total_steps
    warmup = int(0.2 * total)
    assert trainer.plain_steps == 0
    assert [lr(s) for s in range(total)] == [(s + 1) / (warmup + 1) if s < warmup else (total - s) / (total - warmup)
                                            for s in range(total)]


@pytest.mark.parametrize("stop", [2, 3, 4], ids=["before-hook", "at-hook", "after-hook"])
def test_resume_across_the_plain_steps_is_bitwise_identical_and_runs_the_hook_once(tmp_path, stop: int) -> None:
    data = toy_data(18)

    def run(model, path, stop_at=None, resume=False):
        generator = torch.Generator()
        loader = FakeLoader(data, 4, generator)
        trainer = _trainer(model, loader, TrainingConfig(**PLAIN_CONFIG), generator=generator, checkpoint_path=path,
                           on_plain_end=_reorder_hook(loader, calls),
                           should_stop=lambda: stop_at is not None and trainer.state.step >= stop_at)
        if resume:
            trainer.load_checkpoint()
        return trainer, trainer.train()

    calls: list[int] = []
    reference = make_supernet(seed=1)
    _, ref_state = run(reference, tmp_path / "uninterrupted.pt")
    assert calls == [1]
    calls.clear()
    path = tmp_path / "checkpoint.pt"
    _, state = run(make_supernet(seed=1), path, stop_at=stop)
    assert state.stopped and state.step == stop
    model = make_supernet(seed=7)
    _, state = run(model, path, resume=True)
    assert calls == [1]  # scored once, before or after the interruption
    assert state.history == ref_state.history
    assert _equal_state(model, reference)


def test_plain_fraction_validation() -> None:
    for bad in (-0.5, 1.0, 4.0):
        with pytest.raises(ValueError, match="plain_fraction"):
            TrainingConfig(epochs=3.0, plain_fraction=bad)
    config = TrainingConfig(epochs=0.1, plain_fraction=0.99)  # at least one sandwich step is always left
    assert _trainer(make_supernet(seed=1), FakeLoader(toy_data(18), 4), config).plain_steps == 0
    # plain fine-tuning (k = 0) is one phase whatever the fraction: no boundary, one warm-up and decay
    plain = _trainer(make_supernet(seed=1), FakeLoader(toy_data(18), 4),
                     TrainingConfig(epochs=2, plain_fraction=0.5, num_random_subnets=0, warmup_ratio=0.2))
    assert plain.plain_steps == 0 and plain.scheduler.lr_lambdas[0](5) == (10 - 5) / (10 - 2)


def test_a_sampling_floor_trains_only_members_above_it() -> None:
    model = make_supernet(seed=4)
    space = make_space("uniform", model.config)
    seen = record_sub_networks(model)
    config = TrainingConfig(epochs=2, plain_fraction=0.0, num_random_subnets=2, learning_rate=1e-3, seed=1,
                            sample_floor=0.5)
    SupernetTrainer(model, space, FakeLoader(toy_data(16, seed=1), 8, torch.Generator()), config,
                    progress=False).train()
    assert len(seen) == 3 * 4 and space.smallest(0.5) != space.smallest()
    assert all(seen[i] == space.smallest(0.5) for i in range(0, len(seen), 3))
    floor = space.floor(0.5)
    assert all(all(v >= f for v, f in zip(space.encode(sub), floor, strict=True)) for sub in seen)
    with pytest.raises(ValueError, match="sample_floor"):
        TrainingConfig(sample_floor=2.0)


# ------------------------------------------------------------------------------------------ divergence


def test_a_loss_that_overflows_fails_the_run_naming_the_setting_and_writes_no_checkpoint(tmp_path) -> None:
    """Regression labels of 1e20: the squared error overflows float32 at the first step. The run stops before that
    step's update (the weights stay finite) and before any checkpoint, and says what to change."""
    model = make_supernet(supernet_config(num_labels=1), seed=6)
    data = toy_data(16, regression=True)
    data["labels"] = data["labels"] * 1e20
    config = TrainingConfig(epochs=2, plain_fraction=0.0, num_random_subnets=1)
    trainer = _trainer(model, FakeLoader(data, 8), config, checkpoint_path=tmp_path / "checkpoint.pt")
    with pytest.raises(TrainingDiverged, match=r"supernet training diverged at step 1 of 4: the full network's loss is "
                                               r"inf; lower training.learning_rate \(now 0.0001\) or scale the task's "
                                               r"regression labels down"):
        trainer.train()
    assert count_nonfinite(model)[0] == 0 and trainer.state.step == 0
    assert not (tmp_path / "checkpoint.pt").exists()


def test_weights_that_are_not_finite_fail_the_run_before_its_checkpoint(tmp_path) -> None:
    """A NaN the loss never sees (the token-type row no input uses) still fails the run at its first checkpoint:
    a diverged model is never written, searched over or served."""
    model = make_supernet(seed=1)
    with torch.no_grad():
        model.embeddings.token_type_embeddings.weight[1, :3] = float("nan")
    config = TrainingConfig(epochs=1, plain_fraction=0.0, num_random_subnets=0, learning_rate=1e-3)
    trainer = _trainer(model, FakeLoader(toy_data(16), 8), config, checkpoint_path=tmp_path / "checkpoint.pt")
    with pytest.raises(TrainingDiverged, match=r"diverged at step 2 of 2: 3 of [\d,]+ weights are NaN or inf; "
                                               r"lower training.learning_rate \(now 0.001\)$"):
        trainer.train()
    assert trainer.state.step == 2 and not (tmp_path / "checkpoint.pt").exists()
    assert count_nonfinite(make_supernet(seed=1)) == (0, sum(p.numel() for p in model.parameters()))


def test_elimination_aware_sandwich_draws_schedules_for_the_random_members_only() -> None:
    model = make_supernet(seed=4)
    space = make_space("uniform", model.config)
    seen = record_sub_networks(model)
    config = TrainingConfig(epochs=2, plain_fraction=0.0, num_random_subnets=2, learning_rate=1e-3,
                            warmup_ratio=0.0, seed=1, token_elimination=True)
    state = SupernetTrainer(model, space, FakeLoader(toy_data(32, seed=1), 8, torch.Generator()), config,
                            progress=False).train()
    assert state.step == 8 and all(math.isfinite(h["loss_subnets"]) for h in state.history)
    smallest, random_members = seen[0::3], [s for i, s in enumerate(seen) if i % 3]
    assert all(s == space.smallest() and s.token_keep is None for s in smallest)
    assert any(s.token_keep is not None for s in random_members)  # a schedule was drawn and run
    assert all(space.decode(space.encode(s.static())) == s.static() for s in random_members)
    # off (the default), the random members are static and drawn exactly as before the option existed
    seen.clear()
    SupernetTrainer(model, space, FakeLoader(toy_data(32, seed=1), 8, torch.Generator()),
                    TrainingConfig(epochs=1, plain_fraction=0.0, seed=1), progress=False).train()
    assert seen and all(s.token_keep is None for s in seen)
