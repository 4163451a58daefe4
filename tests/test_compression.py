"""Compressed models (supernet/factors.py, factorised.py, decompose.py): full-rank decompositions reproduce the dense
point, counts equal the built model's, and the folder exports and reloads with and without remote code."""

from __future__ import annotations

import dataclasses
import random
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import hand_subs, make_supernet, random_inputs, random_sub, supernet_config, toy_batches
from safetensors.torch import load_file
from test_counting import _math_sdpa
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForSequenceClassification

from supernet.compress import compress_model, input_covariances
from supernet.config import SubNetworkConfig
from supernet.counting import count_macs, count_params
from supernet.decompose import _dense_weight, _projection, block_tensor, decompose, model_layout, relative_error
from supernet.extract import extract, load_exported, save_folder
from supernet.factors import PROTOCOLS, Compression, CompressionError, block_count, layout
from supernet.settings import COMPRESSION_PROTOCOLS, DEFAULT_BANK, CompressConfig

HIDDEN = 32  # the tiny BERT's; blocks are 32 wide, its FFN of 48 units is one full block and one partial


def _subs(config, n: int = 10, seed: int = 0) -> list[SubNetworkConfig]:
    rng = random.Random(seed)
    subs = hand_subs(config) + [random_sub(config, rng) for _ in range(n)]
    return [s for s in subs if block_count(layout(HIDDEN, config.head_size, s.kept_heads(), s.kept_units()))]


def _full_rank(protocol: str, sub: SubNetworkConfig, config, *, embedding: bool = True) -> Compression:
    blocks = block_count(layout(HIDDEN, config.head_size, sub.kept_heads(), sub.kept_units()))
    return Compression(protocol, HIDDEN, bank=blocks if protocol == "tucker" else None,
                       embedding_rank=HIDDEN if embedding else None)


def test_layout_cuts_each_matrix_into_hidden_wide_blocks() -> None:
    matrices = layout(32, 8, [4, 1, 0], [48, 0, 64])
    widths = [(m.name, m.width, m.blocks) for m in matrices if m.layer == 0]
    assert widths == [("query", 32, 1), ("key", 32, 1), ("value", 32, 1), ("dense", 32, 1),
                      ("intermediate", 48, 2), ("output", 48, 2)]
    assert [m.blocks for m in matrices if m.layer == 1] == [1, 1, 1, 1, 0, 0]
    assert [m.blocks for m in matrices if m.layer == 2] == [0, 0, 0, 0, 2, 2]
    assert [m.first for m in matrices] == [0, 1, 2, 3, 4, 6, 8, 9, 10, 11, 12, 12, 12, 12, 12, 12, 12, 14]
    assert block_count(matrices) == 16


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_full_rank_decomposition_reproduces_the_dense_point(protocol: str) -> None:
    config = supernet_config(num_labels=3)
    supernet = make_supernet(config)
    inputs = random_inputs(batch=5, tokens=12)
    for sub in _subs(config):
        dense = extract(supernet, sub)
        compressed = decompose(dense, _full_rank(protocol, sub, config))
        with torch.no_grad():
            expected = dense(**inputs).logits
            got = compressed(**inputs).logits
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0, msg=lambda m, s=sub: f"{s}: {m}")


def test_the_block_tensor_holds_every_weight_once_and_pads_with_zeros() -> None:
    config = supernet_config()
    sub = SubNetworkConfig(layers=(0, 2), heads=(3, 0, 4), units=(40, 0, 48))
    dense = extract(make_supernet(config), sub)
    matrices = model_layout(dense)
    tensor = torch.from_numpy(block_tensor(dense, matrices))
    query = dense.model.layers[0].attention.query.weight.double().T  # (H, 24): one partial block
    assert torch.equal(tensor[0, :, :24], query) and not tensor[0, :, 24:].any()
    output = dense.model.layers[1].ffn.output.weight.double()  # (H, 48): a full block and a partial one
    first = next(m.first for m in matrices if m.layer == 1 and m.name == "output")
    assert torch.equal(torch.cat([tensor[first], tensor[first + 1, :, :16]], dim=1), output)
    assert not tensor[first + 1, :, 16:].any()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("num_labels", [2, 1])
