"""Near-duplicate photos: bursts, resized or re-encoded copies, small crops.

Two steps (docs/search.md has the measured distributions behind both thresholds):

1. candidates from the stored vectors: a range search of every vector against all others
   (exact fp32, BLAS products tile by tile) keeps the pairs whose cosine is above `threshold`;
   files with the same content hash (exact copies) are grouped whatever the threshold;
2. each candidate pair is confirmed on the pixels: an 8x8 colour thumbnail of each file
   (mean removed) must correlate at least PIXEL_THRESHOLD. CLIP vectors say "the same kind
   of picture"; a small model says so of every red circle on grey wherever the circle sits,
   and the thumbnail tells a copy from another picture of the same scene. Only candidates
   are read, each once.

Pairs join into groups transitively (union-find). Groups come largest first, each with its
best-quality member first: most pixels, then newest (file mtime), then path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from clipsearch_errors import UsageError

DEFAULT_THRESHOLD = 0.95  # vector cosine for candidates
PIXEL_THRESHOLD = 0.7  # thumbnail correlation that confirms a candidate
THUMB_SIDE = 8
TILE = (1024, 2048)  # rows x columns of scores a worker holds at once (8 MB)


@dataclass(frozen=True)
class DuplicateMember:
    file_id: int
    path: str
    width: int | None
    height: int | None
    size: int | None  # bytes
    mtime_ns: int | None
    score: float  # cosine with the group's first (best) member

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DuplicateGroup:
    members: tuple[DuplicateMember, ...]  # best quality first
    exact: bool  # every member has the same bytes (one content hash)

    def to_dict(self) -> dict:
        return {"size": len(self.members), "exact": self.exact,
                "members": [m.to_dict() for m in self.members]}


def thumbnail_signature(path: str) -> np.ndarray | None:
    """The pixel check's signature: an 8x8 RGB box thumbnail, mean removed, unit length;
    None when the file is gone or no longer an image."""
    from PIL import Image

    from clip_core.pixels.decode import DecodeError, decode_image

    try:
        image = decode_image(path, min_side=4 * THUMB_SIDE).image
    except (DecodeError, OSError):
        return None
    thumb = np.asarray(image.resize((THUMB_SIDE, THUMB_SIDE), Image.BOX), np.float32).ravel()
    thumb = thumb - thumb.mean()
    return thumb / max(float(np.linalg.norm(thumb)), 1e-6)


def candidate_pairs(vectors: np.ndarray, threshold: float, tile: tuple[int, int] = TILE,
                    workers: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows a, rows b, cosine) of every pair a < b with cosine above threshold (exact fp32).
    The upper triangle in tiles of `tile` scores, one single-threaded BLAS product each, on
    `workers` threads (default: every core). A tile's scores stay in cache while they are
    compared with the threshold, where a whole band of rows against the rest (64 MB) went
    to memory and back: 100k vectors on 2 cores 35% faster with AVX2 kernels and with
    AVX-512 alike (docs/benchmarks.md). Half the time of FAISS's range search, which
    computes both triangles."""
    from concurrent.futures import ThreadPoolExecutor

    from clip_core.cpu import available_cores, single_thread_blas

    vectors = np.ascontiguousarray(vectors, np.float32)
    n = len(vectors)
    rows_per, cols_per = tile

    def pairs_in(corner: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        top, left = corner
        scores = vectors[top:top + rows_per] @ vectors[left:left + cols_per].T
        rows, cols = np.nonzero(scores > threshold)
        keep = cols + left > rows + top  # each pair once, never a vector with itself
        rows, cols = rows[keep], cols[keep]
        return rows + top, cols + left, scores[rows, cols]

    corners = [(top, left) for top in range(0, n, rows_per) for left in range(top, n, cols_per)]
    with single_thread_blas(), ThreadPoolExecutor(
            workers or available_cores(), thread_name_prefix="clipsearch-duplicates") as pool:
        found = list(pool.map(pairs_in, corners))
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    firsts, seconds, scores = zip(*found, strict=True)
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(scores)


def find_duplicates(
    ids: np.ndarray,
    vectors: np.ndarray,
    rows: Callable[[list[int]], dict[int, dict]],
    threshold: float = DEFAULT_THRESHOLD,
    same_content: list[list[int]] = (),
    signature: Callable[[str], np.ndarray | None] = thumbnail_signature,
) -> list[DuplicateGroup]:
    """Groups of near-duplicates among files `ids` (their unit `vectors`, row for row).
    `rows(file_ids)` gives catalog rows (path, width, height, size, mtime_ns,
    content_hash); `same_content`: groups of file ids with one content hash (exact copies,
    grouped whatever the threshold)."""
    if isinstance(threshold, bool) or not -1.0 <= float(threshold) <= 1.0:
        raise UsageError(f"threshold is a cosine between -1 and 1, not {threshold!r}")
    if len(ids) < 2:
        return []
    a, b, _ = candidate_pairs(vectors, float(threshold))
    known = set(ids.tolist())
    copies = [[f for f in group if f in known] for group in same_content]
    involved = {int(ids[i]) for i in np.concatenate([a, b])}
    involved.update(f for group in copies for f in group)
    info = rows(sorted(involved))
    parent = {file_id: file_id for file_id in info}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    signatures: dict[int, np.ndarray | None] = {}

    def sig(file_id: int) -> np.ndarray | None:
        if file_id not in signatures:
            signatures[file_id] = signature(info[file_id]["path"])
        return signatures[file_id]

    for group in copies:
        for x, y in zip(group, group[1:], strict=False):
            if x in info and y in info:
                parent[find(x)] = find(y)
    for i, j in zip(a.tolist(), b.tolist(), strict=True):
        x, y = int(ids[i]), int(ids[j])
        if x not in info or y not in info:
            continue  # deleted since the vectors were read
        if info[x]["content_hash"] != info[y]["content_hash"]:
            sx, sy = sig(x), sig(y)
            if sx is None or sy is None or float(sx @ sy) < PIXEL_THRESHOLD:
                continue
        parent[find(x)] = find(y)
    by_root: dict[int, list[int]] = {}
    for file_id in info:
        by_root.setdefault(find(file_id), []).append(file_id)
    row_of = {int(file_id): n for n, file_id in enumerate(ids.tolist())}
    groups = [_group(members, info, vectors, row_of)
              for members in by_root.values() if len(members) > 1]
    groups.sort(key=lambda g: (-len(g.members), os.fsencode(g.members[0].path)))
    return groups


def _group(members: list[int], info: dict[int, dict], vectors: np.ndarray,
           row_of: dict[int, int]) -> DuplicateGroup:
    def quality(file_id: int) -> tuple:
        row = info[file_id]
        pixels = (row["width"] or 0) * (row["height"] or 0)
        return (-pixels, -(row["mtime_ns"] or 0), os.fsencode(row["path"]))

    ordered = sorted(members, key=quality)
    best = vectors[row_of[ordered[0]]]
    out = tuple(
        DuplicateMember(file_id=f, path=info[f]["path"], width=info[f]["width"],
                        height=info[f]["height"], size=info[f]["size"],
                        mtime_ns=info[f]["mtime_ns"],
                        score=round(float(vectors[row_of[f]] @ best), 6))
        for f in ordered)
    exact = len({info[f]["content_hash"] for f in ordered}) == 1
    return DuplicateGroup(out, exact)
