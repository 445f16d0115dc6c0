"""A model's id follows its weight files: remembered per process, never stale."""

from __future__ import annotations

import os

from clip_core.models.ref import parse_model


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