def test_params_equal_the_compressed_model(protocol: str, num_labels: int) -> None:
    config = supernet_config(num_labels=num_labels)
    supernet = make_supernet(config)
    for sub in _subs(config, n=6, seed=num_labels):
        blocks = block_count(layout(HIDDEN, config.head_size, sub.kept_heads(), sub.kept_units()))
        for rank, embedding_rank in ((4, None), (7, 5), (HIDDEN, HIDDEN)):
            compression = Compression(protocol, rank, bank=min(3, blocks) if protocol == "tucker" else None,
                                      embedding_rank=embedding_rank)
            model = decompose(extract(supernet, sub), compression)
            counts = count_params(config, sub, compression)
            assert counts.total == sum(p.numel() for p in model.parameters()), (sub, compression)
            layers = sum(p.numel() for p in model.model.layers.parameters())
            bank = 0 if model.model.bank is None else sum(p.numel() for p in model.model.bank.parameters())
            assert counts.encoder == layers + bank
            assert counts.embeddings == sum(p.numel() for p in model.model.embeddings.parameters())


def _measured_macs(model, seq_len: int, monkeypatch) -> int:
    """MACs of one unpadded example at inference, where the tucker mixing is formed once per set of weights (not per
    input): the bank's mixed cores are computed before the measured pass. (Grad mode on: FlopCounterMode's module
    tracker trips over no_grad views of parameters.)"""
    ids = torch.randint(1, model.config.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0))
    with monkeypatch.context() as patch:
        bank = model.model.bank
        if bank is not None:
            mixed = bank.block_cores().detach()
            patch.setattr(bank, "block_cores", lambda: mixed)
        patch.setattr(F, "scaled_dot_product_attention", _math_sdpa)
        with FlopCounterMode(display=False) as counter:
            model(ids)
    assert counter.get_total_flops() % 2 == 0
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_macs_equal_measured_on_the_compressed_model(protocol: str, monkeypatch) -> None:
    config = supernet_config(num_labels=3)
    supernet = make_supernet(config)
    for sub in _subs(config, n=6, seed=3):
        blocks = block_count(layout(HIDDEN, config.head_size, sub.kept_heads(), sub.kept_units()))
        compression = Compression(protocol, 6, bank=min(4, blocks) if protocol == "tucker" else None,
                                  embedding_rank=5)
        model = decompose(extract(supernet, sub), compression)
        for seq_len in (1, 9):
            assert _measured_macs(model, seq_len, monkeypatch) == count_macs(
                config, sub, seq_len=seq_len, compression=compression), (sub, seq_len)


def test_inference_forms_the_tucker_mixing_once() -> None:
    config = supernet_config()
    model = decompose(extract(make_supernet(config), SubNetworkConfig.full(config)), Compression("tucker", 4, bank=3))
    bank = model.model.bank
    with torch.no_grad():
        first = bank.block_cores()
        assert bank.block_cores() is first
        bank.cores.mul_(2.0)  # a changed weight is seen
        assert bank.block_cores() is not first
        torch.testing.assert_close(bank.block_cores(), 2 * first)
    assert bank.block_cores().requires_grad  # training differentiates through the mixing


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_lower_ranks_cost_less_and_approximate_worse(protocol: str) -> None:
    config = supernet_config()
    sub = SubNetworkConfig(layers=(0, 1, 2), heads=(4, 3, 2), units=(48, 40, 20))
    dense = extract(make_supernet(config), sub)
    errors, params = [], []
    for rank in (2, 8, 16, HIDDEN):
        compression = Compression(protocol, rank, bank=4 if protocol == "tucker" else None)
        errors.append(relative_error(dense, decompose(dense, compression)))
        params.append(count_params(config, sub, compression).encoder)
    assert params == sorted(params) and errors == sorted(errors, reverse=True)
    assert 0.3 < errors[0] < 1.0 and params[0] < count_params(config, sub).encoder / 3
    if protocol != "tucker":  # a bank of 4 cores for 15 blocks stays lossy at full rank
        assert errors[-1] < 1e-6


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_compressed_folder_reloads_with_and_without_remote_code(protocol: str, tmp_path, monkeypatch) -> None:
    config = supernet_config()
    supernet = make_supernet(config)
    sub = SubNetworkConfig(layers=(0, 2), heads=(3, 0, 4), units=(40, 0, 48))
    compression = Compression(protocol, 5, bank=4 if protocol == "tucker" else None, embedding_rank=6)
    model = decompose(extract(supernet, sub), compression)
    folder = save_folder(model, tmp_path / "compressed")
    inputs = random_inputs(batch=3, tokens=9)
    with torch.no_grad():
        expected = model(**inputs).logits
        mine = load_exported(folder)
        assert mine.config.compression == compression.to_dict()
        torch.testing.assert_close(mine(**inputs).logits, expected, atol=1e-6, rtol=0)
        theirs = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(theirs).__module__ != type(model).__module__  # the folder's own modeling files
        torch.testing.assert_close(theirs(**inputs).logits, expected, atol=1e-6, rtol=0)
    stored = load_file(str(folder / "model.safetensors"))  # every tensor once: nothing beyond what is counted
    assert sum(t.numel() for t in stored.values()) == count_params(config, sub, compression).total
    sys.modules.pop("modeling_nasprune", None)


