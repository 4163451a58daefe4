"""A static model's forward replayed from CUDA graphs, for small batches on a GPU.

At batch 1 a GPU waits on kernel launches, not arithmetic: an exported sub-network a quarter of the full model's
width runs in almost the full model's time until its whole forward is one launch (bench/gpu.py measures both).
PyTorch's CUDA graphs (`torch.cuda.CUDAGraph`, "Accelerating PyTorch with CUDA Graphs") capture every kernel of a
forward once per input shape; a replay copies new inputs into the captured buffers and runs them all at once.
Dynamically padded batches vary in length, so lengths are padded up to a multiple of `seq_multiple` (pad tokens,
attention mask zero there) and a few graphs serve every batch; graphs share one memory pool and the least recently
used is dropped past `max_graphs`.

Copied into every exported folder beside `modules.py`: imports only torch.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn


class _Captured:
    """One captured forward: its static input buffers, its graph and the output tensor the replay refills."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None) -> None:
        self.ids, self.mask, self.types = ids, mask, types
        self.graph = torch.cuda.CUDAGraph()
        self.logits: torch.Tensor | None = None


class GraphedForward:
    """Calls `encoder(input_ids, attention_mask, token_type_ids)` through CUDA graphs keyed by (batch, padded
    length, with token types). The caller decides when this applies (`applies`): a CUDA model in eval mode, no
    gradient wanted, and a forward whose shapes do not depend on the data (no token elimination, no early exit)."""

    def __init__(self, encoder: nn.Module, *, pad_token_id: int, max_length: int, seq_multiple: int = 32,
                 max_graphs: int = 16) -> None:
        if seq_multiple < 1 or max_graphs < 1:
            raise ValueError(f"seq_multiple and max_graphs must be >= 1, got {seq_multiple} and {max_graphs}")
        self.encoder = encoder
        self.pad_token_id = int(pad_token_id)
        self.max_length = int(max_length)  # the longest input the position embeddings take
        self.seq_multiple, self.max_graphs = int(seq_multiple), int(max_graphs)
        self.graphs: OrderedDict[tuple[int, int, bool], _Captured] = OrderedDict()
        self.pool: Any = None
        self.captures = 0  # graphs captured so far (a capture costs a few eager forwards)

    @staticmethod
    def applies(module: nn.Module, input_ids: torch.Tensor) -> bool:
        return input_ids.is_cuda and not module.training and not torch.is_grad_enabled()

    def padded_length(self, length: int) -> int:
        bucket = -(-length // self.seq_multiple) * self.seq_multiple
        return max(length, min(bucket, self.max_length))

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 token_type_ids: torch.Tensor | None) -> torch.Tensor:
        batch, length = input_ids.shape
        key = (batch, self.padded_length(length), token_type_ids is not None)
        captured = self.graphs.get(key)
        if captured is None:
            captured = self._capture(key, input_ids.device)
        self.graphs.move_to_end(key)
        self._fill(captured, input_ids, attention_mask, token_type_ids)
        captured.graph.replay()
        return captured.logits.clone()  # the next replay overwrites the graph's output

    def _fill(self, captured: _Captured, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
              token_type_ids: torch.Tensor | None) -> None:
        length = input_ids.shape[1]
        captured.ids.fill_(self.pad_token_id)
        captured.ids[:, :length].copy_(input_ids)
        captured.mask.zero_()
        if attention_mask is None:
            captured.mask[:, :length] = 1
        else:
            captured.mask[:, :length].copy_(attention_mask)
        if captured.types is not None:
            captured.types.zero_()
            captured.types[:, :length].copy_(token_type_ids)

    def _capture(self, key: tuple[int, int, bool], device: torch.device) -> _Captured:
        batch, length, with_types = key
        while len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
        ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long, device=device)
        mask = torch.ones((batch, length), dtype=torch.long, device=device)
        types = torch.zeros((batch, length), dtype=torch.long, device=device) if with_types else None
        captured = _Captured(ids, mask, types)
        # capture needs the kernels' lazy initialisation done first, on a side stream (CUDA graphs' recipe); a
        # padded position makes the warm-up take the masked attention path the capture takes
        if length > 1:
            mask[:, -1] = 0
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.encoder(ids, mask, types)
        torch.cuda.current_stream(device).wait_stream(side)
        mask.fill_(1)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(captured.graph, pool=self.pool):
            captured.logits = self.encoder(ids, mask, types)
        self.graphs[key] = captured
        self.captures += 1
        return captured
