"""What every image encoder offers its callers, and the constants they share.

Torch-free and at the bottom of clip_core: the torch encoder (clip_core.torch_backend), the
compiled onnxruntime encoder (clip_core.compiled) and the text towers all import from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # a name for type checkers only: the bottom room imports nothing above it
    from clip_core.pixels.preprocess import PreprocessSpec

# Images per encoder call: big enough for efficient matrix kernels, small enough that Ctrl-C
# is noticed between calls within about a second (docs/benchmarks.md).
MICRO_BATCH = 16

GUARD_MIN_COS = 0.999  # every reduced-precision tower (int8, bf16) vs fp32, on probe inputs


@runtime_checkable
class ImageEncoder(Protocol):
    """An image tower with numpy in and out: clip_core.torch_backend.encoder.ClipEncoder and
    clip_core.compiled.onnx_encoder.OnnxImageEncoder. The indexer, the Ray workers and
    `Library` use only these members, whichever of the two they were handed."""

    @property
    def model_id(self) -> str:
        """The id that tags every vector this encoder makes (ModelRef.model_id)."""
        ...

    @property
    def preprocess(self) -> PreprocessSpec:
        """How pixels must be prepared for encode_pixels (clip_core.pixels.preprocess)."""
        ...

    @property
    def embed_dim(self) -> int: ...

    @property
    def micro_batch(self) -> int:
        """Images per call that callers hand over at once: a stop request is polled between
        calls (indexer.stages.BatchWriter)."""
        ...

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """float32 [N, 3, H, W] pixels -> L2-normalised float32 [N, embed_dim] vectors, each
        independent of the other images in the call."""
        ...

    def close(self) -> None:
        """Release what the encoder holds besides memory (threads); it is not used after."""
        ...


@runtime_checkable
class LaneEncoder(ImageEncoder, Protocol):
    """An ImageEncoder whose calls of one image each are its best use: `lanes` such calls may
    run at once, on as many threads (clip_core.compiled.onnx_encoder.OnnxImageEncoder: one
    single-threaded onnxruntime call a core). The indexer's lane threads then take images
    one by one, handed over a micro-batch at a time (indexer.stages.StreamingWriter), instead
    of whole micro-batches that end together."""

    @property
    def lanes(self) -> int: ...


def l2_normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32)


# What making an encoder is busy with, said to whoever waits for it (indexer.local_run shows a
# first run's compile in its progress). Per thread: set where the encoder is made.
_loading_notice: ContextVar[Callable[[str, str], None] | None] = ContextVar(
    "clipsearch_loading_notice", default=None)


@contextlib.contextmanager
def loading_notices(callback: Callable[[str, str], None]) -> Iterator[None]:
    """Encoders made in this block (this thread) tell `callback(stage, note)` what they
    are doing."""
    token = _loading_notice.set(callback)
    try:
        yield
    finally:
        _loading_notice.reset(token)


def notify_loading(stage: str, note: str) -> None:
    """Said by an encoder's maker before a long step: ("compiling", "compiling ViT-B-32 for
    this CPU (once)")."""
    callback = _loading_notice.get()
    if callback is not None:
        callback(stage, note)
