"""Where stages run: --device / compute.device, --precision, GPUs counted without torch, one worker per GPU.

Every test here but those marked `gpu` runs on a machine without a GPU (the GPU count is set with NASPRUNE_GPUS
and CUDA_VISIBLE_DEVICES, which is what the code reads); the `gpu` ones run the real stages on CUDA and are
skipped, with the reason, where torch sees none (tests/conftest.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli, make_supernet, random_inputs, random_sub, search_body, task_args

from search.job import run_search_job
from service.supervisor import PINNED_GPU, WorkerPool, worker_slots
from supernet.devices import DeviceBatches, on_device, resolve_device, training_dtype
from supernet.extract import extract, load_exported
from supernet.hardware import DeviceUnavailable, check_device, visible_gpus
from supernet.refine import PrunedModel
from supernet.settings import DEVICE_PATTERN, TRAINING_PRECISIONS, Compute
from supernet.training import SupernetTrainer

CUDA = torch.cuda.is_available()


@pytest.fixture
def gpus(monkeypatch):
    """Set how many GPUs the machine seems to have (the driver's count) and what CUDA_VISIBLE_DEVICES says."""
    def set_gpus(count: int, visible: str | None = None) -> None:
        monkeypatch.setenv("NASPRUNE_GPUS", str(count))
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    return set_gpus


def test_the_settings_and_the_device_module_name_the_same_things() -> None:
    from supernet import devices, hardware

    assert TRAINING_PRECISIONS == devices.TRAINING_PRECISIONS
    assert DEVICE_PATTERN == hardware.DEVICE_PATTERN
    assert Compute().to_dict() == {"device": "auto", "precision": "auto"}
    for bad in ("gpu", "cuda:x", "CUDA", "cuda:0,1", "mps"):
        with pytest.raises(ValueError, match="device"):
            Compute(device=bad)


def test_visible_gpus_follow_cuda_visible_devices(gpus) -> None:
    gpus(4)
    assert visible_gpus() == ["0", "1", "2", "3"]
    gpus(4, "3,1")
    assert visible_gpus() == ["3", "1"]
    gpus(4, "2,7,1")  # CUDA stops at the first id that is not a device
    assert visible_gpus() == ["2"]
    gpus(4, "")
    assert visible_gpus() == []
    gpus(4, "-1")
    assert visible_gpus() == []
    gpus(0, "0")
    assert visible_gpus() == []


def test_check_device_says_what_the_machine_has(gpus) -> None:
    gpus(0)
    assert check_device("cpu") == "cpu" and check_device("auto") == "auto"
    with pytest.raises(DeviceUnavailable, match="no CUDA GPU visible"):
        check_device("cuda")
    gpus(2)
    assert check_device("cuda:1") == "cuda:1"
    with pytest.raises(DeviceUnavailable, match="2 CUDA GPU.*cuda:0 to cuda:1"):
        check_device("cuda:2")
    with pytest.raises(DeviceUnavailable, match="auto, cpu, cuda or cuda:N"):
        check_device("tpu")


def test_resolve_device_and_training_precision() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda", 0) if CUDA else torch.device("cpu"))
    assert training_dtype("auto", torch.device("cpu")) == torch.float32  # never bfloat16 training on a CPU unasked
    assert training_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert training_dtype("float32", torch.device("cpu")) == torch.float32
    if not CUDA:
        with pytest.raises(DeviceUnavailable, match="cuda"):
            resolve_device("cuda:0")


def test_batches_stay_where_they_are_on_the_cpu() -> None:
    loader = [{"input_ids": torch.ones(2, 3, dtype=torch.long)}]
    assert on_device(loader, None) is loader and on_device(loader, torch.device("cpu")) is loader
    moved = DeviceBatches(loader, torch.device("cpu"))
    assert len(moved) == 1 and torch.equal(next(iter(moved))["input_ids"], loader[0]["input_ids"])


def test_bfloat16_training_keeps_float32_weights() -> None:
    """Mixed precision: the forward runs under autocast, the weights and the optimizer's moments stay float32."""
    from conftest import supernet_config, toy_batches

    from supernet.settings import TrainingConfig
    from supernet.space import make_space

    model = make_supernet(supernet_config())
    trainer = SupernetTrainer(model, make_space("uniform", model.config), toy_batches(),
                              TrainingConfig(epochs=1, num_random_subnets=1, plain_fraction=0.5),
                              progress=False, dtype=torch.bfloat16)
    state = trainer.train()
    assert state.step == state.total_steps and all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(h["loss_full"])) for h in state.history)
    assert trainer.compute_record() == {"precision": "bfloat16"}


