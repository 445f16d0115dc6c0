"""Library.reader(): a handle for another thread that answers while the library is busy,
with the same results, the library's models and its default model."""

from __future__ import annotations

import threading

from clipsearch import Library
from tests.helpers import draw_photos


def test_a_reader_answers_while_the_library_is_busy(tmp_path):
    draw_photos(tmp_path / "photos", per_pair=1, seed=5)
    with Library(tmp_path / "lib", model="shapes-tiny") as lib:
        lib.index([tmp_path / "photos"])
        want = [(h.file_id, h.score) for h in lib.query("a red circle", limit=5)]
        reader = lib.reader()
        got: list = []
        with lib._lock:  # a long call (an index run) holds the library
            t = threading.Thread(target=lambda: got.append(reader.query("a red circle",
                                                                        limit=5)))
            t.start()
            t.join(timeout=60)
            assert not t.is_alive(), "the reader waited for the library's lock"
        assert [(h.file_id, h.score) for h in got[0]] == want
        assert reader.file_info(want[0][0])["path"].endswith("red-circle-0.png")
        assert reader._text_embedders is lib._text_embedders  # the model is loaded once
        reader.close()
        assert lib.query("a red circle", limit=1)[0].file_id == want[0][0]  # still open


def test_a_reader_sees_commits_and_follows_the_default_model(tmp_path):
    draw_photos(tmp_path / "photos", per_pair=1, seed=5)
    with Library(tmp_path / "lib", model="shapes-tiny") as lib, lib.reader() as reader:
        assert reader.query("a red circle") == []  # nothing indexed yet
        lib.index([tmp_path / "photos"])
        assert reader.default_model == lib.default_model
        assert reader.query("a red circle", limit=1)[0].path.endswith("red-circle-0.png")
        draw_photos(tmp_path / "photos" / "more", per_pair=1, seed=6)
        lib.index()
        assert reader.status().indexed == 48
