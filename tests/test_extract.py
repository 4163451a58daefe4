"""supernet.extract: a sliced sub-network, the extracted model and the exported folder compute the same logits."""

from __future__ import annotations

import filecmp
import json
import random
from pathlib import Path

import pytest
import torch
from conftest import add_noise, hand_subs, make_supernet, random_inputs, random_sub, supernet_config
from conftest import tiny_roberta_config as roberta_config
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from supernet import factorised, factors, graphs, modeling_nasprune, modules, schedules
from supernet.config import SubNetworkConfig
from supernet.convert import supernet_from_hf
from supernet.counting import count_macs, count_params
from supernet.extract import (
    AUTO_MAP,
    SUBNETWORK_FILE,
    ExportError,
    export_onnx,
    export_subnetwork,
    extract,
    load_exported,
)
from supernet.model import Supernet
from supernet.modeling_nasprune import NasPruneForSequenceClassification

ATOL = 1e-4


def _logits(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"))
    return getattr(out, "logits", out)


def _sliced(supernet: Supernet, sub: SubNetworkConfig, inputs) -> torch.Tensor:
    with supernet.use(sub):
        return _logits(supernet, inputs)


def _subs(config, n: int = 4, seed: int = 0) -> list[SubNetworkConfig]:
    rng = random.Random(seed)
    subs = hand_subs(config)[1:] + [random_sub(config, rng) for _ in range(n)]
    assert any(0 in s.kept_heads() for s in subs) and any(len(s.layers) < config.num_layers for s in subs)
    return subs


def test_extract_matches_sliced_supernet_and_is_smaller(tiny_supernet) -> None:
    config = tiny_supernet.config
    inputs = random_inputs(4, 12)
    full = _logits(tiny_supernet, inputs)
    for sub in _subs(config, n=10):
        model = extract(tiny_supernet, sub)
        assert isinstance(model, NasPruneForSequenceClassification) and not model.training
        assert model.config.num_hidden_layers == len(sub.layers)
        assert model.config.layer_heads == sub.kept_heads() and model.config.layer_units == sub.kept_units()
        assert sum(p.numel() for p in model.parameters()) == count_params(config, sub).total
        expected = _sliced(tiny_supernet, sub, inputs)
        torch.testing.assert_close(_logits(model, inputs), expected, rtol=0, atol=ATOL)
        if sub != SubNetworkConfig.full(config):
            assert not torch.allclose(expected, full, atol=1e-4)  # the sub-network really differs
    # the full network extracts to the full model
    torch.testing.assert_close(_logits(extract(tiny_supernet, tiny_supernet.full_config()), inputs), full,
                               rtol=0, atol=ATOL)


def test_extract_copies_weights(tiny_supernet) -> None:
    sub = SubNetworkConfig(layers=(1,), heads=(0, 2, 0), units=(0, 20, 0))
    model = extract(tiny_supernet, sub)
    inputs = random_inputs()
    before = _logits(model, inputs)
    add_noise(tiny_supernet, seed=5)
    torch.testing.assert_close(_logits(model, inputs), before, rtol=0, atol=0)
    assert tiny_supernet.sub_network is None  # extract leaves the supernet as it was


def test_extract_rejects_subnets_that_do_not_fit(tiny_supernet) -> None:
    from supernet.config import ConfigError

    with pytest.raises(ConfigError):
        extract(tiny_supernet, SubNetworkConfig(layers=(0,), heads=(5, 0, 0), units=(1, 0, 0)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, minilm_tokenizer):
    """Several sub-networks of one supernet exported with the MiniLM tokenizer: (supernet, [(sub, folder)])."""
    config = supernet_config(vocab_size=minilm_tokenizer.vocab_size, max_position_embeddings=40)
    supernet = make_supernet(config, seed=11)
    root = tmp_path_factory.mktemp("exports")
    out = []
    for i, sub in enumerate(_subs(config, n=3, seed=1)):
        folder = export_subnetwork(supernet, sub, root / f"export{i}", tokenizer=minilm_tokenizer, seq_len=24,
                                   metrics={"validation": {"accuracy": 0.5 + i / 100}})
        out.append((sub, folder))
    return supernet, out


def _tokenized(tokenizer) -> dict[str, torch.Tensor]:
    batch = tokenizer(["a short one", "a considerably longer sentence, so that the other rows are padded", "mid"],
                      ["pair", "second segment", "third pair of words"], padding=True, truncation=True,
                      max_length=40, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()
    return dict(batch)


def test_exported_folder_layout(exported, minilm_tokenizer) -> None:
    net, items = exported
    for i, (sub, folder) in enumerate(items):
        names = {p.name for p in folder.iterdir()}
        assert {"config.json", "model.safetensors", "modeling_nasprune.py", "modules.py", "schedules.py",
                "factors.py", "factorised.py", "graphs.py", SUBNETWORK_FILE} <= names
        assert {"tokenizer_config.json"} <= names and ({"tokenizer.json", "vocab.txt"} & names)
        assert not any(n.startswith(".") for n in names)
        assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left
        # the package's own files, verbatim
        assert filecmp.cmp(folder / "modules.py", modules.__file__, shallow=False)
        assert filecmp.cmp(folder / "modeling_nasprune.py", modeling_nasprune.__file__, shallow=False)
        for source in (schedules, factors, factorised, graphs):
            assert filecmp.cmp(folder / Path(source.__file__).name, source.__file__, shallow=False)
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"] == AUTO_MAP and config["model_type"] == "nasprune_bert"
        assert config["layer_heads"] == sub.kept_heads() and config["layer_units"] == sub.kept_units()
        assert config["num_layers"] == len(sub.layers) and config["hidden_size"] == net.config.hidden_size
        record = json.loads((folder / SUBNETWORK_FILE).read_text())
        assert record["config"] == sub.to_dict()
        assert SubNetworkConfig.from_dict(record["config"]) == sub
        assert record["params"] == count_params(net.config, sub).to_dict()
        assert record["macs"] == count_macs(net.config, sub, seq_len=24) and record["seq_len"] == 24
        assert record["metrics"] == {"validation": {"accuracy": 0.5 + i / 100}}
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        text = "Tokenizers must round trip, too."
        assert tokenizer(text)["input_ids"] == minilm_tokenizer(text)["input_ids"]
        # without opting in to remote code the tokenizer still loads (it needs no code from the folder)
        assert AutoTokenizer.from_pretrained(folder, trust_remote_code=False)(text)["input_ids"] == \
            minilm_tokenizer(text)["input_ids"]


def test_export_parity_remote_code_and_load_exported(exported, minilm_tokenizer) -> None:
    net, items = exported
    inputs = _tokenized(minilm_tokenizer)
    for sub, folder in items:
        sliced = _sliced(net, sub, inputs)
        extracted = _logits(extract(net, sub), inputs)
        remote = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(remote).__module__.startswith("transformers_modules")  # really the folder's own code
        assert type(remote) is not NasPruneForSequenceClassification
        local = load_exported(folder)
        assert type(local) is NasPruneForSequenceClassification and not local.training
        assert local.config.num_labels == remote.config.num_labels == 2
        assert sum(p.numel() for p in remote.parameters()) == count_params(net.config, sub).total
        for logits in (extracted, _logits(remote, inputs), _logits(local, inputs)):
            torch.testing.assert_close(logits, sliced, rtol=0, atol=ATOL)
        # the HF wrapper computes the loss too, and accepts keyword arguments
        labels = torch.tensor([0, 1, 1])
        out = remote(**inputs, labels=labels)
        torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
        assert AutoConfig.from_pretrained(folder, trust_remote_code=True).layer_heads == sub.kept_heads()


def test_export_overwrites_and_regression(tmp_path) -> None:
    config = supernet_config(num_labels=1)
    net = make_supernet(config, seed=2)
    sub = SubNetworkConfig(layers=(0, 2), heads=(1, 0, 3), units=(0, 0, 30))
    folder = export_subnetwork(net, SubNetworkConfig.full(config), tmp_path / "out")
    (folder / "stale.txt").write_text("left over")
    folder = export_subnetwork(net, sub, tmp_path / "out")
    assert not (folder / "stale.txt").exists()  # the folder is replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert not {"tokenizer_config.json", "tokenizer.json", "vocab.txt"} & {p.name for p in folder.iterdir()}
    model = load_exported(folder)
    assert model.config.problem_type == "regression" and model.config.num_labels == 1
    inputs = random_inputs(3, 10)
    torch.testing.assert_close(_logits(model, inputs), _sliced(net, sub, inputs), rtol=0, atol=ATOL)
    labels = torch.tensor([0.5, -1.0, 2.0])
    out = model(**inputs, labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), labels))


class _FullDiskTokenizer:
    """A tokenizer whose save fails half-way through the export, as on a full disk."""

    def save_pretrained(self, folder) -> None:
        raise OSError(28, "No space left on device")


def test_a_failed_export_leaves_the_previous_folder_whole(tmp_path) -> None:
    config = supernet_config()
    net = make_supernet(config, seed=3)
    folder = export_subnetwork(net, SubNetworkConfig.full(config), tmp_path / "out")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    sub = SubNetworkConfig(layers=(1,), heads=(1, 1, 1), units=(8, 8, 8))
    with pytest.raises(OSError, match="No space left"):
        export_subnetwork(net, sub, tmp_path / "out", tokenizer=_FullDiskTokenizer())
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left beside it
    assert load_exported(folder).config.layer_heads == [config.num_heads] * config.num_layers


def test_roberta_supernet_exports_with_parity(tmp_path) -> None:
    from transformers import RobertaForSequenceClassification

    torch.manual_seed(0)
    hf = add_noise(RobertaForSequenceClassification(roberta_config(num_labels=3)), seed=4).eval()
    net = supernet_from_hf(hf).eval()
    inputs = random_inputs(4, 12, pad_token_id=1, type_vocab_size=1, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(_logits(net, inputs), hf(**inputs).logits, rtol=0, atol=1e-5)
    for i, sub in enumerate(_subs(net.config, n=2, seed=5)):
        folder = export_subnetwork(net, sub, tmp_path / f"roberta{i}")
        config = json.loads((folder / "config.json").read_text())
        assert config["position_offset"] is True and config["pad_token_id"] == 1 and config["type_vocab_size"] == 1
        sliced = _sliced(net, sub, inputs)
        torch.testing.assert_close(_logits(load_exported(folder), inputs), sliced, rtol=0, atol=ATOL)
        remote = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
        torch.testing.assert_close(_logits(remote, inputs), sliced, rtol=0, atol=ATOL)


def test_load_exported_rejects_other_folders(tmp_path) -> None:
    with pytest.raises(ExportError, match="config.json"):
        load_exported(tmp_path)
    with pytest.raises(ExportError):
        load_exported(tmp_path / "missing")
    from conftest import tiny_bert_config
    from transformers import BertForSequenceClassification

    BertForSequenceClassification(tiny_bert_config()).save_pretrained(tmp_path / "bert")
    with pytest.raises(ExportError, match="nasprune"):
        load_exported(tmp_path / "bert")


def test_load_exported_rejects_an_unreadable_config(tmp_path) -> None:
    """A folder whose config.json is not JSON is not a nasprune export either: ExportError, not JSONDecodeError."""
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ExportError):
        load_exported(tmp_path)


@pytest.mark.slow  # torch.onnx export takes a few seconds
def test_onnx_export_parity(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    net = make_supernet(seed=9)
    sub = SubNetworkConfig(layers=(0, 2), heads=(0, 4, 3), units=(40, 0, 0))
    folder = export_subnetwork(net, sub, tmp_path / "export")
    model = load_exported(folder)
    path = export_onnx(model, folder / "model.onnx", seq_len=16)
    assert path == folder / "model.onnx" and path.is_file()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    for batch, tokens, seed in ((2, 16, 0), (5, 9, 1), (1, 23, 2)):  # the export example's shape and others
        inputs = random_inputs(batch, tokens, seed=seed)
        got = session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})[0]
        expected = _sliced(net, sub, inputs)
        torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=ATOL)
