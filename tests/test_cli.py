"""supernet.run and service.cli end to end on a tiny random BERT: train, resume, export, and the error paths."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import GLUE_DIR, cli, task_args
from transformers import AutoModelForSequenceClassification

from search.names import OBJECTIVE_NAMES
from search.objectives import OBJECTIVES
from supernet.config import SubNetworkConfig
from supernet.counting import count_macs, count_params
from supernet.evaluation import evaluate, predict
from supernet.extract import SUBNETWORK_FILE, load_exported
from supernet.importance import fisher_importance
from supernet.run import Run, load_run_task, load_supernet, same_run
from supernet.settings import DEFAULT_VALIDATION_LIMIT, RunSpec


def _train_args(ws: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *task_args(ws), "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--out", str(out),
            *extra]


@pytest.fixture(scope="module")
def trained_run(workspace) -> Path:
    run_dir = workspace / "run"
    assert cli(_train_args(workspace, run_dir)) == 0
    return run_dir


def test_train_writes_the_run_folder(trained_run, workspace) -> None:
    names = {p.name for p in trained_run.iterdir()}
    assert {"run.json", "checkpoint.pt", "supernet", "training.json"} <= names
    assert (trained_run / "supernet" / "model.safetensors").is_file()
    assert (trained_run / "supernet" / "supernet_config.json").is_file()
    assert (trained_run / "supernet" / "tokenizer_config.json").is_file()
    spec = RunSpec.from_dict(json.loads((trained_run / "run.json").read_text()))
    assert spec.custom is not None and spec.custom.text_columns == ["text"] and spec.custom.name == "toy"
    assert spec.max_length == 32 and spec.batch_size == 8 and spec.training.epochs == 1.0
    assert RunSpec.from_dict(spec.to_dict()) == spec
    run = Run(trained_run)
    assert (len(run.task.train), len(run.task.validation), len(run.task.test["test"])) == (42, 18, 20)
    summary = json.loads((trained_run / "training.json").read_text())
    assert set(summary["validation"]) == {"full", "middle", "smallest"}
    assert set(summary["validation"]["full"]) == {"accuracy", "f1"}
    assert len(summary["history"]) == 6  # 42 examples in batches of 8, one epoch
    assert "majority_baseline" in summary
    checkpoint = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    assert checkpoint["state"]["step"] == 6
    # the saved supernet is the trained one, and its metrics are reproducible from the run folder
    supernet = run.load_supernet()
    for key, value in supernet.state_dict().items():
        assert torch.equal(value, checkpoint["model"][key]), key
    space = run.space(supernet.config)  # the importance space, with the scores of importance.json
    validation = run.batches("validation")
    assert evaluate(supernet, validation, run.task.spec) == summary["validation"]["full"]
    assert evaluate(supernet, validation, run.task.spec, sub=space.middle()) == summary["validation"]["middle"]
    # the supernet's weights were reordered and trained: they differ from the original model's
    original = load_supernet_from_model(workspace / "model")
    assert not torch.equal(original.layers[0].ffn.intermediate.weight, supernet.layers[0].ffn.intermediate.weight)


def load_supernet_from_model(folder: Path):
    from supernet.convert import load_supernet_from_pretrained

    return load_supernet_from_pretrained(str(folder))


def test_export_loads_with_plain_transformers_and_keeps_the_metric(trained_run, tmp_path, capsys) -> None:
    out = tmp_path / "export-middle"
    assert cli(["export", "--run", str(trained_run), "--config", "middle", "--out", str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    run = Run(trained_run)
    supernet = run.load_supernet()
    sub = run.space(supernet.config).middle()  # the run's space (importance, the default)
    assert run.spec.space == "importance"
    record = json.loads((out / SUBNETWORK_FILE).read_text())
    assert SubNetworkConfig.from_dict(record["config"]) == sub
    assert record["seq_len"] == 32
    assert record["params"] == count_params(supernet.config, sub).to_dict()
    assert record["macs"] == count_macs(supernet.config, sub, seq_len=32)
    model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    validation = run.batches("validation")
    assert evaluate(model, validation, run.task.spec) == record["metrics"]["validation"]
    assert evaluate(supernet, validation, run.task.spec, sub=sub) == record["metrics"]["validation"]
    logits, _ = predict(model, validation)
    with supernet.use(sub):
        sliced, _ = predict(supernet, validation)
    assert abs(logits - sliced).max() < 1e-4
    assert sum(p.numel() for p in model.parameters()) == count_params(supernet.config, sub).total


def test_export_with_json_config_and_errors(trained_run, tmp_path, capsys) -> None:
    sub = SubNetworkConfig(layers=(0, 2), heads=(1, 0, 4), units=(48, 0, 0))
    out = tmp_path / "json"
    assert cli(["export", "--run", str(trained_run), "--config", sub.to_json(), "--out", str(out)]) == 0
    assert SubNetworkConfig.from_dict(json.loads((out / SUBNETWORK_FILE).read_text())["config"]) == sub
    config_file = tmp_path / "sub.json"
    config_file.write_text(sub.to_json())
    assert cli(["export", "--run", str(trained_run), "--config", str(config_file), "--out", str(tmp_path / "f")]) == 0
    assert load_exported(tmp_path / "f").config.layer_heads == [1, 4]
    capsys.readouterr()
    for bad in ("huge", '{"layers": [0], "heads": [9, 0, 0], "units": [1, 0, 0]}', '{"layers": [0]}'):
        assert cli(["export", "--run", str(trained_run), "--config", bad, "--out", str(tmp_path / "x")]) == 2
        assert "nasprune: error:" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert cli(["export", "--run", str(tmp_path), "--config", "middle", "--out", str(tmp_path / "y")]) == 2
    assert "run.json" in capsys.readouterr().err


@pytest.mark.parametrize(("importance", "extra"), [("fisher", ()), ("none", ()),
                                                   ("fisher", ("--num-random-subnets", "0"))],
                         ids=["fisher", "none", "fisher-plain-fine-tuning"])
def test_importance_ordering_keeps_the_function(workspace, tmp_path, importance: str, extra: tuple) -> None:
    """With a learning rate of 0 the run only reorders: same logits as the original model, sorted importance.
    Plain fine-tuning (k = 0) has no plain phase to end, so it is ordered before training, whatever the fraction."""
    out = tmp_path / importance
    space = ("--space", "uniform") if importance == "none" else ()  # the default space needs the scores
    assert cli(_train_args(workspace, out, "--lr", "0", "--importance", importance, *space, *extra)) == 0
    run = Run(out)
    trained, original = run.load_supernet(), load_supernet_from_model(workspace / "model").eval()
    validation = run.batches("validation")
    torch.testing.assert_close(torch.from_numpy(predict(trained, validation)[0]),
                               torch.from_numpy(predict(original, validation)[0]), rtol=0, atol=1e-5)
    same = all(torch.equal(v, original.state_dict()[k]) for k, v in trained.state_dict().items())
    assert same == (importance == "none")
    if importance == "fisher":
        generator = torch.Generator().manual_seed(run.spec.training.seed)
        scores = fisher_importance(trained, run.batches("train", shuffle=True, generator=generator),
                                   max_batches=run.spec.importance_batches, progress=False)
        for heads, units in zip(scores.heads, scores.units, strict=True):
            assert heads[0] >= heads[-1] and units[0] >= units[-1]
            torch.testing.assert_close(heads, heads.sort(descending=True).values, rtol=1e-3, atol=1e-12)


def test_plain_fraction_scores_importance_once_on_the_fine_tuned_model(workspace, tmp_path, monkeypatch) -> None:
    """With --plain-fraction, Fisher ordering runs once, after the plain steps (not on the random head first)."""
    import supernet.run as run_module
    from supernet.training import SupernetTrainer

    steps, scored_at = {"n": 0}, []
    original_step, original_fisher = SupernetTrainer._optimizer_step, run_module.fisher_importance

    def counting_step(self, pending):
        original_step(self, pending)
        steps["n"] += 1

    def recording_fisher(*args, **kwargs):
        scored_at.append(steps["n"])
        return original_fisher(*args, **kwargs)

    monkeypatch.setattr(SupernetTrainer, "_optimizer_step", counting_step)
    monkeypatch.setattr(run_module, "fisher_importance", recording_fisher)
    out = tmp_path / "plain"
    assert cli(_train_args(workspace, out, "--epochs", "2", "--plain-fraction", "0.5")) == 0
    history = json.loads((out / "training.json").read_text())["history"]
    assert len(history) == 12 and scored_at == [6]  # 42 examples in batches of 8: 6 steps per epoch
    assert all("loss_subnets" not in h for h in history[:6]) and all("loss_subnets" in h for h in history[6:])
    assert Run(out).spec.training.plain_fraction == 0.5


def test_run_batches_for_the_test_split(trained_run) -> None:
    run = Run(trained_run)
    batches = run.batches("test")
    assert sum(len(b["labels"]) for b in batches) == len(run.task.test["test"]) == 20
    assert sum(len(b["labels"]) for b in run.batches("validation")) == 18
    with pytest.raises((ValueError, KeyError)):
        run.batches("no-such-split")


def test_rerun_resumes_and_a_different_spec_is_refused(trained_run, workspace, capsys) -> None:
    before = (trained_run / "supernet" / "model.safetensors").read_bytes()
    history = json.loads((trained_run / "training.json").read_text())["history"]
    assert cli(_train_args(workspace, trained_run)) == 0  # nothing left to train: same result
    assert json.loads((trained_run / "training.json").read_text())["history"] == history
    assert load_supernet(trained_run / "supernet").state_dict().keys()
    assert (trained_run / "supernet" / "model.safetensors").read_bytes() == before
    capsys.readouterr()
    assert cli(_train_args(workspace, trained_run, "--lr", "1e-3")) == 2
    err = capsys.readouterr().err  # names the setting that differs, with both values
    assert "different run (training.learning_rate: 0.0001 stored, 0.001 asked)" in err


def test_the_validation_cap(trained_run, workspace, capsys) -> None:
    """The search's validation examples: at most DEFAULT_VALIDATION_LIMIT by default (a seeded subset), 'all' for
    the whole split; a run written before the cap existed, or with any limit that keeps every example, resumes."""
    stored = json.loads((trained_run / "run.json").read_text())
    assert stored["validation_limit"] == DEFAULT_VALIDATION_LIMIT == RunSpec().validation_limit
    spec = RunSpec.from_dict(stored)
    whole = load_run_task(spec.model_copy(update=dict(validation_limit=None))).validation
    assert len(whole) == 18 < DEFAULT_VALIDATION_LIMIT  # 30 % of the toy task's 60 rows: the cap keeps them all
    five = load_run_task(spec.model_copy(update=dict(validation_limit=5))).validation
    assert len(five) == 5 and all(example in whole for example in five)
    assert five == load_run_task(spec.model_copy(update=dict(validation_limit=5))).validation  # seeded: the same subset
    assert five != load_run_task(spec.model_copy(update=dict(validation_limit=5, split_seed=1))).validation[:5]
    legacy = {k: v for k, v in stored.items() if k != "validation_limit"}
    assert RunSpec.from_dict(legacy).validation_limit is None  # written before the cap: the whole split
    for limit in (None, 18, 10_000):  # every example either way: the same run
        assert same_run(spec, spec.model_copy(update=dict(validation_limit=limit)))
    assert not same_run(spec, spec.model_copy(update=dict(validation_limit=5)))
    uncapped = spec.model_copy(update=dict(validation_limit=None))
    assert not same_run(uncapped, uncapped.model_copy(update=dict(max_length=64)))

    (trained_run / "run.json").write_text(json.dumps(stored | {"validation_limit": None}))
    before = (trained_run / "supernet" / "model.safetensors").read_bytes()
    try:
        assert cli(_train_args(workspace, trained_run)) == 0  # the default cap keeps all 18: resumes (done)
        assert cli(_train_args(workspace, trained_run, "--validation-limit", "all")) == 0
        assert (trained_run / "supernet" / "model.safetensors").read_bytes() == before
        capsys.readouterr()
        assert cli(_train_args(workspace, trained_run, "--validation-limit", "5")) == 2  # fewer examples: another
        assert "(validation_limit: None stored, 5 asked)" in capsys.readouterr().err
    finally:
        (trained_run / "run.json").write_text(json.dumps(stored))
    for bad in ("0", "-3"):  # refused by RunSpec's bound
        assert cli(_train_args(workspace, trained_run, "--validation-limit", bad)) == 2
        assert "argument --validation-limit: Input should be greater than or equal to 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # not a number: argparse's own error
        cli(_train_args(workspace, trained_run, "--validation-limit", "some"))
    assert exc.value.code == 2 and "argument --validation-limit: invalid" in capsys.readouterr().err


def _interrupt_after_step(monkeypatch, step: int):
    """Press Ctrl-C (SIGINT) during optimizer step `step` of the next run; the unpatched step is returned, to put
    back before the resume."""
    from supernet.training import SupernetTrainer

    original = SupernetTrainer._optimizer_step
    calls = {"n": 0}

    def step_then_interrupt(self, pending):
        original(self, pending)
        calls["n"] += 1
        if calls["n"] == step:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(SupernetTrainer, "_optimizer_step", step_then_interrupt)
    return original


def test_interrupted_cli_run_resumes_to_the_same_weights(workspace, tmp_path, monkeypatch, capsys) -> None:
    from supernet.training import SupernetTrainer

    args = ("--num-random-subnets", "1", "--grad-accum", "2", "--importance", "none", "--space", "uniform")
    assert cli(_train_args(workspace, tmp_path / "straight", *args)) == 0
    original = _interrupt_after_step(monkeypatch, 2)
    capsys.readouterr()
    assert cli(_train_args(workspace, tmp_path / "resumed", *args)) == 130
    assert "stopped at step 2/3" in capsys.readouterr().out
    assert (tmp_path / "resumed" / "checkpoint.pt").is_file()
    assert not (tmp_path / "resumed" / "supernet").exists()
    monkeypatch.setattr(SupernetTrainer, "_optimizer_step", original)
    assert cli(_train_args(workspace, tmp_path / "resumed", *args)) == 0
    a = load_supernet(tmp_path / "straight" / "supernet").state_dict()
    b = load_supernet(tmp_path / "resumed" / "supernet").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "straight" / "training.json").read_text())["history"] == json.loads(
        (tmp_path / "resumed" / "training.json").read_text())["history"]


@pytest.mark.slow
def test_importance_space_run_resumed_after_the_ordering_is_the_same(workspace, tmp_path, monkeypatch,
                                                                      capsys) -> None:
    """The importance space samples by the scores of the ordering; a run resumed after it reads them back from
    importance.json (it is not ordered again) and ends with the same weights as a run never stopped."""
    from supernet.training import SupernetTrainer

    args = ("--space", "importance", "--epochs", "2", "--plain-fraction", "0.5")
    assert cli(_train_args(workspace, tmp_path / "straight", *args)) == 0
    original = _interrupt_after_step(monkeypatch, 8)  # two sandwich steps after the ordering at step 6
    assert cli(_train_args(workspace, tmp_path / "resumed", *args)) == 130
    assert (tmp_path / "resumed" / "importance.json").is_file()
    monkeypatch.setattr(SupernetTrainer, "_optimizer_step", original)
    assert cli(_train_args(workspace, tmp_path / "resumed", *args)) == 0
    a = load_supernet(tmp_path / "straight" / "supernet").state_dict()
    b = load_supernet(tmp_path / "resumed" / "supernet").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "straight" / "importance.json").read_text() == (tmp_path / "resumed" / "importance.json"
                                                                        ).read_text()


@pytest.mark.slow
@pytest.mark.skipif(not (GLUE_DIR / "RTE" / "train.tsv").is_file(), reason=f"GLUE data not found at {GLUE_DIR}")
def test_glue_rte_run(workspace, tmp_path) -> None:
    out = tmp_path / "rte"
    argv = ["train", "--model", str(workspace / "model"), "--task", "glue/rte", "--data-dir", str(GLUE_DIR),
            "--train-limit", "32", "--max-length", "32", "--epochs", "1", "--batch-size", "16", "--space", "layers",
            "--out", str(out)]
    assert cli(argv) == 0
    summary = json.loads((out / "training.json").read_text())
    assert len(summary["history"]) == 2  # 32 examples in batches of 16
    assert set(summary["validation"]["smallest"]) == {"accuracy"}
    run = Run(out)
    assert len(run.task.train) == 32 and len(run.task.validation) == 747
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in summary["validation"].values())


def test_missing_data_file_is_reported(workspace, tmp_path, capsys) -> None:
    missing = tmp_path / "nope.csv"
    argv = _train_args(workspace, tmp_path / "run")
    argv[argv.index("--train-file") + 1] = str(missing)
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "nasprune: error:" in err and str(missing) in err


def test_custom_task_needs_both_files(workspace, tmp_path, capsys) -> None:
    argv = ["train", "--model", str(workspace / "model"), "--task", "custom/toy", "--train-file",
            str(workspace / "train.csv"), "--out", str(tmp_path / "run")]
    assert cli(argv) == 2
    assert "nasprune: error: argument --test-file: Field required" in capsys.readouterr().err


def test_unknown_model_folder(workspace, tmp_path, capsys) -> None:
    argv = _train_args(workspace, tmp_path / "run")
    argv[argv.index("--model") + 1] = str(tmp_path / "no-such-model")
    assert cli(argv) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_unknown_glue_task(workspace, tmp_path, capsys) -> None:
    argv = ["train", "--model", str(workspace / "model"), "--task", "glue/nope", "--out", str(tmp_path / "run")]
    assert cli(argv) == 2
    assert "unknown task" in capsys.readouterr().err


def test_parser_rejects_bad_flags(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(["train", "--space", "huge", "--out", "x"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        cli(["export", "--config", "middle"])  # --run and --out are required


def test_the_cli_starts_without_torch() -> None:
    """`nasprune --help`, `db upgrade` and `token` import only torch-free modules (torch, transformers and datasets
    cost seconds); a command imports what it runs."""
    heavy = ("torch", "transformers", "datasets", "search.objectives", "supernet.run")
    code = f"import sys, service.cli; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


def test_the_objective_names_the_cli_lists_are_the_search_objectives() -> None:
    assert OBJECTIVE_NAMES == tuple(OBJECTIVES)


def test_the_demo_refuses_a_port_in_use(tmp_path) -> None:
    """`make run` on a port another server holds would poll that server's searches: the demo stops first, with a
    reason, before it starts its own server."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "examples/service_demo.py", "--port", str(port),
                              "--data-root", str(tmp_path / "service")], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert out.returncode != 0
    assert f"port {port} is in use" in out.stderr
    assert not (tmp_path / "service").exists()
