"""The exported numpy text tower's blocks, run as one onnxruntime graph: same fp32 math, faster.

A query is a handful of token rows per matrix product. There numpy's OpenBLAS reached ~8 GB/s
through the weights (ViT-B-32: 151 MB, ~19 ms per query) while onnxruntime's MLAS kernels
stream them ~3.5x faster on the same two cores. The graph is built here from the very arrays
NumpyTextTower maps (handed to onnxruntime without copies), so both paths compute the same
function in float32; tests hold them within 1e-5.

Used by long-lived processes (a photo app's Library); one-shot CLI queries keep the numpy path,
whose block-by-block page release keeps a cold query near 100 MB.

Rows a query does not need are not run. The start token's row is the same in every text (the
causal mask), so its keys and values come from NumpyTextTower.start_state and only the rows
after it run; the last block's products run on the pooled rows only. ViT-B-32's "unsigned"
kind on AVX2 kernels (masked), the warm query's texts in turns in one process: 0.94-0.95 of
the time before (docs/benchmarks.md).

Three int8 kinds, each kept only where NumpyTextTower finds it within cosine 0.999 of fp32
on probe texts (clip_core.cpu.text_int8_kinds says which to try on a CPU); of those that
agree, a library runs the fastest here, timed once against the others and fp32 and recorded
(clip_core.text.runner_record):
- "dynamic": onnxruntime's DynamicQuantizeMatMul, int8 weights with a scale per output
  channel and the run's activations quantised to uint8 with one scale. Its scale spans every
  row of a run, so each text runs alone (`per_text`): its vector depends on it alone. Only
  where int8 products are summed in 32 bits (VNNI, AMX, ARM dot products): elsewhere MLAS
  adds pairs in 16 bits, which full-range weights saturate. ViT-B-32 (random weights): ~2x
  faster than "blocks" on the AMX VM, cosine 0.9995 (docs/benchmarks.md).
- "unsigned": the same, with the weights stored as uint8 (value + 128, zero point 128), so
  that MLAS runs its U8U8 kernels: on AVX2 they widen both sides to 16 bits and sum pairs in
  32 (vpmaddwd), which nothing saturates. For x86 without VNNI: ViT-B-32 on the AMX VM's
  cores masked to AVX2 (bench.masked_cpu) agreed as "dynamic" does natively (0.99941) in 6.5
  ms a query against "blocks" 8.3 and fp32 ~12, its weights hot in cache; in turns with
  the others, as after a warm query's vector scan, 9.3 against "blocks" 7.5 on another
  host of the same kind (docs/benchmarks.md): the reason the choice is timed.
- "blocks": MatMulNBits, weights in int8 with a scale per 32 values and activations
  quantised per row and 32-value block as they come, so each text's vector is its own in any
  batch. A query streams 39 MB instead of 151 (ViT-B-32: 6.8 vs 11.9 ms in one run) at
  cosine ~0.9997 to fp32. Tried on every CPU.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from clip_core.crowd import CROWD
from clip_core.heap import give_back
from clip_core.int8 import symmetric_int8

if TYPE_CHECKING:
    from clip_core.text.tower import NumpyTextTower


class OnnxTextBlocks:
    """Runs blocks + final norm + projection of a NumpyTextTower on onnxruntime."""

    def __init__(self, tower: NumpyTextTower, threads: int | None = None, kind: str = "fp32"):
        from clip_core.cpu import available_cores

        if kind not in KINDS:
            raise ValueError(f"text tower kind {kind!r} is not one of {KINDS}")
        self.tower = tower
        self.kind = kind
        self.precision = "fp32" if kind == "fp32" else "int8"
        # one activation scale a run: a text runs alone
        self.per_text = kind in ("dynamic", "unsigned")
        self.threads = threads or available_cores()
        self._start = tower.start_state()  # fp32, shared by every kind
        self._feeds: dict[tuple[int, bool], dict[str, np.ndarray]] = {}  # _start_feeds
        self._graph, weights = _build(tower, kind)
        self._keep = weights  # the sessions' OrtValues borrow these buffers
        self._unrun: set[int] = set()  # sessions not run yet (their ids)
        self.session = self._session(self.threads)
        self._narrow: Any = None  # a one-thread session, made when runs first overlap
        self._running = 0  # runs in progress, any thread
        self._lock = threading.Lock()

    def _session(self, threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Pool threads spin between the graph's ~200 ops (waking them cost 7.7 vs 6.2 ms a
        # query) but stop when the run ends: left spinning, they burned a core for ms after
        # each query and slowed the vector search that follows (FAISS 5 -> 14 ms).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        names = list(self._keep)
        options.add_external_initializers(
            names, [ort.OrtValue.ortvalue_from_numpy(self._keep[n]) for n in names])
        session = ort.InferenceSession(self._graph, options, providers=["CPUExecutionProvider"])
        self._unrun.add(id(session))
        return session

    def _pick(self) -> Any:
        """The session for a run starting now: all cores when it runs alone (a lone query's
        latency); one thread while other work is in progress, in another thread of this
        process or counted in clip_core.crowd (a server's concurrent requests), where
        spreading each run only adds spinning and hand-offs (shapes-tiny server, 8 clients
        while indexing: 1.63x one client's throughput against 1.27x)."""
        with self._lock:
            self._running += 1
            if self.threads == 1 or (self._running == 1 and not CROWD.crowded()):
                return self.session
            if self._narrow is None:
                self._narrow = self._session(1)
            return self._narrow

    def _start_feeds(self, n: int, prefixed: bool) -> dict[str, np.ndarray]:
        """Each block's start keys and values for `n` texts ([n, heads, 1, head_dim]; none,
        [n, heads, 0, head_dim], where not `prefixed`): inputs of their own, so the graph
        adds one Concat a matrix and nothing else (a Gather and Expand each cost as much as
        the row they save on a short query)."""
        key = (n, prefixed)
        feeds = self._feeds.get(key)
        if feeds is None:
            _, keys, values = self._start
            feeds = {}
            for i in range(len(keys)):
                for name, kv in (("k", keys[i]), ("v", values[i])):
                    kv = kv if prefixed else kv[:, :0]  # [heads, 1 or 0, head_dim]
                    feeds[f"start_{name}{i}"] = np.ascontiguousarray(
                        np.broadcast_to(kv[None], (n, *kv.shape)))
            if n == 1:  # a query's size, kept (a batch's copies: 48 KB a text)
                self._feeds[key] = feeds
        return feeds

    def after_start(self, tokens: np.ndarray, pool: np.ndarray) -> np.ndarray:
        """Which token rows may run after the start token's state (start_state): those
        that begin with its token and read at least the second row after it (a lone row
        takes other kernels, whose float sums a batch would not repeat bit for bit)."""
        return (tokens[:, 0] == self._start[0]) & (pool >= 2)

    def run(self, x: np.ndarray, pool: np.ndarray, prefixed: bool = False) -> np.ndarray:
        """x: [N, L, W] embedded tokens; pool: [N] positions to read -> [N, E].
        `prefixed`: x holds the rows after the start token (positions 1..L), whose keys and
        values come from start_state."""
        n, length, width = x.shape
        t = self.tower
        head = width // t.heads
        before = int(prefixed)
        # row i (position before + i) sees positions 0..before + i
        mask = np.triu(np.full((length, before + length), -np.inf, np.float32), before + 1)
        feeds = {
            "x": np.ascontiguousarray(x, np.float32),
            "mask": mask,
            **self._start_feeds(n, prefixed),
            "rows": (np.arange(n) * length + pool).astype(np.int64),
            "shape_qkv": np.array([n, length, 3, t.heads, head], np.int64),
            "shape_flat": np.array([n * length, width], np.int64),
        }
        session = self._pick()
        try:
            out = session.run(None, feeds)[0]
        finally:
            with self._lock:
                self._running -= 1
        if id(session) in self._unrun:
            # Its making and first run copied the weights through blocks glibc keeps for
            # reuse once freed: ViT-B-32's one-thread session holds ~25 MB, ~80 MB until
            # they are handed back.
            self._unrun.discard(id(session))
            give_back(collect=False)
        return out


KINDS = ("fp32", "blocks", "dynamic", "unsigned")  # how the matrix products run (module doc)
INT8_KINDS = ("dynamic", "unsigned", "blocks")  # every int8 kind, fastest first


def _build(tower: NumpyTextTower, kind: str = "fp32") -> tuple[bytes, dict[str, np.ndarray]]:
    from onnx import TensorProto, helper

    g = _Graph(helper)
    width = tower.token_embedding.shape[1]
    weights: dict[str, np.ndarray] = {}

    def weight(name: str, array: np.ndarray, dtype: type = np.float32) -> str:
        weights[name] = np.ascontiguousarray(array, dtype)
        g.initializer_info(name, weights[name].shape, dtype)
        return name

    def linear(x: str, name: str, w: np.ndarray, b: np.ndarray) -> str:
        if kind == "fp32":
            return g.gemm(x, weight(name + "w", w), weight(name + "b", b))
        if kind in ("dynamic", "unsigned"):
            q, scales = symmetric_int8(w)  # a scale per output channel
            if kind == "dynamic":
                return g.op("DynamicQuantizeMatMul", x, weight(name + "q", q, np.int8),
                            weight(name + "s", scales), "", weight(name + "b", b),
                            domain="com.microsoft")
            return g.op("DynamicQuantizeMatMul", x,
                        weight(name + "q", q.view(np.uint8) ^ np.uint8(128), np.uint8),
                        weight(name + "s", scales),
                        weight(name + "z", np.full(scales.shape, 128, np.uint8), np.uint8),
                        weight(name + "b", b), domain="com.microsoft")
        packed, scales = _quantise_blocks(w)
        out_features, in_features = w.shape
        y = g.op("MatMulNBits", x, weight(name + "q", packed, np.uint8),
                 weight(name + "s", scales), domain="com.microsoft", K=in_features,
                 N=out_features, bits=8, block_size=BLOCK, accuracy_level=4)
        return g.op("Add", y, weight(name + "b", b))

    scale = g.const("scale", np.float32((width // tower.heads) ** -0.5))
    x = g.reshape("x", "shape_flat")  # work on [N*L, W] rows; attention reshapes to heads
    for i, blk in enumerate(tower.blocks):
        p = f"b{i}."
        h = g.layer_norm(x, weight(p + "ln1w", blk.ln_1[0]), weight(p + "ln1b", blk.ln_1[1]),
                         tower.eps)
        qkv = linear(h, p + "in", blk.in_w, blk.in_b)
        qkv = g.op("Transpose", g.reshape(qkv, "shape_qkv"), perm=[2, 0, 3, 1, 4])
        q, k, v = (g.op("Gather", qkv, g.const(f"i{j}", np.int64(j)), axis=0)
                   for j in range(3))
        # the start token's keys and values first (none where the run has no prefix)
        k, v = (g.op("Concat", f"start_{name}{i}", kv, axis=2) for name, kv in (("k", k),
                                                                               ("v", v)))
        scores = g.op("Add", g.op("Mul", g.op("MatMul", q, g.op("Transpose", k,
                                                                 perm=[0, 1, 3, 2])), scale),
                      "mask")
        o = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        o = g.reshape(g.op("Transpose", o, perm=[0, 2, 1, 3]), "shape_flat")
        if i == len(tower.blocks) - 1:
            # Only the pooled rows' outputs are read: the last block's products run on
            # them alone ([N, W]).
            o, x = g.op("Gather", o, "rows", axis=0), g.op("Gather", x, "rows", axis=0)
        o = linear(o, p + "out", blk.out_w, blk.out_b)
        if blk.ls_1 is not None:
            o = g.op("Mul", o, weight(p + "ls1", blk.ls_1))
        x = g.op("Add", x, o)
        h = g.layer_norm(x, weight(p + "ln2w", blk.ln_2[0]), weight(p + "ln2b", blk.ln_2[1]),
                         tower.eps)
        h = _activation(g, linear(h, p + "fc", blk.fc_w, blk.fc_b), tower.act)
        h = linear(h, p + "proj", blk.proj_w, blk.proj_b)
        if blk.ls_2 is not None:
            h = g.op("Mul", h, weight(p + "ls2", blk.ls_2))
        x = g.op("Add", x, h)
    x = g.layer_norm(x, weight("lnfw", tower.ln_final[0]), weight("lnfb", tower.ln_final[1]),
                     tower.eps)
    if tower.text_projection is not None:
        x = g.op("MatMul", x, weight("projection", tower.text_projection))
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "l", width]),
        helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["l", "pl"]),
        *(helper.make_tensor_value_info(f"start_{name}{i}", TensorProto.FLOAT,
                                        ["n", tower.heads, "p", width // tower.heads])
          for i in range(len(tower.blocks)) for name in "kv"),
        helper.make_tensor_value_info("rows", TensorProto.INT64, ["n"]),
        *(helper.make_tensor_value_info(s, TensorProto.INT64, [k])
          for s, k in (("shape_qkv", 5), ("shape_flat", 2))),
    ]
    graph = helper.make_graph(g.nodes, "text_tower", inputs,
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)],
                              g.constants)
    graph.initializer.extend(g.placeholders)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model.SerializeToString(), weights


BLOCK = 32  # values per int8 scale (weights) and per activation quantisation block


def _quantise_blocks(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[out, in] float weights -> MatMulNBits' uint8 [out, blocks, BLOCK] (value + 128, the
    default zero point) and float32 scales [out, blocks]; `in` is zero-padded to BLOCKs."""
    out_features, in_features = w.shape
    blocks = -(-in_features // BLOCK)
    padded = np.zeros((out_features, blocks * BLOCK), np.float32)
    padded[:, :in_features] = w
    padded = padded.reshape(out_features, blocks, BLOCK)
    scales = np.abs(padded).max(axis=2) / 127
    scales[scales == 0] = 1.0
    q = np.clip(np.rint(padded / scales[:, :, None]), -127, 127) + 128
    return q.astype(np.uint8), scales.astype(np.float32)


def _activation(g: _Graph, x: str, kind: str) -> str:
    if kind == "quick_gelu":
        return g.op("Mul", x, g.op("Sigmoid", g.op("Mul", x, g.const("qg", np.float32(1.702)))))
    if kind == "gelu_tanh":
        cube = g.op("Mul", g.op("Mul", x, x), x)
        inner = g.op("Mul", g.op("Add", x, g.op("Mul", cube, g.const("c1", np.float32(0.044715)))),
                     g.const("c2", np.float32(0.7978845608028654)))
        one_plus = g.op("Add", g.op("Tanh", inner), g.const("one", np.float32(1.0)))
        return g.op("Mul", g.op("Mul", x, one_plus), g.const("half", np.float32(0.5)))
    erf = g.op("Erf", g.op("Mul", x, g.const("rsqrt2", np.float32(0.7071067811865476))))
    one_plus = g.op("Add", erf, g.const("one", np.float32(1.0)))
    return g.op("Mul", g.op("Mul", x, one_plus), g.const("half", np.float32(0.5)))


class _Graph:
    """A tiny builder: unique value names, constants once, weights as external placeholders."""

    def __init__(self, helper: Any):
        self.helper = helper
        self.nodes: list[Any] = []
        self.constants: list[Any] = []
        self.placeholders: list[Any] = []
        self._names: set[str] = set()
        self._count = 0

    def _fresh(self) -> str:
        self._count += 1
        return f"v{self._count}"

    def op(self, kind: str, *inputs: str, domain: str = "", **attrs: Any) -> str:
        out = self._fresh()
        self.nodes.append(self.helper.make_node(kind, list(inputs), [out], domain=domain,
                                                **attrs))
        return out

    def const(self, name: str, value: np.generic) -> str:
        if name not in self._names:
            from onnx import numpy_helper

            self._names.add(name)
            self.constants.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def initializer_info(self, name: str, shape: tuple[int, ...],
                         dtype: type = np.float32) -> None:
        # A placeholder marked external: add_external_initializers supplies its data.
        from onnx import TensorProto, helper

        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(
            np.dtype(dtype)), dims=list(shape), data_location=TensorProto.EXTERNAL)
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", "supplied-at-session-creation"
        self.placeholders.append(tensor)

    def reshape(self, x: str, shape: str) -> str:
        return self.op("Reshape", x, shape)

    def gemm(self, x: str, w: str, b: str) -> str:
        return self.op("Gemm", x, w, b, transB=1)  # w in torch layout [out, in], no copy

    def layer_norm(self, x: str, w: str, b: str, eps: float) -> str:
        return self.op("LayerNormalization", x, w, b, axis=-1, epsilon=eps)
