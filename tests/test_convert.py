"""supernet.convert / supernet.config: the full supernet computes exactly what the Hugging Face model computes."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, add_noise, random_inputs, tiny_bert_config, tiny_roberta_config
from transformers import (
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaForSequenceClassification,
)

from supernet.config import ConfigError, SubNetworkConfig, SupernetConfig
from supernet.convert import (
    ModelLoadError,
    load_hf_model,
    load_supernet_from_pretrained,
    load_tokenizer,
    read_model_config,
    supernet_from_hf,
)
from supernet.model import Supernet

MODELS = {
    "bert": (BertForSequenceClassification, tiny_bert_config),
    "roberta": (RobertaForSequenceClassification, tiny_roberta_config),
}


def _hf(kind: str, num_labels: int, seed: int = 0, **overrides):
    cls, make_config = MODELS[kind]
    torch.manual_seed(seed)
    return add_noise(cls(make_config(num_labels=num_labels, **overrides)), seed).eval()


def _assert_parity(hf_model, supernet: Supernet, inputs: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    with torch.no_grad():
        expected = hf_model(**inputs).logits
        actual = supernet(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"))
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("num_labels", [2, 3, 1])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_full_supernet_matches_hf_with_padding(kind: str, num_labels: int, attn: str) -> None:
    hf = _hf(kind, num_labels, attn_implementation=attn)
    supernet = supernet_from_hf(hf).eval()
    cfg = supernet.config
    assert cfg.model_type == kind and cfg.num_labels == num_labels and cfg.is_regression == (num_labels == 1)
    assert cfg.position_offset == (kind == "roberta")
    assert cfg.pad_token_id == hf.config.pad_token_id
    inputs = random_inputs(5, 13, pad_token_id=hf.config.pad_token_id, type_vocab_size=hf.config.type_vocab_size)
    assert (inputs["attention_mask"] == 0).any()  # padding really is in the batch
    _assert_parity(hf, supernet, inputs)
    # without an attention mask (the all-ones fast path) and without token type ids
    unpadded = random_inputs(3, 9, seed=1, padded=False, type_vocab_size=1)
    with torch.no_grad():
        expected = hf(input_ids=unpadded["input_ids"]).logits
        torch.testing.assert_close(supernet(unpadded["input_ids"]), expected, rtol=0, atol=1e-5)
        # an all-ones mask takes the same path as no mask
        torch.testing.assert_close(supernet(unpadded["input_ids"], unpadded["attention_mask"]), expected,
                                   rtol=0, atol=1e-5)


def test_roberta_positions_skip_left_padding() -> None:
    """RoBERTa counts positions from pad_token_id + 1 over non-pad tokens, so left padding must not shift them."""
    hf = _hf("roberta", 2, seed=3)
    supernet = supernet_from_hf(hf).eval()
    inputs = random_inputs(3, 10, pad_token_id=1, type_vocab_size=1, seed=4)
    # move the padding to the left of each row
    ids, mask = inputs["input_ids"].clone(), inputs["attention_mask"].clone()
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        ids[row] = torch.cat([torch.full((10 - n,), 1), inputs["input_ids"][row, :n]])
        mask[row] = torch.cat([torch.zeros(10 - n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    _assert_parity(hf, supernet, {"input_ids": ids, "attention_mask": mask})


def test_supernet_parameters_are_copies_not_views() -> None:
    hf = _hf("bert", 2)
    supernet = supernet_from_hf(hf)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(1.0)
    for k, v in supernet.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_supernet_config_from_hf_and_dict_round_trip() -> None:
    hf_config = tiny_bert_config(num_labels=3, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3,
                                 classifier_dropout=0.25, layer_norm_eps=1e-7, hidden_act="gelu_new")
    cfg = SupernetConfig.from_hf(hf_config)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.head_size, cfg.intermediate_size) == (3, 32, 4, 8, 48)
    assert (cfg.hidden_dropout, cfg.attention_dropout, cfg.classifier_dropout) == (0.2, 0.3, 0.25)
    assert (cfg.layer_norm_eps, cfg.hidden_act, cfg.num_labels, cfg.vocab_size) == (1e-7, "gelu_new", 3, 99)
    assert cfg.layer_heads == (4, 4, 4) and cfg.layer_units == (48, 48, 48)
    assert SupernetConfig.from_dict(cfg.to_dict()) == cfg
    import json

    assert SupernetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError):
        SupernetConfig(**(cfg.to_dict() | {"layer_heads": [4, 4]}))


def test_supernet_config_rejects_unsupported_models() -> None:
    with pytest.raises(ConfigError, match="unsupported model type"):
        SupernetConfig.from_hf(DistilBertConfig(vocab_size=99, dim=32, n_layers=1, n_heads=4, hidden_dim=48))
    with pytest.raises(ConfigError, match="absolute"):
        SupernetConfig.from_hf(tiny_bert_config(position_embedding_type="relative_key"))
    with pytest.raises(ConfigError, match="divisible"):
        SupernetConfig.from_hf(tiny_bert_config(hidden_size=30, num_attention_heads=4))
    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=99, dim=32, n_layers=1, n_heads=4,
                                                                  hidden_dim=48))
    with pytest.raises(ConfigError):
        supernet_from_hf(distil)


def test_supernet_from_hf_checks_keys() -> None:
    hf = _hf("bert", 2)
    hf.bert.pooler = None  # a BERT without the pooler the supernet's head needs
    with pytest.raises(ConfigError, match="missing checkpoint keys"):
        supernet_from_hf(hf)


def test_local_folder_round_trip_and_errors(tmp_path) -> None:
    hf = _hf("roberta", 2, seed=5)
    hf.save_pretrained(tmp_path / "model")
    supernet = load_supernet_from_pretrained(str(tmp_path / "model"), num_labels=2)
    _assert_parity(hf, supernet.eval(), random_inputs(3, 8, pad_token_id=1, type_vocab_size=1))
    # num_labels comes from the task, regression sets the problem type
    config = read_model_config(str(tmp_path / "model"), num_labels=1)
    assert config.num_labels == 1 and config.problem_type == "regression"
    with pytest.raises(ModelLoadError):
        read_model_config(str(tmp_path / "does-not-exist"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="unreadable"):
        read_model_config(str(tmp_path / "broken"))
    DistilBertConfig(vocab_size=99, dim=32, n_layers=1, n_heads=4, hidden_dim=48).save_pretrained(tmp_path / "distil")
    with pytest.raises(ModelLoadError, match="supported"):
        read_model_config(str(tmp_path / "distil"))


def test_exported_folder_is_a_supported_source(tmp_path) -> None:
    """A nasprune export (non-uniform widths, a 0-head layer) converts back into a supernet with equal logits."""
    from supernet.extract import export_subnetwork, load_exported

    supernet = supernet_from_hf(_hf("bert", 2, seed=7)).eval()
    sub = SubNetworkConfig(layers=(0, 2), heads=(0, 4, 2), units=(10, 48, 0))
    folder = export_subnetwork(supernet, sub, tmp_path / "export")
    again = load_supernet_from_pretrained(str(folder)).eval()
    assert again.config.model_type == "nasprune_bert"
    assert again.config.layer_heads == (0, 2) and again.config.layer_units == (10, 0)
    inputs = random_inputs(3, 9)
    with torch.no_grad(), supernet.use(sub):
        expected = supernet(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    _assert_parity(load_exported(folder), again, inputs)
    with torch.no_grad():
        got = again(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert isinstance(load_hf_model(str(folder)), type(load_exported(folder)))


@pytest.mark.slow  # loads the offline MiniLM weights
def test_minilm_supernet_matches_hf() -> None:
    hf = load_hf_model("minilm").eval()
    supernet = supernet_from_hf(hf).eval()
    cfg = supernet.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.head_size, cfg.intermediate_size) == (6, 384, 12, 32,
                                                                                                         1536)
    tokenizer = load_tokenizer("minilm")
    batch = tokenizer(["a short one", "a considerably longer sentence, so that the first one is padded"],
                      ["pair", "another pair of words"], padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any() and (batch["token_type_ids"] == 1).any()
    _assert_parity(hf, supernet, dict(batch))
    assert sum(p.numel() for p in supernet.parameters()) == sum(p.numel() for p in hf.parameters())


def test_tiny_dims_constant_is_what_the_fixtures_use(tiny_config) -> None:
    assert SupernetConfig.from_hf(tiny_bert_config()) == tiny_config
    assert TINY["hidden_size"] // TINY["num_attention_heads"] == tiny_config.head_size
