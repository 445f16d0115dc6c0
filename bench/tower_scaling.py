"""Does the image tower scale to every core? bench.limit adds one core's per-image costs and
multiplies by the cores; an index run keeps one encoder session per core busy at once.

    python -m bench.tower_scaling IMAGE.int8.onnx [--images 40] [--rounds 8]

Each round times one single-thread session alone, then one per core at the same time (as the
index run's encoder threads run them), and prints the cores' throughput together over
`cores` times one core's alone: 1.0 where cores add up, lower where they share what a tower
needs (memory bandwidth, a cache, a physical core under the VM's). Rounds alternate, so a
noisy machine moves both sides alike; the median is the figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ms_per_image(session, feed: dict, images: int, out: list[float]) -> None:
    start = time.perf_counter()
    for _ in range(images):
        session.run(None, feed)
    out.append((time.perf_counter() - start) * 1000 / images)


def measure(path: Path, images: int, rounds: int, cores: int) -> dict:
    sessions = [_session(path) for _ in range(cores)]
    first = sessions[0].get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in first.shape]
    feed = {first.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for session in sessions:
        session.run(None, feed)
    figures = []
    for _ in range(rounds):
        alone: list[float] = []
        _ms_per_image(sessions[0], feed, images, alone)
        together: list[float] = []
        threads = [threading.Thread(target=_ms_per_image, args=(s, feed, images, together))
                   for s in sessions]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        figures.append({"alone_ms": round(alone[0], 2),
                        "together_ms": [round(ms, 2) for ms in together],
                        "scaling": round(sum(1000 / ms for ms in together)
                                         / (cores * 1000 / alone[0]), 3)})
    return {"model": str(path), "cores": cores, "images": images, "rounds": figures,
            "scaling_median": statistics.median(f["scaling"] for f in figures)}


def main(argv: list[str] | None = None) -> int:
    from clip_core.cpu import available_cores

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="an image tower's ONNX file (a compiled model)")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.model, args.images, args.rounds, available_cores()), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
