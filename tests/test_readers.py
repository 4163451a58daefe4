"""supernet.readers.check_file: the one definition of a readable custom file. The loader reads through it and the
service checks uploads with it, so here each rule is checked on both: a file check_file refuses, the loader
refuses with the same message; a file it accepts, the loader reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from supernet.loading import load_custom_task
from supernet.readers import PROFILE_ROWS, ColumnProfile, check_column, check_file, file_format, read_columns
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


# (file, text columns, label column, task type, what both check_file and the loader say)
UNUSABLE: dict[str, tuple[str, bytes, str]] = {
    "nested object as text": ("a.jsonl", b'{"t": "a", "l": 1}\n{"t": {"x": 1}, "l": 0}\n',
                              "line 2: column 't' holds an object; a field must be text, a number, true or false"),
    "list as label": ("a.jsonl", b'{"t": "a", "l": 1}\n{"t": "b", "l": [0]}\n', "line 2: column 'l' holds a list"),
    "empty text": ("a.csv", b"t,l\na,1\n  ,0\nc,1\n", "line 3: column 't' is empty"),
    "empty JSON text": ("a.jsonl", b'{"t": "a", "l": 1}\n{"t": "", "l": 0}\n', "line 2: column 't' is empty"),
    "one class": ("a.csv", b"t,l\na,x\nb,x\n", "column 'l' has 1 distinct label(s); classification needs at least two"),
    "fractions read as classes": ("a.csv", b"t,l\na,1\nb,0.25\nc,2\n",
                                  "line 3: label '0.25' in column 'l' is a fraction and every label is a number: a "
                                  "quantity, not a class; declare task_type regression"),
    "too many classes": ("a.csv", ("t,l\n" + "".join(f"w{i},c{i}\n" for i in range(150))).encode(),
                         "line 102: column 'l' has more than 100 distinct labels, too many classes for classification;"
                         " if it is a number to predict, declare task_type regression"),
}


@pytest.mark.parametrize("case", list(UNUSABLE))
def test_columns_a_search_cannot_use_are_refused_by_check_file_and_the_loader(tmp_path, case) -> None:
    name, content, message = UNUSABLE[case]
    path = _write(tmp_path / name, content)
    with pytest.raises(DataError) as checked:
        check_file(path, text_columns=["t"], label_column="l")
    assert str(checked.value).startswith(f"{path}: ") and message in str(checked.value)
    with pytest.raises(DataError) as loaded:
        _load(path)
    assert str(loaded.value) == str(checked.value)


def test_a_column_of_numbers_is_fine_as_regression_or_whole_classes(tmp_path) -> None:
    floats = _write(tmp_path / "f.jsonl", "".join(json.dumps({"t": f"w{i}", "l": i / 7}) + "\n" for i in range(60)))
    assert _load(floats, task_type="regression").spec.is_regression
    with pytest.raises(DataError, match="declare task_type regression"):
        _load(floats)
    whole = _write(tmp_path / "w.csv", "t,l\na,1.0\nb,2\nc,1\nd,3\n")  # 1.0 is a whole number: a class
    assert check_file(whole, text_columns=["t"], label_column="l").labels == {"1.0": 1, "2": 1, "1": 1, "3": 1}
    mixed = _write(tmp_path / "m.csv", "t,l\na,0.5\nb,high\nc,0.5\n")  # not all numbers: names of classes
    assert check_file(mixed, text_columns=["t"], label_column="l").labels == {"0.5": 2, "high": 1}
    at_limit = _write(tmp_path / "k.csv", "t,l\n" + "".join(f"w{i},c{i % 100}\n" for i in range(300)))
    assert len(check_file(at_limit, text_columns=["t"], label_column="l").labels) == 100


def test_profiles_record_what_the_rules_need(tmp_path) -> None:
    """Without named columns every column is profiled (an upload), and check_column judges a column from its
    profile alone, with the message check_file gives when that column is named."""
    path = _write(tmp_path / "p.csv", "t,y,l,note\na,0.5,x,\nb,1,y,n\nc,2,x,\n")
    checked = check_file(path)
    assert checked.rows == 3 and set(checked.profiles) == {"t", "y", "l", "note"}
    note = checked.profiles["note"]
    assert (note.blank_line, note.distinct) == (2, 1)
    y = ColumnProfile.from_json(json.loads(json.dumps(checked.profiles["y"].to_json())))
    assert y == checked.profiles["y"] and y.fraction == (2, "0.5") and y.not_number is None
    check_column("p.csv", "y", y, "regression")
    check_column("p.csv", "l", checked.profiles["l"], "classification")
    for column, role in (("note", "text"), ("y", "classification"), ("t", "regression"), ("note", "classification")):
        with pytest.raises(DataError) as from_profile:
            check_column(str(path), column, checked.profiles[column], role)
        text = ["t"] if column != "t" else ["l"]
        with pytest.raises(DataError) as from_file:
            if role == "text":
                check_file(path, text_columns=[column])
            else:
                check_file(path, text_columns=text, label_column=column, regression=role == "regression")
        assert str(from_profile.value) == str(from_file.value)
    nested = _write(tmp_path / "n.jsonl", '{"t": "a", "l": 1}\n{"t": "b", "l": 0, "later": {"k": 1}}\n')
    with pytest.raises(DataError, match="line 2: column 'later' holds an object"):
        check_file(nested)  # an upload: anywhere in the object
    assert check_file(nested, text_columns=["t"], label_column="l").rows == 2  # a search reads only its columns


def test_the_first_problem_is_reported_whatever_the_file_size(tmp_path) -> None:
    """Columns are profiled a run of rows at a time (PROFILE_ROWS): a problem is still reported at its own line,
    before a later row's broken structure, and in a run after the first."""
    early = _write(tmp_path / "e.csv", "t,l\n" + "a,1\nb,0\n" * 4 + "c,\n" + "d,1\n" * 20 + "e,1,extra\n")
    with pytest.raises(DataError, match=r"e\.csv: line 10: empty label in column 'l'$"):
        check_file(early, text_columns=["t"], label_column="l")
    with pytest.raises(DataError, match=r"line 31 has 3 fields"):
        check_file(early)  # no label column named: the structure is the problem
    rows = PROFILE_ROWS * 2 + 7
    late = _write(tmp_path / "l.jsonl", "".join(json.dumps({"t": f"w{i}", "l": i % 2 if i != rows - 3 else ""})
                                                + "\n" for i in range(rows)))
    with pytest.raises(DataError, match=f"line {rows - 2}: empty label in column 'l'"):
        check_file(late, text_columns=["t"], label_column="l")
    many = _write(tmp_path / "m.csv", "t,l\n" + "".join(f"w{i},{i % 2 if i < PROFILE_ROWS + 5 else i}\n"
                                                       for i in range(PROFILE_ROWS + 200)))
    with pytest.raises(DataError, match=f"line {PROFILE_ROWS + 5 + 99 + 1}: column 'l' has more than 100"):
        check_file(many, text_columns=["t"], label_column="l")
    profile = check_file(many).profiles["l"]
    assert (profile.distinct, profile.many_line, profile.fraction) == (101, PROFILE_ROWS + 5 + 99 + 1, None)
