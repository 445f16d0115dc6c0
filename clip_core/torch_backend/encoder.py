"""Turn preprocessed pixels and texts into L2-normalised embeddings (numpy float32)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clip_core.encoders import MICRO_BATCH, l2_normalise
from clip_core.models.files import ensure_local
from clip_core.models.ref import ModelRef
from clip_core.pixels.preprocess import PreprocessSpec, preprocess_batch
from clip_core.torch_backend.device import choose_device, choose_precision
from clip_core.torch_backend.loading import TOWERS, LoadedModel, drop_unused_towers, load_model


class ClipEncoder:
    """A loaded CLIP model with numpy in, numpy out. Thread-compatible, not thread-safe.

    An ImageEncoder (clip_core.encoders), with the text tower besides when loaded with it."""

    def __init__(self, loaded: LoadedModel, micro_batch: int = MICRO_BATCH):
        import torch

        self.loaded = loaded
        self.micro_batch = micro_batch
        self._torch = torch
        model = loaded.model
        # After a whole-model cast, inputs must match the weights' dtype (open_clip casts none).
        visual = getattr(model, "visual", model)  # an image tower alone (compiled.vit_torch)
        conv = getattr(visual, "conv1", None)
        if conv is not None:
            self._image_dtype = conv.weight.dtype
        else:
            params = list(visual.parameters()) if visual is not None else []
            self._image_dtype = params[-1].dtype if params else torch.float32

    @classmethod
    def load(
        cls,
        ref: ModelRef,
        *,
        device: str = "auto",
        precision: str = "auto",
        towers: frozenset[str] = TOWERS,
        models_dir: Path | None = None,
    ) -> ClipEncoder:
        ensure_local(ref, models_dir)  # before importing torch: a missing model fails at once
        dev = choose_device(device)
        return cls(load_model(ref, device=dev, precision=choose_precision(dev, precision),
                              towers=towers, models_dir=models_dir))

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    @property
    def preprocess(self) -> PreprocessSpec:
        return self.loaded.preprocess

    @property
    def embed_dim(self) -> int:
        return self.loaded.embed_dim

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """pixels: float32 [N, 3, H, W] as produced by clip_core.pixels.preprocess.

        Runs in fixed-size micro-batches, the last one zero-padded: kernels (bf16 especially)
        may pick other code paths, and round differently, for other batch shapes, so a fixed
        shape makes every image's vector independent of which batch it arrived in. An
        interrupted and resumed index run then stores exactly the vectors of an uninterrupted
        one."""
        torch = self._torch
        size = self.micro_batch
        pixels = np.asarray(pixels, np.float32)
        out = np.empty((len(pixels), self.embed_dim), np.float32)
        with torch.inference_mode():
            for start in range(0, len(pixels), size):
                chunk = pixels[start : start + size]
                padded = np.ascontiguousarray(chunk)  # a full chunk as it is (no 10 MB copy)
                if len(chunk) < size or not padded.flags.writeable:
                    padded = np.zeros((size, *pixels.shape[1:]), np.float32)
                    padded[: len(chunk)] = chunk
                batch = torch.from_numpy(padded).to(self.loaded.device, self._image_dtype)
                features = self.loaded.model.encode_image(batch)[: len(chunk)]
                out[start : start + len(chunk)] = features.float().cpu().numpy()
        return l2_normalise(out)

    def close(self) -> None:
        """Nothing to release: torch's memory goes with the object, and it starts no
        threads of its own (ImageEncoder.close is for the compiled encoder's pool)."""

    def encode_images(self, images: Sequence) -> np.ndarray:
        """PIL images (RGB) -> embeddings; for one-off use, the indexer batches pixels itself."""
        return self.encode_pixels(preprocess_batch(list(images), self.loaded.preprocess))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if self.loaded.tokenizer is None:
            raise RuntimeError("this encoder was loaded without its text tower")
        torch = self._torch
        with torch.inference_mode():
            tokens = self.loaded.tokenizer(list(texts))
            tokens = torch.as_tensor(np.asarray(tokens)).to(self.loaded.device)
            features = self.loaded.model.encode_text(tokens)
            return l2_normalise(features.float().cpu().numpy())

    def drop_text_tower(self) -> None:
        """Free the text tower's memory (an index run only needs the image tower)."""
        drop_unused_towers(self.loaded.model, frozenset({"image"}))
        self.loaded.tokenizer = None

    @property
    def logit_scale(self) -> float:
        from clip_core.torch_backend.text_export import logit_scale

        return logit_scale(self.loaded.model)
