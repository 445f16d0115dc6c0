"""Export an open_clip image tower to ONNX and quantise it to int8 (clip_core.compiled.compiler).

Shaped for how clip_core.compiled.onnx_encoder runs it, one image per call:
- the batch size is fixed at 1, so onnxruntime folds every shape computation into constants
  (Shape/Gather/Concat/Unsqueeze chains were ~5% of a ViT-B-32 call);
- a patch embedding (a convolution whose stride equals its kernel) becomes the matrix product
  it is, so it is quantised with the rest (the fp32 Conv was 7% of the int8 call).
Both are exact rewrites; the fp32 export is checked against the quantised one afterwards.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from clip_core.compiled.int8_variants import DEFAULT, Int8Variant


def export_image_tower(visual: Any, hw: tuple[int, int], path: Path) -> None:
    """Write `visual` (an fp32 open_clip image tower, modified in place) as ONNX."""
    import torch

    visual = visual.float()
    conv = getattr(visual, "conv1", None)
    if _is_patch_conv(conv):
        visual.conv1 = _PatchLinear(conv)
    example = torch.zeros(1, 3, *hw)
    # Grad on: torch's fused attention fast path (taken under no_grad) cannot be exported.
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for param in visual.parameters():
            param.requires_grad_(True)
        torch.onnx.export(visual, (example,), str(path), input_names=["pixels"],
                          output_names=["embedding"], opset_version=17, dynamo=False)


def quantise(source: Path, target: Path, variant: Int8Variant = DEFAULT) -> None:
    """Dynamic int8: weights quantised once, activations per call (no calibration data).
    `variant` (clip_core.compiled.int8_variants) picks 7-bit weights (reduce_range) and per-channel
    scales for CPUs whose int8 kernels would otherwise saturate."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def advice(record: logging.LogRecord) -> bool:  # a tip for authors, not for our users
        return "pre-processing before quantization" not in record.getMessage()

    # Protobuf files stop at 2 GB: bigger towers were exported with external data files
    # beside the model, and their int8 version is written the same way.
    big = sum(f.stat().st_size for f in source.parent.iterdir()) > 1_900_000_000
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        # Matrix products only: nearly all of a ViT's work; ConvInteger is slow.
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"],
                         per_channel=variant.per_channel, reduce_range=variant.reduce_range,
                         use_external_data_format=big)
    finally:
        root.removeFilter(advice)


def _is_patch_conv(conv: Any) -> bool:
    import torch

    return (isinstance(conv, torch.nn.Conv2d) and conv.groups == 1
            and tuple(conv.stride) == tuple(conv.kernel_size)
            and tuple(conv.padding) == (0, 0) and tuple(conv.dilation) == (1, 1))


def _PatchLinear(conv: Any) -> Any:  # noqa: N802 - builds a module, reads like a class
    """conv(x) for a non-overlapping patch convolution, as reshape + one matrix product."""
    import torch

    class PatchLinear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            out_ch, in_ch, kh, kw = conv.weight.shape
            self.kh, self.kw, self.out_ch = kh, kw, out_ch
            self.linear = torch.nn.Linear(in_ch * kh * kw, out_ch, bias=conv.bias is not None)
            with torch.no_grad():
                self.linear.weight.copy_(conv.weight.reshape(out_ch, -1))
                if conv.bias is not None:
                    self.linear.bias.copy_(conv.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, c, h, w = x.shape
            gh, gw = h // self.kh, w // self.kw
            x = x[:, :, : gh * self.kh, : gw * self.kw]  # a conv drops the ragged edge too
            x = x.reshape(b, c, gh, self.kh, gw, self.kw).permute(0, 2, 4, 1, 3, 5)
            x = self.linear(x.reshape(b, gh * gw, c * self.kh * self.kw))
            return x.permute(0, 2, 1).reshape(b, self.out_ch, gh, gw)

    return PatchLinear()
