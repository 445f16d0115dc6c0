"""The cache's JSON records are replaced whole, and a failed write leaves nothing behind."""

import json
import os

import pytest

from clip_core.atomic_json import write_json


def test_a_record_is_replaced_whole_and_no_temporary_file_stays(tmp_path):
    path = tmp_path / "record.json"
    write_json(path, {"runner": "blocks"})
    write_json(path, {"runner": "unsigned", "seconds": {"blocks": 0.5}}, indent=1)
    assert json.loads(path.read_text()) == {"runner": "unsigned", "seconds": {"blocks": 0.5}}
    assert os.listdir(tmp_path) == ["record.json"]


def test_a_failed_write_keeps_the_old_record_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "record.json"
    write_json(path, {"runner": "blocks"})
    with pytest.raises(TypeError):  # not JSON: fails before anything is written
        write_json(path, {"runner": object()})
    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError):  # the rename fails: a folder stands where the file would go
        write_json(tmp_path / "taken", {"a": 1})
    assert json.loads(path.read_text()) == {"runner": "blocks"}
    assert sorted(os.listdir(tmp_path)) == ["record.json", "taken"]
