import json

import pytest

from ksir.records import iter_record_files, read_record, write_atomic, write_record


def test_record_roundtrip_nan_becomes_null(tmp_path):
    p = write_record(tmp_path, {"run_key": "q-1", "status": "done", "metrics": {"val_loss": float("nan"), "x": 1.5}})
    rec = read_record(p)
    assert rec["schema"] == 2 and rec["metrics"] == {"val_loss": None, "x": 1.5}
    json.loads(p.read_text())  # strict JSON


def test_corrupt_and_foreign_files_raise_with_path(tmp_path):
    (tmp_path / "a.json").write_text('{"run_key": "a", "sch')
    (tmp_path / "b.json").write_text('{"hello": 1}')
    for p in iter_record_files(tmp_path):
        with pytest.raises(ValueError, match=p.name):
            read_record(p)


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "r.json"
    write_atomic(target, "old")

    with pytest.raises(TypeError):
        write_atomic(target, 123)  # type: ignore[arg-type]  # fails inside the write
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target], "no temp file left behind"
