"""indexer.stages.StreamingWriter: each image to an encoder lane as soon as it is added,
batches committed in file order, the vectors BatchWriter would store, and a stop that keeps
every vector the lanes made (the stage alone, then inside an index run)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clip_core.compiled.onnx_encoder import OnnxImageEncoder
from clip_core.encoders import LaneEncoder
from clip_core.models.ref import parse_model
from clip_core.torch_backend.encoder import ClipEncoder
from clipsearch import Library
from indexer import IndexSettings
from indexer.crawl import Candidate
from indexer.stages import BatchWriter, Loaded, StreamingWriter, load_one
from tests.helpers import draw_photos


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    draw_photos(folder, per_pair=1, seed=31, size=64)  # 24 photos
    return folder


def _loaded(lib: Library, folder: Path, root_id: int, known: set[str]) -> list[Loaded]:
    spec = lib.image_encoder(lib.default_model).preprocess
    out = []
    for path in sorted(folder.iterdir()):
        st = path.stat()
        cand = Candidate(str(path), root_id, st.st_size, st.st_mtime_ns)
        out.append(load_one(cand, spec, known.__contains__, min_side=None))
    return out


def _stored(lib: Library) -> dict[str, np.ndarray]:
    ids, vectors = lib.catalog.vectors(lib.default_model.model_id)
    rows = lib.catalog.file_rows(ids.tolist())
    return {rows[i]["path"]: v for i, v in zip(ids.tolist(), vectors, strict=True)}


class _Lanes:
    """The real compiled encoder with its single-image calls counted; `on_call(n)` runs as
    the n-th call starts. A LaneEncoder, as the real one."""

    def __init__(self, real: LaneEncoder, on_call=lambda n: None, delay_s: float = 0.0):
        self.real, self.on_call, self.delay_s = real, on_call, delay_s
        self.model_id, self.preprocess = real.model_id, real.preprocess
        self.embed_dim, self.micro_batch, self.lanes = real.embed_dim, real.micro_batch, 2
        self.started = 0
        self.finished: list[int] = []
        self._lock = threading.Lock()

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        with self._lock:
            self.started += 1
            n = self.started
        self.on_call(n)
        time.sleep(self.delay_s)
        out = self.real.encode_pixels(pixels)
        with self._lock:
            self.finished.append(len(pixels))
        return out

    def close(self) -> None:
        pass


def test_the_compiled_encoder_streams_its_images_to_lanes(tmp_path, photos):
    # int8 asked for: the compiled tower on any CPU (the automatic choice may be torch's
    # where int8 is neither passing nor faster; torch's encoder is no LaneEncoder).
    with Library(tmp_path / "lib", model="shapes-tiny", precision="int8") as lib:
        enc = lib.image_encoder(lib.default_model)
        assert isinstance(enc, OnnxImageEncoder) and isinstance(enc, LaneEncoder)
        assert enc.lanes == enc.threads >= 1
    torch_encoder = ClipEncoder.load(parse_model("shapes-tiny"), towers=frozenset({"image"}))
    assert not isinstance(torch_encoder, LaneEncoder)  # batches: BatchWriter's micro-batches


def test_batches_are_committed_in_order_with_the_vectors_batch_writer_stores(tmp_path, photos):
    stored = []
    for name in ("batch", "stream"):
        with Library(tmp_path / name, model="shapes-tiny") as lib:
            root = lib.catalog.add_root(str(photos))
            enc = _Lanes(lib.image_encoder(lib.default_model))
            loaded = _loaded(lib, photos, root, set())
            model_id = lib.default_model.model_id
            if name == "batch":
                writer = BatchWriter(lib.catalog, enc.encode_pixels, model_id, batch_size=5)
            else:
                writer = StreamingWriter(lib.catalog, enc.encode_pixels, model_id,
                                         batch_size=5, lanes=2)
            commits = [[r.path for r, _ in writer.add(item)] for item in loaded]
            commits.append([r.path for r, _ in writer.flush()])
            writer.close()
            committed = [path for batch in commits for path in batch]
            assert committed == [item.cand.path for item in loaded]  # file order, all of them
            sizes = [len(batch) for batch in commits if batch]
            if name == "stream":
                # Each image alone, as soon as it came; a batch is written once the next one
                # is in the lanes too (two batches in hand), the rest at the flush.
                assert enc.finished == [1] * 24
                assert sizes == [5, 5, 5, 9] and commits[9] == committed[:5]
            stored.append(_stored(lib))
    batch, stream = stored
    assert batch.keys() == stream.keys() and len(batch) == 24
    assert all(np.array_equal(batch[p], stream[p]) for p in batch)


def test_files_needing_no_vector_are_committed_in_their_batch(tmp_path, photos):
    with Library(tmp_path / "lib", model="shapes-tiny") as lib:
        root = lib.catalog.add_root(str(photos))
        enc = _Lanes(lib.image_encoder(lib.default_model))
        first = _loaded(lib, photos, root, set())
        known = {str(item.record.content_hash) for item in first[::2]}
        loaded = _loaded(lib, photos, root, known)  # every other file's vector is "stored"
        writer = StreamingWriter(lib.catalog, enc.encode_pixels, lib.default_model.model_id,
                                 batch_size=4, lanes=2)
        done = [pair for item in loaded for pair in writer.add(item)] + writer.flush()
        writer.close()
        assert [r.path for r, _ in done] == [item.cand.path for item in loaded]
        assert [newly for _, newly in done] == [i % 2 == 1 for i in range(24)]
        assert enc.started == 12


def test_a_stop_keeps_every_vector_the_lanes_made_and_starts_no_more(tmp_path, photos):
    stop = threading.Event()
    with Library(tmp_path / "lib", model="shapes-tiny") as lib:
        root = lib.catalog.add_root(str(photos))
        enc = _Lanes(lib.image_encoder(lib.default_model),
                     on_call=lambda n: stop.set() if n == 1 else None, delay_s=0.05)
        writer = StreamingWriter(lib.catalog, enc.encode_pixels, lib.default_model.model_id,
                                 batch_size=8, lanes=2, should_stop=stop.is_set, chunk=4)
        loaded = _loaded(lib, photos, root, set())
        assert [pair for item in loaded[:12] for pair in writer.add(item)] == []
        time.sleep(0.3)  # the run's thread busy elsewhere: the lanes alone see the stop
        done = writer.flush()  # the lanes' images finish, none starts anew
        writer.close()
        encoded = len(enc.finished)
        # Call 1, and a 2nd only if it began alongside (the other lane); none after the stop
        # in the 0.3 s (six more calls' time) before the writer looked.
        assert stop.is_set() and 1 <= encoded <= 2 and encoded == enc.started
        assert all(newly for _, newly in done)
        assert len(done) == encoded == len(_stored(lib))
        assert lib.status().indexed == encoded


def test_an_encoder_error_reaches_the_run_and_the_lanes_stop(tmp_path, photos):
    def fail(n: int) -> None:
        if n == 2:
            raise RuntimeError("the tower broke")

    with Library(tmp_path / "lib", model="shapes-tiny") as lib:
        root = lib.catalog.add_root(str(photos))
        enc = _Lanes(lib.image_encoder(lib.default_model), on_call=fail)
        writer = StreamingWriter(lib.catalog, enc.encode_pixels, lib.default_model.model_id,
                                 batch_size=2, lanes=2)
        with pytest.raises(RuntimeError, match="the tower broke"):
            for item in _loaded(lib, photos, root, set()):
                writer.add(item)
            writer.flush()
        writer.close()
        assert lib.status().indexed == 0


def test_an_index_run_stopped_mid_way_keeps_what_the_lanes_encoded(tmp_path, photos):
    """The API's cancel event (Ctrl-C's path) in a run on the streaming writer: every image a
    lane encoded is committed, the next run does exactly the rest."""
    cancel = threading.Event()
    with Library(tmp_path / "lib", model="shapes-tiny") as lib:
        ref = lib.default_model
        real = lib.image_encoder(ref)
        enc = _Lanes(real, on_call=lambda n: cancel.set() if n == 5 else None, delay_s=0.02)
        lib._encoders[(ref.model_id, frozenset({"image"}))] = enc
        report = lib.index([photos], settings=IndexSettings(batch_size=4, cancel=cancel))
        assert report.interrupted
        encoded = len(enc.finished)
        assert 5 <= encoded < 24 and report.indexed == report.committed == encoded
        assert lib.status().indexed == encoded
        lib._encoders[(ref.model_id, frozenset({"image"}))] = real
        again = lib.index()
        assert again.indexed == 24 - encoded and not again.interrupted


def test_images_go_to_the_lanes_a_chunk_at_a_time(tmp_path, photos):
    """Where decoding is the slower stage the lanes run in bursts of `chunk` images, not one
    image each time a decoder hands one over; a flush sends what is held at once."""
    with Library(tmp_path / "lib", model="shapes-tiny") as lib:
        root = lib.catalog.add_root(str(photos))
        enc = _Lanes(lib.image_encoder(lib.default_model))
        writer = StreamingWriter(lib.catalog, enc.encode_pixels, lib.default_model.model_id,
                                 batch_size=32, lanes=2, chunk=4)
        loaded = _loaded(lib, photos, root, set())
        for item in loaded[:3]:
            writer.add(item)
        time.sleep(0.2)
        assert enc.started == 0  # three held
        writer.add(loaded[3])
        deadline = time.monotonic() + 10
        while len(enc.finished) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert enc.finished == [1] * 4
        for item in loaded[4:6]:
            writer.add(item)
        assert len(writer.flush()) == 6 and enc.finished == [1] * 6
        writer.close()
