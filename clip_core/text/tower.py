"""open_clip text tower exported to a flat file and run in pure numpy.

Why: ``import torch, open_clip`` costs ~3 s, far over a cold query's budget. The indexer
(torch already loaded) calls ``export_text_tower`` once; queries load the file with
``NumpyTextTower.load`` (memory-mapped, no torch, no safetensors import) and encode tokens
from ``clip_core.text.tokenizer.ClipTokenizer``.

File format: a standard safetensors file (tensor names follow open_clip's state dict) whose
``__metadata__`` holds our JSON header under ``HEADER_KEY``, written by the safetensors package
(clip_core.torch_backend.text_export). It is read here with a tiny parser over ``mmap`` so
tensors are zero-copy views: only pages actually touched count to RSS (just the few
token-embedding rows a query uses), and each block's pages are released after use, so a
ViT-B-32 query peaks at ~85 MB RSS instead of ~220 MB. The package's numpy reader
(``safe_open(framework="np")``) copies every tensor: measured on ViT-B-32, +243 MB RSS and
0.5 s where the mmap costs +8 MB and 0.07 s. fp32 on disk:
fp16 halved the file but its per-query widening tripled encode time (35 -> 100 ms).

Module must stay importable without torch: torch is imported lazily in export only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clip_core.encoders import GUARD_MIN_COS
from clip_core.heap import give_back
from clip_core.text import file_check
from clipsearch_errors import ModelError

HEADER_KEY = "clipsearch.text_tower"
FORMAT_VERSION = 1
_CLIP_BPE_VOCAB = 49408
_ACTS = ("gelu", "gelu_tanh", "quick_gelu")
_ST_DTYPES = {"F32": np.float32, "F16": np.float16}
_BLOCK_TENSORS = (
    "ln_1.weight", "ln_1.bias",
    "attn.in_proj_weight", "attn.in_proj_bias",
    "attn.out_proj.weight", "attn.out_proj.bias",
    "ln_2.weight", "ln_2.bias",
    "mlp.c_fc.weight", "mlp.c_fc.bias",
    "mlp.c_proj.weight", "mlp.c_proj.bias",
)  # fmt: skip


class UnsupportedTextTower(ModelError, ValueError):
    """The model's text tower cannot be reproduced exactly in numpy; use torch instead."""


# ---------------------------------------------------------------- numpy inference