@pytest.mark.parametrize("settings", [
    dict(protocol="tucker", rank=33, bank=2), dict(protocol="tucker", rank=4, bank=17),
    dict(protocol="tucker", rank=2, bank=5), dict(protocol="lowrank", rank=4, embedding_rank=40),
])
def test_ranks_that_do_not_fit_are_refused_naming_the_setting(settings: dict) -> None:
    config = supernet_config()
    dense = extract(make_supernet(config), SubNetworkConfig.full(config))  # 3 layers x 6 blocks = 18 blocks
    name = "embedding_rank" if "embedding_rank" in settings else ("rank" if settings["rank"] > HIDDEN else "bank")
    with pytest.raises(CompressionError, match=name):
        decompose(dense, Compression(**settings))


@pytest.mark.parametrize("settings", [
    dict(protocol="svd", rank=4), dict(protocol="tucker", rank=4), dict(protocol="lowrank", rank=4, bank=2),
    dict(protocol="lowrank", rank=0), dict(protocol="tucker", rank=4, bank=-1), dict(protocol="lowrank", rank=2.5),
    dict(protocol="lowrank", rank=True), dict(protocol="lowrank", rank=4, embedding_rank=0),
])
def test_malformed_settings_are_refused(settings: dict) -> None:
    with pytest.raises(CompressionError):
        Compression(**settings)


def test_a_compressed_model_is_not_decomposed_again() -> None:
    config = supernet_config()
    dense = extract(make_supernet(config), SubNetworkConfig.full(config))
    compressed = decompose(dense, Compression("lowrank", 4))
    with pytest.raises(CompressionError, match="compressed already"):
        decompose(compressed, Compression("lowrank", 2))


def test_a_shared_model_is_refused_with_the_reason_before_anything_runs() -> None:
    config = dataclasses.replace(supernet_config(num_layers=2), layer_groups=(0, 0))
    with pytest.raises(CompressionError, match="a parameter-shared model cannot be compressed yet"):
        count_params(config, SubNetworkConfig.full(config), Compression("lowrank", 4))


# ------------------------------------------------------------------------------------------------ recovery


def _teacher_gap(model, teacher, batches) -> float:
    """Mean squared distance of the model's logits to the teacher's over `batches`."""
    with torch.no_grad():
        return float(sum((model(**b_inputs(b)).logits - teacher(**b_inputs(b)).logits).square().mean()
                         for b in batches) / len(batches))


def b_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def test_recovery_brings_the_compressed_model_towards_the_point() -> None:
    config = supernet_config()
    sub = SubNetworkConfig(layers=(0, 1, 2), heads=(4, 2, 3), units=(48, 30, 40))
    dense = extract(make_supernet(config), sub)
    batches = toy_batches(count=6, size=8, tokens=10)
    settings = CompressConfig(protocol="tucker", rank=6, bank=4, epochs=8, learning_rate=3e-3, label_loss_weight=0.0)
    decomposed = compress_model(dense, settings.model_copy(update={"epochs": 0.0}), None)
    recovered = compress_model(dense, settings, batches, progress=False)
    assert _teacher_gap(recovered, dense, batches) < 0.75 * _teacher_gap(decomposed, dense, batches)
    assert recovered.config.compression == decomposed.config.compression == {"protocol": "tucker", "rank": 6,
                                                                              "bank": 4}
    for name, tensor in dense.state_dict().items():  # the point itself is left as it was
        assert torch.equal(tensor, extract(make_supernet(config), sub).state_dict()[name])


