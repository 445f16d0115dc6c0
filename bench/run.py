"""Orchestration: prepare the image sets, run the jobs, print the table, write the JSON."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import bytecode, images, jobs, pace, proc, synthetic
from bench.device_tower import index_device
from bench.machine import load_average, machine_info
from bench.report import print_table
from bench.targets import evaluate, subject_key

RESULTS = images.REPO / "bench" / "results"
RUNS = images.CACHE / "runs"
ALL_SETS = ("phone", "caltech")
ALL_JOBS = ("index", "query", "reindex10k", "serve")


@dataclass
class Options:
    sets: tuple[str, ...] = ALL_SETS
    jobs: tuple[str, ...] = ALL_JOBS
    limit: int | None = None
    skip_baseline: bool = False
    repeat: int = 1
    cold_runs: int = 5
    warm_queries: int = 100
    synthetic_count: int = 100_000
    tiny_count: int = 10_000
    fresh_cache: bool = False
    index_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # for clipsearch processes only
    out: Path = RESULTS / "latest.json"
    command: str = "python -m bench"


def _say(text: str) -> None:
    print(f"bench: {text}", flush=True)


def image_sets(opts: Options, notes: list[str]) -> list[images.ImageSet]:
    caltech = images.caltech_files()
    if caltech is None:
        notes.append(f"caltech set skipped: {images.CALTECH} not found")
        _say(notes[-1])
    out = []
    for name in opts.sets:
        if name == "caltech" and caltech:
            out.append(images.make_set("caltech", caltech, opts.limit))
        elif name == "phone":
            if opts.fresh_cache or not images.phone_ready():
                if caltech is None:
                    notes.append("phone set skipped: it is generated from the caltech images")
                    _say(notes[-1])
                    continue
                # In a subprocess: the harness stays small (see bench.proc on inherited RSS).
                fresh = ["--fresh"] if opts.fresh_cache else []
                proc.run(proc.python("-m", "bench.images", "phone", *fresh)).check()
            files = images.list_images(images.CACHE / "phone")
            out.append(images.make_set("phone", files, opts.limit))
    return out


def bench_set(image_set: images.ImageSet, opts: Options, results: list[dict]) -> None:
    subject = image_set.name if opts.limit is None else f"{image_set.name}-{image_set.count}"
    _say(f"{subject}: {image_set.count} images, {image_set.bytes / 1e6:.0f} MB")
    images.warm_page_cache(image_set.files)
    base_runs, first_runs, again_runs = [], [], []
    paces: list[list[dict]] = []  # one core's ms an image (by part) before and after a run
    vectors = RUNS / f"baseline-{image_set.name}.npy"
    library = RUNS / f"lib-{image_set.name}"
    # One core's pace is the CPU tower's: a run on a device is judged on its own limit.
    timed = index_device(opts.index_args) is None
    for i in range(opts.repeat):
        if not opts.skip_baseline:
            _say(f"{subject}: baseline index (run {i + 1}/{opts.repeat})")
            base_runs.append(jobs.baseline_index(image_set, vectors))
        _say(f"{subject}: clipsearch index + unchanged re-index (run {i + 1}/{opts.repeat})"
             + (", the machine's pace before and after" if timed else ""))
        before = jobs.pace([image_set.name], opts.env)[image_set.name] if timed else None
        first, again = jobs.clipsearch_index(image_set, library, opts.index_args, opts.env)
        if timed:
            paces.append([before, jobs.pace([image_set.name], opts.env)[image_set.name]])
        first_runs.append(first)
        again_runs.append(again)
    n = image_set.count
    ours = jobs.summarise("index", subject, "clipsearch", first_runs, n, paces_ms=paces)
    again = jobs.summarise("reindex", subject, "clipsearch", again_runs, n)
    if base_runs:
        base = jobs.summarise("baseline-index", subject, "baseline", base_runs, n)
        base["job"] = "index"
        results.append(base)
        ours["vs_baseline"] = round(ours["images_per_s"] / base["images_per_s"], 2)
        ours["rss_vs_baseline"] = round(ours["peak_rss_mb"] / base["peak_rss_mb"], 2)
        again["vs_baseline"] = round(base["seconds"] / again["seconds"], 2)
        ours["agreement"] = jobs.agreement(library, vectors)
    results += [ours, again]
    _say(f"{subject}: cold query x{opts.cold_runs}")
    first, runs = jobs.cold_query(library, opts.cold_runs, opts.env)
    cold = jobs.summarise("cold-query", subject, "clipsearch", runs, first=first)
    if base_runs:
        first, runs = jobs.baseline_cold_query(vectors, opts.cold_runs)
        base_cold = jobs.summarise("cold-query", subject, "baseline", runs, first=first)
        results.append(base_cold)
        cold["vs_baseline"] = round(base_cold["seconds"] / cold["seconds"], 2)
        cold["rss_vs_baseline"] = round(cold["peak_rss_mb"] / base_cold["peak_rss_mb"], 2)
    results.append(cold)


def bench_queries(opts: Options, results: list[dict]) -> None:
    count = opts.synthetic_count
    subject = f"synthetic-{count // 1000}k" if count % 1000 == 0 else f"synthetic-{count}"
    if opts.fresh_cache or not synthetic.is_ready(count):
        # In a subprocess: the harness stays small (see bench.proc on inherited RSS).
        _say(f"{subject}: writing the synthetic library (once)")
        argv = ["-m", "bench.synthetic", "--count", str(count)]
        proc.run(proc.python(*argv, *(["--fresh"] if opts.fresh_cache else [])),
                 opts.env).check()  # opts.env: the bench's compiled-model cache
    library = synthetic.library_path(count)
    vectors = synthetic.vectors_path(count)
    _say(f"{subject}: warm library-API query x{opts.warm_queries}")
    run, warm = jobs.warm_query(library, opts.warm_queries, opts.env)
    ours = jobs.summarise("warm-query", subject, "clipsearch", [run], count, **warm)
    _say(f"{subject}: cold CLI query x{opts.cold_runs}")
    first, runs = jobs.cold_query(library, opts.cold_runs, opts.env)
    cold = jobs.summarise("cold-query", subject, "clipsearch", runs, count, first=first)
    if not opts.skip_baseline:
        run, base_warm = jobs.baseline_warm_query(vectors, opts.warm_queries)
        base = jobs.summarise("warm-query", subject, "baseline", [run], count, **base_warm)
        ours["vs_baseline"] = round(base["p50_ms"] / ours["p50_ms"], 2)
        first, runs = jobs.baseline_cold_query(vectors, opts.cold_runs)
        base_cold = jobs.summarise("cold-query", subject, "baseline", runs, count,
                                   first=first)
        cold["vs_baseline"] = round(base_cold["seconds"] / cold["seconds"], 2)
        cold["rss_vs_baseline"] = round(cold["peak_rss_mb"] / base_cold["peak_rss_mb"], 2)
        results += [base, base_cold]
    results += [ours, cold]
    _say(f"{subject}: filtered queries and duplicates (bench.query_features)")
    run, features = jobs.query_features(library, opts.warm_queries, opts.env)
    results.append(jobs.summarise("query-features", subject, "clipsearch", [run], count,
                                  **features))


def bench_serve(opts: Options, results: list[dict]) -> None:
    """`clipsearch serve` against the warm in-process query and the cold CLI (bench.serve_speed)."""
    count = opts.synthetic_count
    subject = f"synthetic-{count // 1000}k" if count % 1000 == 0 else f"synthetic-{count}"
    if opts.fresh_cache or not synthetic.is_ready(count):
        _say(f"{subject}: writing the synthetic library (once)")
        proc.run(proc.python("-m", "bench.synthetic", "--count", str(count))).check()
    _say(f"{subject}: clipsearch serve (HTTP vs warm, 8 clients while indexing, thumbnails)")
    run = proc.run(proc.python("-m", "bench.serve_speed", str(synthetic.library_path(count)),
                               "--cold-runs", str(opts.cold_runs)), opts.env).check()
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    results.append({"job": "serve", "subject": subject, "tool": "clipsearch", "count": count,
                    "p50_ms": figures["http_p50_ms"], **figures})


def bench_reindex(opts: Options, results: list[dict]) -> None:
    count = opts.tiny_count
    subject = f"tiny-{count // 1000}k" if count % 1000 == 0 else f"tiny-{count}"
    folder = images.CACHE / f"tiny{count}"
    if opts.fresh_cache or not images.tiny_ready(count):
        _say(f"{subject}: generating {count} tiny images (once)")
        fresh = ["--fresh"] if opts.fresh_cache else []
        proc.run(proc.python("-m", "bench.images", "tiny", "--count", str(count),
                             *fresh)).check()
    library = jobs.seeded_tiny_library(folder, count, opts.fresh_cache)
    _say(f"{subject}: re-index unchanged x{opts.cold_runs}")
    runs = jobs.reindex_unchanged(folder, library, count, opts.cold_runs, opts.env)
    results.append(jobs.summarise("reindex", subject, "clipsearch", runs, count))


def machine_limit(sets: list[str], opts: Options, results: list[dict]) -> dict:
    """bench.limit in a subprocess (it loads torch: the harness stays small), then each
    set's clipsearch index throughput as a fraction of the limit measured in this run."""
    device = index_device(opts.index_args)
    on_device = [] if device is None else [
        "--device", device["device"], "--precision", device["precision"],
        "--batch-size", str(device["batch_size"])]
    _say("measuring this machine's limit: fastest decoder and guarded tower, "
         + ("one core" if device is None else f"the tower on {device['device']}"))
    run = proc.run(proc.python("-m", "bench.limit", "--sets", ",".join(sets), "--json",
                               *on_device), opts.env).check()
    limit = json.loads(run.stdout.strip().splitlines()[-1])
    for result in results:
        figures = limit["sets"].get(subject_key(result["subject"]))
        if result["job"] == "index" and result["tool"] == "clipsearch" and figures:
            result["limit_images_per_s"] = figures["limit_images_per_s"]
            result["of_limit"] = round(result["images_per_s"] / figures["limit_images_per_s"],
                                       3)
            if result.get("paces_ms"):
                at, fraction, given = pace.in_turns(
                    result["count"], [r["seconds"] for r in result["runs"]],
                    result["paces_ms"], limit["cores"], figures, limit["tower"],
                    [r.get("steal_s") for r in result["runs"]])
                result["limit_in_turns_images_per_s"] = round(at, 2)
                result["of_limit_in_turns"] = round(fraction, 3)
                result["of_limit_given"] = round(given, 3)
            if figures.get("limit_all_cores_images_per_s"):  # for the record, not a target
                result["limit_all_cores_images_per_s"] = figures["limit_all_cores_images_per_s"]
                result["of_limit_all_cores"] = round(
                    result["images_per_s"] / figures["limit_all_cores_images_per_s"], 3)
    return limit


