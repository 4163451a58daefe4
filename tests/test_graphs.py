"""CUDA-graph replay of exported models (supernet/graphs.py, `model.use_cuda_graphs()`).

The CPU tests check the premise (a batch padded up to its length bucket, the mask zero there, answers as the
unpadded one does) and that nothing changes where graphs do not apply; the `gpu` ones replay real graphs against
the eager forward, for BERT and RoBERTa position ids, several batch sizes and lengths, and through the exported
folder's own code."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import make_supernet, random_inputs, random_sub, supernet_config
from transformers import AutoModelForSequenceClassification

from supernet.config import SubNetworkConfig
from supernet.extract import export_subnetwork, extract
from supernet.graphs import GraphedForward


def pad_to(inputs: dict[str, torch.Tensor], length: int, pad_token_id: int) -> dict[str, torch.Tensor]:
    extra = length - inputs["input_ids"].shape[1]
    return {"input_ids": torch.nn.functional.pad(inputs["input_ids"], (0, extra), value=pad_token_id),
            "attention_mask": torch.nn.functional.pad(inputs["attention_mask"], (0, extra)),
            "token_type_ids": torch.nn.functional.pad(inputs["token_type_ids"], (0, extra))}


def test_lengths_go_up_to_their_bucket_but_never_past_the_positions() -> None:
    graphed = GraphedForward(torch.nn.Identity(), pad_token_id=0, max_length=64, seq_multiple=32)
    assert [graphed.padded_length(n) for n in (1, 31, 32, 33, 64)] == [32, 32, 32, 64, 64]
    assert GraphedForward(torch.nn.Identity(), pad_token_id=0, max_length=50).padded_length(40) == 50
    assert GraphedForward(torch.nn.Identity(), pad_token_id=0, max_length=50).padded_length(60) == 60  # eager error
    with pytest.raises(ValueError, match="seq_multiple"):
        GraphedForward(torch.nn.Identity(), pad_token_id=0, max_length=50, seq_multiple=0)


@pytest.mark.parametrize("position_offset", [False, True])
def test_padding_to_the_bucket_changes_no_answer(position_offset) -> None:
    """What a replay computes: the batch padded on the right with pad tokens and a zero mask."""
    net = make_supernet(supernet_config(position_offset=position_offset, pad_token_id=1))
    rng = random.Random(0)
    for sub in [SubNetworkConfig.full(net.config), random_sub(net.config, rng, allow_zero=False)]:
        model = extract(net, sub).eval()
        for batch in (1, 3):
            inputs = random_inputs(batch=batch, tokens=11, pad_token_id=1)
            with torch.no_grad():
                want = model(**inputs).logits
                got = model(**pad_to(inputs, 32, pad_token_id=1)).logits
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_on_the_cpu_graphs_change_nothing() -> None:
    net = make_supernet()
    model = extract(net, SubNetworkConfig.full(net.config)).eval()
    inputs = random_inputs(batch=3, tokens=11)
    with torch.no_grad():
        want = model(**inputs).logits
        model.use_cuda_graphs()
        got = model(**inputs).logits
    assert torch.equal(got, want) and model._graphs.captures == 0
    model.use_cuda_graphs(False)
    assert model._graphs is None


# --------------------------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.parametrize("position_offset", [False, True])
def test_gpu_graph_replay_matches_the_eager_forward(position_offset, tmp_path) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    net = make_supernet(supernet_config(position_offset=position_offset, pad_token_id=1))
    sub = random_sub(net.config, random.Random(1), allow_zero=False)
    folder = export_subnetwork(net, sub, tmp_path / "export")
    own = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)  # the folder's code
    for model in (extract(net, sub), own):
        model = model.cuda().eval()
        model.use_cuda_graphs(seq_multiple=16)
        shapes = [(1, 5), (1, 11), (3, 11), (3, 16), (1, 20), (3, 9)]  # buckets (1,16) (3,16) (1,32)
        for batch, tokens in shapes * 2:  # the second round replays what the first captured
            inputs = {k: v.cuda() for k, v in random_inputs(batch=batch, tokens=tokens, pad_token_id=1,
                                                             seed=tokens).items()}
            with torch.no_grad():
                got = model(**inputs).logits
                model._graphs, graphs = None, model._graphs
                want = model(**inputs).logits
                model._graphs = graphs
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
            assert model.last_exit_layers.tolist() == [len(sub.layers)] * batch
        assert model._graphs.captures == 3 and len(model._graphs.graphs) == 3
        with torch.enable_grad():  # gradients wanted: eager
            model(**inputs).logits.sum().backward()
        assert model._graphs.captures == 3


@pytest.mark.gpu
def test_gpu_dynamic_models_run_eagerly_under_graphs() -> None:
    """A token-keep schedule's shapes depend on the input: such a model runs eagerly, graphs on or off."""
    net = make_supernet()
    model = extract(net, SubNetworkConfig.full(net.config)).cuda().eval()
    inputs = {k: v.cuda() for k, v in random_inputs(batch=3, tokens=11).items()}
    model.set_token_keep([1.0, 0.5, 0.5])
    with torch.no_grad():
        want = model(**inputs).logits
        model.use_cuda_graphs()
        got = model(**inputs).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert model._graphs.captures == 0
