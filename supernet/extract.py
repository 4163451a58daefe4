"""Turn a sub-network into a standalone, physically smaller model and save it for anyone to load.

The exported folder holds `config.json` (per-layer head and FFN sizes, `auto_map` to the modeling file),
`model.safetensors`, `modeling_nasprune.py` + `modules.py`, the tokenizer files and `subnetwork.json`
(the sub-network and its measured metrics). Plain transformers loads it with `trust_remote_code=True`;
`load_exported` reads it with the installed package's classes and no remote code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from . import factorised, factors, graphs, modeling_nasprune, modules, schedules
from .config import SubNetworkConfig
from .counting import count_macs, count_params
from .files import atomic_path
from .model import Supernet
from .modeling_nasprune import NasPruneConfig, NasPruneForSequenceClassification

SUBNETWORK_FILE = "subnetwork.json"
AUTO_MAP = {
    "AutoConfig": "modeling_nasprune.NasPruneConfig",
    "AutoModelForSequenceClassification": "modeling_nasprune.NasPruneForSequenceClassification",
}


class ExportError(ValueError):
    """An export folder that is missing or not a nasprune export."""


def export_config(supernet: Supernet, sub: SubNetworkConfig) -> NasPruneConfig:
    c = supernet.config
    return NasPruneConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_layers=len(sub.layers), num_heads=c.num_heads,
        head_size=c.head_size, intermediate_size=c.intermediate_size, layer_heads=sub.kept_heads(),
        layer_units=sub.kept_units(), max_position_embeddings=c.max_position_embeddings,
        type_vocab_size=c.type_vocab_size, layer_norm_eps=c.layer_norm_eps, hidden_act=c.hidden_act,
        hidden_dropout=c.hidden_dropout, attention_dropout=c.attention_dropout,
        classifier_dropout=c.classifier_dropout, position_offset=c.position_offset, pad_token_id=c.pad_token_id,
        num_labels=c.num_labels, problem_type="regression" if c.is_regression else "single_label_classification",
        auto_map=dict(AUTO_MAP),
        token_keep=None if sub.token_keep is None else [sub.token_keep[i] for i in sub.layers],
        exits=c.exits, exit_threshold=sub.exit_threshold,
        open_exits=None if sub.open_exits is None else list(sub.open_rows()),
        layer_steps=list(sub.step_sizes()) if sub.ode_compensation else None,
        embedding_size=c.embedding_size, layer_groups=None if c.layer_groups is None else list(c.layer_groups),
        ode_steps=sub.ode_steps, ode_solver=sub.ode_solver,
    )


@torch.no_grad()
def extract(supernet: Supernet, sub: SubNetworkConfig) -> NasPruneForSequenceClassification:
    """Copy the sliced weights of `sub` into a new model of exactly its size."""
    sub.validate(supernet.config)
    model = NasPruneForSequenceClassification(export_config(supernet, sub))
    small = model.model
    small.embeddings.load_state_dict(supernet.embeddings.state_dict())
    small.head.load_state_dict(supernet.head.state_dict())
    d = supernet.config.head_size
    for new_index, old_index in enumerate(sub.layers):
        src, dst = supernet.layers[old_index], small.layers[new_index]
        width, units = sub.heads[old_index] * d, sub.units[old_index]
        for name in ("query", "key", "value"):
            getattr(dst.attention, name).weight.copy_(getattr(src.attention, name).weight[:width])
            getattr(dst.attention, name).bias.copy_(getattr(src.attention, name).bias[:width])
        dst.attention.dense.weight.copy_(src.attention.dense.weight[:, :width])
        dst.attention.dense.bias.copy_(src.attention.dense.bias)
        dst.attention.norm.load_state_dict(src.attention.norm.state_dict())
        dst.ffn.intermediate.weight.copy_(src.ffn.intermediate.weight[:units])
        dst.ffn.intermediate.bias.copy_(src.ffn.intermediate.bias[:units])
        dst.ffn.output.weight.copy_(src.ffn.output.weight[:, :units])
        dst.ffn.output.bias.copy_(src.ffn.output.bias)
        dst.ffn.norm.load_state_dict(src.ffn.norm.state_dict())
    exits = sub.layers[:-1] if supernet.config.exits else ()  # the last kept layer answers with the main head
    for new_index, old_index in enumerate(exits):
        small.exit_heads[new_index].load_state_dict(supernet.exit_heads[old_index].state_dict())
    return model.eval()


def subnetwork_record(supernet: Supernet, sub: SubNetworkConfig, *, seq_len: int = 128,
                      metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `subnetwork.json` holds: the configuration, its exact size and cost, and measured metrics."""
    return {
        "config": sub.to_dict(),
        "params": count_params(supernet.config, sub).to_dict(),
        "macs": count_macs(supernet.config, sub, seq_len=seq_len),
        "seq_len": seq_len,
        "metrics": metrics or {},
    }