def run(opts: Options) -> dict:
    started = time.time()
    info = machine_info()
    notes: list[str] = []
    results: list[dict] = []
    limit: dict | None = None
    shutil.rmtree(RUNS, ignore_errors=True)
    RUNS.mkdir(parents=True)
    if not bytecode.compile_project():  # as installed: no module compiled in every process
        notes.append("some of clipsearch's modules did not compile to bytecode")
    # clipsearch's compiled models live in the bench cache, not the user's.
    opts.env = {"CLIPSEARCH_CACHE": str(images.CACHE / "model-cache"), **opts.env}
    if "index" in opts.jobs:
        _say("compiling the model for clipsearch (once per model and machine)")
        results.append(jobs.compile_model(opts.env))
        _say("compiling it again from a weights file (as a user's model; no torch)")
        results.append(jobs.compile_model(opts.env, jobs.weights_file_model()))
        sets = image_sets(opts, notes)
        for image_set in sets:
            bench_set(image_set, opts, results)
            if image_set.name == "phone":
                _say(f"{image_set.name}: a first index run (compile included) and a later one")
                results.append(jobs.first_index(image_set, RUNS, opts.env))
        if sets:
            limit = machine_limit([s.name for s in sets], opts, results)
    if "query" in opts.jobs:
        bench_queries(opts, results)
    if "reindex10k" in opts.jobs:
        bench_reindex(opts, results)
    if "serve" in opts.jobs:
        bench_serve(opts, results)
    info["load_average_at_end"] = load_average()
    # Judged at the start only: by the end the run's own processes are in the load average.
    busy = (info["load_average_at_start"] or [0])[0] > 0.5 * (info["cores"] or 1) + 0.5
    if busy:
        notes.append("machine was busy (load average above half the cores): figures are "
                     "noisy and provisional")
    targets = evaluate(results, partial=opts.limit is not None)
    doc = {
        "command": opts.command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_seconds": round(time.time() - started, 1),
        "machine": info,
        "options": {"sets": list(opts.sets), "jobs": list(opts.jobs), "limit": opts.limit,
                    "skip_baseline": opts.skip_baseline, "repeat": opts.repeat,
                    "cold_runs": opts.cold_runs, "warm_queries": opts.warm_queries,
                    "synthetic_count": opts.synthetic_count, "tiny_count": opts.tiny_count,
                    "index_args": opts.index_args, "env": opts.env},
        "provisional": busy or opts.limit is not None,
        "notes": notes,
        "results": results,
        "limit": limit,
        "targets": targets,
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(doc, indent=2) + "\n")
    print_table(doc)
    print(f"\nJSON: {opts.out}")
    return doc