# --------------------------------------------------------------------------------------------- CLI and API


@pytest.mark.parametrize("command", ["train", "search"])
def test_cli_refuses_a_gpu_the_machine_lacks(command, workspace, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("NASPRUNE_GPUS", "0")
    assert cli([command, *task_args(workspace), "--device", "cuda", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--device" in err and "no CUDA GPU" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_cli_refuses_an_unknown_device_or_precision(workspace, tmp_path, capsys) -> None:
    assert cli(["train", *task_args(workspace), "--device", "gpu", "--out", str(tmp_path / "a")]) == 2
    assert "--device" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own choices
        cli(["train", *task_args(workspace), "--precision", "float16", "--out", str(tmp_path / "b")])
    assert exit_info.value.code == 2 and "--precision" in capsys.readouterr().err


def test_a_cpu_run_records_where_it_ran(workspace, tmp_path) -> None:
    out = tmp_path / "run"
    assert cli(["train", *task_args(workspace), "--max-length", "16", "--epochs", "1", "--device", "cpu",
                "--out", str(out)]) == 0
    compute = json.loads((out / "training.json").read_text())["compute"]
    assert compute["device"] == "cpu" and compute["precision"] == "float32"
    assert compute["peak_host_memory_bytes"] > 10 * 2**20 and "peak_device_memory_bytes" not in compute


def test_api_refuses_a_gpu_the_server_lacks(client, workspace, monkeypatch) -> None:
    monkeypatch.setenv("NASPRUNE_GPUS", "0")
    body = search_body(workspace, ["error", "params"], 2, compute={"device": "cuda:0"})
    response = client.post("/searches", json=body)
    assert response.status_code == 422, response.text
    assert "compute.device" in response.text and "no CUDA GPU" in response.text
    response = client.post("/searches", json=search_body(workspace, ["error", "params"], 2,
                                                          compute={"precision": "half"}))
    assert response.status_code == 422 and "precision" in response.text


def test_api_stores_where_a_search_asked_to_run(client, workspace) -> None:
    body = search_body(workspace, ["error", "params"], 2, compute={"device": "cpu", "precision": "float32"})
    response = client.post("/searches", json=body)
    assert response.status_code == 201, response.text
    read = response.json()
    assert read["request"]["compute"] == {"device": "cpu", "precision": "float32"}
    assert read["device"] is None  # no worker has run it yet
    client.post(f"/searches/{read['id']}/cancel")


# --------------------------------------------------------------------------------------------- workers


def test_one_worker_per_visible_gpu(gpus) -> None:
    gpus(3, "2,0")
    assert worker_slots("auto") == [{"CUDA_VISIBLE_DEVICES": "2", PINNED_GPU: "2"},
                                    {"CUDA_VISIBLE_DEVICES": "0", PINNED_GPU: "0"}]
    gpus(0)
    assert worker_slots("auto") == [{}]  # one CPU worker where there is no GPU
    assert worker_slots(2) == [{}, {}]


def test_the_pool_starts_each_worker_pinned_to_its_gpu(gpus, tmp_path) -> None:
    """Real processes: each worker sees only its own GPU."""
    gpus(2)
    script = ("import os, pathlib; pathlib.Path(os.environ['OUT'], os.environ['NASPRUNE_WORKER_GPU']).write_text("
              "os.environ['CUDA_VISIBLE_DEVICES'])")
    pool = WorkerPool([sys.executable, "-c", script], {"OUT": str(tmp_path), "PATH": "/usr/bin:/bin"}, 0,
                      slots=worker_slots("auto"), poll_s=0.05)
    assert pool.count == 2
    started = list(pool.start().processes)  # the pool forgets a worker that exits cleanly
    for process in started:
        process.wait(timeout=30)
    pool.stop()
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"0": "0", "1": "1"}


def test_serve_takes_auto_workers() -> None:
    from service.cli import build_parser

    assert build_parser().parse_args(["serve", "--workers", "auto"]).workers == "auto"
    assert build_parser().parse_args(["serve", "--workers", "2"]).workers == 2
    result = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--workers", "many"], capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 2 and "auto" in result.stderr


# --------------------------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
def test_gpu_supernet_matches_the_cpu() -> None:
    """Every sub-network's logits on CUDA equal the CPU's (float32, TF32 off), and the exported model's too."""
    import random

    torch.backends.cuda.matmul.allow_tf32 = False
    model = make_supernet()
    inputs = random_inputs(batch=4, tokens=11)
    ids, mask, types = inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]
    rng = random.Random(0)
    gpu = make_supernet().cuda()
    for _ in range(5):
        sub = random_sub(model.config, rng)
        with model.use(sub), gpu.use(sub), torch.no_grad():
            want = model(ids, mask, types)
            got = gpu(ids.cuda(), mask.cuda(), types.cuda()).cpu()
            exported = extract(gpu, sub).cuda().eval()
            small = PrunedModel(exported)(ids.cuda(), mask.cuda(), types.cuda()).cpu()
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(small, want, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_gpu_search_job_end_to_end_and_resume_on_the_cpu(workspace, tmp_path, monkeypatch) -> None:
    """train (bfloat16 autocast) + search + refine on CUDA; the exported point reproduces its metric on the CPU; a
    checkpoint written on the GPU resumes on the CPU."""
    monkeypatch.setenv("NASPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = [*task_args(workspace), "--max-length", "16", "--epochs", "2", "--evaluations", "4",
            "--latency-batch-size", "2", "--refine-epochs", "1", "--device", "cuda", "--precision", "bfloat16"]
    assert cli(["search", *args, "--out", str(out)]) == 0
    compute = json.loads((out / "training.json").read_text())["compute"]
    assert compute["device"].startswith("cuda:0 (") and compute["precision"] == "bfloat16"
    assert compute["peak_device_memory_bytes"] > 0
    front = json.loads((out / "front.json").read_text())
    assert front["points"] and all("refined" in p for p in front["points"])
    assert cli(["export", "--run", str(out), "--point", "0", "--sliced", "--out", str(tmp_path / "export")]) == 0
    exported = load_exported(tmp_path / "export")
    assert all(p.device.type == "cpu" for p in exported.parameters())

    # a run stopped on the GPU resumes on the CPU from its checkpoint
    resumed = tmp_path / "resumed"
    from search.settings import SearchSettings
    from supernet.run import CHECKPOINT_FILE, train_run

    spec, job = SearchSettings.model_validate({
        "model": str(workspace / "model"), "task": "custom/toy", "max_length": 16,
        "custom": {"train_file": str(workspace / "train.csv"), "test_file": str(workspace / "test.csv")},
        "training": {"epochs": 2}, "search": {"evaluations": 3}, "latency": {"batch_size": 2}}).split()
    steps = []
    state = train_run(spec, resumed, progress=False, compute=Compute(device="cuda"),
                      on_step=lambda s: steps.append(s.step), should_stop=lambda: len(steps) >= 2)
    assert state.stopped and (resumed / CHECKPOINT_FILE).is_file()
    assert run_search_job(spec, job, resumed, progress=False, compute=Compute(device="cpu")) is not None
    assert json.loads((resumed / "training.json").read_text())["compute"]["device"] == "cpu"


@pytest.mark.gpu
def test_gpu_refine_and_compress_commands(workspace, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NASPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert cli(["search", *task_args(workspace), "--max-length", "16", "--epochs", "1", "--evaluations", "3",
                "--latency-batch-size", "2", "--device", "cuda", "--out", str(out)]) == 0
    assert cli(["refine", "--run", str(out), "--point", "0", "--device", "cuda"]) == 0
    assert cli(["compress", "--run", str(out), "--point", "0", "--protocol", "lowrank", "--rank", "4",
                "--epochs", "1", "--device", "cuda", "--out", str(tmp_path / "small")]) == 0
    record = json.loads((tmp_path / "small" / "subnetwork.json").read_text())
    assert record["metrics"]["validation"]
