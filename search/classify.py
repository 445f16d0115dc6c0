"""CLIP zero-shot classification: softmax over scaled cosine similarities (the CLIP demo)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .results import LabelScore


def zero_shot(
    image_vector: np.ndarray, label_vectors: np.ndarray, labels: Sequence[str], logit_scale: float
) -> list[LabelScore]:
    """Probabilities of each label for one image, best first."""
    sims = label_vectors @ image_vector
    logits = logit_scale * sims
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    scored = [LabelScore(label, float(p), float(s))
              for label, p, s in zip(labels, probs, sims, strict=True)]
    return sorted(scored, key=lambda x: -x.probability)