def write_tower_file(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    """Written by the safetensors package (without a copy of the arrays), to a temp file renamed
    into place: a concurrent query never sees a half-written file. Files of the hand-written
    writer before it (tensors in export order) are the same format and read the same."""
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        try:
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp), meta)
        except SafetensorError as exc:  # its I/O errors: OSError again (a full disk is
            # one message and a resumable run to the indexer)
            code = re.search(r"os error (\d+)", str(exc))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(tmp)) from exc
        digest, size = file_check.hash_file(tmp), tmp.stat().st_size  # what reached the disk
        os.replace(tmp, path)
        # Recorded after the file is in place: a crash in between leaves a file without its
        # checksum, which counts as damaged and is rebuilt.
        file_check.record(path, digest, size)
    finally:
        tmp.unlink(missing_ok=True)


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str], mmap.mmap]:
    """Zero-copy views of every tensor over an mmap of the file, its metadata, the mmap."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path} is not a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > os.fstat(f.fileno()).st_size - 8:  # damaged: never allocate what it claims
            raise ValueError(f"{path} is not a safetensors file (header size {n})")
        raw = json.loads(f.read(n))  # garbage -> JSONDecodeError, a ValueError
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    meta = raw.pop("__metadata__", None) or {}
    base = 8 + n
    out = {}
    for name, spec in raw.items():
        dt = _ST_DTYPES.get(spec["dtype"])
        if dt is None:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {spec['dtype']}")
        start, end = spec["data_offsets"]
        count = (end - start) // np.dtype(dt).itemsize
        arr = np.frombuffer(buf, dtype=dt, count=count, offset=base + start)
        out[name] = arr.reshape(spec["shape"])
    return out, meta, buf


@dataclass
class _Block:
    ln_1: tuple[np.ndarray, np.ndarray]
    in_w: np.ndarray
    in_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    ln_2: tuple[np.ndarray, np.ndarray]
    fc_w: np.ndarray
    fc_b: np.ndarray
    proj_w: np.ndarray
    proj_b: np.ndarray
    ls_1: np.ndarray | None
    ls_2: np.ndarray | None


def _f32(a: np.ndarray) -> np.ndarray:
    # fp16-on-disk weights are widened per use: a one-shot query converts each once
    # anyway, and keeping no fp32 copy keeps RSS at the (half-size) mapped pages.
    return a if a.dtype == np.float32 else a.astype(np.float32)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    var = np.mean(xc * xc, axis=-1, keepdims=True)
    return xc / np.sqrt(var + np.float32(eps)) * _f32(w) + _f32(b)


def _erf(x: np.ndarray) -> np.ndarray:
    # numpy has no erf; Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7 (float32 level).
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + np.float32(0.3275911) * a)
    poly = t * (
        np.float32(0.254829592)
        + t * (np.float32(-0.284496736)
        + t * (np.float32(1.421413741)
        + t * (np.float32(-1.453152027) + t * np.float32(1.061405429))))
    )  # fmt: skip
    return s * (1.0 - poly * np.exp(-a * a))


def _linear(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    # torch layout w [out, in]; flatten leading dims so BLAS sees one GEMM (w.T is a view).
    y = x.reshape(-1, x.shape[-1]) @ _f32(w).T + _f32(b)
    return y.reshape(*x.shape[:-1], w.shape[0])


def _act(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "gelu":
        return np.float32(0.5) * x * (1.0 + _erf(x * np.float32(0.7071067811865476)))
    if kind == "gelu_tanh":
        inner = np.float32(0.7978845608028654) * (x + np.float32(0.044715) * x * x * x)
        return np.float32(0.5) * x * (1.0 + np.tanh(inner))
    # quick_gelu x * sigmoid(1.702 x), via tanh to avoid exp overflow warnings.
    return x * (np.float32(0.5) + np.float32(0.5) * np.tanh(np.float32(0.851) * x))


# BLAS runs single-threaded here: a query is a few rows per GEMM, where OpenBLAS's thread
# pool only adds sync cost, and on a busy 2-core machine its spinning threads took "a cat"
# from ~35 ms to ~1 s (a 6-text batch from 0.8 s to 4 s). Idle, threads gain < 2x on big
# batches, which the indexer (torch) encodes anyway. Still so with the onnxruntime tower,
# which only long-lived apps use: measured again for the CLI's one-shot numpy tower (ViT-B-32,
# 2 cores at load 10), "a cat" took 0.12-0.26 s on one thread, 1.1-4.1 s on two.
_CHUNK = 32  # texts per forward pass, grouped by length so little padding is computed


INT8_MIN_COS = GUARD_MIN_COS  # one bar for every reduced-precision tower


def probe_tokens(context_length: int, vocab: int, count: int = 8,
                 seed: int = 7, shortest: int = 2) -> np.ndarray:
    """Token rows of several lengths, `shortest` words and up: start token, random words,
    end token (the largest id, which argmax pooling reads), padding. For checking a faster
    tower against fp32. Up to 40 words: queries are short, and the numpy reference costs
    ~0.1 s a row at full length."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((count, context_length), np.int64)
    longest = min(context_length - 2, 40)
    shortest = min(shortest, longest)
    for i, length in enumerate(np.linspace(shortest, longest, count).astype(int)):
        rows[i, 0], rows[i, length + 1] = vocab - 2, vocab - 1
        rows[i, 1 : length + 1] = rng.integers(1, vocab - 2, length)
    return rows


