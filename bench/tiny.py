"""The smallest setting of every benchmark (`--tiny`): a tiny random BERT with MiniLM's tokenizer and a few rows
of each GLUE task, so a test can run a benchmark's whole code path in seconds and a change underneath it that
breaks the benchmark fails CI (issue 37). The figures it prints mean nothing; its checks do.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from supernet.config import SupernetConfig
from supernet.model import Supernet
from supernet.settings import RunSpec, TrainingConfig

GLUE_DIR = Path(__file__).resolve().parents[2] / "shared/data/glue"
TASKS = ("MRPC", "RTE", "SST-2")
# 3 layers of 4 heads (head size 8) and 48 FFN units, as tests/conftest.py's tiny_bert_config
TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=130)
TINY_MAX_LENGTH = 16  # tokens per example in the tiny settings


def tiny_supernet(num_labels: int = 2, seed: int = 0) -> Supernet:
    """A randomly initialised tiny supernet (vocabulary 99) for benchmarks that need no tokenizer."""
    config = SupernetConfig(num_layers=TINY["num_hidden_layers"], hidden_size=TINY["hidden_size"],
                            num_heads=TINY["num_attention_heads"], head_size=8,
                            intermediate_size=TINY["intermediate_size"], vocab_size=99,
                            max_position_embeddings=TINY["max_position_embeddings"], type_vocab_size=2,
                            num_labels=num_labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Supernet(config).eval()


def tiny_model(folder: Path) -> Path:
    """A tiny random BERT saved as a Hugging Face folder with MiniLM's tokenizer (once per folder)."""
    if (folder / "config.json").is_file():
        return folder
    from transformers import BertConfig, BertForSequenceClassification

    from supernet.convert import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, num_labels=2, **TINY))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_glue(folder: Path, *, train_rows: int = 48, test_rows: int = 24, source: Path = GLUE_DIR) -> Path:
    """The first rows of MRPC, RTE and SST-2 (train.tsv and dev.tsv, header kept) in the classic GLUE layout."""
    for task in TASKS:
        for name, rows in (("train.tsv", train_rows), ("dev.tsv", test_rows)):
            target = folder / task / name
            if target.is_file():
                continue
            lines = (source / task / name).read_text(encoding="utf-8-sig").splitlines(keepends=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("".join(lines[:rows + 1]), encoding="utf-8")
    return folder


def workspace(root: Path | None = None) -> tuple[str, str]:
    """(model folder, GLUE data dir) of the tiny setting under `root` (a new temporary folder if None)."""
    root = Path(tempfile.mkdtemp(prefix="nasprune-tiny-")) if root is None else root
    return str(tiny_model(root / "model")), str(tiny_glue(root / "glue"))


def tiny_spec(model: str, data_dir: str, task: str = "glue/mrpc", **overrides: Any) -> RunSpec:
    """A run of the tiny setting: short inputs, small batches, one epoch (half plain, half sandwich)."""
    values: dict[str, Any] = dict(model=model, task=task, data_dir=data_dir, max_length=TINY_MAX_LENGTH, batch_size=8,
                                  eval_batch_size=8, importance_batches=2, training=TrainingConfig(epochs=1.0))
    return RunSpec(**(values | overrides))


def tiny_run(root: Path) -> Path:
    """A trained tiny supernet's run folder under `root` (trained once; seconds)."""
    from supernet.run import train_run

    model, data_dir = workspace(root)
    folder = root / "run"
    train_run(tiny_spec(model, data_dir), folder, progress=False)
    return folder


def tiny_search(root: Path, evaluations: int = 8) -> Path:
    """A finished tiny search job's run folder under `root` (train, search, front with test figures)."""
    from search.job import LatencyShape, SearchJob, run_search_job
    from search.runner import SearchConfig

    model, data_dir = workspace(root)
    folder = root / "search"
    job = SearchJob(search=SearchConfig(evaluations=evaluations), latency=LatencyShape(batch_size=2),
                    evaluation_dtype="float32")
    run_search_job(tiny_spec(model, data_dir), job, folder, progress=False)
    return folder
