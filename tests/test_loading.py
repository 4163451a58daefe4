"""supernet.loading and supernet.splits: real GLUE files, classic-layout fixtures, the hub loader (its download
faked, its Dataset objects real), custom CSV/TSV/JSONL tasks, and the seeded split protocol."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from supernet.loading import load_custom_task, load_task
from supernet.splits import split_train_validation
from supernet.tasks import GLUE_TASKS, DataError, Example

GLUE_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/glue"
needs_glue = pytest.mark.skipif(
    not (GLUE_DIR / "RTE" / "train.tsv").is_file(), reason=f"real GLUE data not found at {GLUE_DIR}"
)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _all_train(data) -> list[Example]:
    return data.train + data.validation


# ----------------------------------------------------------------------------------------------- real GLUE


@needs_glue
def test_rte_counts_labels_and_split() -> None:
    data = load_task("glue/rte", GLUE_DIR)
    assert data.spec is GLUE_TASKS["glue/rte"].spec
    assert data.spec.label_names == ("entailment", "not_entailment")
    assert (len(data.train), len(data.validation)) == (1743, 747)
    assert len(data.train) + len(data.validation) == 2490
    assert list(data.test) == ["test"] and len(data.test["test"]) == 277
    assert Counter(e.label for e in _all_train(data)) == {0: 1249, 1: 1241}
    assert Counter(e.label for e in data.test["test"]) == {0: 146, 1: 131}
    # train and validation partition the file: no example lost or duplicated
    train_idx, val_idx = split_train_validation(2490)
    assert not set(train_idx) & set(val_idx) and len(set(train_idx) | set(val_idx)) == 2490
    # first dev row is "not_entailment" -> 1, with quoting left alone
    first = data.test["test"][0]
    assert first.text_a.startswith("Dana Reeve, the widow of the actor Christopher Reeve")
    assert first.text_b == "Christopher Reeve had an accident." and first.label == 1
    assert data.majority_baseline == {"accuracy": pytest.approx(146 / 277)}


@needs_glue
def test_mrpc_bom_header_quotes_and_f1_baseline() -> None:
    data = load_task("glue/mrpc", GLUE_DIR)
    assert len(data.train) + len(data.validation) == 3668 and len(data.test["test"]) == 408
    assert Counter(e.label for e in _all_train(data)) == {1: 2474, 0: 1194}
    first = data.test["test"][0]  # the header line starts with a BOM; "Quality" must still be found
    assert first.label == 1
    assert first.text_a.startswith("He said the foodservice pie business")
    assert first.text_b == '" The foodservice pie business does not fit our long-term growth strategy .'
    assert not any(e.text_a.startswith("\ufeff") for e in _all_train(data))
    assert data.spec.main_metric == "f1" and data.spec.metrics == ("f1", "accuracy")
    # always predicting "equivalent" (279 of 408 dev pairs)
    assert data.majority_baseline["accuracy"] == pytest.approx(279 / 408)
    assert data.majority_baseline["f1"] == pytest.approx(2 * 279 / (2 * 279 + 129))


@needs_glue
def test_sst2_train_limit_caps_training_only() -> None:
    limited = load_task("glue/sst2", GLUE_DIR, train_limit=1000)
    assert len(limited.train) == 1000
    assert len(limited.validation) == round(67349 * 0.3) == 20205
    assert len(limited.test["test"]) == 872
    assert Counter(e.label for e in limited.test["test"]) == {1: 444, 0: 428}
    assert {e.label for e in limited.train} == {0, 1} and all(e.text_b is None for e in limited.train)
    full_train, full_val = split_train_validation(67349)
    lim_train, lim_val = split_train_validation(67349, train_limit=1000)
    assert lim_val == full_val and set(lim_train) <= set(full_train)


@needs_glue
def test_wnli_and_majority_baseline() -> None:
    data = load_task("glue/wnli", GLUE_DIR)
    assert (len(data.train), len(data.validation), len(data.test["test"])) == (445, 190, 71)
    assert Counter(e.label for e in _all_train(data)) == {0: 323, 1: 312}
    assert data.spec.label_names == ("not_entailment", "entailment")
    assert data.majority_baseline["accuracy"] == pytest.approx(40 / 71)


@needs_glue
def test_split_is_seeded() -> None:
    a = load_task("glue/rte", GLUE_DIR, split_seed=0)
    b = load_task("glue/rte", GLUE_DIR, split_seed=0)
    c = load_task("glue/rte", GLUE_DIR, split_seed=1)
    assert a.train == b.train and a.validation == b.validation
    assert a.validation != c.validation and len(a.validation) == len(c.validation)
    assert a.test == c.test  # the dev file is the test set whatever the seed
    assert split_train_validation(10, split_seed=3) == split_train_validation(10, split_seed=3)
    # pinned so that a change of shuffling algorithm (which would change every split) is noticed
    assert split_train_validation(10, split_seed=0) == ([0, 2, 3, 4, 5, 6, 9], [1, 7, 8])


@needs_glue
def test_qnli_without_train_file_and_glue_dir_env(monkeypatch) -> None:
    with pytest.raises(DataError, match=r"QNLI/train\.tsv: missing file"):
        load_task("glue/qnli", GLUE_DIR)
    monkeypatch.setenv("GLUE_DIR", str(GLUE_DIR))
    assert len(load_task("wnli").test["test"]) == 71  # bare names and $GLUE_DIR work too


# ---------------------------------------------------------------------------------- classic-layout fixtures


def test_cola_headerless(tmp_path) -> None:
    rows = [
        "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.",
        "gj04\t0\t*\tThey drank the pub.",
        "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.",
        'gj04\t0\t*\t"The more we study verbs.',
    ]
    _write(tmp_path / "CoLA/train.tsv", "\n".join(rows) + "\n")
    _write(tmp_path / "CoLA/dev.tsv", "\n".join(rows[:2]) + "\n")
    data = load_task("glue/cola", tmp_path, validation_fraction=0.25)
    assert (len(data.train), len(data.validation)) == (3, 1)
    assert data.test["test"][1] == Example("They drank the pub.", None, 0)
    assert data.spec.main_metric == "matthews_correlation"
    assert '"The more we study verbs.' in [e.text_a for e in _all_train(data)]  # QUOTE_NONE


def test_stsb_score_is_last_column(tmp_path) -> None:
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    rows = [
        f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\tA man {i}.\tA person {i}.\t{i * 1.25}"
        for i in range(5)
    ]
    _write(tmp_path / "STS-B/train.tsv", "\n".join([header, *rows]) + "\n")
    _write(tmp_path / "STS-B/dev.tsv", "\n".join([header, *rows[:3]]) + "\n")
    data = load_task("glue/stsb", tmp_path)
    assert data.spec.is_regression and data.spec.num_labels == 1 and data.spec.main_metric == "spearman"
    assert data.test["test"][2] == Example("A man 2.", "A person 2.", 2.5)
    assert isinstance(data.train[0].label, float)
    # a constant prediction (the train mean) correlates with nothing
    assert data.majority_baseline == {"pearson": 0.0, "spearman": 0.0}


def test_mnli_two_test_splits(tmp_path) -> None:
    parse = "\t".join(["( a )"] * 4)
    header_train = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")
    header_dev = header_train.replace("label1", "label1\tlabel2\tlabel3\tlabel4\tlabel5")
    gold = ["entailment", "neutral", "contradiction"] * 2
    train = [f"{i}\t{i}\t{i}e\tfiction\t{parse}\tPremise {i}.\tHypothesis {i}.\t{g}\t{g}"
             for i, g in enumerate(gold)]
    dev = [f"{i}\t{i}\t{i}e\tfiction\t{parse}\tP{i}.\tH{i}.\t" + "\t".join([g] * 6)
           for i, g in enumerate(gold)]
    _write(tmp_path / "MNLI/train.tsv", "\n".join([header_train, *train]) + "\n")
    _write(tmp_path / "MNLI/dev_matched.tsv", "\n".join([header_dev, *dev[:4]]) + "\n")
    _write(tmp_path / "MNLI/dev_mismatched.tsv", "\n".join([header_dev, *dev[3:]]) + "\n")
    data = load_task("glue/mnli", tmp_path)
    assert list(data.test) == ["test_matched", "test_mismatched"]
    assert [e.label for e in data.test["test_matched"]] == [0, 1, 2, 0]
    assert data.test["test_mismatched"][0] == Example("P3.", "H3.", 0)
    assert Counter(e.label for e in _all_train(data)) == {0: 2, 1: 2, 2: 2}
    assert data.spec.num_labels == 3


def test_qqp_skips_malformed_rows(tmp_path, caplog) -> None:
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
    rows = [f"{i}\t{2 * i}\t{2 * i + 1}\tWhy {i}?\tHow {i}?\t{i % 2}" for i in range(6)]
    broken = ["99\t198\t199\tA question broken by", "a newline?\tAnother?\t0"]
    _write(tmp_path / "QQP/train.tsv", "\n".join([header, *rows[:3], *broken, *rows[3:]]) + "\n")
    _write(tmp_path / "QQP/dev.tsv", "\n".join([header, *rows]) + "\n")
    with caplog.at_level("WARNING", logger="supernet.readers"):
        data = load_task("glue/qqp", tmp_path)
    assert len(data.train) + len(data.validation) == 6
    assert "skipped 2 malformed rows" in caplog.text
    assert data.spec.main_metric == "f1" and data.test["test"][1] == Example("Why 1?", "How 1?", 1)


def test_glue_bad_data(tmp_path) -> None:
    header = "index\tsentence1\tsentence2\tlabel"
    good = "\n".join([header] + [f"{i}\ta{i}\tb{i}\tentailment" for i in range(4)]) + "\n"
    _write(tmp_path / "RTE/dev.tsv", good)
    train = _write(tmp_path / "RTE/train.tsv", header + "\n0\ta\tb\tmaybe\n")
    with pytest.raises(DataError, match=r"RTE/train\.tsv: line 2: unknown label 'maybe'"):
        load_task("glue/rte", tmp_path)
    train.write_text("index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(DataError, match=r"train\.tsv: missing column 'sentence1'"):
        load_task("glue/rte", tmp_path)
    train.write_text("")
    with pytest.raises(DataError, match=r"train\.tsv: empty file"):
        load_task("glue/rte", tmp_path)
    train.write_text(header + "\n")
    with pytest.raises(DataError, match=r"train\.tsv: no examples"):
        load_task("glue/rte", tmp_path)
    train.write_text(header + "\n0\ta\tb\tentailment\n")
    with pytest.raises(DataError, match=r"train\.tsv: 1 examples are too few"):
        load_task("glue/rte", tmp_path)
    train.write_text(header + "\n0\ta\n")
    with pytest.raises(DataError, match=r"train\.tsv: line 2 has 2 fields"):
        load_task("glue/rte", tmp_path)
    with pytest.raises(DataError, match=r"STS-B/train\.tsv: missing file"):
        load_task("glue/stsb", tmp_path)
    with pytest.raises(DataError, match="unknown task"):
        load_task("glue/squad", tmp_path)
    with pytest.raises(ValueError, match="validation_fraction"):
        load_task("glue/rte", tmp_path, validation_fraction=1.0)


def test_hub_loader_with_fake_load_dataset(monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 3, "idx": i} for i in range(10)]
    splits = {"train": rows, "validation_matched": rows[:4], "validation_mismatched": rows[4:7]}
    calls = []

    def load_dataset(path, name):  # real Dataset objects, only the download is faked (no network here)
        calls.append((path, name))
        return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})

    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    data = load_task("glue/mnli")
    assert calls == [("nyu-mll/glue", "mnli")]
    assert {k: len(v) for k, v in data.test.items()} == {"test_matched": 4, "test_mismatched": 3}
    assert data.test["test_matched"][2] == Example("p2", "h2", 2)
    assert len(data.train) + len(data.validation) == 10

    def offline(path, name):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="nyu-mll/glue/rte: cannot load"):
        load_task("glue/rte")


# ---------------------------------------------------------------------------------------------- custom files


def test_custom_csv_string_labels(tmp_path) -> None:
    header = "id,question,answer,verdict\n"
    labels = ["yes", "no", "maybe"] * 4
    train = _write(tmp_path / "train.csv", header + "".join(
        f'{i},"Q {i}, with a comma","A ""{i}""",{lab}\n' for i, lab in enumerate(labels)))
    test = _write(tmp_path / "test.csv", header + '0,"q","a",no\n1,"r","b",yes\n')
    data = load_custom_task("qa", train, test, text_columns=["question", "answer"], label_column="verdict",
                            validation_fraction=0.25)
    assert data.spec.name == "custom/qa" and data.spec.label_names == ("maybe", "no", "yes")
    assert data.spec.metrics == ("accuracy",) and data.spec.main_metric == "accuracy"
    assert (len(data.train), len(data.validation)) == (9, 3)
    assert data.test["test"] == [Example("q", "a", 1), Example("r", "b", 2)]
    assert Example("Q 0, with a comma", 'A "0"', 2) in _all_train(data)


