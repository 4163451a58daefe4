"""Shared fixtures: tiny random BERT configs, supernets with every parameter noised, the MiniLM tokenizer.

Every parameter (LayerNorm weights and biases included) gets random noise, so a parity test cannot pass
by accident because some bias is zero or some LayerNorm is the identity.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network, whatever the caller's environment

import contextlib  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from supernet.config import SubNetworkConfig, SupernetConfig  # noqa: E402
from supernet.model import Supernet  # noqa: E402
from supernet.tasks import TaskSpec  # noqa: E402

# The models here are tiny: one intra-op thread is fastest, and it keeps timings stable on a busy machine
# (OpenMP threads spin-waiting for a contended core made each tiny op take milliseconds).
torch.set_num_threads(1)

GLUE_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/glue"

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=64)


def tiny_bert_config(**overrides):
    from transformers import BertConfig

    return BertConfig(**(TINY | overrides))


def tiny_roberta_config(**overrides):
    from transformers import RobertaConfig

    return RobertaConfig(**(TINY | {"pad_token_id": 1, "type_vocab_size": 1} | overrides))


@torch.no_grad()
def add_noise(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Add Gaussian noise to every parameter (biases, LayerNorm weights, embeddings, ...)."""
    gen = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(torch.randn(param.shape, generator=gen) * scale)
    return model


def supernet_config(num_labels: int = 2, **overrides) -> SupernetConfig:
    """The SupernetConfig of the tiny BERT (3 layers, hidden 32, 4 heads of 8, 48 FFN units)."""
    values = dict(num_layers=3, hidden_size=32, num_heads=4, head_size=8, intermediate_size=48, vocab_size=99,
                  max_position_embeddings=64, type_vocab_size=2, num_labels=num_labels)
    return SupernetConfig(**(values | overrides))


