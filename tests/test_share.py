"""`nasprune share` (supernet/share.py): an unshared model's layers tied into shared blocks and recovered by
distillation, with step-count augmentation; the result a model folder the search accepts (issue 34)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from conftest import cli, make_supernet, random_inputs, supernet_config, task_args
from transformers import AutoModelForSequenceClassification

from supernet.config import SubNetworkConfig
from supernet.counting import count_params
from supernet.extract import load_exported
from supernet.settings import ShareSpec
from supernet.share import MODEL_DIR, WORK_DIR, choose_sources, matched_times, share_run, tie


def test_steps_meet_the_unshared_layers_where_their_times_are_whole() -> None:
    net = tie(make_supernet(supernet_config(num_layers=6)), (0,) * 6, [0])
    full = SubNetworkConfig.full(net.config)

    def pairs(steps):
        return matched_times(net, SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units,
                                                   ode_steps=steps))

    assert pairs(6) == [(i, i) for i in range(6)]
    assert pairs(4) == [(1, 2), (3, 5)]  # steps of 1.5 end at 1.5, 3, 4.5, 6
    assert pairs(2) == [(0, 2), (1, 5)]
    assert tie(make_supernet(supernet_config(num_layers=6)), (0, 0, 0, 1, 1, 1),
               [0, 3]).config.ode_step_counts() == [2, 4, 6]
    # blocks of 2 and 4 layers: steps of 2 (K = 3) and of 1 end on their boundary, steps of 1.5 or 3 do not
    uneven = tie(make_supernet(supernet_config(num_layers=6)), (0, 0, 1, 1, 1, 1), [1, 2])
    assert uneven.config.ode_step_counts() == [3, 6]
    assert matched_times(uneven, SubNetworkConfig(layers=full.layers, heads=full.heads, units=full.units,
                                                  ode_steps=3)) == [(0, 1), (1, 3), (2, 5)]


def test_each_block_starts_from_the_layer_that_loses_least() -> None:
    teacher = make_supernet(supernet_config(num_layers=4))
    batch = random_inputs(batch=4, tokens=9)
    batch["labels"] = torch.tensor([0, 1, 0, 1])
    sources, losses = choose_sources(teacher, (0, 0, 1, 1), [batch])
    assert [len(scores) for scores in losses] == [2, 2]
    assert sources == [min(range(2), key=losses[0].__getitem__), 2 + min(range(2), key=losses[1].__getitem__)]
    _, uneven = choose_sources(teacher, (0, 0, 0, 1), [batch])  # a mapping's blocks: every member a candidate
    assert [len(scores) for scores in uneven] == [3, 1]
    student = tie(teacher, (0, 0, 1, 1), sources)
    for block, source in zip(student.blocks, sources, strict=True):
        assert torch.equal(block.attention.query.weight, teacher.layers[source].attention.query.weight)
    assert torch.equal(student.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight)
    assert sum(p.numel() for p in student.parameters()) == count_params(student.config).total


def test_solver_augmentation_trains_under_heun_too_from_logits_and_labels() -> None:
    from conftest import toy_batches

    from supernet.settings import ShareConfig
    from supernet.share import ShareTrainer

    teacher = make_supernet(supernet_config(num_layers=4)).eval()
    student = tie(teacher, (0, 0, 1, 1), [0, 2])
    config = ShareConfig(groups=2, epochs=2, solver_augmentation=True, augment_copies=1)  # and augmented copies
    seen = ShareTrainer(student, teacher, toy_batches(4), config, 0, progress=False).train().history
    assert {m["heun"] for m in seen} == {0.0, 1.0} and {m["steps"] for m in seen} <= {2.0, 4.0}
    assert all(m["loss_hidden"] == 0.0 for m in seen if m["heun"]) and all(math.isfinite(m["loss"]) for m in seen)
    assert not ShareConfig().solver_augmentation  # off unless asked for


def test_a_mapping_ties_blocks_of_unequal_sizes_and_bad_ones_name_the_field() -> None:
    from pydantic import ValidationError

    from supernet.settings import ShareConfig

    config = ShareConfig(mapping=[0, 0, 1, 1, 1, 2])
    assert config.groups == 3 and config.tying(6) == (0, 0, 1, 1, 1, 2)
    assert ShareConfig(groups=3, mapping="0,0,1,1,1,2").tying(6) == (0, 0, 1, 1, 1, 2)  # as the CLI gives it
    assert ShareConfig(groups=2).tying(6) == (0, 0, 0, 1, 1, 1)
    for data, words in [({"groups": 2, "mapping": [0, 0, 1, 1, 1, 2]}, "groups: 2 disagrees"),
                        ({"mapping": [0, 1, 0]}, "[0, 1, 0] is not contiguous"),
                        ({"mapping": [1, 1, 2]}, "numbered from 0")]:
        with pytest.raises(ValidationError, match=re.escape(words)):
            ShareConfig.model_validate(data)
    for config, layers, words in [(ShareConfig(mapping=[0, 0, 1]), 4, "mapping: 3 entries for the model's 4"),
                                  (ShareConfig(mapping=[0, 1, 2]), 3, "mapping: 3 shared blocks for 3 layers"),
                                  (ShareConfig(groups=4), 6, "groups: 4 shared blocks do not divide")]:
        with pytest.raises(ValueError, match=re.escape(words)):
            config.tying(layers)


@pytest.mark.slow
def test_share_command_makes_a_model_folder_the_search_takes(workspace, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NASPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "shared"
    args = [*task_args(workspace), "--max-length", "16", "--groups", "1", "--teacher-epochs", "1", "--epochs", "1"]
    assert cli(["share", *args, "--out", str(out)]) == 0
    folder = out / MODEL_DIR
    record = json.loads((folder / "subnetwork.json").read_text())
    own = load_exported(folder)
    assert own.config.layer_groups == [0, 0, 0]
    assert sum(p.numel() for p in own.parameters()) == record["params"]["total"] < record["teacher_params"]["total"]
    assert set(record["validation_by_ode_steps"]) == {"1", "2", "3"} and "test" in record["metrics"]
    assert record["tying"]["sources"][0] in (0, 1, 2) and not (out / WORK_DIR / "share.pt").exists()
    remote = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    batch = random_inputs(batch=2, tokens=7, vocab_size=1000)
    with torch.no_grad():
        torch.testing.assert_close(remote(**batch).logits, own(**batch).logits)
    # a second call finds the model there; the search takes it as its model (steps and solver genes included)
    assert cli(["share", *args, "--out", str(out)]) == 0
    run = tmp_path / "run"
    search = ["--model", str(folder), *task_args(workspace)[2:], "--max-length", "16", "--epochs", "1",
              "--evaluations", "6", "--latency-batch-size", "2"]
    assert cli(["search", *search, "--out", str(run)]) == 0
    points = json.loads((run / "front.json").read_text())["points"]
    assert points and all(len(SubNetworkConfig.from_dict(p["config"]).layers) == 3 for p in points)


@pytest.mark.slow
def test_a_stopped_share_resumes_and_bad_groups_are_refused(workspace, tmp_path, capsys) -> None:
    """A mapping's blocks of unequal sizes (2 layers, then 1) tie, train and resume like equal ones."""
    spec = ShareSpec.model_validate({
        "model": str(workspace / "model"), "task": "custom/toy", "max_length": 16,
        "custom": {"train_file": str(workspace / "train.csv"), "test_file": str(workspace / "test.csv")},
        "share": {"mapping": [0, 0, 1], "teacher_epochs": 0, "epochs": 1}})
    steps = []
    stopped = share_run(spec, tmp_path / "s", progress=False, on_step=lambda s: steps.append(s.step),
                        should_stop=lambda: len(steps) >= 1)
    assert stopped is None and (tmp_path / "s" / WORK_DIR / "share.pt").is_file()
    record = share_run(spec, tmp_path / "s", progress=False, on_step=lambda s: steps.append(s.step))
    assert record is not None and steps[0] == 1 and steps[1] == 2  # it went on from the step it stopped at
    assert record["config"]["layers"] == [0, 1, 2] and record["tying"]["mapping"] == [0, 0, 1]
    assert load_exported(tmp_path / "s" / MODEL_DIR).config.layer_groups == [0, 0, 1]
    assert cli(["share", *task_args(workspace), "--groups", "2", "--out", str(tmp_path / "bad")]) == 2
    assert "do not divide" in capsys.readouterr().err
    assert cli(["share", *task_args(workspace), "--groups", "3", "--out", str(tmp_path / "bad")]) == 2
    assert "share nothing" in capsys.readouterr().err
    assert cli(["share", *task_args(workspace), "--mapping", "0,1,0", "--out", str(tmp_path / "bad")]) == 2
    assert "mapping" in (err := capsys.readouterr().err) and "[0, 1, 0] is not contiguous" in err