def test_custom_tsv_binary_int_labels_sorted_numerically(tmp_path) -> None:
    rows = [f"text {i}\t{lab}" for i, lab in enumerate([10, 2, 10, 2, 10, 2])]
    train = _write(tmp_path / "train.tsv", "text\tlabel\n" + "\n".join(rows) + "\n")
    test = _write(tmp_path / "test.tsv", "text\tlabel\nx\t2\ny\t10\n")
    data = load_custom_task("bin", train, test, text_columns=["text"], label_column="label", train_limit=2)
    assert data.spec.label_names == ("2", "10")  # numeric, not string, order
    assert data.spec.metrics == ("accuracy", "f1") and data.spec.main_metric == "accuracy"
    assert data.test["test"] == [Example("x", None, 0), Example("y", None, 1)]
    assert len(data.train) == 2 and len(data.validation) == 2


def test_custom_jsonl_regression(tmp_path) -> None:
    train = _write(tmp_path / "train.jsonl", "".join(
        json.dumps({"a": f"s{i}", "b": f"t{i}", "y": i / 2}) + "\n" for i in range(10)) + "\n")
    test_text = '{"a": "x", "b": "y", "y": "3.5"}\n{"a": "u", "b": "v", "y": 1}\n'
    test = _write(tmp_path / "test.json-lines", test_text)
    data = load_custom_task(
        "sim", train, test, text_columns=("a", "b"), label_column="y", task_type="regression"
    )
    assert data.spec.is_regression and data.spec.label_names == () and data.spec.main_metric == "spearman"
    assert data.test["test"] == [Example("x", "y", 3.5), Example("u", "v", 1.0)]
    assert sorted(e.label for e in _all_train(data)) == [i / 2 for i in range(10)]
    assert data.majority_baseline == {"pearson": 0.0, "spearman": 0.0}