def make_supernet(config: SupernetConfig | None = None, seed: int = 0) -> Supernet:
    """A supernet whose weights depend only on `seed` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Supernet(config or supernet_config())
    return add_noise(model, seed).eval()


def random_inputs(batch: int = 4, tokens: int = 11, *, vocab_size: int = 99, pad_token_id: int = 0,
                  type_vocab_size: int = 2, seed: int = 0, padded: bool = True) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / token_type_ids with right padding in all but the first row."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab_size, (batch, tokens), generator=gen)
    mask = torch.ones_like(ids)
    if padded:
        for row in range(1, batch):
            mask[row, max(2, tokens - 3 * row):] = 0
    ids = ids.masked_fill(mask == 0, pad_token_id)
    types = torch.zeros_like(ids)
    if type_vocab_size > 1:
        types[:, tokens // 2:] = 1
        types = types * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def random_sub(config: SupernetConfig, rng: random.Random, *, allow_zero: bool = True) -> SubNetworkConfig:
    """A random sub-network: any non-empty set of layers, any widths (0 allowed)."""
    n = config.num_layers
    layers = tuple(i for i in range(n) if rng.random() < 0.7) or (rng.randrange(n),)
    low = 0 if allow_zero else 1
    heads = tuple(rng.randint(low, h) for h in config.layer_heads)
    units = tuple(rng.randint(low, u) for u in config.layer_units)
    return SubNetworkConfig(layers=layers, heads=heads, units=units)


def hand_subs(config: SupernetConfig) -> list[SubNetworkConfig]:
    """Hand-picked corner cases: a 0-head layer, a 0-unit layer, dropped layers, a single layer, the full net."""
    n, h, u = config.num_layers, config.num_heads, config.intermediate_size
    return [
        SubNetworkConfig.full(config),
        SubNetworkConfig(layers=tuple(range(n)), heads=(0,) + (h,) * (n - 1), units=(u,) * n),
        SubNetworkConfig(layers=tuple(range(n)), heads=(h,) * n, units=(u,) * (n - 1) + (0,)),
        SubNetworkConfig(layers=tuple(range(1, n)), heads=(h,) * n, units=(u,) * n),  # layer 0 dropped
        SubNetworkConfig(layers=(n - 1,), heads=(1,) * n, units=(1,) * n),
        SubNetworkConfig(layers=(0, n - 1), heads=(0,) * n, units=(0,) * n),  # kept layers with empty blocks
    ]


@pytest.fixture
def tiny_config() -> SupernetConfig:
    return supernet_config()


@pytest.fixture
def tiny_supernet() -> Supernet:
    """A tiny supernet (3 layers, hidden 32, 4 heads, 48 units), all parameters noised, in eval mode."""
    return make_supernet()


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from supernet.convert import load_tokenizer

    return load_tokenizer("minilm")


# ------------------------------------------------------------------------------ search: toy task and latency

TOY_SPEC = TaskSpec(name="toy", is_regression=False, label_names=("neg", "pos"), metrics=("accuracy", "f1"),
                    main_metric="accuracy")


def toy_batches(count: int = 3, size: int = 4, tokens: int = 8, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """A few tiny labelled batches for the tiny supernet (both labels present)."""
    batches = []
    for k in range(count):
        batch = random_inputs(size, tokens, seed=seed + k)
        batch["labels"] = torch.arange(size) % 2 if k == 0 else torch.randint(
            0, 2, (size,), generator=torch.Generator().manual_seed(seed + 100 + k))
        batches.append(batch)
    return batches


def hand_latency_table(config: SupernetConfig, *, step: int = 8):
    """A LatencyTable with round, strictly increasing entries (no timing): predictions are exact arithmetic."""
    from search.latency import LatencyTable

    units = sorted(set(range(0, max(config.layer_units) + 1, step)) | {max(config.layer_units)})
    return LatencyTable(device="hand", batch_size=2, seq_len=8, tokens=[8], overhead_ms=[1.0],
                        attention_ms=[[0.5 * h] for h in range(max(config.layer_heads) + 1)],
                        ffn_units=units, ffn_ms=[[0.25 + u / 16] for u in units], scale=1.0, per_layer_ms=0.125)


@pytest.fixture(scope="session")
def tiny_latency_table():
    """A LatencyTable calibrated on the tiny config (batch 2 x 8 tokens, one repeat: well under a second)."""
    from search.latency import calibrate

    return calibrate(supernet_config(), batch_size=2, seq_len=8, repeats=1)


# ------------------------------------------------------------------------------ CLI: tiny model and CSV task

POSITIVE = "good great fine lovely excellent happy nice".split()
NEGATIVE = "bad awful poor terrible sad nasty wrong".split()
FILLER = "the a movie film plot actor scene story was is really quite".split()


def cli(argv: list[str]) -> int:
    """service.cli.main, restoring the signal handlers that `train` installs (they would outlive the call)."""
    from service.cli import main

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        return main(argv)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def write_csv(path: Path, rows: int, seed: int) -> Path:
    """A toy sentiment CSV (id, text, label in {pos, neg}) whose label words make the task learnable."""
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "label"])
        for i in range(rows):
            label = rng.choice(["pos", "neg"])
            words = rng.sample(FILLER, 4) + rng.sample(POSITIVE if label == "pos" else NEGATIVE, 2)
            rng.shuffle(words)
            writer.writerow([i, " ".join(words), label])
    return path


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, minilm_tokenizer) -> Path:
    """A tiny random BERT (MiniLM's vocabulary) saved with the MiniLM tokenizer, and a tiny CSV task
    (train.csv: 60 rows, test.csv: 20 rows). Tests write their runs elsewhere or in their own subfolder."""
    from transformers import BertForSequenceClassification

    root = tmp_path_factory.mktemp("cli")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertForSequenceClassification(tiny_bert_config(vocab_size=minilm_tokenizer.vocab_size, num_labels=2))
    add_noise(model, seed=0, scale=0.02)
    model.save_pretrained(root / "model")
    minilm_tokenizer.save_pretrained(root / "model")
    write_csv(root / "train.csv", 60, seed=1)
    write_csv(root / "test.csv", 20, seed=2)
    return root


def task_args(ws: Path) -> list[str]:
    """CLI flags for the tiny model on the toy custom CSV task of `workspace`."""
    return ["--model", str(ws / "model"), "--task", "custom/toy", "--train-file", str(ws / "train.csv"),
            "--test-file", str(ws / "test.csv"), "--text-columns", "text"]


@pytest.fixture
def evaluated(monkeypatch) -> list[SubNetworkConfig | None]:
    """Every sub-network that search.objectives evaluates on the validation batches, in order."""
    from search import objectives as objectives_module
    from supernet.evaluation import evaluate

    calls: list[SubNetworkConfig | None] = []

    def counting(model, batches, spec, *, sub=None, progress=False, dtype=torch.float32):
        calls.append(sub)
        return evaluate(model, batches, spec, sub=sub, progress=progress, dtype=dtype)

    monkeypatch.setattr(objectives_module, "evaluate", counting)
    return calls


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server (tests/postgres.py), or a skip saying why there is none."""
    from tests.postgres import PostgresServer

    reason = PostgresServer.unavailable()
    if reason:
        pytest.skip(reason)
    server = PostgresServer().start()
    yield server
    server.stop()


# the PostgreSQL variant (a server, a database per test) runs in CI and `make test`, not in `make test-fast`
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def database_url(request, tmp_path: Path) -> str:
    """A fresh, migrated database: a SQLite file, then (same test again) a PostgreSQL database."""
    from service.db import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db' / 'nasprune.db'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    upgrade(url)
    return url


# ------------------------------------------------------------------------------ service: worker processes

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `gpu` run the stages on CUDA: where torch sees no GPU they are skipped, saying so."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"no CUDA GPU here (torch {torch.__version__}: torch.cuda.is_available() is "
                                   "False); run them on a GPU machine: bench/gpu_check.sh")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def service_env(settings, cache: Path) -> dict[str, str]:
    """The environment of worker and server processes: `settings` as NASPRUNE_* variables, a latency cache,
    offline, one thread."""
    return os.environ | {
        "NASPRUNE_DATA_ROOT": str(settings.data_root), "NASPRUNE_DATABASE_URL": settings.url,
        "NASPRUNE_ALLOWED_MODEL_ROOTS": json.dumps([str(p) for p in settings.allowed_model_roots]),
        "NASPRUNE_ALLOWED_DATA_ROOTS": json.dumps([str(p) for p in settings.allowed_data_roots]),
        "NASPRUNE_HEARTBEAT_S": str(settings.heartbeat_s), "NASPRUNE_STALE_AFTER_S": str(settings.stale_after_s),
        "NASPRUNE_MAX_ATTEMPTS": str(settings.max_attempts),
        "NASPRUNE_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO),
    }


HEARTBEAT_S, STALE_AFTER_S = 1.0, 3.0


def service_settings(workspace: Path, root: Path, **overrides):
    """Service settings for tests over a real SQLite file under `root`: the toy workspace allowed as model and data
    root, heartbeats fast enough for tests to see a dead worker's job taken over within seconds."""
    from service.config import Settings

    values = {"data_root": root / "data", "allowed_model_roots": [workspace], "allowed_data_roots": [workspace],
              "heartbeat_s": HEARTBEAT_S, "stale_after_s": STALE_AFTER_S, "max_attempts": 3}
    return Settings(**(values | overrides))


@pytest.fixture(scope="module")
def settings(workspace, tmp_path_factory):
    """Each API test module's own service (database, data root) over `service_settings`; a module that needs other
    settings (limits, tokens, data roots) defines its own `settings`, which `client` and `worker_env` then use."""
    return service_settings(workspace, tmp_path_factory.mktemp("service"))


@pytest.fixture(scope="module")
def client(settings):
    """The app over the module's `settings`, through FastAPI's test client (startup and shutdown run)."""
    from fastapi.testclient import TestClient

    from service.api import create_app

    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def worker_env(settings, tmp_path_factory) -> dict[str, str]:
    """The environment of the module's worker processes: the same settings, a latency cache shared by the module."""
    return service_env(settings, tmp_path_factory.mktemp("cache"))


def search_body(ws: Path, default_objectives: list[str], evaluations: int, **overrides) -> dict:
    """A POST /searches body for the tiny model and the toy CSV task of `workspace`: one epoch, short inputs.
    `overrides` replace top-level fields; a dict given for a section (training, search, latency, refine) is merged
    into it, so `search={"evaluations": 0}` keeps the objectives; a task that is not custom/... drops custom."""
    data = {"model": str(ws / "model"), "task": "custom/toy",
            "custom": {"train_file": str(ws / "train.csv"), "test_file": str(ws / "test.csv"),
                       "text_columns": ["text"]},
            "training": {"epochs": 1}, "search": {"objectives": default_objectives, "evaluations": evaluations},
            "max_length": 16, "batch_size": 8, "latency": {"batch_size": 2}}
    for key, value in overrides.items():
        merge = key in ("training", "search", "latency", "refine") and key in data
        data[key] = data[key] | value if merge else value
    if not str(data["task"]).startswith("custom/") and "custom" not in overrides:
        del data["custom"]
    return data


def start_worker(env: dict[str, str], *, once: bool = True, log: Path | None = None) -> subprocess.Popen:
    """`nasprune worker` in a new process; its stderr (the service log) goes to `log`, or to a pipe to read with
    communicate() (a long run should pass `log`: a full pipe would block the worker)."""
    command = [sys.executable, "-m", "service.cli", "worker", "--poll", "0.2"] + (["--once"] if once else [])
    stderr = open(log, "a") if log is not None else subprocess.PIPE  # noqa: SIM115 (the child holds it)
    try:
        return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    finally:
        if log is not None:
            stderr.close()


def run_worker_once(env: dict[str, str], timeout_s: float = 120.0) -> None:
    process = start_worker(env, once=True)
    _, err = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, err


def wait_for(client, search_id: str, predicate, timeout_s: float = 90.0, what: str = "") -> dict:
    """Poll GET /searches/{id} (a TestClient or an httpx.Client with a base_url) until `predicate` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        data = client.get(f"/searches/{search_id}").json()
        if predicate(data):
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}: {data}")
        time.sleep(0.05)


@contextlib.contextmanager
def worker_thread(settings):
    """A worker (service.worker.run_worker, the real loop) in a thread of this process while the block runs: what
    builds the exports a download queues, without another process paying torch's imports again. Stopped (its job
    released, if any) when the block ends."""
    import threading

    from service.worker import run_worker

    stop = threading.Event()
    thread = threading.Thread(target=run_worker, args=(settings,), kwargs={"poll_s": 0.05, "shutdown": stop},
                              name="test-worker", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(timeout=120)


def record_sub_networks(model: Supernet) -> list[SubNetworkConfig]:
    """The sub-networks `model` is set to from now on, in order (each still set): what a trainer drew."""
    seen: list[SubNetworkConfig] = []
    original = model.set_sub_network

    def record(sub: SubNetworkConfig) -> None:
        seen.append(sub)
        original(sub)

    model.set_sub_network = record  # type: ignore[method-assign]
    return seen


def served_dynamic_point(client, settings, root: Path, search_id: int, config: SubNetworkConfig,
                         dynamics: dict) -> tuple[dict, dict]:
    """Store one trial and a one-point front of `config` with `dynamics` for search `search_id` (in the real
    database, through the worker's store), mark the search finished, and return (trial, front point) as the API
    serves them."""
    from sqlalchemy import update

    from search.runner import Trial
    from service.db import make_engine, session_factory
    from service.models import Search, SearchStatus
    from service.store import DbStore

    engine = make_engine(settings.url)
    store = DbStore(session_factory(engine), search_id, root)
    store.add_trial(Trial(index=0, config=config, objectives={"error": 0.3, "expected_macs": 321.0},
                          validation={"accuracy": 0.7}, params={"encoder": 5, "total": 9}, macs=400, latency_ms=2.0,
                          elapsed_s=1.0, dynamics=dynamics))
    store.save_front({"task": "toy", "objectives": ["error", "expected_macs"], "hypervolume": 0.1,
                      "points": [{"config": config.to_dict(), "objectives": {"error": 0.3, "expected_macs": 321.0},
                                  "validation": {"accuracy": 0.7}, "params": {"encoder": 5}, "macs": 400,
                                  "latency_ms": 2.0, "test": {"accuracy": 0.6}, "dynamics": dynamics}]})
    with session_factory(engine).begin() as session:  # the front is served once the search has ended
        session.execute(update(Search).where(Search.id == search_id).values(status=SearchStatus.SUCCEEDED))
    engine.dispose()
    (item,) = client.get(f"/searches/{search_id}/trials").json()["items"]
    (point,) = client.get(f"/searches/{search_id}/pareto").json()["points"]
    return item, point
