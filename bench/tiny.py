"""The smallest setting of every benchmark (`--tiny`): a tiny random BERT with MiniLM's tokenizer and a few rows
of each GLUE task, so a test can run a benchmark's whole code path in seconds and a change underneath it that
breaks the benchmark fails CI (issue 37). The figures it prints mean nothing; its checks do.
"""

from __future__ import annotations

import random
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


def tiny_model(folder: Path, *, exits: bool = False) -> Path:
    """A tiny random BERT saved as a Hugging Face folder with MiniLM's tokenizer (once per folder). `exits`: its
    config asks for exit heads, which the supernet built from it adds (freshly initialised) after every layer."""
    if (folder / "config.json").is_file():
        return folder
    from transformers import BertConfig, BertForSequenceClassification

    from supernet.convert import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    extra = {"exits": True} if exits else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, num_labels=2, **TINY,
                                                         **extra))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# Where the real GLUE folder is missing (a checkout elsewhere), rows in each task's layout are written instead:
# a label word in the text makes them learnable, so a tiny run still sees both labels and a non-trivial metric.
WORDS = {0: "bad awful poor wrong".split(), 1: "good great fine right".split()}
FILLER = "the a movie plot actor scene story was is quite".split()
HEADERS = {"MRPC": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "RTE": "index\tsentence1\tsentence2\tlabel",
           "SST-2": "sentence\tlabel"}


def synthetic_rows(task: str, rows: int, seed: int) -> list[str]:
    """`rows` lines of `task`'s TSV layout (header first), labels alternating."""
    rng = random.Random(seed)
    lines = [HEADERS[task]]
    for i in range(rows):
        label = i % 2

        def text(label: int = label) -> str:
            words = rng.sample(FILLER, 4) + [rng.choice(WORDS[label])]
            rng.shuffle(words)
            return " ".join(words)

        if task == "MRPC":
            lines.append(f"{label}\t{2 * i}\t{2 * i + 1}\t{text()}\t{text()}")
        elif task == "RTE":
            lines.append(f"{i}\t{text()}\t{text()}\t{'not_entailment' if label else 'entailment'}")
        else:
            lines.append(f"{text()}\t{label}")
    return lines


def tiny_glue(folder: Path, *, train_rows: int = 48, test_rows: int = 24, source: Path = GLUE_DIR) -> Path:
    """The first rows of MRPC, RTE and SST-2 (train.tsv and dev.tsv, header kept) in the classic GLUE layout, from
    `source` where it holds them, else synthetic rows in the same layout."""
    for task in TASKS:
        for seed, (name, rows) in enumerate((("train.tsv", train_rows), ("dev.tsv", test_rows))):
            target = folder / task / name
            if target.is_file():
                continue
            if (source / task / name).is_file():
                lines = (source / task / name).read_text(encoding="utf-8-sig").splitlines()[:rows + 1]
            else:
                lines = synthetic_rows(task, rows, seed)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n".join(lines) + "\n", encoding="utf-8")
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


# The tiny exits search's threshold grid: its exits are untrained, so their predictions are close to uniform; τ = 1
# still sends every example with any preference out at its first exit, so exiting points reach the front.
TINY_EXIT_THRESHOLDS = [0.0, 0.5, 1.0]


def tiny_search(root: Path, evaluations: int = 8, *, token_elimination: bool = False, exits: bool = False) -> Path:
    """A finished tiny search job's run folder under `root` (train, search, front with test figures).
    `token_elimination`: search keep schedules too; `exits`: exit thresholds too, on a supernet with exit heads
    (TINY_EXIT_THRESHOLDS, the layers space); either on error and expected MACs (the objective that sees them), in
    its own folder."""
    from search.job import run_search_job
    from search.runner import SearchConfig
    from search.settings import DynamicConfig, LatencyShape, SearchJob

    model, data_dir = workspace(root)
    overrides: dict[str, Any] = {}
    if exits:
        model = str(tiny_model(root / "model-exits", exits=True))
        overrides["space"] = "layers"  # every structure keeps full widths: few of them, each with every threshold
    name = "search" + ("-tokens" if token_elimination else "") + ("-exits" if exits else "")
    folder = root / name
    search = SearchConfig(evaluations=evaluations)
    if token_elimination or exits:
        search = SearchConfig(evaluations=evaluations, objectives=["error", "expected_macs"])
    dynamic = DynamicConfig(token_elimination=token_elimination, exits=exits,
                            **({"exit_thresholds": TINY_EXIT_THRESHOLDS} if exits else {}))
    job = SearchJob(search=search, latency=LatencyShape(batch_size=2), evaluation_dtype="float32", dynamic=dynamic)
    run_search_job(tiny_spec(model, data_dir, **overrides), job, folder, progress=False)
    return folder
