"""A model's id follows its weight files: remembered per process, never stale."""

from __future__ import annotations

import os

from clip_core.models.ref import one_look, parse_model


def test_model_id_changes_when_weights_change_in_place_and_only_then(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"a" * (3 << 20))
    ref = parse_model("ViT-B-32", str(weights))
    first = ref.model_id
    assert ref.model_id == first  # read again: the remembered answer
    st = weights.stat()
    weights.write_bytes(b"b" * (3 << 20))  # same size, new bytes
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert ref.model_id != first
    weights.write_bytes(b"a" * (3 << 20))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000))
    assert ref.model_id == first  # the same bytes: the same id


def test_one_query_looks_at_the_files_once_and_the_next_looks_again(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"a" * (3 << 20))
    st = weights.stat()
    with one_look():
        ref = parse_model("ViT-B-32", str(weights))
        first = ref.model_id
        assert parse_model("ViT-B-32", str(weights)) is ref  # parsed once
        weights.write_bytes(b"b" * (3 << 20))  # changed during the query
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        with one_look():  # a nested call shares the outer look
            assert ref.model_id == first
        assert ref.model_id == first
    assert ref.model_id != first  # the next query sees the new bytes
