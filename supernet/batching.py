"""Tokenisation, padding and batching: a task's examples as re-iterable torch DataLoaders.

The one data module that imports torch; tasks, readers, loading and metrics stay torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .tasks import Example

__all__ = ["make_batches", "token_counts"]


# (input_ids, token_type_ids, attention_mask, label) of one tokenized example
_Feature = tuple[list[int], list[int], list[int], int | float]


class _EncodedDataset(Dataset):
    """Pre-tokenized examples, so tokenization happens once and not on every epoch."""

    def __init__(self, features: list[_Feature]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> _Feature:
        return self.features[i]


class _Collate:
    """Pads a batch to its longest member (or to max_length) on the tokenizer's padding side."""

    def __init__(self, pad_id: int, pad_type_id: int, left: bool, fixed_length: int | None, regression: bool):
        self.pad_id, self.pad_type_id, self.left = pad_id, pad_type_id, left
        self.fixed_length, self.regression = fixed_length, regression

    def __call__(self, batch: list[_Feature]) -> dict[str, torch.Tensor]:
        length = self.fixed_length or max(len(ids) for ids, _, _, _ in batch)
        ids = torch.full((len(batch), length), self.pad_id, dtype=torch.long)
        types = torch.full((len(batch), length), self.pad_type_id, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, (input_ids, type_ids, attention, _) in enumerate(batch):
            n = len(input_ids)
            cols = slice(length - n, length) if self.left else slice(0, n)
            ids[row, cols] = torch.tensor(input_ids, dtype=torch.long)
            types[row, cols] = torch.tensor(type_ids, dtype=torch.long)
            mask[row, cols] = torch.tensor(attention, dtype=torch.long)
        label_dtype = torch.float32 if self.regression else torch.long
        labels = torch.tensor([label for _, _, _, label in batch], dtype=label_dtype)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}


def make_batches(
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    batch_size: int,
    max_length: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    pad_to_max_length: bool = False,
    is_regression: bool | None = None,
    sort_by_length: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A re-iterable DataLoader of padded batches: input_ids, attention_mask, token_type_ids, labels.

    Examples are tokenized once, truncated to `max_length`; each batch is padded to its longest member
    (or to `max_length` with pad_to_max_length). Tokenizers without token_type_ids (RoBERTa) get zeros.
    With shuffle=True the order is drawn from `generator` on each pass, so a generator seeded the same
    way gives the same sequence of epochs (without one, torch's global RNG is used). Labels are float
    for regression: inferred from float labels unless `is_regression` says so. `sort_by_length` orders
    examples by token count (stable), which makes evaluation much cheaper on tasks of mixed lengths.
    `pin_memory`: batches in page-locked host memory, for copies to a GPU that do not block (supernet/devices.py).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    if not examples:
        raise ValueError("make_batches needs at least one example")
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
    if is_regression is None:
        is_regression = any(isinstance(e.label, float) for e in examples)
    features = _tokenize(examples, tokenizer, max_length)
    if sort_by_length:  # for evaluation: batches of similar lengths waste little compute on padding
        features.sort(key=lambda feature: len(feature[0]))
    collate = _Collate(
        pad_id=int(pad_id),
        pad_type_id=int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
        left=getattr(tokenizer, "padding_side", "right") == "left",
        fixed_length=max_length if pad_to_max_length else None,
        regression=is_regression,
    )
    return DataLoader(
        _EncodedDataset(features),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator if shuffle else None,
        collate_fn=collate,
        pin_memory=pin_memory,
    )


def token_counts(batches) -> list[int]:
    """Each example's real token count (its attention mask's sum), in batch order; one copy to the host per batch
    wherever the batches are."""
    return [n for batch in batches for n in batch["attention_mask"].sum(dim=1).tolist()]


def _tokenize(examples: Sequence[Example], tokenizer: Any, max_length: int) -> list[_Feature]:
    """Tokenize single and paired examples in (at most) two batched calls, keeping the input order."""
    features: list[Any] = [None] * len(examples)
    groups = {
        False: [i for i, e in enumerate(examples) if e.text_b is None],
        True: [i for i, e in enumerate(examples) if e.text_b is not None],
    }
    for paired, indices in groups.items():
        if not indices:
            continue
        texts_a = [examples[i].text_a for i in indices]
        texts_b = [examples[i].text_b for i in indices] if paired else None
        encoded = tokenizer(texts_a, texts_b, truncation=True, max_length=max_length)
        input_ids = encoded["input_ids"]
        type_ids = encoded.get("token_type_ids")
        attention = encoded.get("attention_mask")
        for j, i in enumerate(indices):
            ids = list(input_ids[j])
            types = list(type_ids[j]) if type_ids is not None else [0] * len(ids)
            mask = list(attention[j]) if attention is not None else [1] * len(ids)
            features[i] = (ids, types, mask, examples[i].label)
    return features