class NumpyTextTower:
    """Pure-numpy float32 forward pass of an exported open_clip text tower."""

    def __init__(self, header: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        if header.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"text tower format {header.get('format_version')} unsupported")
        if header["act"] not in _ACTS or header["pool_type"] != "argmax":
            raise ValueError(f"text tower header not understood: {header}")
        self.header = header
        self.context_length: int = header["context_length"]
        self.embed_dim: int = header["embed_dim"]
        self.logit_scale: float | None = header.get("logit_scale")  # None: older export
        self.heads: int = header["heads"]
        self.eps: float = header["ln_eps"]
        self.act: str = header["act"]
        self.token_embedding = tensors["token_embedding"]
        self.positional_embedding = tensors["positional_embedding"]
        self.ln_final = (tensors["ln_final.weight"], tensors["ln_final.bias"])
        self.text_projection = tensors.get("text_projection")
        self._mapping: mmap.mmap | None = None  # set by load(release_pages=True)
        self._whole_mapping: mmap.mmap | None = None  # set by load()
        self.single_thread = True
        self._onnx: Any = None  # OnnxTextBlocks, set by use_onnxruntime()
        self._start: tuple[int, np.ndarray, np.ndarray] | None = None  # start_state()
        self.int8_agreement: float | None = None  # min cosine to fp32 on probe_tokens
        self.int8_tried: dict[str, float] = {}  # each int8 kind tried: its agreement
        self._probe_vectors: np.ndarray | None = None  # fp32's, for every kind tried
        self._fp32: Any = None  # fp32 OnnxTextBlocks, made once when needed
        self.int8_timing: tuple[float, float] | None = None  # (int8 s, fp32 s) when timed
        self.runner_seconds: dict[str, float] = {}  # use_fastest's timings
        self.blocks = []
        for i in range(header["layers"]):
            p = f"resblocks.{i}."
            self.blocks.append(
                _Block(
                    ln_1=(tensors[p + "ln_1.weight"], tensors[p + "ln_1.bias"]),
                    in_w=tensors[p + "attn.in_proj_weight"],
                    in_b=tensors[p + "attn.in_proj_bias"],
                    out_w=tensors[p + "attn.out_proj.weight"],
                    out_b=tensors[p + "attn.out_proj.bias"],
                    ln_2=(tensors[p + "ln_2.weight"], tensors[p + "ln_2.bias"]),
                    fc_w=tensors[p + "mlp.c_fc.weight"],
                    fc_b=tensors[p + "mlp.c_fc.bias"],
                    proj_w=tensors[p + "mlp.c_proj.weight"],
                    proj_b=tensors[p + "mlp.c_proj.bias"],
                    ls_1=tensors.get(p + "ls_1.gamma"),
                    ls_2=tensors.get(p + "ls_2.gamma"),
                )
            )

    @classmethod
    def load(
        cls, path: Path, release_pages: bool = True, single_thread: bool | None = None,
        check: bool = True,
    ) -> NumpyTextTower:
        """Map ``path``; with ``release_pages`` each block's pages are unmapped after use.
        ``check``: first match it against the checksum recorded at export (raises
        file_check.DamagedFile, a ValueError, on a mismatch; only a stat once it matched).

        Released pages stay in the page cache (a re-touch is a cheap minor fault), but
        leave this process's RSS: peak RSS is then ~one block (12 MB for ViT-B-32)
        instead of all of them (151 MB), leaving room for the vector index.
        """
        if check:
            file_check.verify(Path(path))
        tensors, meta, buf = _read_safetensors(Path(path))
        if HEADER_KEY not in meta:
            raise ValueError(f"{path} is not an exported clipsearch text tower")
        tower = cls(json.loads(meta[HEADER_KEY]), tensors)
        # One-shot (low-memory) use runs BLAS on one thread: on a busy 2-core machine threads
        # waiting at barriers cost ~30x; a long-lived process keeps pages and threads
        # (2 threads: 42 -> 24 ms per ViT-B-32 query on an idle machine).
        tower.single_thread = release_pages if single_thread is None else single_thread
        tower._whole_mapping = buf
        if release_pages and hasattr(buf, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            tower._mapping = buf
        return tower

    def use_onnxruntime(self, int8: bool = False, timed: bool = False,
                        kinds: Sequence[str] | None = None) -> bool:
        """Run the blocks on onnxruntime from now on (same fp32 function, ~3x faster per
        query; clip_core.text.tower_onnx). For long-lived processes: it keeps every weight
        page resident. `int8`: int8 matrix products (~1.7-3.5x faster again), of the first of
        `kinds` (default: tower_onnx.INT8_KINDS, all of them) that agrees with fp32 within
        INT8_MIN_COS on probe texts and, when `timed` (CPUs without int8 dot products:
        clip_core.cpu.text_int8_timed), ran a query faster than fp32's here; fp32 where none
        does. Returns False, changing nothing, where onnxruntime is unavailable."""
        if self._onnx is None and self._mapping is None:
            try:
                self._onnx = self._first_int8(kinds, timed) if int8 else None
                if self._onnx is None:
                    self._onnx = self._fp32_blocks()
                else:
                    self._fp32 = None  # its session, made only to time int8 against
                    self._release_fp32_pages()
            except Exception as exc:  # missing package or an odd graph: numpy still works
                logging.getLogger(__name__).info("text tower stays on numpy: %s", exc)
                self._onnx = None
                return False
        return self._onnx is not None

    def _first_int8(self, kinds: Sequence[str] | None, timed: bool) -> Any:
        from clip_core.text.tower_onnx import INT8_KINDS, OnnxTextBlocks

        for kind in INT8_KINDS if kinds is None else kinds:
            blocks = OnnxTextBlocks(self, kind=kind)
            if not self._agrees(blocks):
                continue
            if timed:
                int8_s, fp32_s = self._query_seconds([blocks, self._fp32_blocks()])
                self.int8_timing = (int8_s, fp32_s)
                if int8_s >= fp32_s:
                    continue
            return blocks
        return None

    def use_fastest(self, kinds: Sequence[str], known: str | None = None,
                    with_fp32: bool = True) -> dict[str, float]:
        """Run the blocks on onnxruntime (long-lived processes, as use_onnxruntime) with the
        fastest runner here: each int8 kind of `kinds` that agrees with fp32 within
        INT8_MIN_COS on probe texts, and fp32 itself when `with_fp32` (where int8 is not
        surely faster: clip_core.cpu.text_int8_timed; its session prepacks a copy of the
        weights, ViT-B-32: ~150 MB more at the peak), timed in turns; fp32 where none agrees.
        `known`: a runner chosen so before (clip_core.text.runner_record), built alone and
        kept, untimed, while it still agrees. Returns each timed runner's seconds a query
        ({}: nothing was timed, one runner being left); `runner` then names the one kept.
        Changes nothing where onnxruntime is unavailable (numpy runs, "numpy")."""
        from clip_core.text.tower_onnx import OnnxTextBlocks

        if self._onnx is not None or self._mapping is not None:
            return {}
        try:
            if known == "fp32":
                self._keep(self._fp32_blocks())
                return {}
            if known in kinds:
                blocks = OnnxTextBlocks(self, kind=known)
                if self._agrees(blocks):
                    self._keep(blocks)
                    return {}
            runners = [OnnxTextBlocks(self, kind=k) for k in kinds if k != known]
            runners = [b for b in runners if self._agrees(b)]
            if with_fp32 or not runners:
                runners.append(self._fp32_blocks())
            if len(runners) == 1:
                self._keep(runners[0])
                return {}
            seconds = self._query_seconds(runners)
            self._keep(runners[int(np.argmin(seconds))])
            self.runner_seconds = {b.kind: s for b, s in zip(runners, seconds, strict=True)}
            runners.clear()  # the others' weights and sessions (ViT-B-32: ~110 MB) go back
            give_back()
            return self.runner_seconds
        except Exception as exc:  # missing package or an odd graph: numpy still works
            logging.getLogger(__name__).info("text tower stays on numpy: %s", exc)
            self._onnx = self._fp32 = None
            return {}

    def _keep(self, blocks: Any) -> None:
        """Run on `blocks` from now on; the others are dropped (an int8 kind's: the fp32
        session made to time or check it, and the fp32 pages the checks read)."""
        self._onnx = blocks
        if blocks.kind != "fp32":
            self._fp32 = None
            self._release_fp32_pages()

    @property
    def runner(self) -> str:
        """The runner's name as runner_record keeps it: an int8 kind, "fp32", "numpy"."""
        return self._onnx.kind if self._onnx is not None else "numpy"

    def int8_agreements(self, kinds: Sequence[str]) -> dict[str, float]:
        """Each int8 kind's min cosine to fp32 on the probe texts, as use_onnxruntime checks
        it, keeping none (for reports: one fp32 reference serves every kind)."""
        from clip_core.text.tower_onnx import OnnxTextBlocks

        for kind in kinds:
            self._agrees(OnnxTextBlocks(self, kind=kind))
        return {kind: self.int8_tried[kind] for kind in kinds}

    def _fp32_blocks(self) -> Any:
        from clip_core.text.tower_onnx import OnnxTextBlocks

        if self._fp32 is None:
            self._fp32 = OnnxTextBlocks(self)
        return self._fp32

    @property
    def precision(self) -> str:
        """What runs the blocks: "int8" or "fp32" on onnxruntime, "numpy" (fp32)."""
        return self._onnx.precision if self._onnx is not None else "numpy"

    @property
    def kind(self) -> str:
        """"int8-dynamic", "int8-unsigned", "int8-blocks", "fp32" (onnxruntime;
        tower_onnx.KINDS), "numpy"."""
        if self._onnx is None:
            return "numpy"
        return self._onnx.kind if self._onnx.kind == "fp32" else f"int8-{self._onnx.kind}"

    def _agrees(self, blocks: Any) -> bool:
        tokens = probe_tokens(self.context_length, self.token_embedding.shape[0])
        if self._probe_vectors is None:
            self._probe_vectors = self.encode_tokens(tokens)  # fp32 numpy: no _onnx yet
        self._onnx = blocks
        try:
            ours = self.encode_tokens(tokens)
        finally:
            self._onnx = None
        self.int8_agreement = float((ours * self._probe_vectors).sum(axis=1).min())
        self.int8_tried[blocks.kind] = self.int8_agreement
        if self.int8_agreement < INT8_MIN_COS:
            logging.getLogger(__name__).info("int8 text tower (%s) at cosine %.5f: not kept",
                                             blocks.kind, self.int8_agreement)
        return self.int8_agreement >= INT8_MIN_COS

    def _query_seconds(self, runners: Sequence[Any], rounds: int = 7) -> list[float]:
        """Median time of one short query through each block runner (after a warm-up run
        each), run in turns: a slow spell of the machine slows all alike, and each runner's
        weights are read from memory as in a warm query, after the vector scan evicted them
        (alone, a tower's weights stay in cache and the ranking may differ)."""
        import time

        # a query of six words ("a cat asleep on a sofa"): with two, "unsigned" and
        # "blocks" tied on AVX2 kernels (5.55 / 5.35 ms); with six "blocks" won by 5-9%,
        # as it did in whole warm queries
        tokens = probe_tokens(self.context_length, self.token_embedding.shape[0], count=1,
                              shortest=6)
        times: list[list[float]] = [[] for _ in runners]
        try:
            for round_ in range(rounds + 1):
                for i, blocks in enumerate(runners):
                    self._onnx = blocks
                    start = time.perf_counter()
                    self.encode_tokens(tokens)
                    if round_:  # round 0 warms up
                        times[i].append(time.perf_counter() - start)
        finally:
            self._onnx = None
        return [float(np.median(t)) for t in times]

    def _release_fp32_pages(self) -> None:
        """With int8 blocks (their own copies of the matrices) the fp32 matrices are never
        read again, but the checks above paged all of them in (ViT-B-32: 240 of a warm
        process's 770 MB at 100k vectors). Drop every page of the mapping from this process:
        what a query still reads (its token rows, norms, biases: a few MB) faults back in
        from the page cache."""
        buf = self._whole_mapping
        if buf is not None and hasattr(buf, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            buf.madvise(mmap.MADV_DONTNEED)

    def _release(self, blk: _Block) -> None:
        """Drop the pages under one block's weights from this process (not the cache)."""
        if self._mapping is None:
            return
        base = np.frombuffer(self._mapping, np.uint8, count=1).ctypes.data
        arrays = [a for a in vars(blk).values() if isinstance(a, np.ndarray)]
        arrays += [a for pair in (blk.ln_1, blk.ln_2) for a in pair]
        lo = min(a.ctypes.data for a in arrays) - base
        hi = max(a.ctypes.data + a.nbytes for a in arrays) - base
        lo -= lo % mmap.PAGESIZE
        self._mapping.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """[N, context_length] int token ids -> float32 [N, embed_dim], L2-normalised."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != self.context_length:
            raise ValueError(f"tokens must be [N, {self.context_length}], got {tokens.shape}")
        n = tokens.shape[0]
        out = np.zeros((n, self.embed_dim), np.float32)
        # Causal mask + argmax pooling: the pooled row depends only on positions up to the
        # end token, so each chunk runs max(end)+1 positions; rows past their end are never
        # read. Sorting by end position keeps that padding small.
        pool = tokens.argmax(axis=1)
        order = np.argsort(pool, kind="stable")
        chunk = 1 if getattr(self._onnx, "per_text", False) else _CHUNK
        from clip_core.cpu import single_thread_blas

        with single_thread_blas() if self.single_thread else contextlib.nullcontext():
            for start in range(0, n, chunk):
                rows = order[start : start + chunk]
                out[rows] = self._encode_chunk(tokens[rows], pool[rows])
        return out

    def _encode_chunk(self, tokens: np.ndarray, pool: np.ndarray) -> np.ndarray:
        length = int(pool.max()) + 1
        # onnxruntime's blocks take the start token's keys and values as computed once
        # (start_state) and run only the rows after it, for each text that begins with it:
        # decided text by text, so a text's vector never depends on its batch.
        first = 0
        if self._onnx is not None:
            after = self._onnx.after_start(tokens, pool)
            if after.any() and not after.all():
                out = np.empty((len(tokens), self.embed_dim), np.float32)
                for part in (after, ~after):
                    out[part] = self._encode_chunk(tokens[part], pool[part])
                return out
            first = int(after.all())
        x = _f32(self.token_embedding[tokens[:, first:length]]) + _f32(
            self.positional_embedding[first:length]
        )
        if self._onnx is not None:
            x = self._onnx.run(x, pool - first, prefixed=bool(first))
        else:
            x = self._blocks(x, pool)
        norm = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
        return x / np.maximum(norm, np.float32(1e-12))

    def start_state(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(token id, keys, values) of the start token at position 0 in every block,
        [layers, heads, 1, head_dim] float32. Every text begins with it (the CLIP vocabulary's
        second-last id, as probe_tokens writes it) and under the causal mask its row depends
        on nothing else, so it is the same in every query: computed once here, exactly as
        the fp32 blocks compute it, a long-lived tower runs only the rows after it (one of a
        short query's ~7 rows a matrix product)."""
        if self._start is None:
            token = self.token_embedding.shape[0] - 2
            x = (_f32(self.token_embedding[token]) + _f32(self.positional_embedding[0]))
            x = x[None, None]  # [1, 1, W]
            zero = np.zeros((1, 1), np.float32)
            pairs: list[tuple[np.ndarray, np.ndarray]] = []
            for blk in self.blocks:
                x = self._block(x, blk, zero, None, pairs)
            self._start = (token, np.stack([k[0] for k, _ in pairs]),
                           np.stack([v[0] for _, v in pairs]))
        return self._start

    def _blocks(self, x: np.ndarray, pool: np.ndarray) -> np.ndarray:
        """Blocks, final norm and projection in numpy: [N, L, W] -> pooled rows [N, E]."""
        length = x.shape[1]
        mask = np.triu(np.full((length, length), -np.inf, np.float32), 1)
        for i, blk in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x = self._block(x, blk, mask, pool if last else None)
            self._release(blk)
        # The last block returned only the pooled rows [N, W].
        x = _layer_norm(x, *self.ln_final, self.eps)
        if self.text_projection is not None:
            x = x @ _f32(self.text_projection)
        return x

    def _block(
        self, x: np.ndarray, b: _Block, mask: np.ndarray, pool: np.ndarray | None,
        keys_values: list[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> np.ndarray:
        """One residual block; `keys_values` (if given) gets its keys and values
        [N, H, L, hd]."""
        n, length, width = x.shape
        h, hd = self.heads, width // self.heads
        qkv = _linear(_layer_norm(x, *b.ln_1, self.eps), b.in_w, b.in_b)
        qkv = qkv.reshape(n, length, 3, h, hd).transpose(2, 0, 3, 1, 4)  # [3, N, H, L, hd]
        q, k, v = qkv[0], qkv[1], qkv[2]
        if keys_values is not None:
            keys_values.append((k, v))
        rows = np.arange(n)
        if pool is not None:
            # Last block: only the pooled position's output is ever read.
            q = q[rows, :, pool][:, :, None]  # [N, H, 1, hd]
            mask = mask[pool][:, None, None, :]  # [N, 1, 1, L]
            x = x[rows, pool][:, None]  # [N, 1, W]
        scores = (q @ k.transpose(0, 1, 3, 2)) * np.float32(hd**-0.5) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        o = (scores @ v).transpose(0, 2, 1, 3).reshape(n, -1, width)
        o = _linear(o, b.out_w, b.out_b)
        x = x + (o if b.ls_1 is None else o * _f32(b.ls_1))
        m = _act(_linear(_layer_norm(x, *b.ln_2, self.eps), b.fc_w, b.fc_b), self.act)
        m = _linear(m, b.proj_w, b.proj_b)
        x = x + (m if b.ls_2 is None else m * _f32(b.ls_2))
        return x[:, 0] if pool is not None else x
