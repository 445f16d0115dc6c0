"""A ViT image tower's ONNX graph built straight from its weights (no torch.onnx.export).

Why: exporting ViT-B-32 through torch's tracer took ~10 s and peaked at 2.5 GB (the traced
graph and the serialised proto beside the model); quantize_dynamic then took seconds more.
Here the graph is ~400 nodes written with onnx's helper (as clip_core.text.tower_onnx builds
the text blocks), the fp32 weights are handed to onnxruntime without a copy, and the int8
graph's matrices are quantised in numpy while it is built: the compile of ViT-B-32 drops to
seconds and the model is the only big thing in memory.

The graph is shaped as clip_core.compiled.onnx_export's was (one image per call, every shape
a constant, the patch convolution as the matrix product it is). The int8 graph has what
onnxruntime's quantize_dynamic makes of the fp32 one once its optimiser fused it: every
weight matrix product a DynamicQuantizeMatMul (activations quantised per call, uint8; weights
int8, symmetric, per tensor or per output channel, 7-bit with reduce_range:
clip_core.compiled.int8_variants); attention's activation products stay fp32.
tests/test_vit_graph.py holds the fp32 graph within 1e-5 of open_clip's torch forward.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from clip_core.compiled.int8_variants import Int8Variant
from clip_core.compiled.vit_weights import Norm, VitWeights
from clip_core.int8 import symmetric_int8

INPUT, OUTPUT = "pixels", "embedding"  # the names onnx_export gave the exported tower


def build(w: VitWeights, int8: Int8Variant | None = None,
          batch: int = 1) -> tuple[Any, dict[str, np.ndarray]]:
    """(ModelProto whose weights are external placeholders, {name: array}) for `w`; with
    `int8`, its matrices quantised that way (new arrays; the fp32 ones are views).

    `batch` > 1 (fp32 only): that many images a call, for the compile's reference vectors.
    Without prepacking (`session`) a Gemm packs its weights on every call, and a batch packs
    them once for all its images: ViT-B-32's 16 probes took 0.9-1.1 CPU s instead of
    1.4-1.5. Each image's fp32 vector moves by float rounding only (~1e-6). The towers
    clipsearch encodes with run one image a call, in the graph built with `batch` 1."""
    from onnx import TensorProto, helper

    if batch > 1 and int8 is not None:
        raise ValueError("an int8 tower runs one image a call (its activation scale is the "
                         "call's): batches are for fp32 only")
    g = _Graph()
    width, (kh, kw), (h, wd) = w.width, w.patch, w.hw
    gh, gw = h // kh, wd // kw
    shapes = _Shapes(g, batch, 1 + gh * gw, width, w.heads)

    def linear(x: str, name: str, weight: np.ndarray, bias: np.ndarray | None) -> str:
        """x @ weight.T + bias, weight in torch layout [out, in]."""
        if int8 is None:
            inputs = [x, g.weight(name + "w", weight)]
            if bias is not None:
                inputs.append(g.weight(name + "b", bias))
            return g.op("Gemm", *inputs, transB=1)  # torch layout read as is: no copy
        q, scale = quantise_matrix(weight, int8)
        inputs = [x, g.weight(name + "q", q, np.int8), g.weight(name + "s", scale),
                  g.weight(name + "z", np.zeros(scale.shape, np.int8), np.int8)]
        if bias is not None:
            inputs.append(g.weight(name + "b", bias))
        return g.op("DynamicQuantizeMatMul", *inputs, domain="com.microsoft")

    def norm(x: str, name: str, n: Norm) -> str:
        return g.op("LayerNormalization", x, g.weight(name + "w", n[0]),
                    g.weight(name + "b", n[1]), axis=-1, epsilon=n[2])

    x = INPUT
    if (gh * kh, gw * kw) != (h, wd):  # a convolution drops the ragged edge too
        x = g.op("Slice", x, g.const("crop0", np.array([0, 0], np.int64)),
                 g.const("crop1", np.array([gh * kh, gw * kw], np.int64)),
                 g.const("crop_axes", np.array([2, 3], np.int64)))
    x = linear(shapes.patch_rows(x, gh, kh, gw, kw), "patch.", w.patch_w, None)
    x = shapes.with_class_token(x, w.class_embedding, w.positional_embedding)
    if w.ln_pre is not None:
        x = norm(x, "ln_pre.", w.ln_pre)
    scale = g.const("scale", np.float32((width // w.heads) ** -0.5))
    for i, blk in enumerate(w.blocks):
        p = f"b{i}."
        qkv = linear(norm(x, p + "ln1.", blk.ln_1), p + "in.", blk.in_w, blk.in_b)
        q, k, v = shapes.heads(qkv)
        scores = g.op("Mul", g.op("MatMul", q, shapes.transposed(k)), scale)
        o = shapes.rows(g.op("MatMul", g.op("Softmax", scores, axis=-1), v))
        o = linear(o, p + "out.", blk.out_w, blk.out_b)
        if blk.ls_1 is not None:
            o = g.op("Mul", o, g.weight(p + "ls1", blk.ls_1))
        x = g.op("Add", x, o)
        m = linear(norm(x, p + "ln2.", blk.ln_2), p + "fc.", blk.fc_w, blk.fc_b)
        m = linear(_activation(g, m, w.act), p + "proj.", blk.proj_w, blk.proj_b)
        if blk.ls_2 is not None:
            m = g.op("Mul", m, g.weight(p + "ls2", blk.ls_2))
        x = g.op("Add", x, m)
    if not w.ln_after_pool:
        x = norm(x, "ln_post.", w.ln_post)
    x = shapes.pooled(x, w.pool)
    if w.ln_after_pool:
        x = norm(x, "ln_post.", w.ln_post)
    if w.proj is not None:  # [1, W] @ [W, E]: as a linear of the transposed matrix
        x = linear(x, "proj.", np.ascontiguousarray(w.proj.T), None)  # 1.5 MB copy
    graph = helper.make_graph(
        g.nodes, "image_tower",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [batch, 3, h, wd])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], g.constants)
    graph.node.append(helper.make_node("Identity", [x], [OUTPUT]))
    graph.output[0].name = OUTPUT
    graph.initializer.extend(g.placeholders)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model, g.arrays


def quantise_matrix(weight: np.ndarray, variant: Int8Variant) -> tuple[np.ndarray, np.ndarray]:
    """[out, in] fp32 -> (int8 [in, out] for DynamicQuantizeMatMul, fp32 scales: one, or one
    per output column). Symmetric, as quantize_dynamic quantises QInt8 weights: range
    [-127, 127], or [-64, 64] with reduce_range so that pairs of products cannot saturate
    16-bit sums on x86 without VNNI."""
    return symmetric_int8(weight, 64 if variant.reduce_range else 127, variant.per_channel)


def session(model: Any, arrays: dict[str, np.ndarray], threads: int = 1,
            fusions: bool = True) -> Any:
    """An onnxruntime session over `arrays` as they are (the caller keeps them alive).
    `fusions=False` for a one-off fp32 run (the compile's reference): the full optimiser's
    fusions took ViT-B-32 0.17 of its session's 0.21 CPU s and left the probes' run as fast
    (0.92 s either way on 2 Zen 4 cores; vectors within 2e-6). An int8 graph keeps them: its
    numerics are the fused kernels' (as the encoder runs it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Prepacking copies every fp32 matrix (ViT-B-32: +350 MB) for a run over a few probes.
    options.add_session_config_entry("session.disable_prepacking", "1")
    if not fusions:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    names = list(arrays)
    options.add_external_initializers(
        names, [ort.OrtValue.ortvalue_from_numpy(arrays[n]) for n in names])
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def save(model: Any, arrays: dict[str, np.ndarray], path: Path) -> None:
    """Write the model to `path` and its weights, as they are, to `path` + ".data" beside it
    (onnx external data: no serialised copy of the weights in memory, no 2 GB limit)."""
    data = path.with_name(path.name + ".data")
    offsets: dict[str, tuple[int, int]] = {}
    with open(data, "wb") as out:
        for name, array in arrays.items():
            start = out.tell()
            start += -start % 64  # aligned, as onnx's own writer does
            out.seek(start)
            out.write(np.ascontiguousarray(array).data)
            offsets[name] = (start, array.nbytes)
        out.flush()
        os.fsync(out.fileno())
    for tensor in model.graph.initializer:
        if tensor.name in offsets:
            del tensor.external_data[:]
            for key, value in (("location", data.name), ("offset", offsets[tensor.name][0]),
                               ("length", offsets[tensor.name][1])):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, str(value)
    path.write_bytes(model.SerializeToString())


def _activation(g: _Graph, x: str, kind: str) -> str:
    if kind == "quick_gelu":
        return g.op("Mul", x, g.op("Sigmoid", g.op("Mul", x, g.const("qg", np.float32(1.702)))))
    half, one = g.const("half", np.float32(0.5)), g.const("one_f", np.float32(1.0))
    if kind == "gelu_tanh":
        cube = g.op("Mul", g.op("Mul", x, x), x)
        inner = g.op("Mul", g.op("Add", x, g.op("Mul", cube, g.const("c1", np.float32(0.044715)))),
                     g.const("c2", np.float32(0.7978845608028654)))
        return g.op("Mul", g.op("Mul", x, g.op("Add", g.op("Tanh", inner), one)), half)
    # x / sqrt(2): the pattern onnxruntime fuses into one Gelu kernel
    erf = g.op("Erf", g.op("Div", x, g.const("sqrt2", np.float32(1.4142135381698608))))
    return g.op("Mul", g.op("Mul", x, g.op("Add", erf, one)), half)


class _Shapes:
    """The ops that differ between one image a call ([tokens, W] rows: the towers' graph,
    unchanged) and a batch of them (rows of every image stacked, [batch, ...] around
    attention and pooling)."""

    def __init__(self, g: _Graph, batch: int, tokens: int, width: int, heads: int) -> None:
        self.g, self.batch, self.tokens, self.width = g, batch, tokens, width
        self.n_heads = heads

    def _shape(self, name: str, *dims: int) -> str:
        return self.g.const(name, np.array(dims, np.int64))

    def patch_rows(self, x: str, gh: int, kh: int, gw: int, kw: int) -> str:
        """[b, 3, H, W] pixels -> [b * grid, 3 * kh * kw] patches, in the convolution's order."""
        g, b = self.g, self.batch
        if b == 1:
            x = g.op("Reshape", x, self._shape("patch_grid", 3, gh, kh, gw, kw))
            x = g.op("Transpose", x, perm=[1, 3, 0, 2, 4])  # [gh, gw, c, kh, kw]
        else:
            x = g.op("Reshape", x, self._shape("patch_grid", b, 3, gh, kh, gw, kw))
            x = g.op("Transpose", x, perm=[0, 2, 4, 1, 3, 5])  # [b, gh, gw, c, kh, kw]
        return g.op("Reshape", x, self._shape("patch_rows", b * gh * gw, 3 * kh * kw))

    def with_class_token(self, x: str, cls: np.ndarray, pos: np.ndarray) -> str:
        """Patch rows -> token rows: each image's class token first, positions added."""
        g, b, width = self.g, self.batch, self.width
        if b == 1:
            x = g.op("Concat", g.weight("cls", cls.reshape(1, width)), x, axis=0)
            return g.op("Add", x, g.weight("pos", pos))
        x = g.op("Reshape", x, self._shape("grid", b, self.tokens - 1, width))
        token = g.op("Expand", g.weight("cls", cls.reshape(1, 1, width)),
                     self._shape("cls_rows", b, 1, width))
        x = g.op("Add", g.op("Concat", token, x, axis=1), g.weight("pos", pos))
        return g.op("Reshape", x, self._shape("rows", -1, width))

    def heads(self, qkv: str) -> tuple[str, str, str]:
        """[rows, 3W] -> q, k, v: each [heads, L, head_dim], or [b, heads, L, head_dim]."""
        g, hd = self.g, self.width // self.n_heads
        if self.batch == 1:
            shape, perm = self._shape("qkv_shape", -1, 3, self.n_heads, hd), [1, 2, 0, 3]
        else:
            shape = self._shape("qkv_shape", self.batch, -1, 3, self.n_heads, hd)
            perm = [2, 0, 3, 1, 4]
        qkv = g.op("Transpose", g.op("Reshape", qkv, shape), perm=perm)
        q, k, v = (g.op("Gather", qkv, g.const(f"i{j}", np.int64(j)), axis=0) for j in range(3))
        return q, k, v

    def transposed(self, k: str) -> str:
        return self.g.op("Transpose", k, perm=[0, 2, 1] if self.batch == 1 else [0, 1, 3, 2])

    def rows(self, o: str) -> str:
        """Attention's output per head -> [rows, W]."""
        perm = [1, 0, 2] if self.batch == 1 else [0, 2, 1, 3]
        return self.g.op("Reshape", self.g.op("Transpose", o, perm=perm),
                         self._shape("rows", -1, self.width))

    def pooled(self, x: str, pool: str) -> str:
        """Token rows -> [b, W]: the class token's row ("tok"), else the patch rows' mean."""
        g, b = self.g, self.batch
        start, end = (0, 1) if pool == "tok" else (1, self.tokens)
        names = ("zero", "one") if pool == "tok" else ("one", "end")
        if b > 1:
            x = g.op("Reshape", x, self._shape("images", b, self.tokens, self.width))
        x = g.op("Slice", x, self._shape(names[0], start), self._shape(names[1], end),
                 *([] if b == 1 else [self._shape("axis1", 1)]))
        if pool != "tok":
            x = g.op("ReduceMean", x, axes=[0 if b == 1 else 1], keepdims=1)  # opset 17
        return x if b == 1 else g.op("Reshape", x, self._shape("pooled", b, self.width))


class _Graph:
    """Unique value names, small constants inline, weights as external placeholders."""

    def __init__(self) -> None:
        from onnx import helper

        self.helper = helper
        self.nodes: list[Any] = []
        self.constants: list[Any] = []
        self.placeholders: list[Any] = []
        self.arrays: dict[str, np.ndarray] = {}
        self._names: set[str] = set()

    def op(self, kind: str, *inputs: str, domain: str = "", **attrs: Any) -> str:
        out = f"v{len(self.nodes)}"
        self.nodes.append(self.helper.make_node(kind, list(inputs), [out], domain=domain,
                                                **attrs))
        return out

    def const(self, name: str, value: Any) -> str:
        if name not in self._names:
            from onnx import numpy_helper

            self._names.add(name)
            self.constants.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, name: str, array: np.ndarray, dtype: type = np.float32) -> str:
        from onnx import TensorProto

        array = np.ascontiguousarray(array, dtype)  # the model's own memory when it is so
        self.arrays[name] = array
        tensor = TensorProto(name=name, data_type=self.helper.np_dtype_to_tensor_dtype(
            array.dtype), dims=list(array.shape), data_location=TensorProto.EXTERNAL)
        entry = tensor.external_data.add()  # supplied at session creation, or by save()
        entry.key, entry.value = "location", "supplied-at-session-creation"
        self.placeholders.append(tensor)
        return name
