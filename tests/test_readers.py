"""supernet.readers.check_file: the one definition of a readable custom file. The loader reads through it and the
service checks uploads with it, so here each rule is checked on both: a file check_file refuses, the loader
refuses with the same message; a file it accepts, the loader reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from supernet.loading import load_custom_task
from supernet.readers import check_file, file_format, read_columns
from supernet.tasks import DataError, Example


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def _load(path: Path, text_columns=("t",), label_column="l", task_type="classification"):
    return load_custom_task("x", path, path, text_columns=list(text_columns), label_column=label_column,
                            task_type=task_type, validation_fraction=0.5)


def test_what_check_file_reports(tmp_path) -> None:
    path = _write(tmp_path / "a.csv", '\ufeff t ,l,extra\n"one, two",x,1\n\nb,y,2\n"multi\nline",x,3\n')
    checked = check_file(path)
    assert (checked.format, checked.columns, checked.rows) == ("csv", ["t", "l", "extra"], 3)
    assert checked.records == [] and not checked.labels  # no label column named: none counted
    assert read_columns(path) == checked.columns
    named = check_file(path, text_columns=["t"], label_column="l", keep_records=True)
    assert named.labels == {"x": 2, "y": 1}
    assert named.records == [(2, ["one, two"], "x"), (4, ["b"], "y"), (6, ["multi\nline"], "x")]
    data = _load(path)
    assert sorted(data.train + data.validation, key=lambda e: e.text_a) == [
        Example("b", None, 1), Example("multi\nline", None, 0), Example("one, two", None, 0)]


def test_jsonl_columns_come_from_the_first_object(tmp_path) -> None:
    rows = [{"t": "a", "l": 1}, {"l": 0.0, "t": "b", "note": "extra keys are ignored"}, {"t": 3, "l": True}]
    path = _write(tmp_path / "a.ndjson", "".join(json.dumps(r) + "\n" for r in rows))
    checked = check_file(path, text_columns=["t"], label_column="l", keep_records=True)
    assert checked.columns == ["t", "l"] and checked.rows == 3
    assert [r[1:] for r in checked.records] == [(["a"], "1"), (["b"], "0"), (["3"], "true")]
    assert check_file(path).rows == 3  # every column of the first object is in every line
    assert read_columns(path) == ["t", "l"]


BAD_FILES: dict[str, tuple[str, bytes, str]] = {
    "NUL bytes": ("a.csv", b"t,l\na\x00b,1\nc,0\n", "line 2 contains NUL bytes"),
    "not UTF-8": ("a.csv", "t,l\ncaf\u00e9,1\nb,0\n".encode("latin-1"), "not UTF-8 text"),
    "repeated column": ("a.csv", b"t,t,l\na,b,1\nc,d,0\n", "column name(s) ['t'] appear more than once"),
    "TSV named .csv": ("a.csv", b"t\tl\na\t1\nb\t0\n", "is this TSV?"),
    "empty object": ("a.jsonl", b'{}\n{"t": "a", "l": 1}\n', "line 1: an empty JSON object names no columns"),
    "null text": ("a.jsonl", b'{"t": "a", "l": 1}\n{"t": null, "l": 0}\n', "line 2: column 't' is empty"),
    "missing key": ("a.jsonl", b'{"t": "a", "l": 1}\n{"t": "b"}\n', "line 2: missing column(s) ['l']"),
    "ragged": ("a.tsv", b"t\tl\na\t1\nb\t0\tz\n", "line 3 has 3 fields, the header has 2"),
    "header only": ("a.csv", b"t,l\n\n", "no examples (no data rows)"),
    "empty": ("a.jsonl", b"\n\n", "no examples (no data rows)"),
    "unquoted field too long": ("a.csv", b"t,l\n" + b"x" * 200_000 + b",1\n", "line 2: cannot parse as CSV"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_check_file_and_the_loader_refuse_alike(tmp_path, case) -> None:
    name, content, message = BAD_FILES[case]
    path = _write(tmp_path / name, content)
    with pytest.raises(DataError) as checked:
        check_file(path)
    assert message in str(checked.value) and str(path) in str(checked.value)
    with pytest.raises(DataError) as loaded:
        _load(path)
    assert str(loaded.value) == str(checked.value)
    with pytest.raises(DataError, match="NAME.csv"):  # the name given for messages replaces the path
        check_file(path, file_format(path), source="NAME.csv")


def test_labels_are_checked_once_the_label_column_is_known(tmp_path) -> None:
    path = _write(tmp_path / "a.csv", "t,l\na,1.5\nb,\nc,high\n")
    assert check_file(path).rows == 3  # no column named: any of them may be text
    with pytest.raises(DataError, match="line 3: empty label in column 'l'"):
        check_file(path, text_columns=["t"], label_column="l")
    path.write_text("t,l\na,1.5\nb,high\n")
    assert check_file(path, text_columns=["t"], label_column="l").labels == {"1.5": 1, "high": 1}
    with pytest.raises(DataError, match="line 3: label 'high' is not a number") as checked:
        check_file(path, text_columns=["t"], label_column="l", regression=True)
    with pytest.raises(DataError) as loaded:
        _load(path, task_type="regression")
    assert str(loaded.value) == str(checked.value)
    path.write_text("t,l\na,nan\nb,1\n")
    with pytest.raises(DataError, match="line 2: label 'nan' is not finite"):
        check_file(path, text_columns=["t"], label_column="l", regression=True)


def test_formats_and_headers(tmp_path) -> None:
    assert file_format("x.JSON-LINES") == "jsonl" and file_format("x.txt", "tsv") == "tsv"
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        file_format("x.txt")
    with pytest.raises(DataError, match="format 'xml' is not one of csv, tsv, jsonl"):
        file_format("x.csv", "xml")
    for content in (b"", b"\n\n", b" , \n"):
        with pytest.raises(DataError, match="empty file"):
            read_columns(_write(tmp_path / "e.csv", content))
    with pytest.raises(DataError, match="missing file"):
        read_columns(tmp_path / "nothere.csv")
    with pytest.raises(DataError, match="appear more than once"):
        read_columns(_write(tmp_path / "d.csv", "a,a\n1,2\n"))
    assert read_columns(_write(tmp_path / "q.csv", '"multi\nline",b\n1,2\n')) == ["multi\nline", "b"]
    with pytest.raises(ValueError, match="label_column needs text_columns"):
        check_file(tmp_path / "q.csv", label_column="b")
