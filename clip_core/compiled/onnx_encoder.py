"""An image tower compiled to ONNX (clip_core.compiled.cache), run by onnxruntime without torch.

Each image runs alone (a batch of one) on a single-threaded call, and as many calls run at
once as there are cores. Two reasons:
- int8 dynamic quantisation picks its activation scale from the whole input tensor, so in a
  batch an image's vector would depend on its neighbours; alone, it never does (an interrupted
  and resumed run stores exactly an uninterrupted run's vectors);
- one thread per call needs no thread pool barriers, which cost dearly on a busy 2-core
  machine (docs/benchmarks.md), and measured as fast as batches of 16 on 2 threads.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from clip_core.cpu import available_cores
from clip_core.encoders import MICRO_BATCH, l2_normalise
from clip_core.pixels.preprocess import PreprocessSpec, preprocess_batch


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def new_session(path: Path, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxImageEncoder:
    """Image tower only: numpy pixels in, L2-normalised float32 vectors out. Thread-safe.
    A LaneEncoder (clip_core.encoders): a call of one image runs on the caller's thread, and
    `lanes` (the cores) such calls at once keep the machine busy."""

    def __init__(
        self,
        path: Path,
        model_id: str,
        preprocess: PreprocessSpec,
        embed_dim: int,
        threads: int | None = None,
        precision: str = "int8",
    ):
        self.path = Path(path)
        self.model_id = model_id
        self.preprocess = preprocess
        self.embed_dim = embed_dim
        self.precision = precision
        self.device = "cpu"
        self.micro_batch = MICRO_BATCH
        self.threads = max(1, threads or available_cores())
        self._session = new_session(self.path)
        self._input = self._session.get_inputs()[0].name
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="clipsearch-encode")

    @property
    def lanes(self) -> int:
        return self.threads

    def _one(self, pixels: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: pixels[None]})[0][0]

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """pixels: float32 [N, 3, H, W] as produced by clip_core.pixels.preprocess."""
        pixels = np.ascontiguousarray(pixels, np.float32)
        out = np.empty((len(pixels), self.embed_dim), np.float32)
        if len(pixels) == 1:
            out[0] = self._one(pixels[0])
        else:
            for i, vector in enumerate(self._pool.map(self._one, pixels)):
                out[i] = vector
        return l2_normalise(out)

    def encode_images(self, images: Sequence) -> np.ndarray:
        return self.encode_pixels(preprocess_batch(list(images), self.preprocess))

    def close(self) -> None:
        self._pool.shutdown(wait=False)
