"""Library.reader(): a second handle on a library for queries from another thread.

A `Library` answers one call at a time: its SQLite connection, its vector index cache and
its caches are shared state behind one lock. A server answering several clients at once
gives each worker a reader instead: its own catalog connection and index cache and lock,
and the parent's loaded models (an ONNX Runtime session and the numpy towers answer
concurrent calls), so N readers search N queries at a time for the cost of one
connection each. The exact index is memory-mapped from its file, so readers of an
up-to-date library share its pages; an approximate one (store/ann_index.py, from ~200k
vectors) is held once per reader.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from search import Searcher
from store import Catalog

from .layout import CATALOG_NAME, VECTORS_DIR

if TYPE_CHECKING:
    from clip_core.models.ref import ModelRef

from .api import Library


class Reader(Library):
    """A view on `parent`: its own connection, searcher and lock; the parent's models and
    default model (a default set through either is the other's too)."""

    def __init__(self, parent: Library):  # not Library.__init__: nothing is loaded anew
        self.__dict__.update(parent.__dict__)
        self._parent = parent
        self._lock = threading.RLock()
        self.catalog = Catalog(parent.path / CATALOG_NAME, readonly=parent.readonly)
        self.searcher = Searcher(self.catalog, parent.path / VECTORS_DIR)

    # The parent's state, not a copy taken at creation: a default set after an index run,
    # a model loaded by one reader, the parent closing.
    @property  # type: ignore[override]
    def _default(self) -> ModelRef:
        return self._parent._default

    @_default.setter
    def _default(self, ref: ModelRef) -> None:
        self._parent._default = ref

    @property  # type: ignore[override]
    def _encoders(self) -> dict:
        return self._parent._encoders

    @_encoders.setter
    def _encoders(self, value: dict) -> None:
        self._parent._encoders = value

    @property  # type: ignore[override]
    def _closed(self) -> bool:
        return self._parent._closed

    @_closed.setter
    def _closed(self, value: bool) -> None:
        self._parent._closed = value

    def reader(self) -> Library:
        return self._parent.reader()

    def close(self) -> None:
        """Close this reader's connection; the models stay with the parent."""
        with self._lock:
            self.catalog.close()