def save_folder(model: NasPruneForSequenceClassification, out_dir: str | Path, *, tokenizer: Any = None,
                record: dict[str, Any] | None = None) -> Path:
    """Write the model folder atomically (supernet.files): a reader never loads a half-written export."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        model.config.auto_map = dict(AUTO_MAP)
        model.save_pretrained(tmp)
        shutil.copyfile(modules.__file__, tmp / "modules.py")
        shutil.copyfile(modeling_nasprune.__file__, tmp / "modeling_nasprune.py")
        for source in (schedules, factors, factorised, graphs):  # the modules' own imports
            shutil.copyfile(source.__file__, tmp / Path(source.__file__).name)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / SUBNETWORK_FILE).write_text(json.dumps(record or {}, indent=2))
    return Path(out_dir)


def export_subnetwork(supernet: Supernet, sub: SubNetworkConfig, out_dir: str | Path, *, tokenizer: Any = None,
                      seq_len: int = 128, metrics: dict[str, Any] | None = None,
                      token_lengths: list[int] | None = None) -> Path:
    """`token_lengths`: a sample of the task's unpadded input lengths, kept in config.json so that the exported
    model's `set_speedup` can solve a token-keep schedule after the fact."""
    model = extract(supernet, sub)
    if token_lengths is not None:
        model.config.token_lengths = [int(n) for n in token_lengths]
    record = subnetwork_record(supernet, sub, seq_len=seq_len, metrics=metrics)
    return save_folder(model, out_dir, tokenizer=tokenizer, record=record)


def load_exported(folder: str | Path) -> NasPruneForSequenceClassification:
    """Load an exported folder with the package's own classes (no remote code is executed)."""
    folder = Path(folder)
    config_file = folder / "config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise ExportError(f"{config_file}: not a readable model config ({exc})") from None
    if model_type != NasPruneConfig.model_type:
        raise ExportError(f"{folder}: not a nasprune export (model_type is not {NasPruneConfig.model_type!r})")
    try:
        return NasPruneForSequenceClassification.from_pretrained(folder).eval()
    except OSError as exc:
        raise ExportError(f"{folder}: cannot load the exported weights ({exc})") from None


def export_onnx(model: NasPruneForSequenceClassification, path: str | Path, *, seq_len: int = 128) -> Path:
    """Export to ONNX with dynamic batch and sequence axes (needs the `onnx` extra)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError("ONNX export needs the optional extra: pip install 'nasprune[onnx]'") from None
    if getattr(model.config, "exit_threshold", None) is not None:
        # where each example leaves is decided by its own predictions inside the graph: the batch shrinks as rows
        # leave, a control flow a static ONNX graph cannot hold
        raise ExportError("ONNX export of a sub-network that exits early is not supported: download it as a Hugging "
                          "Face folder (format hf), or export it without an exit threshold (full depth)")
    if model.config.token_keep is not None:
        # how many tokens go on is decided by the data (each example's length and attention) inside the graph, a
        # shape a static ONNX graph cannot hold; the Hugging Face folder runs it
        raise ExportError("ONNX export of a sub-network that drops tokens is not supported: download it as a Hugging "
                          "Face folder (format hf), or export it without elimination (its static structure)")
    model = model.eval()
    ids = torch.ones(2, seq_len, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, seq_len // 2:] = 0
    types = torch.zeros_like(ids)

    class _Logits(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids, attention_mask, token_type_ids).logits

    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens", max=model.config.max_position_embeddings)
    shapes = {"input_ids": {0: batch, 1: tokens}, "attention_mask": {0: batch, 1: tokens},
              "token_type_ids": {0: batch, 1: tokens}}
    with atomic_path(path) as tmp:
        torch.onnx.export(_Logits(model).eval(), (ids, mask, types), str(tmp), input_names=list(shapes),
                          output_names=["logits"], dynamic_shapes=shapes, dynamo=True, external_data=False)
    return Path(path)
