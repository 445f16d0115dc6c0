"""The public Python API. Everything the CLI does goes through `Library`.

    from clipsearch import Library
    with Library.open("~/.local/share/clipsearch/library", model="shapes-tiny") as lib:
        lib.add_root("~/Photos")
        report = lib.index(progress=lambda p: print(p.done, p.total))
        for hit in lib.query("a cat on a sofa", limit=5):
            print(hit.score, hit.path)
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clip_core.encoders import ImageEncoder
from clip_core.models.files import ensure_local
from clip_core.models.ref import ModelRef, one_look, parse_model
from clip_core.text.file_check import sidecar
from clipsearch_errors import BadInputError, ModelError, UsageError
from indexer import IndexReport, IndexSettings, Progress, run_index
from indexer.ray_executor import require_ray
from indexer.shards import ShardImport
from search import LabelScore, Searcher, SearchResult, TextEmbedder
from search.classify import zero_shot
from search.duplicates import DEFAULT_THRESHOLD, DuplicateGroup, find_duplicates
from search.filters import Filters
from search.grading import (
    NEUTRAL_PROMPTS,
    SAMPLE_SIZE,
    Calibration,
    QueryResults,
    calibrate,
    load_bars,
    save_bars,
)
from search.query import Query, QuerySyntaxError  # noqa: F401  (the CLI imports them here)
from search.text_embedder import tower_path
from store import Catalog, CatalogDamagedError, StorageError, WriterLock, sweep_temp_files
from store.private import make_private_dir, tighten
from store.vector_index import index_path

from .layout import CATALOG_NAME, LOCK_NAME, TEXT_TOWERS_DIR, VECTORS_DIR

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from clip_core.compiled.cache import CompiledModel
    from clip_core.torch_backend.encoder import ClipEncoder

    from .doctor import DoctorReport

IMAGE_ONLY = frozenset({"image"})


def default_library_dir() -> Path:
    """Where a library lives when no path is given: CLIPSEARCH_LIBRARY, else the platform's
    user data folder.

        default_library_dir()  # -> PosixPath('/home/me/.local/share/clipsearch/library')
    """
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
    default_model: dict | None  # None: no model made vectors here yet
    models: dict[str, int]  # model id -> files with a vector
    size_bytes: int  # data_bytes + shared_bytes: everything under the library folder
    error_list: list[dict] = field(default_factory=list)
    data_bytes: int = 0  # the library's own files: catalog, vectors' caches
    shared_bytes: int = 0  # model files hard-linked with the compile cache (st_nlink > 1)
    unindexed: int = 0  # read fine, but no vector of any model (all removed): to index
    index_model: str = ""  # what `clipsearch index` without --model uses
    # model id -> its vector index: kind, count, exact, nlist/nprobe/recall_at_10 (docs/scale.md)
    vector_indexes: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class LibrarySettings:
    """How a `Library` opens its folder and which model and hardware it uses. Every field can
    also be given to `Library` by name, which overrides `settings`.

        settings = LibrarySettings(model="shapes-tiny", low_memory=True)
        with Library("~/photo-index", settings=settings) as lib:
            lib.query("a red circle")

    `model`, `pretrained`: the model used when a call names none (else the library's
    default; see `clipsearch index --model`). `device`: auto, cpu, cuda, ... `precision`:
    auto, fp32, bf16, fp16 (torch) or int8 (the compiled CPU image tower). `models_dir`: the
    model store (default: CLIPSEARCH_MODELS or the platform's user data folder). `readonly`:
    open for queries only; None decides by whether the folder is writable. `low_memory`: for
    one-shot processes (the CLI); a long-lived app leaves it off and gets faster text queries
    for ~150 MB more resident memory (ViT-B-32). `cache_dir`: where compiled models go
    (default: CLIPSEARCH_CACHE or the platform's user cache folder). `create`: False raises
    FileNotFoundError instead of making a new, empty library (for commands that only read
    one: a mistyped path must not pass silently)."""

    model: str | None = None
    pretrained: str | None = None
    device: str = "auto"
    precision: str = "auto"
    models_dir: str | os.PathLike | None = None
    readonly: bool | None = None
    low_memory: bool = False
    cache_dir: str | os.PathLike | None = None
    create: bool = True


class ModelNotIndexedError(BadInputError, LookupError):
    """The library holds no vectors made by the model a query asked for. `available`: the
    model ids it holds; `suggestions`: those close to what was asked (a typo's fix)."""

    def __init__(self, message: str, *, asked: str | None = None,
                 available: Sequence[str] = (), suggestions: Sequence[str] = ()):
        super().__init__(message)
        self.asked = asked
        self.available = list(available)
        self.suggestions = list(suggestions)


def _not_indexed(asked: str, model_id: str, known: dict[str, dict],
                 consequence: str) -> ModelNotIndexedError:
    """The error for a model without vectors here, with "did you mean" among the library's
    models, compared by id and by name (`shapes-tny` -> shapes-tiny@1a2b3c)."""
    import difflib

    by_name: dict[str, str] = {}
    for known_id, info in known.items():
        spec_model = str(info["spec"].get("model"))  # ViT-B-32, local-dir:/models/shapes-tiny
        for name in (known_id, known_id.split("@")[0], spec_model, Path(spec_model).name):
            by_name.setdefault(name, known_id)
    close = difflib.get_close_matches(asked, list(by_name), n=3, cutoff=0.6)
    close += difflib.get_close_matches(model_id, list(by_name), n=3, cutoff=0.6)
    suggestions = list(dict.fromkeys(by_name[c] for c in close))
    hint = f" Did you mean {' or '.join(suggestions)}?" if suggestions else ""
    return ModelNotIndexedError(
        f"this library has no vectors made by {model_id}.{hint} It holds: "
        f"{', '.join(known) or 'none'}. {consequence}",
        asked=asked, available=list(known), suggestions=suggestions)


def _serialized(method: Callable) -> Callable:
    """One call at a time per Library: its catalog connection, encoder caches and FAISS cache
    are shared state. Reentrant, so a method may call another."""
    @functools.wraps(method)
    def wrapper(self: Library, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


def _looks_once(method: Callable) -> Callable:
    """For queries: each model's files are looked at once per call (ref.one_look)."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with one_look():
            return method(*args, **kwargs)

    return wrapper


class Library:
    """A photo library: roots, a catalog, vectors per model.

    Safe to share between threads (a web server's workers): calls run one at a time, so
    each waits for the one in progress (`reader()` gives a thread its own handle that
    answers at the same time). An `index()` run holds the library until it ends;
    to answer queries meanwhile, index through a second `Library` on the same folder (SQLite
    WAL lets its readers see each committed batch).

        with Library.open("/data/photo-index", model="shapes-tiny") as lib:
            lib.index(["/data/photos"])
            lib.query("a red circle", limit=5)
    """

    def __init__(self, path: str | os.PathLike | None = None, *,
                 settings: LibrarySettings | None = None, **options: Any):
        """`settings`: a LibrarySettings (model, device, precision, model store, cache,
        read-only, low memory, create), which says what each option does. `options`: any of
        its fields by name, `Library(path, model="shapes-tiny")`, over `settings`; a name
        that is no field raises TypeError."""
        settings = dataclasses.replace(settings or LibrarySettings(), **options)
        self.settings = settings
        model, pretrained, readonly = settings.model, settings.pretrained, settings.readonly
        self._lock = threading.RLock()  # see _serialized
        self.low_memory = settings.low_memory
        self.path = Path(path).expanduser().absolute() if path else default_library_dir()
        catalog_path = self.path / CATALOG_NAME
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"{self.path} is a file, not a library folder")
        _refuse_lost_catalog(self.path, catalog_path)
        if readonly is None:
            readonly = catalog_path.exists() and not os.access(self.path, os.W_OK)
        if (readonly or not settings.create) and not catalog_path.exists():
            raise FileNotFoundError(f"no clipsearch library at {self.path} (`clipsearch index "
                                    f"FOLDER --library {self.path}` makes one)")
        if not readonly and settings.create:
            make_private_dir(self.path)  # 0700 from the start: paths of someone's photos
        self.catalog = Catalog(catalog_path, readonly=readonly)
        self.readonly = readonly
        self.device = settings.device
        self.precision = settings.precision
        models_dir, cache_dir = settings.models_dir, settings.cache_dir
        self.models_dir = Path(models_dir).expanduser() if models_dir else None
        self.cache_dir = Path(cache_dir).expanduser() / "compiled" if cache_dir else None
        self.searcher = Searcher(self.catalog, self.path / VECTORS_DIR,
                                 int8_scan=_int8_scan_mode(self.low_memory))
        self._encoders: dict[tuple[str, frozenset[str]], ImageEncoder] = {}
        # Models load in the indexer's background thread: close() may run meanwhile.
        self._encoders_lock = threading.Lock()
        self._closed = False
        self._text_embedders: dict[str, TextEmbedder] = {}
        self._calibrations: dict[tuple[str, int], Calibration] = {}  # see calibration()
        stored = self.catalog.get_meta("default_model")
        self._model_named = model is not None
        if model is not None:
            # Stored as the library's default only once it loads for an index run (index()):
            # a typo or a model that is not on this machine must not stick.
            self._default = parse_model(model, pretrained)
        else:
            self._default = _ref_of(json.loads(stored) if stored else self._oldest_model())

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, **kwargs) -> Library:
        """Open (or, unless `create=False`, make) the library at `path`; the keyword
        arguments are the constructor's (`settings=LibrarySettings(...)` or its fields).
        Raises FileNotFoundError (`create=False` and no library there), NotADirectoryError
        (a file at `path`), CatalogError.

            lib = Library.open("~/photo-index", model="ViT-B-32", pretrained="openai")
        """
        return cls(path, **kwargs)

    @staticmethod
    def doctor(path: str | os.PathLike | None = None, *, repair: bool = False,
               wait: float = 0.0) -> DoctorReport:
        """Check a library's files (its catalog may be too damaged to open one): SQLite's
        integrity check and every text tower's checksum. `repair`: salvage a damaged catalog
        (the damaged file is kept beside it as a backup), drop derived files made from it.

            report = Library.doctor("~/lib", repair=True)
            print(report.healthy, report.notes)
        """
        from .doctor import run_doctor

        folder = Path(path).expanduser().absolute() if path else default_library_dir()
        return run_doctor(folder, repair=repair, wait=wait)

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @_serialized
    def close(self) -> None:
        """Free the loaded models and close the catalog (`with Library(...)` does it).

            lib.close()
        """
        with self._encoders_lock:
            self._closed = True
            encoders = list(self._encoders.values())
            self._encoders.clear()
        for enc in encoders:
            enc.close()
        self.catalog.close()

    def reader(self) -> Library:
        """Another handle on this library for queries from another thread, answered at the
        same time as this one's calls: its own catalog connection, vector index cache and
        lock, this library's loaded models and default model (Reader, below). Close
        it (or use `with`) before this library; closing it keeps the models.

            with lib.reader() as r:  # in a worker thread
                r.query("a dog")
        """
        if "_readers_share" not in self.__dict__:  # before the first reader copies this
            self._readers_share = _ReadersShare()
        return Reader(self)

    def _keep(self, key: tuple[str, frozenset[str]], enc: ImageEncoder) -> None:
        """Remember a loaded encoder (replacing any other entry of the same object)."""
        with self._encoders_lock:
            if self._closed:  # loaded by a thread that outlived close(): free it now
                enc.close()
                return
            self._encoders = {k: v for k, v in self._encoders.items() if v is not enc}
            self._encoders[key] = enc

    # -- models --------------------------------------------------------------------------
    @property
    def default_model(self) -> ModelRef:
        """The model used when a call gives none.

            lib.default_model.model_id  # -> 'ViT-B-32/laion2b_s34b_b79k'
        """
        return self._default

    @_serialized
    def set_default_model(self, model: str, pretrained: str | None = None) -> ModelRef:
        """Make a model this library holds vectors of (a --model spec or a model id from
        status) the default. Raises ModelNotIndexedError for any other: as the default it
        would only make every plain query fail.

            lib.set_default_model("ViT-B-32", "openai")
        """
        ref = self.model_ref(model, pretrained)
        known = self.catalog.models()
        if ref.model_id not in known:
            raise _not_indexed(model, ref.model_id, known,
                               "It cannot be the default before it is indexed.")
        self.catalog.set_meta("default_model", json.dumps(ref.to_spec()))
        self._default = ref
        return ref

    @_serialized
    def model_ref(self, model: str | None = None, pretrained: str | None = None) -> ModelRef:
        """`model` as a ref: None is the default; a model id this library holds vectors of
        (as `status` lists them) stands for the spec it was indexed with.

            lib.model_ref("shapes-tiny").model_id  # -> 'shapes-tiny@95225ff984'
        """
        if model is None:
            return self._default
        if pretrained is None:
            stored = self.catalog.models().get(model)
            if stored is not None:
                return _ref_of(stored["spec"])
        return parse_model(model, pretrained)

    def encoder(self, ref: ModelRef,
                towers: frozenset[str] = frozenset({"image", "text"})) -> ClipEncoder:
        """Load (once) the CLIP model for `ref` (torch). Raises MissingModelError when its
        files are absent, ModelLoadError when they cannot be used.

            lib.encoder(lib.default_model).encode_texts(["a dog"])
        """
        loaded = self._loaded_encoder(ref, towers)
        if loaded is not None:
            return loaded
        from clip_core.torch_backend.encoder import ClipEncoder

        # int8 exists only as the compiled image tower; torch gets its own best precision.
        precision = "auto" if self.precision == "int8" else self.precision
        if towers == IMAGE_ONLY:  # a plain ViT's file runs without open_clip (~0.3 GB less)
            from clip_core.compiled.vit_torch import image_encoder

            enc = image_encoder(ref, device=self.device, precision=precision,
                                models_dir=self.models_dir)
        else:
            enc = ClipEncoder.load(ref, device=self.device, precision=precision,
                                   towers=towers, models_dir=self.models_dir)
        self._keep((ref.model_id, towers), enc)
        return enc

    def image_encoder(self, ref: ModelRef) -> ImageEncoder:
        """The fastest image encoder for `ref` here, loaded once; also makes sure the
        library holds the model's text tower for torch-free queries.

        On the CPU that is the model compiled for onnxruntime (clip_core.compiled.cache: compiled on
        first use, then loaded without torch) when it passed its agreement and speed checks,
        else torch. Raises MissingModelError, ModelLoadError.

            lib.image_encoder(lib.default_model).encode_pixels(pixels)
        """
        enc = self._loaded_encoder(ref, IMAGE_ONLY)
        if enc is not None:
            return enc
        from clip_core.compiled.load import load_compiled

        embedder = self._text_embedder(ref)
        with ThreadPoolExecutor(1, thread_name_prefix="clipsearch-text-tower") as side:
            adopting: list[Future[None]] = []

            def adopt_meanwhile(compiled: CompiledModel) -> None:
                # Checking the text tower's checksum before linking it (ViT-B-32: 250 MB,
                # ~0.25 s) runs while onnxruntime builds the image tower's session (~0.15 s):
                # a new library's index run starts encoding that much sooner.
                if compiled.text_tower is not None and embedder.writable:
                    adopting.append(side.submit(embedder.adopt, compiled.text_tower))

            found = load_compiled(ref, device=self.device, precision=self.precision,
                                  models_dir=self.models_dir, cache_dir=self.cache_dir,
                                  on_found=adopt_meanwhile)
            for done in adopting:
                done.result()  # its own errors (OSError, a damaged file) are handled there
        if found is None:  # a GPU, a torch precision, or no onnxruntime
            return self._torch_image_encoder(ref, embedder)
        compiled, enc = found
        if compiled.text_tower is not None:
            embedder.adopt(compiled.text_tower)
            if embedder.writable and not embedder.cached:  # it was damaged: export anew
                embedder.export_from(self.encoder(ref, frozenset({"text"})))
        self._keep((ref.model_id, IMAGE_ONLY), enc)
        return enc

    def _torch_image_encoder(self, ref: ModelRef, embedder: TextEmbedder) -> ClipEncoder:
        """While the whole model is loaded anyway, cache its text tower for torch-free
        queries, then keep only the image tower."""
        if not (embedder.writable and not embedder.cached) or \
                embedder.export_from_weights_file(ref, self.models_dir):
            return self.encoder(ref, IMAGE_ONLY)
        enc = self.encoder(ref)
        embedder.export_from(enc)
        enc.drop_text_tower()
        self._keep((ref.model_id, IMAGE_ONLY), enc)
        return enc

    def _loaded_encoder(self, ref: ModelRef, towers: frozenset[str]) -> ImageEncoder | None:
        with self._encoders_lock:
            entries = list(self._encoders.items())
        for (model_id, have), enc in entries:
            if model_id == ref.model_id and towers <= have:
                return enc
        return None

    @_serialized
    def remove_model(self, model: str, pretrained: str | None = None, *,
                     wait: float = 0.0) -> int:
        """Delete every vector made by a model (a --model spec or a model id from status);
        returns how many were removed. Raises ModelNotIndexedError (no such vectors here),
        LibraryBusyError (an index run holds the library past `wait` seconds).

            lib.remove_model("ViT-B-32", "openai")  # -> 150
        """
        model_id = self.model_ref(model, pretrained).model_id
        known = self.catalog.models()
        if model_id not in known:
            raise _not_indexed(model, model_id, known, "Nothing was removed.")
        with self._writer(wait):
            removed = self.catalog.remove_model(model_id)
            # Its derived files: the FAISS cache and the adopted text tower (~250 MB).
            faiss_file = index_path(self.path / VECTORS_DIR, model_id)
            tower = tower_path(self.path / TEXT_TOWERS_DIR, model_id)
            for path in (faiss_file, faiss_file.with_suffix(".json"),
                         faiss_file.with_suffix(".grades.json"),  # search/grading.py
                         tower, sidecar(tower)):
                path.unlink(missing_ok=True)
            self._text_embedders.pop(model_id, None)
            self._settle_default()
            return removed

    def _settle_default(self) -> None:
        """Keep the default a model with vectors here: when its vectors are gone (removed,
        or their files left the library) the oldest model left takes over; with none left
        the library has no default (`clipsearch index` then uses the built-in one)."""
        stored = self.catalog.get_meta("default_model")
        models = self.catalog.models()
        if stored and _ref_of(json.loads(stored)).model_id in models:
            spec = json.loads(stored)
        else:
            spec = self._oldest_model()
            if spec is not None:
                self.catalog.set_meta("default_model", json.dumps(spec))
            elif stored:
                self.catalog.clear_meta("default_model")
        if self._default.model_id not in models:
            self._default = _ref_of(spec)
            self._model_named = False

    @property
    def indexed_models(self) -> list[str]:
        """Ids of the models this library holds vectors of (oldest first).

            if "shapes-tiny" in lib.indexed_models: lib.query("a red circle")
        """
        return list(self.catalog.models())

    def _oldest_model(self) -> dict | None:
        """The spec of the first model that made vectors here, if any is left."""
        return next((m["spec"] for m in self.catalog.models().values()), None)

    # -- roots ---------------------------------------------------------------------------
    @property
    @_serialized
    def roots(self) -> list[str]:
        """The folders this library indexes.

            lib.roots  # -> ['/data/photos']
        """
        return list(self.catalog.roots().values())

    @_serialized
    def add_root(self, path: str | os.PathLike) -> str:
        """Add a folder to index; returns its root path. A folder already added under another
        name (a symlink to it, or it behind a symlink) is that root: indexed once. Raises
        NotADirectoryError.

            lib.add_root("~/Photos")  # -> '/home/me/Photos'
        """
        folder = _abspath(path)
        if not os.path.isdir(folder):
            raise NotADirectoryError(f"not a folder: {folder}")
        real = os.path.realpath(folder)
        for root in self.roots:
            if root != folder and os.path.realpath(root) == real:
                return root
        self.catalog.add_root(folder)
        return folder

    @_serialized
    def remove_root(self, path: str | os.PathLike, *, wait: float = 0.0) -> int:
        """Forget a root and its files (vectors no other file uses go too); returns how many
        files left. Raises LookupError for a folder that is not a root (a typo would
        otherwise pass silently), LibraryBusyError.

            lib.remove_root("~/Pictures/Phone")  # -> 212
        """
        text = os.fspath(path)
        folder = text if "://" in text else _abspath(path)  # an object-store root: its URI
        if self.catalog.root_id(folder) is None:
            roots = ", ".join(self.roots) or "none"
            raise LookupError(f"{folder} is not a root of this library (roots: {roots})")
        with self._writer(wait):
            removed = self.catalog.remove_root(folder)
            self._settle_default()  # its files may have held the default model's vectors
            return removed

    @contextmanager
    def _writer(self, wait: float = 0.0) -> Iterator[None]:
        """Hold the library's writer lock: changes never interleave with an index run."""
        lock = WriterLock(self.path / LOCK_NAME)
        lock.acquire(wait=wait)
        tighten(self.path)  # libraries made before they were private become private
        try:
            yield
        finally:
            tighten(self.path)  # and what this writer added (text towers linked in)
            lock.release()

    # -- indexing ------------------------------------------------------------------------
    @_serialized
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
        """Index the given roots (added first if new), or every root. Incremental: only new
        and changed files are read. Raises ValueError (no folder to index),
        NotADirectoryError, MissingModelError, ModelLoadError, LibraryBusyError (another
        indexer past `wait` seconds), StorageError (read-only library, disk full). A file
        that cannot be read is skipped and listed in the report, never raised.
        `settings=IndexSettings(ray="auto")` loads and encodes on a Ray cluster (also
        "ray://host:10001", "local"): the same rows as a local run; MissingExtraError
        without Ray installed, ConnectionError when there is no cluster at the address.

            report = lib.index(["~/Photos"], progress=lambda p: print(p.done, p.total))
            report.indexed, report.skipped, report.empty_roots
        """
        ref = self.model_ref(model, pretrained)
        if self.readonly:
            raise StorageError(f"the library at {self.path} is on a read-only disk or folder: "
                               "it can be queried but not indexed")
        # Whatever can fail cheaply fails before any change: a failed run changes nothing.
        if settings is not None:
            settings.check()
            if settings.ray is not None:
                require_ray()  # MissingExtraError says how to install it
        for folder in roots or ():
            if not os.path.isdir(_abspath(folder)):
                raise NotADirectoryError(f"not a folder: {_abspath(folder)}")
        if not roots and not self.roots:
            raise UsageError(f"the library at {self.path} has no folders to index: give one "
                             "(`lib.index([FOLDER])`, `clipsearch index FOLDER`)")
        ensure_local(ref, self.models_dir)  # an unknown or missing model, even with no files
        _check_precision(self.device, self.precision)  # int8 on a GPU: UsageError
        # The lock comes before any write: a refused run changes nothing.
        with self._writer(wait):
            sweep_temp_files(self.path / VECTORS_DIR)  # left by killed runs
            folders = [self.add_root(r) for r in roots] if roots else self.roots
            root_ids = [self.catalog.root_id(f) for f in folders]

            def get_encoder():
                enc = self.image_encoder(ref)
                self.catalog.register_model(ref.model_id, ref.to_spec(), enc.embed_dim)
                if self.catalog.get_meta("default_model") is None:  # the first model that
                    self.catalog.set_meta("default_model", json.dumps(ref.to_spec()))  # loads
                return enc

            from clip_core.models.config import guess_preprocess

            settings = self._index_settings(ref, settings)
            report = run_index(self.catalog, [i for i in root_ids if i is not None],
                               ref.model_id, get_encoder, settings, progress,
                               preprocess_hint=guess_preprocess(ref),
                               worker_encoder=self._worker_encoder(ref, settings))
            # The first model to load became the stored default; or vanished files took the
            # default's last vectors with them.
            self._settle_default()
            models = self.catalog.models()
            if not report.interrupted and ref.model_id in models:
                dim = models[ref.model_id]["embed_dim"]
                self.searcher.index_for(ref.model_id, dim, upkeep=True)  # the FAISS cache
                self._repair_text_tower(ref)
            if not report.interrupted:
                report.empty_roots = self._survey_empty(root_ids, settings)
            return report

    def _index_settings(self, ref: ModelRef, settings: IndexSettings | None) -> IndexSettings:
        """The run's settings: fewer files decoded ahead on torch (indexer.job.TORCH_PREFETCH)."""
        from clip_core.compiled.load import runs_on_torch
        from indexer.job import TORCH_PREFETCH

        settings = settings or IndexSettings()
        if settings.ray is None and settings.prefetch > TORCH_PREFETCH and runs_on_torch(
                ref, device=self.device, precision=self.precision,
                models_dir=self.models_dir, cache_dir=self.cache_dir):
            settings = dataclasses.replace(settings, prefetch=TORCH_PREFETCH)
        return settings

    def _worker_encoder(self, ref: ModelRef, settings: IndexSettings | None):
        """For a Ray run: how each worker builds the encoder image_encoder would pick."""
        if settings is None or settings.ray is None:
            return None
        return functools.partial(worker_image_encoder, ref, self.device, self.precision,
                                 self.models_dir, self.cache_dir)

    def _repair_text_tower(self, ref: ModelRef) -> None:
        """A damaged text tower (found by its checksum: a stat when intact) is rebuilt by the
        index run, also one with nothing else to do, so queries stay torch-free."""
        embedder = self._text_embedder(ref)
        if embedder.writable and embedder.path.is_file() and not embedder.cached:
            embedder.export_from(self.encoder(ref, frozenset({"text"})))

    def _survey_empty(self, root_ids: list[int | None],
                      settings: IndexSettings | None) -> list[dict]:
        """What each indexed root that holds no file here after the run contains: the
        report says why nothing was found instead of only "0 indexed"."""
        from clip_core.pixels.decode import IMAGE_EXTENSIONS
        from indexer.survey import survey_root

        hidden = bool(settings and settings.include_hidden)
        roots = self.catalog.roots()
        return [survey_root(roots[i], IMAGE_EXTENSIONS, hidden) for i in root_ids
                if i is not None and not self.catalog.root_has_files(i)]

    @_serialized
    def import_shards(self, folder: str | os.PathLike, *, wait: float = 0.0) -> ShardImport:
        """Add the Parquet shards `embed_shards` wrote under `folder` (or a URI pyarrow
        reads, s3://...). Idempotent: a row already stored unchanged is skipped; a shard cut
        short is ignored and named; a file changed or gone since it was embedded is left for
        the next index run. Raises MissingExtraError (no pyarrow), FileNotFoundError,
        LibraryBusyError, StorageError.

            report = lib.import_shards("/shared/shards")
            report.imported, report.unchanged, report.stale, report.ignored
        """
        from indexer.shards import import_shards

        require_ray()
        text = os.fspath(folder)
        if "://" not in text and not os.path.isdir(text):
            raise FileNotFoundError(f"no shard folder at {_abspath(text)}")
        if self.readonly:
            raise StorageError(f"the library at {self.path} is on a read-only disk or folder")
        with self._writer(wait):
            report = import_shards(self.catalog, text)
            models = self.catalog.models()
            if report.model_id in models:
                if self.catalog.get_meta("default_model") is None:
                    self.catalog.set_meta("default_model",
                                          json.dumps(models[report.model_id]["spec"]))
                self.searcher.index_for(report.model_id, models[report.model_id]["embed_dim"],
                                        upkeep=True)
            return report

    # -- search --------------------------------------------------------------------------
    def warm_up(self, model: str | None = None, pretrained: str | None = None) -> dict:
        """Make this library ready for fast queries of `model` (default: the library's):
        the text tower loaded and checked, the vector index of the current generation
        opened and, in a long-lived Library, its int8 scan built (store/int8_scan.py),
        which queries otherwise build in the background from their second one. For an app
        or server at start-up (a thread of its own: ~1-2 s at 100k photos). Returns what
        is ready: {"model", "vectors", "text_tower", "scan"}; {} for an empty library.

            threading.Thread(target=lib.warm_up, daemon=True).start()
        """
        ref = self._searchable(model, pretrained)
        if ref is None:
            return {}
        self.embed_text(["a photo"], ref.model_id)
        with self._lock:
            dim = self.catalog.models()[ref.model_id]["embed_dim"]
            index = self.searcher.prepare(ref.model_id, dim)
        embedder = self._text_embedder(ref)
        return {"model": ref.model_id, "vectors": len(index),
                "text_tower": embedder.kind,
                "scan": "int8" if getattr(index, "int8", None) is not None
                else getattr(index, "int8_note", "approximate index")}

    @_serialized
    def embed_text(
        self, texts: Sequence[str], model: str | None = None, pretrained: str | None = None
    ) -> np.ndarray:
        """L2-normalised text vectors; torch-free once the model's text tower is cached.
        Raises TypeError (one string instead of a list), MissingModelError.

            lib.embed_text(["a dog", "a cat"]).shape  # -> (2, 512)
        """
        _check_texts(texts, "texts")
        return self._text_embedder(self.model_ref(model, pretrained)).embed(list(texts))

    def _text_embedder(self, ref: ModelRef) -> TextEmbedder:
        with self._encoders_lock:  # also reached from an index run's model-loading thread
            embedder = self._text_embedders.get(ref.model_id)
            if embedder is None:
                embedder = TextEmbedder(
                    ref.model_id, self.path / TEXT_TOWERS_DIR,
                    lambda: self.encoder(ref, frozenset({"text"})),
                    writable=not self.readonly, low_memory=self.low_memory,
                    without_torch=lambda e: self._text_tower_without_torch(ref, e),
                    runner_records=self._runner_records())
                self._text_embedders[ref.model_id] = embedder
            return embedder

    def _runner_records(self) -> Path | None:
        """Where long-lived processes record the text tower's runner timed on this machine
        (clip_core.text.runner_record): beside compiled models, shared by every library."""
        if self.low_memory:
            return None
        from clip_core.compiled.cache import default_cache_dir
        from clip_core.text.runner_record import FOLDER

        return (self.cache_dir or default_cache_dir()).parent / FOLDER

    def _text_tower_without_torch(self, ref: ModelRef, embedder: TextEmbedder) -> None:
        """A library without its text tower (one an index run could not give it, or whose
        tower was removed as damaged) takes the compiled model's, or reads it from the
        model's weights file, before a query exports it through torch (ViT-B-32: ~5 s, and a
        server stayed at 1.3 GB). Neither at hand: torch, as before."""
        from clip_core.compiled.cache import find_compiled

        try:
            compiled = find_compiled(ref, self.models_dir, self.cache_dir)
            if compiled is not None and compiled.text_tower is not None:
                embedder.adopt(compiled.text_tower)
            if not embedder.cached:
                embedder.export_from_weights_file(ref, self.models_dir)
        except (ModelError, OSError, ValueError) as exc:  # the torch path says what is wrong
            log.info("text tower of %s not made without torch: %s", ref.model_id, exc)

    @_looks_once
    @_serialized
    def query(
        self,
        text: str | Query | None,
        *,
        limit: int = 10,
        within: str | os.PathLike | None = None,
        model: str | None = None,
        pretrained: str | None = None,
        min_score: float | None = None,
        strong_only: bool = False,
        filters: Filters | None = None,
        offset: int = 0,
        exact: bool = False,
    ) -> QueryResults:
        """The `limit` pictures that best match `text`, best first, scored by cosine
        similarity; `within`: only under this folder. `text` is a plain text, a combined
        query string (`'"a dog" + "in the snow" - "a leash"'`, grammar in search/query.py)
        or a `Query` (`Query.text("a dog") - Query.text("a leash") + Query.image(path)`).
        Text-only queries are graded: each result's `grade` is strong / weak / none and the
        list's `good_match` is False when nothing is a good match (docs/search.md);
        `min_score` (cosine) and `strong_only` cut the list. `filters` (date, orientation,
        size, type: search.filters.Filters) select inside the search, exactly; with `text`
        None they list the matching photos newest first. `offset` skips that many results
        (paging; ties are ordered by file id). An empty library gives [].
        Above ~200k vectors an approximate index picks the results (scores stay exact;
        recall in `status().vector_indexes`); `exact=True` scans every vector instead.
        Raises ValueError (blank text, bad limit; QuerySyntaxError for a malformed query
        string), ModelNotIndexedError (no vectors of `model` here; it carries suggestions),
        MissingModelError, FileNotFoundError / DecodeError (an image term), LookupError (an
        id: term that is not an indexed file).

            for hit in lib.query("a dog on a beach", limit=5, within="~/Photos/2023"):
                print(hit.rank, hit.score, hit.grade, hit.path)
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise UsageError(f"limit must be a whole number >= 1, not {limit!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise UsageError(f"offset must be a whole number >= 0, not {offset!r}")
        if text is None and filters is not None and not filters.empty:
            return self._listing(filters, within, limit, offset)
        if isinstance(text, Query):
            parsed = text
        elif isinstance(text, str) and text.strip():
            parsed = Query.parse(text)
        else:
            raise UsageError(f"the query text is empty: {text!r}")
        parsed.check()
        for term in parsed.terms:
            if term.kind == "image":
                _image_file(term.value)
        ref = self._searchable(model, pretrained)
        if ref is None:
            return QueryResults()
        allowed = None
        if filters is not None and not filters.empty:
            allowed = self.catalog.filtered_ids(*filters.where(), _folder(within))
            if not len(allowed):
                return _empty("no photo matches the filters")
        vector, exclude = self._query_vector(parsed, ref)
        found = self.searcher.search(ref.model_id, vector, limit + offset, within,
                                     exclude or None, allowed, exact=exact)
        return self._graded(found[offset:], ref, parsed.text_only, min_score, strong_only)

    def _listing(self, filters: Filters, within: str | os.PathLike | None, limit: int,
                 offset: int) -> QueryResults:
        """Filters without a text: the matching photos, newest first (EXIF date, else
        mtime)."""
        from search.filters import DATE_SQL

        ids = self.catalog.filtered_ids(*filters.where(), _folder(within), by_date=DATE_SQL,
                                        limit=limit, offset=offset)
        if not len(ids):
            return _empty("no photo matches the filters" + (" at this offset" if offset
                                                             else ""))
        return QueryResults(self.searcher.results([(None, int(i)) for i in ids], offset + 1))

    @_serialized
    def duplicates(self, *, threshold: float | None = None, model: str | None = None,
                   pretrained: str | None = None) -> list[DuplicateGroup]:
        """Groups of near-duplicate photos (bursts, resized or re-encoded copies, small
        crops) and exact copies, largest group first, each with its best-quality member
        first (most pixels, then newest). `threshold`: the vector cosine above which two
        photos are candidates (default search.duplicates.DEFAULT_THRESHOLD); candidates are
        confirmed on an 8x8 thumbnail of each (docs/search.md). An empty library gives [].
        Raises ValueError (threshold outside [-1, 1]), ModelNotIndexedError.

            for group in lib.duplicates():
                keep, *extra = group.members
        """
        ref = self._searchable(model, pretrained)
        if ref is None:
            return []
        ids, vectors = self.catalog.vectors(ref.model_id)
        return find_duplicates(ids, vectors, self.catalog.file_rows,
                               DEFAULT_THRESHOLD if threshold is None else threshold,
                               self.catalog.files_sharing_content(ref.model_id))

    def _query_vector(self, query: Query, ref: ModelRef) -> tuple[np.ndarray, set[int]]:
        """The normalised weighted sum of the terms' unit vectors, and the indexed files
        given as image terms (left out of the results, as query_image leaves out its own)."""
        texts = [t.value for t in query.terms if t.kind == "text"]
        # the embedder of the ref in hand: embed_text(texts, ref.model_id) would resolve the
        # id again (the catalog's models and a parse: ~0.1 ms of a warm query)
        text_vectors = iter(self._text_embedder(ref).embed(texts) if texts else ())
        total = np.zeros(0, np.float32)
        exclude: set[int] = set()
        for term in query.terms:
            if term.kind == "text":
                vec = next(text_vectors)
            elif term.kind == "image":
                vec = self._image_vector(Path(term.value), ref)
                own = self.catalog.file_id(_abspath(term.value))
                if own is not None:
                    exclude.add(own)
            else:
                found = self.catalog.vectors_for_files(ref.model_id, [term.value])
                if term.value not in found:
                    raise LookupError(f"id:{term.value} is not an indexed file of this library"
                                      " (ids are in `clipsearch query --json` output)")
                vec = found[term.value]
                exclude.add(term.value)
            vec = np.asarray(vec, np.float32)
            vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
            total = term.weight * vec if not total.size else total + term.weight * vec
        norm = float(np.linalg.norm(total))
        if norm < 1e-6:
            raise UsageError(f"the terms of {query!r} cancel out: nothing is left to search for")
        return total / norm, exclude

    def _graded(self, found: list[SearchResult], ref: ModelRef, text_only: bool,
                min_score: float | None, strong_only: bool) -> QueryResults:
        """Grade text queries against the model's neutral-prompt bars, then cut."""
        out = QueryResults(found)
        if text_only and found:
            cal = self._calibration_of(ref)
            out = QueryResults(dataclasses.replace(r, grade=cal.grade(r.score)) for r in found)
            out.calibration = cal
            out.good_match = any(r.grade == "strong" for r in out)
        elif strong_only:
            raise UsageError("--strong-only needs a graded query: grades exist for text terms "
                             "only (image terms have no neutral bank to compare with)")
        kept = [r for r in out if (min_score is None or r.score >= min_score)
                and (not strong_only or r.grade == "strong")]
        if len(kept) < len(out):
            first = out[0].rank  # > 1 on a later page (offset)
            cut = QueryResults(dataclasses.replace(r, rank=first + i)
                               for i, r in enumerate(kept))
            cut.calibration, cut.good_match = out.calibration, out.good_match
            if not kept:
                cut.reason = ("no result is graded strong" if strong_only else
                              f"no result scores {min_score} or more")
            out = cut
        return out

    @_serialized
    def calibration(self, model: str | None = None) -> Calibration:
        """The bars that grade `model`'s text queries on this library (search/grading.py),
        measured once per catalog generation. Raises ModelNotIndexedError.

            lib.calibration().strong  # -> 0.73 (shapes-tiny; a cosine)
        """
        ref = self._searchable(model, None)
        if ref is None:
            raise LookupError("the library is empty: nothing to calibrate on")
        return self._calibration_of(ref)

    def _calibration_of(self, ref: ModelRef) -> Calibration:
        """calibration() of a ref already known to be searchable here."""
        key = (ref.model_id, self.catalog.generation)
        if key not in self._calibrations:
            cached = index_path(self.path / VECTORS_DIR, ref.model_id).with_suffix(
                ".grades.json")
            cal = load_bars(cached, *key)
            if cal is None:
                dim = self.catalog.models()[ref.model_id]["embed_dim"]
                sample = self.searcher.index_for(ref.model_id, dim).sample(SAMPLE_SIZE)
                neutral = self.embed_text(list(NEUTRAL_PROMPTS), ref.model_id)
                cal = calibrate(neutral, sample)
                if not self.readonly and cached.parent.is_dir():
                    save_bars(cached, *key, cal)
            self._calibrations = {key: cal}
        return self._calibrations[key]

    @_looks_once
    @_serialized
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
        """Images similar to `image` (a file inside or outside the library; itself left
        out unless `include_self`). Raises FileNotFoundError (no such file),
        IsADirectoryError, DecodeError (not a readable image), ModelNotIndexedError,
        MissingModelError.

            lib.query_image("~/Photos/IMG_0042.jpg", limit=5)
        """
        _image_file(image)
        ref = self._searchable(model, pretrained)
        if ref is None:
            return []
        vector = self._image_vector(Path(image), ref)
        own = self.catalog.file_id(_abspath(image))
        if own is None:  # given through a symlink (or the root was added through one)
            own = self.catalog.file_id(os.path.realpath(image))
        exclude = {own} if own is not None and not include_self else None
        return self.searcher.search(ref.model_id, vector, limit, within, exclude)

    def _searchable(self, model: str | None, pretrained: str | None) -> ModelRef | None:
        """The model to search with, or None when nothing is indexed yet (no model is loaded
        then, but missing model files are still reported). Refuses a model this library has
        no vectors for while it holds others', so vectors of different models are never
        compared."""
        ref = self.model_ref(model, pretrained)
        known = self.catalog.models()
        if not known:
            if model is not None or self._model_named:  # a model the caller asked for
                ensure_local(ref, self.models_dir)
            return None
        if ref.model_id not in known:
            raise _not_indexed(model or ref.model_id, ref.model_id, known,
                               "Index with `clipsearch index --model ...` first, or query "
                               "with --model set to one of those.")
        return ref

    @_serialized
    def classify(
        self, image: str | os.PathLike, labels: Sequence[str], *, model: str | None = None,
        pretrained: str | None = None,
    ) -> list[LabelScore]:
        """CLIP zero-shot: probability of each label for one image, best first. Torch-free
        when the model's text tower is cached here with its temperature and its image tower
        is compiled (the state after indexing on a CPU); else the torch model. Raises
        ValueError (no label, a blank one), TypeError (one string for labels),
        FileNotFoundError, IsADirectoryError, DecodeError, MissingModelError.

            lib.classify("a.jpg", ["a dog", "a cat"])[0].label  # -> 'a dog'
        """
        _check_labels(labels)
        _image_file(image)
        ref = self.model_ref(model, pretrained)
        scale = self._text_embedder(ref).logit_scale()
        if scale is None:
            return _classify(self.encoder(ref), image, labels)
        image_vector = _image_vector(self.image_encoder(ref), Path(image))
        return zero_shot(image_vector, self.embed_text(list(labels), model, pretrained),
                         labels, scale)

    def _image_vector(self, path: Path, ref: ModelRef) -> np.ndarray:
        return _image_vector(self.image_encoder(ref), path)

    # -- files by catalog id (apps and the web server never take a path from a request) --
    @_serialized
    def file_info(self, file_id: int) -> dict:
        """The catalog row of one file: file_id, path, root, size, mtime_ns, content_hash,
        width, height, taken_at. Raises LookupError when the id is unknown (never indexed, or
        removed) or when the path no longer leads to that file inside its root: replaced by
        a symlink leading out of the root, or by something that is not a regular file.

            lib.file_info(42)["path"]  # -> '/data/photos/a.jpg'
        """
        row = self.catalog.file_rows([file_id]).get(int(file_id))
        if row is None:
            raise LookupError(f"no file with id {file_id} in this library")
        path, root = row["path"], row["root"]
        try:
            st = os.stat(path)
        except OSError:
            raise LookupError(f"file {file_id} is gone from its folder") from None
        inside = root is not None and _is_within(os.path.realpath(path),
                                                 os.path.realpath(root))
        # A file indexed through --follow-links resolves outside its root; it still is the
        # file that was indexed when its size and mtime are the catalog's.
        same = st.st_size == row["size"] and st.st_mtime_ns == row["mtime_ns"]
        if not stat.S_ISREG(st.st_mode) or not (inside or same):
            raise LookupError(f"file {file_id} is no longer the indexed file inside its root")
        return {"file_id": int(row.pop("id")), **row}

    @_serialized
    def query_similar(
        self,
        file_id: int,
        *,
        limit: int = 10,
        within: str | os.PathLike | None = None,
        model: str | None = None,
        pretrained: str | None = None,
    ) -> list[SearchResult]:
        """Pictures similar to an indexed file, by its stored vector (nothing is decoded),
        the file itself left out. Raises LookupError (unknown id, or no vector of `model`
        for it), ModelNotIndexedError, MissingModelError.

            lib.query_similar(hit.file_id, limit=5)  # "more like this"
        """
        ref = self._searchable(model, pretrained)
        if ref is None:
            raise LookupError(f"no indexed file with id {file_id}: nothing is indexed yet")
        # The id term of a combined query: its stored vector, itself left out.
        vector, exclude = self._query_vector(Query.file_id(int(file_id)), ref)
        return self.searcher.search(ref.model_id, vector, limit, within, exclude)

    # -- status --------------------------------------------------------------------------
    @_serialized
    def status(self, *, errors: bool = False) -> LibraryStatus:
        """Roots, file counts, models with their vector counts, size on disk; with `errors`
        also every file that failed (path, reason, message).

            st = lib.status(errors=True)
            st.indexed, st.models, [e["path"] for e in st.error_list]
        """
        counts = self.catalog.counts()
        data, shared = _disk_use(self.path)
        unindexed = self.catalog.count_without_vectors()
        # No stored default: no model made vectors here yet (or all were removed).
        default = self._default if self.catalog.get_meta("default_model") else None
        return LibraryStatus(
            path=str(self.path),
            roots=self.roots,
            files=sum(counts.values()),
            indexed=counts.get("ok", 0) - unindexed,
            errors=counts.get("error", 0),
            default_model=({"id": default.model_id, **default.to_spec()} if default else None),
            models=self.catalog.model_counts(),
            size_bytes=data + shared,
            error_list=self.catalog.errors() if errors else [],
            data_bytes=data,
            shared_bytes=shared,
            unindexed=unindexed,
            index_model=self._default.model_id,
            vector_indexes=self._vector_indexes(),
        )

    def _vector_indexes(self) -> dict[str, dict]:
        from store.index_cache import describe

        return {m: describe(self.catalog, self.path / VECTORS_DIR, m)
                for m in self.catalog.models()}


def classify(
    image: str | os.PathLike,
    labels: Sequence[str],
    *,
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    models_dir: str | os.PathLike | None = None,
) -> list[LabelScore]:
    """Zero-shot classification without a library (the classic CLIP demo): probability of
    each label, best first. Raises ValueError, TypeError, FileNotFoundError,
    IsADirectoryError, DecodeError, MissingModelError, ModelLoadError.

        classify("a.jpg", ["a dog", "a cat"], model="shapes-tiny")
    """
    _check_labels(labels)
    _image_file(image)
    from clip_core.torch_backend.encoder import ClipEncoder

    encoder = ClipEncoder.load(parse_model(model, pretrained), device=device,
                               precision=precision,
                               models_dir=Path(models_dir) if models_dir else None)
    return _classify(encoder, image, labels)


def worker_image_encoder(ref: ModelRef, device: str, precision: str,
                         models_dir: Path | None, cache_dir: Path | None) -> ImageEncoder:
    """Library.image_encoder's choice on a machine without the library (a Ray worker): the
    compiled CPU tower (compiled there once if needed), else torch's image tower."""
    from clip_core.compiled.load import load_compiled

    found = load_compiled(ref, device=device, precision=precision, models_dir=models_dir,
                          cache_dir=cache_dir)
    if found is not None:
        return found[1]
    from clip_core.torch_backend.encoder import ClipEncoder

    return ClipEncoder.load(ref, device=device, towers=IMAGE_ONLY, models_dir=models_dir,
                            precision="auto" if precision == "int8" else precision)


def embed_shards(root: str | os.PathLike, out: str, *, ray: str, model: str | None = None,
                 pretrained: str | None = None, device: str = "auto",
                 precision: str = "auto", models_dir: str | os.PathLike | None = None,
                 settings: IndexSettings | None = None) -> int:
    """Embed every image under `root` (a folder, or s3://bucket/prefix read through pyarrow)
    on the Ray cluster at `ray` into Parquet shards under `out` (a folder the workers can
    write, or s3://...), written by the workers; returns how many files they describe.
    `Library.import_shards` adds them to a library. Raises
    MissingExtraError, MissingModelError, NotADirectoryError, ConnectionError.

        embed_shards("/shared/photos", "/shared/shards", ray="auto", model="shapes-tiny")
    """
    from indexer.shards import embed_shards as embed

    require_ray()
    folder = os.fspath(root) if "://" in os.fspath(root) else _abspath(root)  # s3://...
    if "://" not in folder and not os.path.isdir(folder):
        raise NotADirectoryError(f"not a folder: {folder}")
    ref = parse_model(model, pretrained) if model else _ref_of(None)
    store = Path(models_dir).expanduser() if models_dir else None
    ensure_local(ref, store)
    settings = settings or IndexSettings()
    settings.check()
    make = functools.partial(worker_image_encoder, ref, device, precision, store, None)
    encoder = make()  # here too: the true preprocessing, and a compile done once per machine
    spec = encoder.preprocess
    encoder.close()
    return embed(folder, out, ray, ref.model_id, ref.to_spec(), spec, make, settings)


def check_model(model: str | None = None, pretrained: str | None = None, *,
                models_dir: str | os.PathLike | None = None, device: str = "auto",
                precision: str = "auto") -> ModelRef:
    """The model `model`/`pretrained` names, if open_clip knows it and its files are on this
    machine; else MissingModelError or ModelLoadError (UsageError: int8 asked of a GPU).
    Touches nothing and imports no torch: a command checks its model with it before it
    creates a library.

        check_model("shapes-tiny")  # -> ModelRef; check_model("ViT-B-23") raises
    """
    ref = parse_model(model, pretrained)
    ensure_local(ref, Path(models_dir).expanduser() if models_dir else None)
    _check_precision(device, precision)
    return ref


def _int8_scan_mode(low_memory: bool) -> str:
    """The searcher's int8 scan (store/int8_scan.py): long-lived processes only (a one-shot
    query would build it for one scan), kept only where measured faster on CPUs whose int8
    products lack dot-product instructions (the same rule as the int8 text tower).
    CLIPSEARCH_INT8_SCAN=off turns it off (a comparison, or a doubt)."""
    if low_memory or os.environ.get("CLIPSEARCH_INT8_SCAN") == "off":
        return "off"
    from clip_core.cpu import CpuFeatures, text_int8_timed

    return "timed" if text_int8_timed(CpuFeatures.here()) else "on"


def _check_precision(device: str, precision: str) -> None:
    from clip_core.compiled.load import check_precision

    check_precision(device, precision)


def _check_texts(texts: Sequence[str], what: str) -> None:
    """Before any model loads: a plain string would be taken letter by letter."""
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of strings, not one string: [{texts!r}, ...]")


def _check_labels(labels: Sequence[str]) -> None:
    _check_texts(labels, "labels")
    if not labels:
        raise UsageError("give at least one label")
    blank = [label for label in labels if not label.strip()]
    if blank:
        raise UsageError(f"labels must not be blank: {blank!r}")


def _classify(encoder: ClipEncoder, image: str | os.PathLike,
              labels: Sequence[str]) -> list[LabelScore]:
    image_vector = _image_vector(encoder, Path(image))
    return zero_shot(image_vector, encoder.encode_texts(list(labels)), labels,
                     encoder.logit_scale)


def _image_vector(encoder: ImageEncoder, path: Path) -> np.ndarray:
    from clip_core.pixels.decode import DecodeError, decode_image
    from clip_core.pixels.preprocess import preprocess

    try:
        decoded = decode_image(path)
    except DecodeError as exc:  # the indexer names the file beside the reason; so do we
        if exc.reason == "vanished":  # deleted since _image_file looked
            raise _not_found(path) from exc
        raise DecodeError(exc.reason, f"{path}: {exc.message}") from exc
    return encoder.encode_pixels(preprocess(decoded.image, encoder.preprocess)[None])[0]


def _image_file(image: str | os.PathLike) -> None:
    """Before any model loads: a missing file is FileNotFoundError (errno and filename set,
    as open() raises it), a folder IsADirectoryError; anything else the decoder judges."""
    path = os.fspath(image)
    if not os.path.exists(path):
        raise _not_found(path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a folder, not an image", path)


def _folder(within: str | os.PathLike | None) -> str | None:
    return None if within is None else os.path.abspath(os.fspath(within))


def _empty(reason: str) -> QueryResults:
    out = QueryResults()
    out.reason = reason
    return out


def _not_found(path: str | os.PathLike) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fspath(path))


def _disk_use(folder: Path) -> tuple[int, int]:
    """(own, shared) bytes of the files under `folder`. A file with more than one hard link
    (a text tower linked from the compile cache, ~250 MB for ViT-B-32) is shared: removing
    the library would not free it, so it is not the library's size."""
    own = shared = 0
    for path in folder.rglob("*"):
        try:
            st = path.lstat()
        except OSError:
            continue  # removed meanwhile (a temp file of a query's cache write)
        if stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1:
                shared += st.st_size
            else:
                own += st.st_size
    return own, shared


def _ref_of(spec: dict | None) -> ModelRef:
    """A stored model spec as a ref; None: clipsearch's built-in default model."""
    return parse_model(spec["model"], spec.get("pretrained")) if spec else parse_model(None, None)


def _refuse_lost_catalog(folder: Path, catalog: Path) -> None:
    """A missing or 0-byte catalog beside this library's derived files is a lost catalog, not
    a new library: a fresh one would forget every root and pass for a healthy empty library.
    (A new catalog has its SQLite header on disk before any derived file exists.)"""
    if catalog.is_file() and catalog.stat().st_size > 0:
        return
    held = [name for name in (VECTORS_DIR, TEXT_TOWERS_DIR)
            if (folder / name).is_dir() and any((folder / name).iterdir())]
    if held:
        state = "an empty file" if catalog.exists() else "missing"
        raise CatalogDamagedError(
            catalog, f"it is {state}, but {' and '.join(held)} hold this library's files")


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _abspath(path: str | os.PathLike) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


# -- Library.reader(): a second handle for queries from another thread -------------------
# A `Library` answers one call at a time: its SQLite connection, its vector index cache and
# its caches are shared state behind one lock. A server answering several clients at once
# gives each worker a reader instead: its own catalog connection and index cache and lock,
# and the parent's loaded models (an ONNX Runtime session and the numpy towers answer
# concurrent calls), so N readers search N queries at a time for the cost of one
# connection each. The exact index is memory-mapped from its file, so readers of an
# up-to-date library share its pages; an approximate one (store/ann_index.py, from ~200k
# vectors) is held once per reader.


def _parents(name: str) -> property:
    """An attribute a Reader reads and writes on its parent Library."""
    return property(lambda self: getattr(self._parent, name),
                    lambda self, value: setattr(self._parent, name, value))


class Reader(Library):
    """A view on `parent`: its own connection, searcher and lock; the parent's models and
    default model (a default set through either is the other's too)."""

    def __init__(self, parent: Library):  # not Library.__init__: nothing is loaded anew
        self.__dict__.update(parent.__dict__)
        self._parent = parent
        self._lock = threading.RLock()
        self.catalog = Catalog(parent.path / CATALOG_NAME, readonly=parent.readonly)
        self.searcher = _SharedSearcher(self.catalog, parent.path / VECTORS_DIR,
                                        parent._readers_share, parent.searcher.int8_scan)

    def calibration(self, model: str | None = None) -> Calibration:
        # A new generation's bars are measured by one reader, and the others reuse them.
        with self._readers_share.lock:
            return super().calibration(model)

    # The parent's state, not a copy taken at creation: a default set after an index run,
    # a model loaded by one reader, the parent closing.
    _default = _parents("_default")  # type: ignore[assignment]
    _encoders = _parents("_encoders")  # type: ignore[assignment]
    _calibrations = _parents("_calibrations")  # type: ignore[assignment]
    _closed = _parents("_closed")  # type: ignore[assignment]

    def reader(self) -> Library:
        return self._parent.reader()

    def close(self) -> None:
        """Close this reader's connection; the models stay with the parent."""
        with self._lock:
            self.catalog.close()


@dataclass
class _ReadersShare:
    """What a library's readers share: the exact vector index of the current generation,
    and a lock under which a new generation's index and grading bars are made once. While
    an index run commits batch after batch, each reader reloading them was the tail of the
    server's latency (8 clients: p99 15x p50 against 3.5x with one Library)."""

    indexes: dict = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)  # calibration -> index_for


class _SharedSearcher(Searcher):
    """A reader's searcher: an exact index is loaded once per generation for all readers
    (searching it is read-only). An approximate one is brought up to date in place
    (store/index_cache.py), so each reader keeps its own."""

    def __init__(self, catalog: Catalog, folder: Path, share: _ReadersShare, int8_scan: str):
        super().__init__(catalog, folder, int8_scan)
        self.share = share

    def index_for(self, model_id: str, dim: int, upkeep: bool = False):
        if upkeep:
            return super().index_for(model_id, dim, upkeep)
        key = (model_id, self.catalog.generation)
        with self.share.lock:
            index = self.share.indexes.get(key)
            if index is None:
                index = super().index_for(model_id, dim)
                if index.exact:
                    kept = {k: v for k, v in self.share.indexes.items() if k[0] != model_id}
                    self.share.indexes = {**kept, key: index}
            return index
