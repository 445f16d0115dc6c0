"""The image tower on an accelerator (a lent GPU), for the benchmark's limit of a device run.

    python -m bench.limit --device cuda --precision fp16 --batch-size 64

An index run with `--device cuda` decodes and preprocesses on the host's cores while the
tower runs on the device, the two overlapped (indexer.stages). Neither side can go faster
than alone, so such a run's limit is the slower of the two:

    limit = min(cores x 1000 / (decode ms + other ms),  1000 / device ms an image)

The device's figure is the wall time of `ClipEncoder.encode_pixels` on one run-sized batch
(the encoder's own micro-batches, host-to-device copies and the vectors' way back
included), best of `rounds`, per image. Its accuracy is the same guard as every reduced
precision on the CPU: min cosine to fp32 on the CPU on the probe images.
"""

from __future__ import annotations

import time

import numpy as np


def index_device(index_args: list[str]) -> dict | None:
    """{"device", "precision", "batch_size"} of an index run's arguments that put the
    tower on an accelerator (`--device cuda`, `--device=cuda:1`), else None (the CPU's
    own limit applies; "auto" is left to the CPU too: a run names its device)."""
    found = {"device": None, "precision": "auto", "batch_size": None}
    names = {"--device": "device", "--precision": "precision", "--batch-size": "batch_size"}
    args = iter(index_args)
    for arg in args:
        name, eq, value = arg.partition("=")
        if name in names:
            found[names[name]] = value if eq else next(args, None)
    device = found["device"]
    if device in (None, "auto", "cpu"):
        return None
    batch = found["batch_size"]
    return {"device": device, "precision": found["precision"],
            "batch_size": int(batch) if batch else 32}  # indexer.job's default batch


def device_sides(cores: int, decode_ms: float, other_ms: float, device_ms: float
                 ) -> tuple[float, float]:
    """(host, device) images per second: the host's `cores` decoding and preparing each
    image (`decode_ms + other_ms` core-ms), the device encoding them (`device_ms` each)."""
    host = decode_ms + other_ms
    if cores < 1 or host <= 0 or device_ms <= 0:
        raise ValueError(f"need cores >= 1 and positive costs, got {cores}, {host}, {device_ms}")
    return cores * 1000.0 / host, 1000.0 / device_ms


def device_limit_images_per_s(cores: int, decode_ms: float, other_ms: float,
                              device_ms: float) -> float:
    """The most images per second with the two sides (device_sides) overlapped."""
    return min(device_sides(cores, decode_ms, other_ms, device_ms))


def measure(model: str, device: str, precision: str, batch: int, rounds: int) -> dict:
    """{"runtime", "ms" (device ms an image), "min_cos", "batch"} of `model`'s image tower
    on `device` in `precision`."""
    from clip_core.models.ref import parse_model
    from clip_core.pixels.preprocess import preprocess_batch
    from clip_core.pixels.probes import probe_images
    from clip_core.torch_backend.encoder import ClipEncoder

    ref = parse_model(model, "none")
    reference = ClipEncoder.load(ref, device="cpu", precision="fp32", towers=frozenset({"image"}))
    probes = preprocess_batch(probe_images(), reference.preprocess)
    expected = reference.encode_pixels(probes)
    del reference
    encoder = ClipEncoder.load(ref, device=device, precision=precision,
                               towers=frozenset({"image"}))
    got = encoder.encode_pixels(probes)
    min_cos = float(np.min(np.sum(got * expected, axis=1)))  # both L2-normalised
    pixels = probes[np.arange(batch) % len(probes)]  # a run's batch (the probes repeated)
    encoder.encode_pixels(pixels)  # warm-up: kernels picked, memory pools filled
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        encoder.encode_pixels(pixels)  # returns numpy: the device has finished
        best = min(best, time.perf_counter() - start)
    return {"runtime": f"torch {encoder.loaded.device} {encoder.loaded.precision}, "
                       f"batches of {batch}",
            "ms": best * 1000 / batch, "min_cos": min_cos, "batch": batch}
