"""Hugging Face wrapper of an exported (physically smaller) nasprune model.

Copied with `modules.py` into every exported folder, so the folder loads with
`AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)`; nasprune's own
loader imports these same classes from the installed package and needs no remote code.
Imports only torch, transformers and its sibling files (`modules.py` and what it imports, `graphs.py`).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .factors import Compression
from .graphs import GraphedForward
from .modules import ElasticBert, check_exit_threshold, check_open_exits
from .schedules import keep_schedule, schedule_for_speedup


class NasPruneConfig(PreTrainedConfig):
    """A BERT-family encoder whose layers may differ in head count and FFN width."""

    model_type = "nasprune_bert"
    attribute_map = {
        "num_hidden_layers": "num_layers",
        "num_attention_heads": "num_heads",
        "hidden_dropout_prob": "hidden_dropout",
        "attention_probs_dropout_prob": "attention_dropout",
    }

    def __init__(self, vocab_size: int = 30522, hidden_size: int = 768, num_layers: int = 12,
                 num_heads: int = 12, head_size: int = 64, intermediate_size: int = 3072,
                 layer_heads: list[int] | None = None, layer_units: list[int] | None = None,
                 max_position_embeddings: int = 512, type_vocab_size: int = 2, layer_norm_eps: float = 1e-12,
                 hidden_act: str = "gelu", hidden_dropout: float = 0.1, attention_dropout: float = 0.1,
                 classifier_dropout: float | None = None, position_offset: bool = False,
                 initializer_range: float = 0.02, pad_token_id: int = 0, token_keep: list[float] | None = None,
                 token_lengths: list[int] | None = None, exits: bool = False,
                 exit_threshold: float | None = None, open_exits: list[int] | None = None,
                 compression: dict | None = None,
                 layer_steps: list[float] | None = None, embedding_size: int | None = None,
                 layer_groups: list[int] | None = None, ode_steps: int | None = None, ode_solver: str | None = None,
                 **kwargs) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.head_size = head_size
        self.intermediate_size = intermediate_size
        self.layer_heads = list(layer_heads) if layer_heads is not None else [num_heads] * num_layers
        self.layer_units = list(layer_units) if layer_units is not None else [intermediate_size] * num_layers
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.layer_norm_eps = layer_norm_eps
        self.hidden_act = hidden_act
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.classifier_dropout = classifier_dropout
        self.position_offset = position_offset
        self.initializer_range = initializer_range
        # token elimination: per layer, the fraction of each example's length still present after it (None: off)
        self.token_keep = None if token_keep is None else keep_schedule(token_keep, len(self.layer_heads))
        # a sample of the task's input lengths (unpadded), which set_speedup solves a schedule over
        self.token_lengths = None if token_lengths is None else [int(n) for n in token_lengths]
        # early exits: an exit head after every layer but the last; exit_threshold τ (None: full depth)
        self.exits = bool(exits)
        # ODE-compensated layer dropping: each layer's Euler step along its residual branch (None: all 1)
        self.layer_steps = None if layer_steps is None else [float(h) for h in layer_steps]
        if self.layer_steps is not None and (len(self.layer_steps) != len(self.layer_heads)
                                             or not all(h >= 1 for h in self.layer_steps)):
            raise ValueError(f"layer_steps needs one step >= 1 per layer, got {self.layer_steps}")
        # ALBERT's factorised embeddings (their width; None: hidden_size) and parameter sharing: per layer, its
        # shared block (None: none shared); a shared stack runs as an ODE in ode_steps steps (None: one per layer)
        # with ode_solver (None: Euler; "heun")
        self.embedding_size = embedding_size
        self.layer_groups = None if layer_groups is None else [int(g) for g in layer_groups]
        self.ode_steps = None if ode_steps is None else int(ode_steps)
        self.ode_solver = ode_solver
        # a compressed model's factorised weights (supernet/factors.py: protocol, rank, bank, embedding_rank)
        self.compression = None if compression is None else Compression.from_dict(compression).to_dict()
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.exit_threshold = check_exit_threshold(exit_threshold, exits=self.exits, num_labels=self.num_labels)
        # the layers whose exits a threshold reads (None: every layer's but the last)
        self.open_exits = check_open_exits(open_exits, exits=self.exits, num_layers=len(self.layer_heads))


class NasPruneForSequenceClassification(PreTrainedModel):
    config_class = NasPruneConfig
    base_model_prefix = "model"

    def __init__(self, config: NasPruneConfig) -> None:
        super().__init__(config)
        self.model = ElasticBert(config)
        self._graphs: GraphedForward | None = None
        self.post_init()

    def use_cuda_graphs(self, enabled: bool = True, *, seq_multiple: int = 32, max_graphs: int = 16) -> None:
        """Replay inference forwards from CUDA graphs (supernet/graphs.py): at small batches a GPU is bound by
        kernel launches, and a replay launches a whole forward at once. Applies on CUDA, in eval mode, without
        gradients, to a model whose shapes do not depend on its inputs (no token-keep schedule, no exit threshold;
        those run eagerly); lengths are padded up to a multiple of `seq_multiple`, one graph per (batch, padded
        length), at most `max_graphs` kept. Call again after changing the weights (captures read them in place)."""
        self._graphs = None
        if enabled:
            offset = self.config.pad_token_id + 1 if self.config.position_offset else 0
            self._graphs = GraphedForward(self.model, pad_token_id=self.config.pad_token_id,
                                          max_length=self.config.max_position_embeddings - offset,
                                          seq_multiple=seq_multiple, max_graphs=max_graphs)

    def _graphed(self, input_ids: torch.Tensor, all_exits: bool) -> bool:
        static = self.config.token_keep is None and self.model.exit_threshold is None and not all_exits
        return self._graphs is not None and static and GraphedForward.applies(self, input_ids)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, self.config.initializer_range)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, self.config.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()

    def set_speedup(self, speedup: float, lengths: list[int] | None = None, *, start: int = 1,
                    floor: float = 0.1) -> list[float] | None:
        """Set the keep schedule that makes the encoder `speedup` times cheaper (expected MACs) than without
        elimination, over `lengths` (default: `config.token_lengths`, the task's validation lengths saved at
        export); returns the schedule, also in `config.token_keep`. 1 turns elimination off."""
        lengths = list(lengths if lengths is not None else self.config.token_lengths or [])
        if not lengths:
            raise ValueError("set_speedup needs input lengths: pass lengths=[...] (tokens per example, unpadded)")
        schedule = schedule_for_speedup(self.config, speedup, lengths, start=start, floor=floor)
        self.set_token_keep(schedule)
        return schedule

    def set_ode_steps(self, steps: int | None, solver: str | None = None) -> None:
        """Integrate a parameter-shared model's stack in `steps` steps (None: one per layer, the stack as trained),
        all of size L / steps (each block of n shared layers in n·steps / L of them), with `solver` ("euler", the
        default, or "heun": two evaluations a step) without retraining (Chen et al., Findings of EMNLP 2023). Updates
        `config.ode_steps` and `config.ode_solver` too, so `save_pretrained` keeps them. ValueError on a model
        that shares no layers, or steps whose size does not end on every shared block's boundary."""
        self.model.set_ode(steps, solver)
        self.config.ode_steps = None if steps is None or steps == len(self.config.layer_heads) else int(steps)
        self.config.ode_solver = None if solver == "euler" else solver

    def set_token_keep(self, keep: list[float] | None) -> None:
        """Change the token-elimination schedule without retraining (TiltedBERT's offline tuning): one keep
        fraction per layer, or None for every token in every layer. Updates `config.token_keep` too, so
        `save_pretrained` keeps it."""
        schedule = None if keep is None else keep_schedule(list(keep), len(self.config.layer_heads))
        self.config.token_keep = schedule
        self.model.token_keep = schedule

    def set_exit_threshold(self, threshold: float | None) -> None:
        """Change the early-exit threshold τ without retraining: an example leaves at the first exit whose
        normalised prediction entropy is below τ; None or 0 runs every layer. Updates `config.exit_threshold`
        too, so `save_pretrained` keeps it. Refused (ValueError) on a model without exits or a regression task."""
        value = check_exit_threshold(threshold, exits=self.config.exits, num_labels=self.config.num_labels)
        self.model.exit_threshold = value
        self.config.exit_threshold = value

    def set_open_exits(self, layers: list[int] | None) -> None:
        """Which layers' exits a threshold reads (0-based layer indices of this model, each but the last; None:
        all). An exit no input leaves at only costs its check: an exported front point opens the exits its
        validation examples left at. Updates `config.open_exits` too. ValueError on a model without exits or an
        index that has no exit."""
        value = check_open_exits(layers, exits=self.config.exits, num_layers=len(self.config.layer_heads))
        self.model.open_exits = None if value is None else frozenset(value)
        self.config.open_exits = value

    @property
    def last_exit_layers(self) -> torch.Tensor | None:
        """After a forward pass: per example, the 1-based layer whose head answered (the last layer: the main
        head, which is every example's when no threshold is set)."""
        return self.model.last_exit_layers

    def exit_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Every layer's answer from one pass, no example leaving: (layers, B, num_labels), the last from the
        main head. Scoring thresholds offline needs nothing else (exiting never changes later layers)."""
        return self.model(input_ids, attention_mask, token_type_ids, all_exits=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                all_exits: bool = False, **kwargs) -> SequenceClassifierOutput:
        """`all_exits=True`: logits of every exit, (layers, B, num_labels), as `exit_logits`; the loss is then
        the mean of every exit's loss."""
        if self._graphed(input_ids, all_exits):
            logits = self._graphs(input_ids, attention_mask, token_type_ids)
            self.model.last_exit_layers = torch.full(input_ids.shape[:1], max(1, len(self.model.active_layers)),
                                                     dtype=torch.long, device=input_ids.device)
        else:
            logits = self.model(input_ids, attention_mask, token_type_ids, all_exits=all_exits)
        loss = None
        if labels is not None:
            flat = logits.reshape(-1, logits.shape[-1])
            targets = labels.repeat(logits.shape[0]) if all_exits else labels
            if self.config.num_labels == 1:
                loss = nn.functional.mse_loss(flat.squeeze(-1), targets.float())
            else:
                loss = nn.functional.cross_entropy(flat, targets)
        return SequenceClassifierOutput(loss=loss, logits=logits)
