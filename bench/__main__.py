"""`python -m bench` (`make bench`): see docs/benchmarks.md. The default is the full run."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from bench.run import ALL_JOBS, ALL_SETS, Options, run


def _names(allowed: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        bad = [n for n in names if n not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {','.join(allowed)}")
        return names

    return parse


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Whole-process benchmarks of clipsearch (ViT-B-32, random weights) against "
        "the CLIP README loop measured in the same run.")
    parser.add_argument("--sets", type=_names(ALL_SETS), default=ALL_SETS,
                        help="image sets for the index jobs (default: phone,caltech)")
    parser.add_argument("--jobs", type=_names(ALL_JOBS), default=ALL_JOBS,
                        help="index (per set: index, re-index, cold query), query (100k "
                        "synthetic: warm + cold), reindex10k, serve (clipsearch serve, "
                        "100k synthetic) (default: all)")
    parser.add_argument("--limit", type=int, help="use N images of each set (a fixed-seed sample)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="index runs per set (median)")
    parser.add_argument("--cold-runs", type=int, default=5,
                        help="fresh processes per cold query (after a first one, reported "
                        "apart) and per 10k re-index (median)")
    parser.add_argument("--warm-queries", type=int, default=100)
    parser.add_argument("--synthetic-count", type=int, default=100_000)
    parser.add_argument("--tiny-count", type=int, default=10_000)
    parser.add_argument("--fresh-cache", action="store_true",
                        help="regenerate bench/.cache (images, synthetic and seeded libraries)")
    parser.add_argument("--index-args", default="",
                        help="extra `clipsearch index` options, e.g. '--precision fp32'")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for the clipsearch processes (not the baseline), "
                        "e.g. OMP_NUM_THREADS=1; repeatable")
    parser.add_argument("--out", type=Path, default=Options.out)
    args = parser.parse_args(argv)
    bad = [e for e in args.env if "=" not in e]
    if bad:
        parser.error(f"--env wants KEY=VALUE, got {bad}")
    opts = Options(
        sets=args.sets, jobs=args.jobs, limit=args.limit, skip_baseline=args.skip_baseline,
        repeat=max(1, args.repeat), cold_runs=max(1, args.cold_runs),
        warm_queries=max(1, args.warm_queries), synthetic_count=args.synthetic_count,
        tiny_count=args.tiny_count, fresh_cache=args.fresh_cache,
        index_args=shlex.split(args.index_args), out=args.out,
        env=dict(e.split("=", 1) for e in args.env),
        command=shlex.join(["python", "-m", "bench", *argv]),
    )
    run(opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
