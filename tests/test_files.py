"""supernet.files: write-then-rename leaves either the old content or the new, never a part."""

from __future__ import annotations

import pytest

from supernet.files import atomic_path, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "front.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert target.read_text() == '{\n  "x": 2\n}'
    assert [p.name for p in target.parent.iterdir()] == ["front.json"]


def test_a_failed_write_keeps_the_old_content(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_a_folder_replaces_a_folder(tmp_path):
    target = tmp_path / "model"
    for content in ("one", "two"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text(content)
    assert (target / "weights").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_records_are_written_0600_whatever_the_umask(tmp_path):
    """A world-readable umask (0o022, the usual default) still gives the records 0600, also when one replaces a
    file that was readable by all."""
    import os
    import stat

    target = tmp_path / "search.json"
    target.write_text("{}")
    target.chmod(0o644)
    previous = os.umask(0o022)
    try:
        atomic_write_json(target, {"x": 1})
        atomic_write_text(tmp_path / "new.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o600
