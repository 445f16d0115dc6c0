"""Stages 3-4 of an index run on a Ray cluster (`IndexSettings.ray`, `clipsearch index --ray`).

The same stages as a local run, scheduled by Ray Data instead of a thread pool: CPU tasks run
`stages.load_one` (read + hash + decode + preprocess), an actor pool runs the encoder (one
model per actor: a GPU each when the cluster has GPUs, else the compiled CPU tower), and the
driver commits what streams back through the same `BatchWriter`, batch by batch. So the rows,
the error rows of corrupt files, and crash/resume behave exactly as locally: a killed driver
loses at most the batch in flight, a killed worker's task is retried by Ray.

On a CPU-only cluster Ray fuses the load tasks into the encoder actors (no pixels cross the
object store); with GPUs the actors ask for one each and the load tasks stay separate.
Ray is an optional extra (`pip install 'clipsearch[cluster]'`), imported only here.
"""

from __future__ import annotations

import importlib.util
import logging
import pickle
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np

from clip_core.encoders import ImageEncoder
from clip_core.pixels.preprocess import PreprocessSpec
from clipsearch_errors import MissingExtraError
from store import FileRow

from .crawl import Candidate
from .interrupt import StopRequest
from .job import IndexSettings, Job, Progress, same_error, tally
from .stages import BatchWriter, Loaded, load_one

INSTALL_HINT = "pip install 'clipsearch[cluster]'"


def require_ray() -> None:
    """Raise MissingExtraError unless Ray Data can be imported (checked without importing
    it: `import ray` alone takes seconds)."""
    missing = [m for m in ("ray", "pyarrow") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"indexing on a Ray cluster (--ray) needs Ray Data, and "
                                f"{' and '.join(missing)} is not installed: {INSTALL_HINT}")


@contextmanager
def connected(address: str) -> Iterator[None]:
    """Join the cluster at `address` for the run; a process already joined (an app or a test
    that called ray.init) keeps its connection."""
    import ray

    if ray.is_initialized():
        yield
        return
    extra = {"include_dashboard": False} if address == "local" else {}
    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, **extra)
    try:
        yield
    finally:
        ray.shutdown()


def load_encode_write(
    job: Job, todo: list[Candidate], known: Iterable[str], retried: dict[str, FileRow]
) -> list[str]:
    """local_run.load_encode_write's contract, run on the cluster: returns the paths that
    vanished before they could be read."""
    require_ray()
    if job.worker_encoder is None:
        raise ValueError("a Ray run needs worker_encoder: how each worker builds the encoder")
    with connected(str(job.settings.ray)):
        return _stream(job, todo, known, retried)


def _stream(job: Job, todo: list[Candidate], known: Iterable[str],
            retried: dict[str, FileRow]) -> list[str]:
    settings, report, model_id = job.settings, job.report, job.model_id
    # The driver loads the model too: it registers it, exports the text tower, and gives the
    # true preprocessing (no guess to redo on the workers).
    encoder = job.get_encoder()
    if encoder.model_id != model_id:
        raise ValueError(f"encoder makes {encoder.model_id}, run expects {model_id}")
    ds, workers = embedded_dataset(todo, known, encoder.preprocess, job.worker_encoder,
                                   model_id, settings)
    # The vectors arrive made: the writer's "encoder" hands them through unchanged.
    writer = BatchWriter(job.catalog, _already_encoded, model_id, settings.batch_size)
    vanished: list[str] = []
    done = 0
    with StopRequest(settings.cancel) as stop:
        batches = ds.iter_batches(batch_size=None, batch_format="numpy")
        try:
            for batch in batches:
                for blob in batch["loaded"]:
                    cand, record, vector = pickle.loads(blob)
                    done += 1
                    if record is None:
                        vanished.append(cand.path)
                    elif same_error(record, retried.get(cand.path)):
                        report.known_errors += 1  # retried, failed the same way: no rewrite
                    else:
                        tally(report, writer.add(Loaded(cand, record, vector)))
                    if job.progress:
                        job.progress(Progress(done, len(todo), cand.path, workers))
                if stop.requested:
                    break  # what has arrived is encoded: it is committed below
            tally(report, writer.flush())
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # stops the cluster's work for this run
        report.interrupted = stop.requested
    return vanished


