"""CLIP-like unit vectors for scale benchmarks (docs/scale.md, "The vectors").

Uniform random unit vectors are the easiest case for an approximate index and nothing like
CLIP: every pair is ~orthogonal, no point has a near neighbour. Real CLIP image vectors sit
in a narrow cone (a common direction shared by all pictures), form topics and, inside a
topic, tighter groups (a trip, a burst of shots). This generator draws from a fixed "world":

    x = sqrt(COMMON) mu + sqrt(TOPIC) t[k] + sqrt(GROUP) g[k, j] + sqrt(NOISE) e,  normalised

with mu one unit direction, t[k] 1000 topic directions, g[k, j] 20 group directions per
topic (20k groups), e Gaussian noise of unit expected norm; topics and groups are drawn with
Zipf-like weights (a few big ones, many small). Cosine of two pictures: ~0.40 unrelated,
~0.55 same topic, ~0.70 same group; 30% of pictures are near-copies of another (a
burst: cosine ~0.95). Queries (text vectors) live in their own cone (CLIP's
modality gap: their own common direction, not the pictures'), aimed at one group. The world
and each chunk are seeded, so any size draws the same distribution, chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

COMMON, TOPIC, GROUP, NOISE = 0.40, 0.15, 0.15, 0.30  # squared shares of a vector's norm
TOPICS, GROUPS_PER_TOPIC = 1000, 20
CHUNK = 50_000
BURST = 0.3  # share of near-copies


class World:
    def __init__(self, dim: int = 512, seed: int = 7):
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.seed = seed
        self.common = _unit(rng.standard_normal(dim))
        self.text_common = _unit(rng.standard_normal(dim))
        self.topics = _unit(rng.standard_normal((TOPICS, dim))).astype(np.float32)
        self.groups = _unit(rng.standard_normal((TOPICS * GROUPS_PER_TOPIC, dim))) \
            .astype(np.float32)
        self.topic_p = _zipf(TOPICS)
        self.group_p = _zipf(GROUPS_PER_TOPIC)

    def _pick(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        topic = rng.choice(TOPICS, size=n, p=self.topic_p)
        group = topic * GROUPS_PER_TOPIC + rng.choice(GROUPS_PER_TOPIC, size=n, p=self.group_p)
        return topic, group

    def vectors(self, start: int, n: int) -> np.ndarray:
        """Vectors start .. start+n of this world's endless sequence (float32, unit)."""
        parts = []
        first = start // CHUNK
        for chunk in range(first, (start + n - 1) // CHUNK + 1):
            parts.append(self._chunk(chunk))
        allv = np.concatenate(parts) if parts else np.empty((0, self.dim), np.float32)
        lo = start - first * CHUNK
        return allv[lo:lo + n]

    def _chunk(self, chunk: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, chunk])
        topic, group = self._pick(rng, CHUNK)
        noise = rng.standard_normal((CHUNK, self.dim), dtype=np.float32) / np.sqrt(self.dim)
        x = (np.sqrt(COMMON) * self.common + np.sqrt(TOPIC) * self.topics[topic]
             + np.sqrt(GROUP) * self.groups[group] + np.sqrt(NOISE) * noise)
        x = _unit(x)
        # Bursts: a share of the pictures are near-copies of another (cosine ~0.95), as
        # shots of one scene are.
        burst = rng.random(CHUNK) < BURST
        source = rng.integers(0, CHUNK, int(burst.sum()))
        jitter = rng.standard_normal((len(source), self.dim), dtype=np.float32)
        x[burst] = _unit(x[source] + 0.33 * jitter / np.sqrt(self.dim))
        return x.astype(np.float32)

    def iter_vectors(self, count: int, batch: int = CHUNK) -> Iterator[np.ndarray]:
        for start in range(0, count, batch):
            yield self.vectors(start, min(batch, count - start))

    def queries(self, n: int, seed: int = 99) -> np.ndarray:
        """Text-like query vectors: their own common direction (the modality gap), aimed
        at a group, with as much noise as a picture."""
        rng = np.random.default_rng([self.seed, seed, 1])
        _, group = self._pick(rng, n)
        noise = rng.standard_normal((n, self.dim), dtype=np.float32) / np.sqrt(self.dim)
        x = (0.6 * self.text_common + 0.3 * self.common
             + 0.35 * self.topics[group // GROUPS_PER_TOPIC]
             + 0.35 * self.groups[group] + 0.5 * noise)
        return _unit(x).astype(np.float32)


def cosine_stats(vectors: np.ndarray, sample: int = 2000, seed: int = 0) -> dict:
    """The figures docs/scale.md compares: mean and spread of the cosine of random pairs,
    cosine to the mean direction (how narrow the cone is), and each vector's nearest
    neighbour within the sample (how clustered)."""
    v = _unit(np.asarray(vectors, np.float64))
    rng = np.random.default_rng(seed)
    if len(v) > sample:
        v = v[rng.choice(len(v), sample, replace=False)]
    sims = v @ v.T
    upper = sims[np.triu_indices(len(v), 1)]
    np.fill_diagonal(sims, -2.0)
    mean_dir = _unit(v.mean(axis=0))
    return {
        "n": int(len(v)),
        "pair_cos_mean": round(float(upper.mean()), 3),
        "pair_cos_std": round(float(upper.std()), 3),
        "pair_cos_p5_p95": [round(float(x), 3) for x in np.percentile(upper, [5, 95])],
        "cos_to_mean_dir": round(float((v @ mean_dir).mean()), 3),
        "nn_cos_median": round(float(np.median(sims.max(axis=1))), 3),
    }


def _zipf(n: int, s: float = 1.0) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