@pytest.mark.parametrize(
    ("train_text", "test_text", "suffix", "bad", "message"),
    [
        ("t,l\na,x\nb,y\nc,x\n", "t,l\na,x\nb,z\n", ".csv", "test", r"line 3: label 'z' does not occur"),
        ("t,l\na,x\nb,y\nc,x\n", "t,lab\na,x\n", ".csv", "test", r"line 2: missing column\(s\) \['l'\]"),
        ("", "t,l\na,x\n", ".csv", "train", "empty file"),
        ("t,l\n", "t,l\na,x\n", ".csv", "train", "no examples"),
        ("t,l\na,x\n", "t,l\na,x\n", ".csv", "train", "at least two distinct labels"),
        ("t\tl\na\tx\tz\nb\ty\n", "t\tl\na\tx\n", ".tsv", "train", "line 2 has 3 fields"),
        ('{"t": "a", "l": "x"}\n{"t": "b", "l": \n', '{"t": "a", "l": "x"}\n', ".jsonl", "train",
         "line 2: invalid JSON"),
        ('{"t": "a", "l": "x"}\n["b", "y"]\n', '{"t": "a", "l": "x"}\n', ".jsonl", "train",
         "expected a JSON object"),
        ("t,l\na,x\nb,\n", "t,l\na,x\n", ".csv", "train", "line 3: empty label"),
        ("t,l\na,x\nb,y\n", "t,l\na,x\n", ".txt", "train", "unsupported file type"),
    ],
)
def test_custom_bad_data(tmp_path, train_text, test_text, suffix, bad, message) -> None:
    train = _write(tmp_path / f"mytrain{suffix}", train_text)
    test = _write(tmp_path / f"mytest{suffix}", test_text)
    with pytest.raises(DataError, match=message) as info:
        load_custom_task("bad", train, test, text_columns=["t"], label_column="l", validation_fraction=0.5)
    assert f"my{bad}{suffix}" in str(info.value)


def test_custom_bad_regression_label_and_missing_file(tmp_path) -> None:
    train = _write(tmp_path / "train.csv", "t,y\na,1\nb,oops\n")
    test = _write(tmp_path / "test.csv", "t,y\na,1\n")
    with pytest.raises(DataError, match=r"train\.csv: line 3: label 'oops' is not a number"):
        load_custom_task("r", train, test, text_columns=["t"], label_column="y", task_type="regression")
    train.write_text("t,y\na,1\nb,0\n")
    test.write_text("t,y\na,1\nb,0\n")
    with pytest.raises(DataError, match=r"nothere\.csv: missing file"):
        load_custom_task("r", train, tmp_path / "nothere.csv", text_columns=["t"], label_column="y")
    with pytest.raises(DataError, match=r"train\.csv: 2 examples are too few to split"):
        load_custom_task("r", train, test, text_columns=["t"], label_column="y", validation_fraction=0.9)
    with pytest.raises(ValueError, match="text_columns"):
        load_custom_task("r", train, test, text_columns=["t", "t", "t"], label_column="y")