def embedded_dataset(todo: list[Candidate], known: Iterable[str], spec: PreprocessSpec,
                     worker_encoder: Callable[[], ImageEncoder], model_id: str,
                     settings: IndexSettings,
                     read: Callable[[str], tuple[bytes, object]] | None = None,
                     ) -> tuple[object, int]:
    """(A Ray Dataset of pickled (Candidate, FileRecord | None, vector | None) rows, the
    number of encoder actors): load_one as CPU tasks, then the encoder in an actor pool.
    `read`: how the tasks read a file (default stages.read_file; shards.read_object)."""
    import ray
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False  # the driver has its own
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset INFO lines
    workers, gpus = _pool_size()
    blocks = max(workers, -(-len(todo) // settings.batch_size))
    workers = min(workers, len(todo))  # an actor with no block would only load a model
    known_ref = ray.put(frozenset(known))
    ds = ray.data.from_items([{"cand": pickle.dumps(c)} for c in todo],
                             override_num_blocks=min(blocks, len(todo)))
    ds = ds.map_batches(_load_batch, batch_size=settings.batch_size, batch_format="numpy",
                        fn_kwargs={"spec": spec, "known_ref": known_ref, "read": read,
                                   "min_side": spec.min_side if settings.draft else None})
    ds = ds.map_batches(_EncodeWorker, fn_constructor_args=(worker_encoder, model_id),
                        batch_size=settings.batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=workers),
                        **({"num_gpus": 1} if gpus else {"num_cpus": 1}))
    return ds, workers


def _pool_size() -> tuple[int, int]:
    """(encoder actors, GPUs): one actor per GPU, else one per CPU of the cluster."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    return (gpus if gpus else max(1, int(resources.get("CPU", 1)))), gpus


def _already_encoded(vectors: np.ndarray) -> np.ndarray:
    return vectors


_KNOWN: dict[str, frozenset[str]] = {}  # per worker process: the hashes with vectors


def _load_batch(batch: dict[str, np.ndarray], spec: PreprocessSpec, known_ref: object,
                min_side: int | None, read: Callable | None = None) -> dict[str, np.ndarray]:
    """A CPU task: stages.load_one on each candidate, exactly as a local run's thread pool."""
    import ray

    key = str(known_ref)
    if key not in _KNOWN:
        _KNOWN.clear()
        _KNOWN[key] = ray.get(known_ref)
    known = _KNOWN[key]
    out = []
    for blob in batch["cand"]:
        loaded = load_one(pickle.loads(blob), spec, known.__contains__, min_side, read)
        out.append(pickle.dumps((loaded.cand, loaded.record, loaded.pixels)))
    return {"loaded": _objects(out)}


class _EncodeWorker:
    """An actor holding one model; replaces each batch's pixels by their vectors."""

    def __init__(self, make_encoder: Callable[[], ImageEncoder], model_id: str):
        self.encoder = make_encoder()
        if self.encoder.model_id != model_id:
            raise ValueError(f"worker encoder makes {self.encoder.model_id}, not {model_id}")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [pickle.loads(blob) for blob in batch["loaded"]]
        index = [i for i, (_, _, pixels) in enumerate(items) if pixels is not None]
        if index:
            # The encoder's fixed, zero-padded micro-batches (or one image per call for the
            # int8 tower) make each vector independent of how images were grouped.
            vectors = self.encoder.encode_pixels(np.stack([items[i][2] for i in index]))
            for i, vector in zip(index, vectors, strict=True):
                items[i] = (items[i][0], items[i][1], np.asarray(vector, dtype=np.float32))
        return {"loaded": _objects([pickle.dumps(item) for item in items])}


def _objects(blobs: list[bytes]) -> np.ndarray:
    out = np.empty(len(blobs), dtype=object)
    out[:] = blobs
    return out
