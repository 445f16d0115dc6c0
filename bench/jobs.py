"""The timed jobs. Each runs fresh processes through bench.proc and returns result dicts:
{"job", "subject", "tool", "count", "seconds", "peak_rss_mb", "runs", ...}; seconds and
peak RSS are medians over the runs (peak_rss_max_mb keeps the worst)."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from bench import proc
from bench.images import CACHE, ImageSet

MODEL_ARGS = ["--model", "ViT-B-32", "--pretrained", "none"]
QUERY_TEXT = "a photo of a dog"


def summarise(job: str, subject: str, tool: str, runs: list[proc.ProcResult],
              count: int | None = None, first: proc.ProcResult | None = None,
              **extra: object) -> dict:
    seconds = statistics.median(r.seconds for r in runs)
    result = {
        "job": job, "subject": subject, "tool": tool, "count": count,
        "seconds": round(seconds, 4),
        "peak_rss_mb": round(statistics.median(r.peak_rss_mb for r in runs), 1),
        "peak_rss_max_mb": round(max(r.peak_rss_mb for r in runs), 1),
        "runs": [{"seconds": round(r.seconds, 4), "peak_rss_mb": round(r.peak_rss_mb, 1),
                  "steal_s": r.steal_s} for r in runs],
        **extra,
    }
    if count and job in ("index", "baseline-index"):
        result["images_per_s"] = round(count / seconds, 2)
    if first is not None:  # reported apart: it may build caches (a torch-free text tower)
        result["first_run_seconds"] = round(first.seconds, 4)
        result["first_run_peak_rss_mb"] = round(first.peak_rss_mb, 1)
    if job == "warm-query":  # the figure is the in-process p50; wall time is set-up noise
        result["process_seconds"] = result.pop("seconds")
    return result


def compile_model(env: dict[str, str], pretrained: str | None = None) -> dict:
    """`clipsearch models compile --force`: what the first index run with a model does once
    (export, quantise, check against fp32, measure); every later run reuses it. With
    `pretrained` (a weights file: weights_file_model) as a user's downloaded model is
    compiled, without torch; else `--pretrained none` (random weights made in numpy into
    the cache once, then read the same way)."""
    model = MODEL_ARGS[1]
    run = proc.run(proc.clipsearch("models", "compile", model, "--pretrained",
                                   pretrained or MODEL_ARGS[3], "--force", "--json"),
                   env).check()
    meta = json.loads(run.stdout)
    subject = f"{model} (file)" if pretrained else model
    result = summarise("compile", subject, "clipsearch", [run])
    result["image"] = meta["image"]
    return result


def weights_file_model() -> str:
    """The random ViT-B-32 saved as a safetensors file once (bench.weights_file)."""
    path = CACHE / "ViT-B-32-random.safetensors"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        proc.run(proc.python("-m", "bench.weights_file", str(path))).check()
    return str(path)


def pace(sets: list[str], env: dict[str, str]) -> dict[str, dict[str, float]]:
    """{set: one core's ms an image right now, by part} (bench.pace, in a subprocess: the
    harness stays small)."""
    run = proc.run(proc.python("-m", "bench.pace", "--sets", ",".join(sets), "--json"),
                   env).check()
    return json.loads(run.stdout.strip().splitlines()[-1])


def first_index(image_set: ImageSet, runs: Path, env: dict[str, str]) -> dict:
    """A user's first `clipsearch index` with a model (weights file, nothing compiled: the
    compile is part of the run) against a later run (compiled model found), each into a
    new library: the first run's throughput as a fraction of the later one's."""
    cache = runs / "first-index-cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**env, "CLIPSEARCH_CACHE": str(cache)}
    model_args = [MODEL_ARGS[0], MODEL_ARGS[1], "--pretrained", weights_file_model()]
    out = []
    for name in ("first", "later"):
        library = runs / f"lib-{name}-index"
        shutil.rmtree(library, ignore_errors=True)
        argv = index_argv(image_set.folder, library, model_args, ["--follow-links"])
        run = proc.run(argv, env)
        if index_report(run)["indexed"] != image_set.count:
            raise RuntimeError(f"{name} index run indexed {index_report(run)}")
        out.append(run)
    result = summarise("first-index", image_set.name, "clipsearch", out[:1], image_set.count)
    result["images_per_s"] = round(image_set.count / result["seconds"], 2)
    later = summarise("index", image_set.name, "clipsearch", out[1:], image_set.count)
    result["later_images_per_s"] = later["images_per_s"]
    result["later_peak_rss_mb"] = later["peak_rss_mb"]
    result["of_later_run"] = round(result["images_per_s"] / later["images_per_s"], 3)
    return result


def index_argv(folder: Path, library: Path, model_args: list[str], extra: list[str]) -> list[str]:
    return proc.clipsearch("index", str(folder), "--library", str(library), *model_args,
                           "--json", "--quiet", *extra)


def index_report(result: proc.ProcResult) -> dict:
    result.check()
    return json.loads(result.stdout)


def baseline_index(image_set: ImageSet, out: Path) -> proc.ProcResult:
    run = proc.run(proc.python("-m", "bench.baseline", "index", str(image_set.folder),
                               str(out))).check()
    if int(run.stdout.split()[-1]) != image_set.count:
        raise RuntimeError(f"baseline embedded {run.stdout.strip()} of {image_set.count}")
    return run


def clipsearch_index(image_set: ImageSet, library: Path, extra: list[str],
                     env: dict[str, str]) -> tuple[proc.ProcResult, proc.ProcResult]:
    """A fresh index, then the same command again over the unchanged tree."""
    shutil.rmtree(library, ignore_errors=True)
    # The set's folder holds links into bench/.cache (bench.images.make_set), which
    # clipsearch follows only when told to (links out of a root are skipped by default).
    argv = index_argv(image_set.folder, library, MODEL_ARGS, ["--follow-links", *extra])
    first = proc.run(argv, env)
    report = index_report(first)
    if report["indexed"] != image_set.count or report["skipped"]:
        raise RuntimeError(f"clipsearch indexed {report['indexed']} of {image_set.count}, "
                           f"skipped {report['skipped'][:3]}")
    again = proc.run(argv, env)
    report = index_report(again)
    if report["unchanged"] != image_set.count or report["indexed"]:
        raise RuntimeError(f"re-index was not a no-op: {report}")
    return first, again


def cold_query(library: Path, runs: int, env: dict[str, str]) -> tuple[
        proc.ProcResult, list[proc.ProcResult]]:
    """The first query after indexing, then `runs` more for the p50."""
    argv = proc.clipsearch("query", QUERY_TEXT, "--library", str(library), *MODEL_ARGS)
    out = [proc.run(argv, env).check() for _ in range(runs + 1)]
    if not out[-1].stdout.strip():
        raise RuntimeError(f"cold query over {library} returned nothing")
    return out[0], out[1:]


def baseline_cold_query(vectors: Path, runs: int) -> tuple[
        proc.ProcResult, list[proc.ProcResult]]:
    argv = proc.python("-m", "bench.baseline", "query", QUERY_TEXT, str(vectors))
    out = [proc.run(argv).check() for _ in range(runs + 1)]
    return out[0], out[1:]


def warm_query(library: Path, queries: int, env: dict[str, str]) -> tuple[
        proc.ProcResult, dict]:
    run = proc.run(proc.python("-m", "bench.warm_query", str(library), "--queries",
                               str(queries)), env).check()
    return run, json.loads(run.stdout.strip().splitlines()[-1])


def query_features(library: Path, queries: int, env: dict[str, str]) -> tuple[
        proc.ProcResult, dict]:
    """Filtered queries against unfiltered ones, and duplicates over every vector."""
    run = proc.run(proc.python("-m", "bench.query_features", str(library), "--queries",
                               str(queries)), env).check()
    return run, json.loads(run.stdout.strip().splitlines()[-1])


def baseline_warm_query(vectors: Path, queries: int) -> tuple[proc.ProcResult, dict]:
    run = proc.run(proc.python("-m", "bench.baseline", "warm-query", str(vectors),
                               "--queries", str(queries))).check()
    return run, json.loads(run.stdout.strip().splitlines()[-1])


def seeded_tiny_library(folder: Path, count: int, fresh: bool) -> Path:
    """Index the tiny set once (bench.seed: stub vectors, real catalog) and keep it cached."""
    library = CACHE / f"lib-tiny{count}"
    marker = library / "bench-seed.json"
    expect = {"folder": str(folder), "count": count, "model_args": MODEL_ARGS}
    try:
        if not fresh and json.loads(marker.read_text()) == expect:
            return library
    except (OSError, ValueError):
        pass
    shutil.rmtree(library, ignore_errors=True)
    print(f"bench: indexing {count} tiny images once (stub vectors) into {library}", flush=True)
    run = proc.run(proc.python("-m", "bench.seed", str(folder), str(library))).check()
    report = json.loads(run.stdout.strip().splitlines()[-1])
    if report["indexed"] + report["reused"] != count or report["skipped"]:
        raise RuntimeError(f"seeding the tiny library: {report}")
    marker.write_text(json.dumps(expect))
    return library


def reindex_unchanged(folder: Path, library: Path, count: int, runs: int,
                      env: dict[str, str]) -> list[proc.ProcResult]:
    argv = index_argv(folder, library, MODEL_ARGS, [])
    out = []
    for _ in range(runs):
        run = proc.run(argv, env)
        report = index_report(run)
        if report["unchanged"] != count:
            raise RuntimeError(f"tiny library is not unchanged ({report}); rerun with "
                               "--fresh-cache")
        out.append(run)
    return out


def agreement(library: Path, baseline_vectors: Path) -> dict | None:
    """Cosine between clipsearch's and the baseline's vector of each file (same random
    weights), beside the cosine between different files for scale."""
    import numpy as np

    from store import Catalog

    paths = json.loads(baseline_vectors.with_suffix(".json").read_text())
    base = np.load(baseline_vectors)
    catalog = Catalog(library / "catalog.db", readonly=True)
    try:
        rows = catalog.conn.execute(
            "SELECT f.path, e.vector FROM files f JOIN embeddings e"
            " ON e.content_hash = f.content_hash").fetchall()
    finally:
        catalog.close()
    ours = {p: np.frombuffer(v, np.float32) for p, v in rows}
    pairs = [(ours[p], base[i]) for i, p in enumerate(paths) if p in ours]
    if len(pairs) < 2:
        return None
    a = np.stack([x for x, _ in pairs])
    b = np.stack([y for _, y in pairs])
    same = (a * b).sum(1)
    other = (a * np.roll(b, 1, axis=0)).sum(1)
    return {"files": len(pairs), "same_file_mean_cos": round(float(same.mean()), 4),
            "same_file_min_cos": round(float(same.min()), 4),
            "other_file_mean_cos": round(float(other.mean()), 4)}