@pytest.mark.parametrize("copies", [0, 1])
def test_a_stopped_recovery_resumes_to_the_same_weights(tmp_path, copies) -> None:
    """Augmented copies too: they are drawn from the trainer's checkpointed generator."""
    config = supernet_config()
    dense = extract(make_supernet(config), SubNetworkConfig.full(config))
    settings = CompressConfig(protocol="lowrank", rank=5, embedding_rank=6, epochs=2, augment_copies=copies)
    whole = compress_model(dense, settings, toy_batches(), progress=False, generator=torch.Generator())
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] == 2

    checkpoint = tmp_path / "recovery.pt"
    assert compress_model(dense, settings, toy_batches(), checkpoint_path=checkpoint, should_stop=stop,
                          progress=False, generator=torch.Generator()) is None
    assert checkpoint.is_file()
    resumed = compress_model(dense, settings, toy_batches(), checkpoint_path=checkpoint, progress=False,
                             generator=torch.Generator())
    assert not checkpoint.exists()
    for name, tensor in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, atol=1e-6, rtol=0, msg=name)


def test_recovery_keeps_the_points_runtime_settings_and_trains_its_exits() -> None:
    config = supernet_config(exits=True)
    sub = SubNetworkConfig(layers=(0, 1, 2), heads=(4, 2, 3), units=(48, 30, 40), exit_threshold=0.3)
    dense = extract(make_supernet(config), sub)
    model = compress_model(dense, CompressConfig(protocol="shared-lowrank", rank=8, epochs=1, augment_copies=2),
                           toy_batches(), progress=False)  # every exit learns the copies, the labelled rows' labels
    assert model.config.exit_threshold == 0.3 and model.model.exit_threshold == 0.3
    assert dense.model.exit_threshold == 0.3
    before = decompose(dense, Compression("shared-lowrank", 8)).model.exit_heads[0].out.weight
    assert not torch.equal(model.model.exit_heads[0].out.weight, before)


def test_compress_settings_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="bank"):
        CompressConfig(protocol="lowrank", bank=3)
    assert CompressConfig().bank == DEFAULT_BANK and CompressConfig(protocol="lowrank").bank is None
    assert set(COMPRESSION_PROTOCOLS) == set(PROTOCOLS)
    with pytest.raises(ValueError, match="rank"):
        CompressConfig(rank=0)


def _output_error(dense, model, batches) -> float:
    """Squared distance of each compressed matrix's output to the dense one's on the dense model's own inputs,
    summed over every matrix: what the activations init minimises."""
    covariances = input_covariances(dense, batches, len(batches))
    total = 0.0
    for m, cov in covariances.items():
        weight = _dense_weight(dense, m)  # (H, w)
        if model.model.bank is not None:
            bank = model.model.bank
            full = (bank.hidden_factor.detach().double() @ bank.block_cores().detach().double()
                    @ bank.width_factor.detach().double().T)
            approx = torch.cat(list(full[m.first:m.first + m.blocks]), dim=1)[:, :m.width]
        else:
            target = _projection(model, m)
            approx = (target.up.double() @ target.down.double()).detach()
            approx = approx if m.outward else approx.T
        diff = weight - approx  # inward: x·diff with x (H); outward: diff·c with c (w)
        total += float(torch.trace(diff.T @ cov @ diff) if not m.outward else torch.trace(diff @ cov @ diff.T))
    return total


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_activations_init_fits_what_the_matrices_compute(protocol: str) -> None:
    config = supernet_config()
    sub = SubNetworkConfig(layers=(0, 1, 2), heads=(4, 2, 3), units=(48, 30, 40))
    dense = extract(make_supernet(config), sub)
    batches = toy_batches(count=4, size=8, tokens=10)
    settings = CompressConfig(protocol=protocol, rank=6, bank=4 if protocol == "tucker" else None, epochs=0,
                              init="weights")
    weights = compress_model(dense, settings, batches)
    fitted = compress_model(dense, settings.model_copy(update={"init": "activations"}), batches)
    assert _output_error(dense, fitted, batches) < _output_error(dense, weights, batches)
    assert compress_model(dense, settings.model_copy(update={"init": "activations"}), None).state_dict().keys() \
        == weights.state_dict().keys()  # no data (epochs 0 without a loader): the weights' fit
    inputs = random_inputs(batch=5, tokens=12)
    for point in _subs(config, n=3, seed=5):  # pruned widths, partial blocks, layers without heads or units
        dense = extract(make_supernet(config), point)
        blocks = block_count(layout(HIDDEN, config.head_size, point.kept_heads(), point.kept_units()))
        full = CompressConfig(protocol=protocol, rank=HIDDEN, bank=blocks if protocol == "tucker" else None,
                              epochs=0)
        with torch.no_grad():  # at full rank the refit is exact
            torch.testing.assert_close(compress_model(dense, full, batches)(**inputs).logits,
                                       dense(**inputs).logits, atol=1e-4, rtol=0, msg=lambda m, p=point: f"{p}: {m}")


