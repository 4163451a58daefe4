"""The benchmarks' JSON records are committed and their weights are not (.gitignore): the records are the only copy
of hours of measurement (the seventh session's were lost while untracked), and weights would bloat the history."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = "bench/out/prove/glue-mrpc/seed0/nasprune_importance/run"
KEPT = ["bench/out/prove/glue-mrpc/seed0/settings.json", "bench/out/prove/glue-mrpc/seed0/reference/lr5e-05.json",
        f"{RUN}/front.json", f"{RUN}/trials.jsonl", f"{RUN}/refined/3/subnetwork.json",
        "bench/out/search_budget/glue-sst2/seed0/5000.json"]
IGNORED = ["bench/out/prove/glue-mrpc/seed0/reference/lr5e-05.safetensors", f"{RUN}/supernet/config.json",
           f"{RUN}/supernet/model.safetensors", f"{RUN}/checkpoint.pt", f"{RUN}/refined/3/model.safetensors",
           f"{RUN}/refined/3/tokenizer.json", f"{RUN}/refined/3/vocab.txt", "bench/out/queue21.sh",
           "bench/out/mrpc0.log"]


def ignored(path: str) -> bool:
    """Whether git ignores `path` by the checkout's rules (whether or not it exists or is tracked)."""
    result = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, check=False)
    if result.returncode not in (0, 1):
        pytest.skip(f"git check-ignore failed ({result.returncode})")
    return result.returncode == 0


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
@pytest.mark.parametrize(("path", "kept"), [(p, True) for p in KEPT] + [(p, False) for p in IGNORED])
def test_records_are_committed_and_weights_are_not(path: str, kept: bool) -> None:
    assert ignored(path) is not kept
