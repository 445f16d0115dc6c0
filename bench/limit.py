"""The machine's own limit for indexing a set, measured in the bench run that uses it.

    python -m bench.limit [--sets phone,caltech] [--files 20] [--rounds 3] [--json]

Per image, on one core: the fastest JPEG decoder at hand (bench.jpeg_decoders), the fastest
image tower runtime that passes the guard (min cosine >= GUARD_MIN_COS to fp32 torch on
probe images: bench.tower_runtimes), and the rest of clipsearch's per-image work (read,
SHA-256, preprocess, catalog write: bench.breakdown's stage functions). With every core busy
and nothing else to do, a machine cannot index faster than

    limit = cores x 1000 / (decode ms + tower ms + other ms)   images per second,

so `make bench` reports clipsearch's throughput as a fraction of it (a run whose tower is on
an accelerator, `--device cuda`: the slower of its host's cores and its device, as
bench.device_tower says). Figures are best of `rounds` passes in the calling thread's CPU
time (core-ms: time a VM's host takes the core away is not the step's, bench.steal), so a
noisy machine inflates them less; the load average is kept beside them.

Beside it, for the record and not for the targets: the same limit with the tower's core-ms
measured as an index run spends them, every core running it at once for `--sustain` seconds
(`all_cores_ms`). Where a machine cannot hold one core's best over a whole run with every
core busy (a power budget, a shared cache or memory, a hypervisor's neighbours) an image
costs more that way, and no run can make up the difference: the gap between the two limits
is the machine's, the gap between the second and clipsearch's throughput is clipsearch's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench import device_tower, images
from bench.jpeg_decoders import best_ms
from bench.machine import load_average


def limit_images_per_s(cores: int, decode_ms: float, tower_ms: float, other_ms: float) -> float:
    """The most images per second `cores` cores can index at these per-image core costs."""
    per_image = decode_ms + tower_ms + other_ms
    if cores < 1 or per_image <= 0:
        raise ValueError(f"need cores >= 1 and a positive cost, got {cores}, {per_image}")
    return cores * 1000.0 / per_image


def fastest_guarded(speed: dict[str, float], accuracy: dict[str, float],
                    guard: float) -> tuple[str, float] | None:
    """(runtime, ms) of the fastest runtime whose min cosine reaches `guard`, else None."""
    passing = [name for name in speed if accuracy.get(name, -1.0) >= guard]
    if not passing:
        return None
    name = min(passing, key=speed.__getitem__)
    return name, speed[name]


def fastest(speed: dict[str, float]) -> tuple[str, float]:
    name = min(speed, key=speed.__getitem__)
    return name, speed[name]


def cores() -> int:
    """The cores this process may run on (a taskset or container limit counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def other_work_ms(paths: list[Path], datas: list[bytes], rounds: int) -> dict[str, float]:
    """clipsearch's per-image work besides decoding and the tower, on one core (files in
    the page cache, as the bench warms it before each index job)."""
    from bench.breakdown import _write_cost
    from clip_core.pixels.decode import decode_image
    from clip_core.pixels.preprocess import OPENAI_MEAN, OPENAI_STD, PreprocessSpec, preprocess
    from indexer.stages import content_hash, read_file

    spec = PreprocessSpec(224, OPENAI_MEAN, OPENAI_STD)  # ViT-B-32's, as the bench's model
    decoded = [decode_image(d, min_side=spec.min_side).image for d in datas]
    return {
        "read_ms": best_ms(read_file, [str(p) for p in paths], rounds),
        "sha256_ms": best_ms(content_hash, datas, rounds),
        "preprocess_ms": best_ms(lambda image: preprocess(image, spec), decoded, rounds),
        "catalog_write_ms": _write_cost(100, 512)["per_image_ms"],
    }


def measure(sets: list[str], files: int, rounds: int, model: str = "ViT-B-32",
            sustain_s: float = 10.0, device: dict | None = None) -> dict:
    """The limit of each set on this machine; `device` ({"device", "precision",
    "batch_size"}: bench.device_tower.index_device) for a run whose tower is on an
    accelerator: the host's cores then only decode and prepare (bench.device_tower)."""
    load_start = load_average()
    n_cores = cores()
    guard = _guard()
    if device is None:
        tower, all_cores_ms = _cpu_tower(model, rounds, n_cores, sustain_s)
    else:
        found = device_tower.measure(model, device["device"], device["precision"],
                                     device["batch_size"], rounds)
        if found["min_cos"] < guard:
            raise SystemExit(f"{found['runtime']} fails the guard {guard}: "
                             f"min cos {found['min_cos']:.6f}")
        tower = {"runtime": found["runtime"], "ms": round(found["ms"], 3), "all_cores_ms": None,
                 "min_cos": round(found["min_cos"], 6), "device": device["device"],
                 "batch": found["batch"]}
        all_cores_ms = None
    out: dict = {"cores": n_cores, "guard_min_cos": guard, "tower": tower, "sets": {}}
    for name in sets:
        paths = images.sample_files(name, files)
        if not paths:
            continue
        out["sets"][name] = _set_limit(paths, rounds, n_cores, tower, all_cores_ms, device)
    out["load_average_at_start"] = load_start
    out["load_average_at_end"] = load_average()
    return out


def _guard() -> float:
    from clip_core.encoders import GUARD_MIN_COS

    return GUARD_MIN_COS


def _cpu_tower(model: str, rounds: int, n_cores: int, sustain_s: float
               ) -> tuple[dict, float | None]:
    """The fastest guarded CPU runtime of the image tower, one core ms an image (and the
    same sustained on every core, for the record)."""
    from bench import tower_runtimes

    guard = _guard()
    sustain = tower_runtimes.Sustain(n_cores, sustain_s, guard) if sustain_s > 0 else None
    speed, accuracy, sustained = tower_runtimes.measure(model, rounds, sustain)
    found = fastest_guarded(speed, accuracy, guard)
    if found is None:  # no runtime passed: not a limit this machine can reach guarded
        raise SystemExit(f"no tower runtime passed the guard {guard}: {accuracy}")
    tower_name, tower_ms = found
    all_cores_ms = sustained.get(tower_name)
    # clipsearch's own variant, timed in turns with the rest (bench.pace scales by it)
    ours = [n for n in speed if n.endswith(tower_runtimes.CLIPSEARCH_FIRST)
            and accuracy[n] >= guard]
    tower = {"runtime": tower_name, "ms": round(tower_ms, 2),
             "all_cores_ms": None if all_cores_ms is None else round(all_cores_ms, 2),
             "min_cos": round(accuracy[tower_name], 6),
             "clipsearch_ms": round(speed[ours[0]] if ours else tower_ms, 2),
             "all": {name: {"ms": round(speed[name], 2), "min_cos": round(accuracy[name], 6)}
                     for name in sorted(speed, key=speed.__getitem__)}}
    return tower, all_cores_ms


def _set_limit(paths: list[Path], rounds: int, n_cores: int, tower: dict,
               all_cores_ms: float | None, device: dict | None) -> dict:
    from bench import jpeg_decoders

    datas = [path.read_bytes() for path in paths]
    decoders = jpeg_decoders.measure(datas)
    decoder, decode_ms = fastest(decoders)
    other = other_work_ms(paths, datas, rounds)
    other_ms = sum(other.values())
    tower_ms = tower["ms"]
    figures = {
        "files": len(datas), "decoder": decoder, "decode_ms": round(decode_ms, 2),
        "decoders": {k: round(v, 2) for k, v in decoders.items()},
        "tower_ms": tower_ms, "other_ms": round(other_ms, 2),
        "other": {k: round(v, 3) for k, v in other.items()},
    }
    if device is not None:
        host, on_device = device_tower.device_sides(n_cores, decode_ms, other_ms, tower_ms)
        figures["limit_images_per_s"] = round(min(host, on_device), 2)
        figures["host_images_per_s"] = round(host, 2)
        figures["device_images_per_s"] = round(on_device, 2)
        return figures
    figures["limit_images_per_s"] = round(
        limit_images_per_s(n_cores, decode_ms, tower_ms, other_ms), 2)
    if all_cores_ms is not None:
        figures["limit_all_cores_images_per_s"] = round(
            limit_images_per_s(n_cores, decode_ms, all_cores_ms, other_ms), 2)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="phone,caltech")
    parser.add_argument("--files", type=int, default=20, help="images per set to decode")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--sustain", type=float, default=10.0,
                        help="seconds of the tower on every core at once (0: skip)")
    parser.add_argument("--json", action="store_true", help="one JSON line on stdout")
    parser.add_argument("--device", default="cpu",
                        help="where an index run puts the tower (cuda: bench.device_tower)")
    parser.add_argument("--precision", default="auto", help="the tower's, on --device")
    parser.add_argument("--batch-size", type=int, default=32, help="the run's, on --device")
    args = parser.parse_args(argv)
    device = device_tower.index_device(["--device", args.device, "--precision",
                                        args.precision, "--batch-size", str(args.batch_size)])
    result = measure([s for s in args.sets.split(",") if s], args.files, args.rounds,
                     args.model, args.sustain, device)
    if args.json:
        print(json.dumps(result))
        return 0
    tower = result["tower"]
    if device is not None:
        from bench.report import _print_limit

        _print_limit(result)  # the bench's own lines for a device run's limit
        return 0
    print(f"{result['cores']} cores; tower: {tower['runtime']} {tower['ms']} ms "
          f"(min cos {tower['min_cos']}); {tower['all_cores_ms']} core-ms an image with every "
          f"core running it for {args.sustain:g} s")
    for name, figures in result["sets"].items():
        print(f"{name}: decode {figures['decode_ms']} ms ({figures['decoder']}) + tower "
              f"{figures['tower_ms']} + other {figures['other_ms']} ms per image -> limit "
              f"{figures['limit_images_per_s']} img/s (the tower sustained on every core: "
              f"{figures.get('limit_all_cores_images_per_s')})")
    print(f"load average {result['load_average_at_start']} -> {result['load_average_at_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
