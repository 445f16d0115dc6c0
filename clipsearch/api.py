"""The public Python API. Everything the CLI does goes through `Library`.

    from clipsearch import Library
    with Library.open("~/.local/share/clipsearch/library", model="shapes-tiny") as lib:
        lib.add_root("~/Photos")
        report = lib.index(progress=lambda p: print(p.done, p.total))
        for hit in lib.query("a cat on a sofa", limit=5):
            print(hit.score, hit.path)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clip_core.model_ref import ModelRef, parse_model
from indexer import IndexReport, IndexSettings, Progress, run_index
from search import LabelScore, SearchResult, Searcher
from store import Catalog, WriterLock

CATALOG_NAME = "catalog.db"
VECTORS_DIR = "vectors"
TEXT_TOWERS_DIR = "text-towers"
LOCK_NAME = "index.lock"


def default_library_dir() -> Path:
    env = os.environ.get("CLIPSEARCH_LIBRARY")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("clipsearch", appauthor=False)) / "library"


@dataclass
class LibraryStatus:
    path: str
    roots: list[str]
    files: int
    indexed: int
    errors: int
    default_model: dict
    models: dict[str, int]  # model id -> files with a vector
    size_bytes: int
    error_list: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Library:
    """A photo library: roots, a catalog, vectors per model. Not thread-safe; open one per
    thread (SQLite WAL lets readers work while an index run writes)."""

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        model: str | None = None,
        pretrained: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        models_dir: str | os.PathLike | None = None,
        readonly: bool | None = None,
    ):
        self.path = Path(path).expanduser() if path else default_library_dir()
        catalog_path = self.path / CATALOG_NAME
        if readonly is None:
            readonly = catalog_path.exists() and not os.access(self.path, os.W_OK)
        if readonly and not catalog_path.exists():
            raise FileNotFoundError(f"no clipsearch library at {self.path}")
        self.catalog = Catalog(catalog_path, readonly=readonly)
        self.readonly = readonly
        self.device = device
        self.precision = precision
        self.models_dir = Path(models_dir).expanduser() if models_dir else None
        self.searcher = Searcher(self.catalog, self.path / VECTORS_DIR)
        self._encoders: dict[tuple[str, frozenset[str]], object] = {}
        stored = self.catalog.get_meta("default_model")
        if model is not None:
            self._default = parse_model(model, pretrained)
            if not readonly and stored is None:
                self.set_default_model(model, pretrained)
        elif stored:
            spec = json.loads(stored)
            self._default = parse_model(spec["model"], spec.get("pretrained"))
        else:
            self._default = parse_model(None, None)

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, **kwargs) -> Library:
        return cls(path, **kwargs)

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._encoders.clear()
        self.catalog.close()

    # -- models --------------------------------------------------------------------------
    @property
    def default_model(self) -> ModelRef:
        return self._default

    def set_default_model(self, model: str, pretrained: str | None = None) -> ModelRef:
        ref = parse_model(model, pretrained)
        self.catalog.set_meta("default_model", json.dumps(ref.to_spec()))
        self._default = ref
        return ref

    def model_ref(self, model: str | None = None, pretrained: str | None = None) -> ModelRef:
        return self._default if model is None else parse_model(model, pretrained)

    def encoder(self, ref: ModelRef, towers: frozenset[str] = frozenset({"image", "text"})):
        """Load (once) the CLIP model for `ref`; raises MissingModelError when absent."""
        key = (ref.model_id, towers)
        for (model_id, have), enc in self._encoders.items():
            if model_id == ref.model_id and towers <= have:
                return enc
        from clip_core.encoder import ClipEncoder

        enc = ClipEncoder.load(ref, device=self.device, precision=self.precision, towers=towers,
                               models_dir=self.models_dir)
        self._encoders[key] = enc
        return enc

    def remove_model(self, model: str, pretrained: str | None = None) -> int:
        """Delete every vector made by a model; returns how many were removed."""
        ref = parse_model(model, pretrained)
        model_id = ref.model_id if ref.model_id in self.catalog.models() else model
        return self.catalog.remove_model(model_id)

    # -- roots ---------------------------------------------------------------------------
    @property
    def roots(self) -> list[str]:
        return list(self.catalog.roots().values())

    def add_root(self, path: str | os.PathLike) -> str:
        folder = _abspath(path)
        if not os.path.isdir(folder):
            raise NotADirectoryError(f"not a folder: {folder}")
        self.catalog.add_root(folder)
        return folder

    def remove_root(self, path: str | os.PathLike) -> int:
        return self.catalog.remove_root(_abspath(path))

    # -- indexing ------------------------------------------------------------------------
    def index(
        self,
        roots: Sequence[str | os.PathLike] | None = None,
        *,
        model: str | None = None,
        pretrained: str | None = None,
        settings: IndexSettings | None = None,
        progress: Callable[[Progress], None] | None = None,
        wait: float = 0.0,
    ) -> IndexReport:
        """Index the given roots (added first if new), or every root. Incremental."""
        ref = self.model_ref(model, pretrained)
        folders = [self.add_root(r) for r in roots] if roots else self.roots
        lock = WriterLock(self.path / LOCK_NAME)
        lock.acquire(wait=wait)
        try:
            root_ids = [self.catalog.root_id(f) for f in folders]

            def get_encoder():
                enc = self.encoder(ref, frozenset({"image"}))
                self.catalog.register_model(ref.model_id, ref.to_spec(), enc.embed_dim)
                return enc

            report = run_index(self.catalog, [i for i in root_ids if i is not None],
                               ref.model_id, get_encoder, settings, progress)
            if not report.interrupted and ref.model_id in self.catalog.models():
                dim = self.catalog.models()[ref.model_id]["embed_dim"]
                self.searcher.index_for(ref.model_id, dim)  # refresh the FAISS cache file
            return report
        finally:
            lock.release()

    # -- search --------------------------------------------------------------------------
    def embed_text(self, texts: Sequence[str], model: str | None = None) -> np.ndarray:
        return self.encoder(self.model_ref(model), frozenset({"text"})).encode_texts(list(texts))

    def query(
        self,
        text: str,
        *,
        limit: int = 10,
        within: str | os.PathLike | None = None,
        model: str | None = None,
        pretrained: str | None = None,
    ) -> list[SearchResult]:
        ref = self.model_ref(model, pretrained)
        vector = self.encoder(ref, frozenset({"text"})).encode_texts([text])[0]
        return self.searcher.search(ref.model_id, vector, limit, within)

    def query_image(
        self,
        image: str | os.PathLike,
        *,
        limit: int = 10,
        within: str | os.PathLike | None = None,
        model: str | None = None,
        pretrained: str | None = None,
        include_self: bool = False,
    ) -> list[SearchResult]:
        """Images similar to `image` (a file inside or outside the library)."""
        ref = self.model_ref(model, pretrained)
        vector = self._image_vector(Path(image), ref)
        own = self.catalog.file_id(_abspath(image))
        exclude = {own} if own is not None and not include_self else None
        return self.searcher.search(ref.model_id, vector, limit, within, exclude)

    def classify(
        self, image: str | os.PathLike, labels: Sequence[str], *, model: str | None = None,
        pretrained: str | None = None,
    ) -> list[LabelScore]:
        """CLIP zero-shot: probability of each label for one image, best first."""
        if not labels:
            raise ValueError("give at least one label")
        ref = self.model_ref(model, pretrained)
        enc = self.encoder(ref)
        image_vec = self._image_vector(Path(image), ref)
        text_vecs = enc.encode_texts(list(labels))
        sims = text_vecs @ image_vec
        logits = enc.logit_scale * sims
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        scored = [LabelScore(label, float(p), float(s))
                  for label, p, s in zip(labels, probs, sims, strict=True)]
        return sorted(scored, key=lambda x: -x.probability)

    def _image_vector(self, path: Path, ref: ModelRef) -> np.ndarray:
        from clip_core.images import decode_image
        from clip_core.preprocess import preprocess

        enc = self.encoder(ref, frozenset({"image"}))
        decoded = decode_image(path)
        return enc.encode_pixels(preprocess(decoded.image, enc.preprocess)[None])[0]

    # -- status --------------------------------------------------------------------------
    def status(self, *, errors: bool = False) -> LibraryStatus:
        counts = self.catalog.counts()
        size = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return LibraryStatus(
            path=str(self.path),
            roots=self.roots,
            files=sum(counts.values()),
            indexed=counts.get("ok", 0),
            errors=counts.get("error", 0),
            default_model={"id": self._default.model_id, **self._default.to_spec()},
            models=self.catalog.model_counts(),
            size_bytes=size,
            error_list=self.catalog.errors() if errors else [],
        )


def _abspath(path: str | os.PathLike) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(path)))
