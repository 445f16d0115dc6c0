"""What an app embedding `clipsearch` relies on: every exception it can meet has a name in
`clipsearch`, every public method says what it does with an example, and one Library can be
shared by a web server's threads (issue 19.14, 19.15)."""

from __future__ import annotations

import builtins
import errno
import inspect
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

import clipsearch
from clipsearch import Library
from store import WriterLock
from tests.helpers import PAIRS, draw_photos, pair_of


def _public_callables() -> dict[str, object]:
    found = {}
    for name, member in inspect.getmembers(Library):
        if name.startswith("_") and name != "__init__":
            continue
        found[f"Library.{name}"] = member.fget if isinstance(member, property) else member
    found.update({name: getattr(clipsearch, name)
                  for name in ("classify", "check_model", "default_library_dir")})
    found.update({f"ModelStore.{name}": member  # the facade behind `clipsearch models`
                  for name, member in inspect.getmembers(clipsearch.ModelStore)
                  if not name.startswith("_")})
    return found


def test_every_public_method_has_a_docstring_with_an_example():
    for name, func in _public_callables().items():
        doc = inspect.getdoc(func) or ""
        assert doc and not doc.startswith("#"), name
        if name != "Library.__init__":  # the class docstring has the constructor's example
            examples = doc.split("\n\n")[1:]  # after the summary: a paragraph with a call
            assert any(re.search(r"\w\(|lib\.\w", p) for p in examples), f"{name}: no example"


def test_every_documented_exception_can_be_caught_by_a_clipsearch_name():
    exported = {n for n in clipsearch.__all__ if n.endswith("Error")}
    for name, func in _public_callables().items():
        for error in re.findall(r"\b([A-Z]\w*Error)\b", inspect.getdoc(func) or ""):
            assert error in exported or isinstance(getattr(builtins, error, None), type), \
                (name, error)
    assert {"MissingModelError", "ModelLoadError", "ModelNotIndexedError", "LibraryBusyError",
            "DecodeError", "CatalogError", "StorageError"} <= exported
    assert all(issubclass(getattr(clipsearch, n), Exception) for n in exported)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    base = tmp_path_factory.mktemp("contract")
    draw_photos(base / "p", per_pair=1, seed=31)
    with Library(base / "lib", model="shapes-tiny") as lib:
        lib.index([base / "p"])
    return base


def test_the_errors_an_app_meets_carry_clipsearch_names(library, tmp_path):
    """`query_image("/nope.jpg")` raised clip_core.pixels.decode.DecodeError ("file no longer
    exists") after loading the model."""
    missing = tmp_path / "nope.jpg"
    (tmp_path / "notes.jpg").write_text("not a picture")
    with Library(library / "lib") as lib:
        for call in (lambda: lib.query_image(missing), lambda: lib.classify(missing, ["a"]),
                     lambda: clipsearch.classify(missing, ["a"], model="shapes-tiny")):
            with pytest.raises(FileNotFoundError) as err:
                call()
            assert err.value.errno == errno.ENOENT and err.value.filename == str(missing)
        assert not lib._encoders  # refused before any model loaded
        with pytest.raises(IsADirectoryError):
            lib.query_image(tmp_path)
        with pytest.raises(clipsearch.DecodeError, match="notes.jpg"):
            lib.query_image(tmp_path / "notes.jpg")
        with pytest.raises(clipsearch.ModelNotIndexedError):
            lib.query("a cat", model="RN50", pretrained="openai")
        lock = WriterLock(library / "lib" / "index.lock")
        lock.acquire()
        try:
            with pytest.raises(clipsearch.LibraryBusyError):
                lib.remove_root(library / "p")
        finally:
            lock.release()
    with pytest.raises(clipsearch.ModelLoadError):
        clipsearch.check_model("ViT-B-23")
    with pytest.raises(clipsearch.MissingModelError):
        clipsearch.check_model("ViT-B-32", "openai")
    with Library(library / "lib", readonly=True) as lib, \
            pytest.raises(clipsearch.StorageError):
        lib.index()


def test_one_library_shared_by_eight_threads(library, tmp_path):
    """A web server shares one Library between its workers: queries, image queries,
    classify and status from 8 threads at once all return what they return alone, while
    another thread adds and removes a root. (Unguarded, the shared SQLite connection failed
    with "cannot start a transaction within a transaction".)"""
    photos = sorted(p for p in (library / "p").iterdir())
    labels = ["a red circle", "a blue star", "a green triangle"]
    with Library(library / "lib") as lib:
        expected = {f"a {c} {s}": [r.path for r in lib.query(f"a {c} {s}", limit=5)]
                    for c, s in PAIRS}
        similar = {p: [r.path for r in lib.query_image(p, limit=3)] for p in photos[:4]}
        classified = [s.label for s in lib.classify(photos[0], labels)]
        status = _counts(lib.status())
    queries = sorted(expected)
    failures: list[BaseException] = []
    with Library(library / "lib") as lib:  # fresh: the models load under the threads too
        start = threading.Barrier(8)

        def work(worker: int) -> None:
            start.wait()
            for step in range(12):
                query = queries[(worker * 5 + step) % len(queries)]
                hits = lib.query(query, limit=5)
                assert [h.path for h in hits] == expected[query], query
                assert pair_of(hits[0].path) == tuple(query.split()[1:])
                photo = photos[(worker + step) % 4]
                if step % 3 == 0:
                    assert [r.path for r in lib.query_image(photo, limit=3)] == similar[photo]
                elif step % 3 == 1:
                    assert [s.label for s in lib.classify(photos[0], labels)] == classified
                else:
                    assert _counts(lib.status()) == status

        done = threading.Event()

        def add_and_remove_a_root() -> None:
            while not done.is_set():
                lib.add_root(tmp_path)
                lib.remove_root(tmp_path)
                time.sleep(0.005)  # let the workers in: a lock is not fair

        writer = threading.Thread(target=_guard, args=(add_and_remove_a_root, failures))
        writer.start()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda w: _guard(lambda: work(w), failures), range(8)))
        done.set()
        writer.join()
    assert not failures, failures[:3]


def _counts(status) -> tuple:
    return status.files, status.indexed, status.errors, status.models


def _guard(func: Callable[[], None], failures: list[BaseException]) -> None:
    try:
        func()
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        failures.append(exc)
