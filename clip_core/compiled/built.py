"""A ViT image tower the compile builds from its weights (clip_core.compiled.compiler): its
fp32 graph's vectors of the probe images (the reference) and its graph files, with the
memory they took handed back as soon as it is not needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clip_core.compiled.int8_variants import Int8Variant
from clip_core.compiled.vit_weights import VitWeights
from clip_core.cpu import available_cores
from clip_core.heap import give_back


class Built:
    """A plain ViT's weights (views of the fp32 torch model's or of the mapped weights
    file's, whose owner is kept alive here) and the graphs vit_graph builds from them."""

    def __init__(self, model: object, weights: VitWeights) -> None:
        self.model = model  # owns the memory the weights' arrays view
        self.weights = weights

    def fp32_vectors(self, probes: np.ndarray) -> np.ndarray:
        """The fp32 graph's vectors of `probes`: a batch a core, each call on one thread.
        Batches, not one image a call as the towers run: without prepacking every call
        packs the weights anew (vit_graph.build). onnxruntime copies the weights into its
        session (prepacking off: no second copy), so a mapped file's pages are released
        meanwhile."""
        from concurrent.futures import ThreadPoolExecutor

        from clip_core.compiled import vit_graph
        from clip_core.encoders import l2_normalise

        lanes = max(1, min(available_cores(), len(probes)))
        batch = -(-len(probes) // lanes)
        padded = np.concatenate([probes, np.repeat(probes[-1:], lanes * batch - len(probes), 0)])
        model, arrays = vit_graph.build(self.weights, batch=batch)
        session = vit_graph.session(model, arrays, fusions=False)  # run once: no fusing
        self._release_pages()  # onnxruntime made its own copy of every weight
        try:
            with ThreadPoolExecutor(lanes) as pool:
                out = list(pool.map(
                    lambda i: session.run(None, {vit_graph.INPUT: padded[i:i + batch]})[0],
                    range(0, len(padded), batch)))
        finally:
            session = None  # its copy of the weights
            release_freed_memory()
        return l2_normalise(np.concatenate(out)[:len(probes)])

    def save(self, path: Path, variant: Int8Variant | None) -> None:
        from clip_core.compiled import vit_graph

        model, arrays = vit_graph.build(self.weights, variant)
        vit_graph.save(model, arrays, path)
        self._release_pages()

    def _release_pages(self) -> None:
        release = getattr(self.model, "release_pages", None)  # a mapped weights file's
        if release is not None:
            release()


def release_freed_memory() -> None:
    """onnxruntime's copies of the weights are thousands of blocks of a few MB, which glibc
    keeps for reuse after they are freed."""
    give_back()
