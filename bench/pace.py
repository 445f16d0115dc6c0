"""The machine's pace right now: one core's cost of an image, quickly, beside each index run.

    python -m bench.pace [--sets phone,caltech] [--files 8] [--json]

bench.limit measures the machine's limit once a run (every tower runtime at hand, torch's
among them: a minute or two), after the index jobs. A virtual machine's speed moves by a
third within minutes (on the AMX VM the limit once came out of a fast spell at 33.4 ms a
phone decode and 18.5 ms a tower, where the index runs a few minutes before had met 47 and
25-30), so a throughput and a limit taken minutes apart compare two machines. The pace is
the limit's own sum (decode + tower + other work per image, one core's CPU time, best of
`rounds`) on a few files in ~4 s, with the tower clipsearch runs (its compiled model). The
bench takes one before and one after each index run. The limit at a run's time
(`limit_at`) is the pace's own parts, each scaled by what bench.limit timed in turns in one
loop: the fastest guarded tower against clipsearch's variant, the fastest decoder against
Pillow's draft. So it keeps bench.limit's definition at the machine's speed of the moment
the run was made; scaling the whole limit by the ratio of two paces did not, as the VM's
spells are also shorter than the limit's own measurement (paces of 68 ms beside a limit
summed at 87 from the same parts).
A run's fraction is also given on the core time the VM's host left it (`in_turns`,
bench.steal), since the limit's parts are core-ms and a run's wall time counts steal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from bench import images, steal
from bench.jobs import MODEL_ARGS
from bench.jpeg_decoders import PILLOW_DRAFT, best_ms, pillow


def measure(sets: list[str], files: int = 8, rounds: int = 3) -> dict[str, dict[str, float]]:
    """{set: {decode_ms, tower_ms, other_ms, ms}}: one core's best per-image costs now."""
    from bench.limit import other_work_ms
    from clip_core.compiled.load import load_compiled
    from clip_core.models.ref import parse_model
    from clip_core.pixels.preprocess import preprocess

    loaded = load_compiled(parse_model(MODEL_ARGS[1], MODEL_ARGS[3]))  # the bench's model
    if loaded is None:
        raise SystemExit("no compiled model for the bench's tower (onnxruntime missing?)")
    encoder = loaded[1]
    out: dict[str, dict[str, float]] = {}
    for name in sets:
        paths = images.sample_files(name, files)
        if not paths:
            continue
        datas = [path.read_bytes() for path in paths]
        pixels = [preprocess(pillow(data).convert("RGB"), encoder.preprocess)[None]
                  for data in datas]
        decode = best_ms(pillow, datas, rounds)
        tower = best_ms(encoder.encode_pixels, pixels, rounds)
        other = sum(other_work_ms(paths, datas, rounds).values())
        out[name] = {"decode_ms": round(decode, 3), "tower_ms": round(tower, 3),
                     "other_ms": round(other, 3), "ms": round(decode + tower + other, 3)}
    return out


def limit_at(cores: int, paces: list[dict[str, float]], figures: dict, tower: dict) -> float:
    """The limit (images/s) at the machine's pace beside a run (`paces`: bench.pace's
    figures before and after it): the pace's own parts, each scaled to what bench.limit
    found fastest against clipsearch's in the same loop (`figures`: its set's decoders;
    `tower`: its fastest guarded runtime's ms and clipsearch's variant's), so the limit
    keeps its definition at the run's moment and a spell in between changes nothing."""
    if not paces:
        raise ValueError("no pace beside the run")
    decoders = figures["decoders"]
    decode_ratio = figures["decode_ms"] / decoders.get(PILLOW_DRAFT, figures["decode_ms"])
    tower_ratio = tower["ms"] / tower.get("clipsearch_ms", tower["ms"])
    cost = statistics.fmean(p["decode_ms"] * decode_ratio + p["tower_ms"] * tower_ratio
                            + p["other_ms"] for p in paces)
    if cost <= 0:
        raise ValueError(f"paces must be positive: {paces}")
    return cores * 1000.0 / cost


def in_turns(count: int, seconds: list[float], paces: list[list[dict[str, float]]],
             cores: int, figures: dict, tower: dict,
             steals: list[float | None] | None = None) -> tuple[float, float, float]:
    """(limit, fraction of it reached, the same on the core time the VM was given): each
    index run of `count` images in `seconds[i]` against the limit at the paces taken beside
    it (`paces[i]`); `steals[i]`: the core time the host took during it (bench.steal), which
    the limit's core-ms never include. Medians over the runs."""
    if len(seconds) != len(paces) or not seconds:
        raise ValueError(f"{len(seconds)} runs but {len(paces)} paces")
    steals = steals if steals is not None else [None] * len(seconds)
    if len(steals) != len(seconds):
        raise ValueError(f"{len(seconds)} runs but {len(steals)} steal figures")
    limits = [limit_at(cores, beside, figures, tower) for beside in paces]
    fractions = [count / run / at for run, at in zip(seconds, limits, strict=True)]
    given = [fraction / steal.given_share(run, cores, stolen)
             for fraction, run, stolen in zip(fractions, seconds, steals, strict=True)]
    return statistics.median(limits), statistics.median(fractions), statistics.median(given)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pace", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="phone,caltech")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON line on stdout")
    args = parser.parse_args(argv)
    result = measure([s for s in args.sets.split(",") if s], args.files, args.rounds)
    if args.json:
        print(json.dumps(result))
        return 0
    for name, figures in result.items():
        print(f"{name}: decode {figures['decode_ms']} + tower {figures['tower_ms']} + other "
              f"{figures['other_ms']} = {figures['ms']} ms an image on one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