def test_input_covariances_read_each_projections_own_input() -> None:
    config = supernet_config()
    dense = extract(make_supernet(config), SubNetworkConfig.full(config))
    batches = toy_batches(count=2, size=4, tokens=9)
    covariances = input_covariances(dense, batches, 2)
    first = {m.name: m for m in model_layout(dense) if m.layer == 0}
    with torch.no_grad():  # layer 0's Q, K, V read the embeddings; its FFN's output reads gelu(x W_i + b_i)
        rows = [(dense.model.embeddings(b["input_ids"], b["token_type_ids"]), b["attention_mask"].bool())
                for b in batches]
        x = torch.cat([h[mask] for h, mask in rows]).double()
        for name in ("query", "key", "value"):
            torch.testing.assert_close(covariances[first[name]], x.T @ x / len(x))
        attention = dense.model.layers[0].attention(torch.cat([h for h, _ in rows]),
                                                    ~torch.cat([~mask for _, mask in rows])[:, None, None, :])
        ffn = dense.model.layers[0].ffn
        inner = ffn.act(F.linear(attention, ffn.intermediate.weight, ffn.intermediate.bias))
        h = inner[torch.cat([mask for _, mask in rows])].double()
        torch.testing.assert_close(covariances[first["output"]], h.T @ h / len(h))


def test_the_activations_init_serves_a_regression_point() -> None:
    config = supernet_config(num_labels=1)
    dense = extract(make_supernet(config), SubNetworkConfig.full(config))
    batches = [b | {"labels": b["labels"].float()} for b in toy_batches(count=4, size=8, tokens=10)]
    settings = CompressConfig(protocol="lowrank", rank=3, epochs=2, learning_rate=1e-3, label_loss_weight=0.0)
    weights = compress_model(dense, settings.model_copy(update={"epochs": 0.0, "init": "weights"}), batches)
    recovered = compress_model(dense, settings, batches, progress=False)
    assert _teacher_gap(recovered, dense, batches) < _teacher_gap(weights, dense, batches)


def test_augmented_copies_swap_word_pieces_within_the_batch_and_keep_the_rest() -> None:
    """TinyBERT-style augmentation without a tokenizer: copies after the batch, each word piece swapped with
    probability `rate` for one of the batch's own; [CLS], [SEP] (each row's first and last real token), pieces equal
    to them and padding stay; masks and token types repeat; the settings' record and key are unchanged while off."""
    from search.records import compression_key
    from supernet.training import augmented

    batch = random_inputs(batch=3, tokens=9, seed=4)
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    ids[:, 0] = 1  # a [CLS] id
    lengths = mask.sum(1)
    ids[torch.arange(3), lengths - 1] = 2  # a [SEP] id at each row's end
    out_ids, out_mask, out_types = augmented((ids, mask, types), 2, 1.0, torch.Generator().manual_seed(0))
    assert out_ids.shape == (9, 9) and torch.equal(out_ids[:3], ids)
    assert torch.equal(out_mask, mask.repeat(3, 1)) and torch.equal(out_types, types.repeat(3, 1))
    words = (mask.bool() & (ids != 1) & (ids != 2)).repeat(2, 1)
    copies = out_ids[3:]
    assert torch.equal(copies[~words], ids.repeat(2, 1)[~words])  # ends and padding as they were
    assert set(copies[words].tolist()) <= set(ids[mask.bool() & (ids > 2)].tolist())
    assert not torch.equal(copies[words], ids.repeat(2, 1)[words])  # rate 1: drawn anew
    none = augmented((ids, mask, types), 1, 1e-9, torch.Generator().manual_seed(0))[0]
    assert torch.equal(none[3:], ids)
    assert augmented((ids, mask, types), 0, 0.5, torch.Generator())[0] is ids
    assert "augment_copies" not in CompressConfig(rank=5).to_dict()
    assert CompressConfig(rank=5, augment_copies=2).to_dict()["augment_rate"] == 0.15
    assert compression_key(CompressConfig(rank=5).to_dict(), 0) != compression_key(
        CompressConfig(rank=5, augment_copies=2).to_dict(), 0)
