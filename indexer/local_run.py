"""Stages 3-4 of an index run in this process: a thread pool loads files ahead of the encoder,
a BatchWriter encodes and commits them batch by batch (a StreamingWriter, whose lane threads
encode image by image, when the encoder is a LaneEncoder; indexer.ray_executor does the same
on a Ray cluster).

The model loads in a background thread while the pool already decodes with the
preprocessing read from the model's config (`Job.preprocess_hint`): startup (importing
torch, building the model) overlaps the first images' decoding instead of preceding it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Container
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np

from clip_core.encoders import ImageEncoder, LaneEncoder, loading_notices
from clip_core.pixels.preprocess import same_preprocess
from store import FileRow

from .crawl import Candidate
from .interrupt import StopRequest
from .job import Job, Progress, same_error, tally
from .stages import BatchWriter, Loaded, StreamingWriter, load_one


def load_encode_write(
    job: Job, todo: list[Candidate], known: Container[str], retried: dict[str, FileRow]
) -> list[str]:
    """Load, encode and commit `todo`; returns the paths that vanished before they could be
    read. A stop (Ctrl-C, `settings.cancel`) commits what is encoded and sets
    `report.interrupted`."""
    with StopRequest(job.settings.cancel) as stop:
        vanished = LocalRun(job, todo, known, retried, stop).run()
        job.report.interrupted = stop.requested
    return vanished


class LocalRun:
    """One pass over `todo`, in file order: up to `settings.prefetch` files load in the pool
    while the head of the queue waits to be written."""

    def __init__(self, job: Job, todo: list[Candidate], known: Container[str],
                 retried: dict[str, FileRow], stop: StopRequest):
        self.job, self.todo, self.known, self.retried, self.stop = job, todo, known, retried, stop
        self.encoder: ImageEncoder | None = None
        self.spec = job.preprocess_hint  # until the model says otherwise
        settings = job.settings
        self.writer = BatchWriter(job.catalog, self._encode, job.model_id, settings.batch_size,
                                  should_stop=lambda: stop.requested)
        self.pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="clipsearch-load")
        self.inflight: deque[tuple[Candidate, Future[Loaded]]] = deque()
        self.pending = iter(todo)
        self.done = 0
        self.vanished: list[str] = []
        self._progress_lock = threading.Lock()  # the loader thread reports a compile
        # Last: the loader thread may report progress at once, with all of the above set.
        loader = ThreadPoolExecutor(1, thread_name_prefix="clipsearch-model")
        self.model: Future[ImageEncoder] = loader.submit(self._load_model)
        loader.shutdown(wait=False)

    def run(self) -> list[str]:
        try:
            if self.spec is None:  # no hint: nothing can be decoded before the model is here
                self._use(self._wait_for_model())
            while not self.stop.requested and self._step():
                pass
            tally(self.job.report, self.writer.flush())  # after a stop: only what is encoded
        finally:
            self._drop_queue()
            self.writer.close()
            # The writer's encode (a bound method) closes a cycle over this run, and through
            # it the encoder: freed by a full garbage collection only, which the CLI skips
            # at exit. Broken here, the encoder goes when its Library lets go of it (the
            # torch fallback's 335 MB weights mapping was still resident at exit).
            del self.writer
        return self.vanished

    def _step(self) -> bool:
        """Write the file at the head of the queue; False when none is left or a stop came
        while it was loading."""
        self._prefetch()
        if not self.inflight:
            return False
        loaded = _result(self.inflight[0][1], self.stop)
        if loaded is None:
            return False
        if self.encoder is None and not self._use(self._wait_for_model()):
            self._redo_queue()
            return True
        self.inflight.popleft()
        self._take(loaded)
        return True

    def _prefetch(self) -> None:
        while len(self.inflight) < self.job.settings.prefetch:
            cand = next(self.pending, None)
            if cand is None:
                return
            self.inflight.append(self._submit(cand))

    def _submit(self, cand: Candidate) -> tuple[Candidate, Future[Loaded]]:
        assert self.spec is not None  # set before the first file is submitted (run)
        min_side = self.spec.min_side if self.job.settings.draft else None  # JPEG draft size
        return cand, self.pool.submit(load_one, cand, self.spec, self._has_vector, min_side)

    def _has_vector(self, digest: str) -> bool:
        return digest in self.known or digest in self.writer.committed_hashes

    def _wait_for_model(self) -> ImageEncoder:
        while True:  # poll, so Ctrl-C is honoured while the model loads
            try:
                encoder = self.model.result(timeout=0.1)
            except FutureTimeout:
                if self.stop.requested:
                    raise KeyboardInterrupt from None
                continue
            if encoder.model_id != self.job.model_id:
                raise ValueError(f"encoder makes {encoder.model_id}, "
                                 f"run expects {self.job.model_id}")
            return encoder

    def _load_model(self) -> ImageEncoder:
        with loading_notices(self._loading):
            return self.job.get_encoder()

    def _loading(self, stage: str, note: str) -> None:
        """The model's maker says what it is doing (a first run's compile): progress says
        so until the first file is written."""
        self._report(Progress(self.done, len(self.todo), stage=stage, note=note))

    def _report(self, progress: Progress) -> None:
        if self.job.progress:
            with self._progress_lock:
                self.job.progress(progress)

    def _use(self, encoder: ImageEncoder) -> bool:
        """Take the loaded model; False when the preprocessing guessed from its config was
        wrong, so the files loaded with the guess must be loaded again."""
        self.encoder = encoder
        self.writer.chunk = encoder.micro_batch
        if isinstance(encoder, LaneEncoder) and encoder.lanes > 1 and not self.writer.records:
            settings = self.job.settings
            self.writer = StreamingWriter(self.job.catalog, self._encode, self.job.model_id,
                                          settings.batch_size, encoder.lanes,
                                          should_stop=lambda: self.stop.requested,
                                          chunk=encoder.micro_batch)
        guess = self.spec
        if guess is not None and same_preprocess(encoder.preprocess, guess):
            return True
        self.spec = encoder.preprocess
        return guess is None

    def _redo_queue(self) -> None:
        for _, future in self.inflight:
            future.cancel()
        self.inflight = deque(self._submit(cand) for cand, _ in self.inflight)

    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        assert self.encoder is not None  # files reach the writer only once the model is here
        return self.encoder.encode_pixels(pixels)

    def _take(self, loaded: Loaded) -> None:
        """Hand one loaded file to the writer (or count it), then report progress."""
        report, path = self.job.report, loaded.cand.path
        self.done += 1
        if loaded.record is None:
            self.vanished.append(path)
        elif same_error(loaded.record, self.retried.get(path)):
            report.known_errors += 1  # retried, failed the same way: no rewrite
        else:
            tally(report, self.writer.add(loaded))
        self._report(Progress(self.done, len(self.todo), path, errors=len(report.skipped)))

    def _drop_queue(self) -> None:
        """Drop queued work at once (Ctrl-C, error, or done); committed batches stay."""
        for _, future in self.inflight:
            future.cancel()
        # After a stop, a read that does not progress (a hung network disk) must not hold
        # the run: its thread is left behind and its result ignored.
        self.pool.shutdown(wait=not (self.stop.requested or self.inflight), cancel_futures=True)


def _result(future: Future[Loaded], stop: StopRequest) -> Loaded | None:
    """The future's result, or None once a stop is requested: polled, since a signal handler
    that only sets a flag would not end a wait on a load that never finishes."""
    while True:
        try:
            return future.result(timeout=0.1)
        except FutureTimeout:
            if stop.requested:
                return None
