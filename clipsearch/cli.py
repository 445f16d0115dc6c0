"""The `clipsearch` command: a thin layer over clipsearch.Library."""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import click

from .cli_errors import EXIT_DAMAGED, EXIT_INTERRUPTED, friendly_errors
from .output import format_size, human, write_json, write_paths


def library_options(func: Callable) -> Callable:
    @click.option("--library", "library", envvar="CLIPSEARCH_LIBRARY", type=click.Path(),
                  help="Library folder (default: the platform's user data folder; "
                  "env CLIPSEARCH_LIBRARY).")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", value):
        raise click.BadParameter("auto, cpu, cuda, cuda:N, xpu or mps", ctx, param)
    return value


wait_option = click.option("--wait", type=click.FloatRange(min=0), default=0.0,
                           help="Seconds to wait for another indexer to finish.")


def model_options(func: Callable) -> Callable:
    @click.option("--model", help="open_clip architecture (ViT-B-32), hf-hub:ORG/REPO, "
                  "local-dir:PATH, or a bundled model name (shapes-tiny). "
                  "Default: the library's default model.")
    @click.option("--pretrained", help="Pretrained tag (laion2b_s34b_b79k, openai, ...), a "
                  "weights file, or 'none' for random weights (benchmarks only). Default: a "
                  "tag chosen per architecture (docs/models.md).")
    @click.option("--device", default="auto", show_default=True, callback=_check_device,
                  help="auto, cpu, cuda, cuda:1, mps")
    @click.option("--precision", default="auto", show_default=True,
                  type=click.Choice(["auto", "fp32", "bf16", "fp16", "int8"]),
                  help="auto: on the CPU the int8 image tower when it passed its checks "
                  "(see `clipsearch models compile`), else bf16 where measured faster, else "
                  "fp32; fp16 on CUDA. int8 forces the compiled tower.")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


def open_library(library: str | None, model: str | None = None, pretrained: str | None = None,
                 device: str = "auto", precision: str = "auto", **extra):
    from .api import Library

    if model is None and pretrained is not None:
        model = "ViT-B-32"
    lib = Library(library, model=model, pretrained=pretrained, device=device,
                  precision=precision, **extra)
    return lib


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clipsearch")
def main() -> None:
    """Search your photos by describing them. Local and offline."""
    import atexit
    import gc

    # The interpreter's final garbage collections over torch's objects take ~1.5 s on a busy
    # 2-core machine; frozen objects are skipped (the OS frees the memory anyway).
    atexit.register(gc.freeze)


def _warn_random(ref) -> None:
    if ref.random_weights:
        click.secho(
            f"WARNING: {ref.name} with RANDOM weights (--pretrained none): results are "
            "meaningless; use this for benchmarks only.", fg="red", bold=True, err=True)


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, file_okay=False))
@library_options
@model_options
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per encoder call and per committed transaction.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Decode threads (default: cores, at most 4).")
@wait_option
@click.option("--no-draft", is_flag=True, help="Decode JPEGs at full size (slower).")
@click.option("--include-hidden", is_flag=True,
              help="Also index dot-files and -folders (.thumbnails, .Trash) and @eaDir.")
@click.option("--follow-links", is_flag=True,
              help="Also follow symlinks that lead outside the root (never into /proc, "
                   "/sys, /dev).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--ray", "ray_address", metavar="ADDRESS", default=None,
              help="Load and encode on a Ray cluster: auto, ray://host:10001, or local "
                   "(needs pip install 'clipsearch[cluster]'; docs/scale.md).")
@friendly_errors
def index(paths, library, model, pretrained, device, precision, batch_size, workers, wait,
          no_draft, include_hidden, as_json, quiet, follow_links=False, ray_address=None):
    """Index PATHS (added as library roots), or re-index every root."""
    from . import IndexSettings
    from .progress import ProgressBar

    _check_new_library(library, paths, model, pretrained, device, precision)
    lib = open_library(library, model, pretrained, device, precision)
    if not paths and not lib.roots:
        lib.close()
        raise click.UsageError(f"the library at {human(str(lib.path))} has no folders yet: "
                               "`clipsearch index FOLDER` adds one and indexes it")
    _warn_random(lib.model_ref(model, pretrained) if model else lib.default_model)
    settings = IndexSettings(batch_size=batch_size, draft=not no_draft,
                             include_hidden=include_hidden)
    if workers:
        settings.workers = workers
    settings.follow_links = follow_links
    settings.ray = ray_address
    try:
        with lib, ProgressBar(disable=quiet) as bar:
            report = lib.index(list(paths) or None, model=model, pretrained=pretrained,
                               settings=settings, progress=bar.update, wait=wait)
    except KeyboardInterrupt:  # outside the batch loop (waiting, cache refresh): nothing lost
        click.echo("Interrupted; everything committed so far is kept. Run the same command "
                   "again to resume.", err=True)
        _exit_promptly(EXIT_INTERRUPTED)
    if as_json:
        write_json(report.to_dict())
    else:
        _print_report(report)
    if report.interrupted:
        _exit_promptly(EXIT_INTERRUPTED)


def _check_new_library(library: str | None, paths: tuple[str, ...], model: str | None,
                       pretrained: str | None, device: str = "auto",
                       precision: str = "auto") -> None:
    """A library is created only for a run that can work: folders given, a known model on
    this machine. (An existing library checks its own model in Library.index.)"""
    from .api import check_model, default_library_dir
    from .layout import CATALOG_NAME

    lib_dir = Path(library).expanduser() if library else default_library_dir()
    if (lib_dir / CATALOG_NAME).exists():
        return
    if not paths:
        raise click.UsageError(f"there is no library at {human(str(lib_dir))} yet: "
                               "`clipsearch index FOLDER` makes one and indexes FOLDER")
    check_model(model or ("ViT-B-32" if pretrained else None), pretrained, device=device,
                precision=precision)


def _exit_promptly(code: int) -> None:
    """Ctrl-C should end the process at once, and everything is committed and closed by now.
    A normal exit would wait for a model still loading in the background (a first run's
    compile: ~15 s more) and then run the final garbage collections over torch's objects
    (~1.5 s on a busy 2-core machine). An abandoned compile leaves only its work folder,
    which the next compile of that model removes."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _print_report(report) -> None:
    verb = "Interrupted" if report.interrupted else "Done"
    click.echo(
        f"{verb} in {report.seconds:.1f}s: {report.indexed} indexed, {report.reused} reused "
        f"(moved/duplicate), {report.unchanged} unchanged, {report.removed} removed, "
        f"{len(report.skipped)} skipped, {report.known_errors} known errors."
    , err=True)
    if report.interrupted:
        click.echo(f"Stopped after committing {report.committed} of {report.todo} files to "
                   "the library; run the same command again to resume from there.", err=True)
    for skip in report.skipped[:50]:
        click.echo(f"  skipped {human(skip.path)}: {skip.reason}: {skip.message}", err=True)
    if len(report.skipped) > 50:
        click.echo(f"  ... and {len(report.skipped) - 50} more (clipsearch status --errors)",
                   err=True)
    for found in report.empty_roots:
        click.echo(_nothing_found(found), err=True)


def _nothing_found(survey: dict) -> str:
    """Why a root gave nothing to index (indexer.survey): empty, no image files, hidden."""
    parts = []
    if survey["files"]:
        kinds = ", ".join(f"{ext or '(no extension)'} {n}"
                          for ext, n in list(survey["unsupported"].items())[:6])
        more = "+" if survey["truncated"] else ""
        parts.append(f"{survey['files']}{more} files, none of them an image clipsearch reads "
                     f"({kinds})")
    if survey["hidden"]:
        parts.append(f"{survey['hidden']} hidden entries left out (dot-files, .thumbnails, "
                     "@eaDir; --include-hidden indexes them)")
    why = "; ".join(parts) or "the folder is empty"
    return f"Nothing to index in {human(survey['root'])}: {why}."


@main.command()
@click.argument("words", nargs=-1, metavar="[QUERY]...")
@click.option("--image", type=click.Path(exists=True, dir_okay=False),
              help="Find images similar to this one instead of a text.")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many results.")
@click.option("--min-score", type=click.FloatRange(-1, 1), default=None,
              help="Only results with at least this cosine score.")
@click.option("--strong-only", is_flag=True,
              help="Only results graded strong (text queries; see docs/search.md).")
@click.option("--after", metavar="DATE", help="Photos taken from DATE on (2023, 2023-06, "
              "2023-06-14; EXIF date, else the file's mtime).")
@click.option("--before", metavar="DATE", help="Photos taken before DATE.")
@click.option("--orientation", type=click.Choice(["landscape", "portrait", "square"]),
              help="Only photos of this shape (width and height after EXIF rotation).")
@click.option("--min-size", metavar="WxH", help="At least this wide and high (1920x1080).")
@click.option("--type", "types", multiple=True, metavar="TYPE",
              help="File type: jpeg, png, heic, webp, gif, tiff, bmp, avif (repeatable; "
              "by content, not name).")
@click.option("--camera", metavar="TEXT",
              help="Camera make or model contains TEXT (any case): Pixel, 'canon eos'.")
@click.option("--offset", type=click.IntRange(min=0), default=0,
              help="Skip this many results (paging).")
@click.option("--exact", is_flag=True, help="Scan every vector, also in a library big "
              "enough for the approximate index (seconds at 1M photos; docs/scale.md). "
              "With a QUERY.")
@click.option("--in", "within", type=click.Path(file_okay=False),
              help="Only results inside this folder.")
@click.option("--json", "as_json", is_flag=True, help="JSON array of results.")
@click.option("--paths", "paths_only", is_flag=True, help="Only paths, one a line.")
@click.option("-0", "--null", is_flag=True, help="With --paths: end each path with NUL.")
@library_options
@model_options
@friendly_errors
def query(words, image, limit, within, as_json, paths_only, null, library, model, pretrained,
          device, precision, min_score=None, strong_only=False, after=None, before=None,
          orientation=None, min_size=None, types=(), offset=0, camera=None, exact=False):
    """Search the library by [QUERY]... (or --image). Words need no quotes:
    `clipsearch query a dog on a beach`.

    \b
    A QUERY may add and subtract terms (CLIP arithmetic); + and - are signs only as words
    of their own, and a term is the words up to the next sign:
      clipsearch query "a dog" + "in the snow" - "a leash"
      clipsearch query 2:"golden retriever" + ~/Photos/pool.jpg - id:42
    N:TERM weights a term (2:, 0.5:). A term of one word starting with /, ~, ./ or ../
    or ending in an image extension, or image:PATH, is an image; id:N is an indexed
    file (ids: --json). Results of text queries are graded strong / weak / none; when
    none is strong a line says so before the closest photos (docs/search.md).
    Filters (--after, --before, --orientation, --min-size, --type, --camera) apply inside the
    search; without a QUERY they list the matching photos, newest first."""
    from .api import Filters, Query, QuerySyntaxError

    text = " ".join(words)  # as rclip does: no quotes needed
    try:
        filters = Filters(after=after, before=before, orientation=orientation,
                          min_size=min_size, types=tuple(types), camera=camera)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    listing = not words and not image and not filters.empty
    if bool(text and text.strip()) == bool(image) and not listing:
        raise click.UsageError("give a TEXT or --image PATH (one of them; TEXT not blank)")
    if image and exact:
        raise click.UsageError("--exact goes with a QUERY, not --image")
    if image and (min_score is not None or strong_only):
        raise click.UsageError("--min-score and --strong-only go with a QUERY, not --image")
    parsed = None
    if image and not filters.empty:
        raise click.UsageError("filters go with a QUERY (or alone), not with --image")
    if not image and not listing:
        try:
            parsed = Query.from_words(words)
        except QuerySyntaxError as exc:
            raise click.UsageError(str(exc)) from None
    if as_json and paths_only:
        raise click.UsageError("--json and --paths are two output formats: pick one")
    if null and not paths_only:
        raise click.UsageError("-0 goes with --paths (NUL after each path)")
    results, nothing_indexed = None, False
    plain = (parsed is not None and len(parsed.terms) == 1 and parsed.terms[0].kind == "text"
             and parsed.terms[0].weight == 1 and pretrained is None and filters.empty
             and min_score is None and not strong_only and offset == 0 and not exact)
    if plain:  # a running `clipsearch serve` of this library answers plain text queries
        from .remote import query_server

        # No results (an empty library?) are worked out here, to say why.
        results = query_server(library, str(parsed.terms[0].value), limit=limit,
                               within=within, model=model) or None
    if results is None:
        with open_library(library, None, None, device, precision, low_memory=True,
                          create=False) as lib:
            _warn_random(lib.model_ref(model, pretrained))
            if image:
                results = lib.query_image(image, limit=limit, within=within, model=model,
                                          pretrained=pretrained)
            else:
                try:
                    results = lib.query(parsed, limit=limit, within=within, model=model,
                                        pretrained=pretrained, min_score=min_score,
                                        strong_only=strong_only, filters=filters, offset=offset,
                                        exact=exact)
                except ValueError as exc:  # only negative terms, terms that cancel out
                    raise click.UsageError(str(exc)) from None
            nothing_indexed = not results and not lib.indexed_models
    why = getattr(results, "reason", None)
    if why and (as_json or paths_only):  # the formats stay lists: the reason goes to stderr
        click.echo(f"No results: {why}", err=True)
    if as_json:
        write_json([r.to_dict() for r in results])
    elif paths_only:
        write_paths([r.path for r in results], null)
    elif nothing_indexed:
        click.echo("Nothing indexed yet: run `clipsearch index FOLDER`", err=True)
    elif not results:
        where = f" inside {within}" if within else ""
        click.echo(f"No results{where}" + (f": {why}" if why else
                   " (is it indexed? `clipsearch status`)"), err=True)
    else:
        if getattr(results, "good_match", None) is False:
            click.echo("No good match: nothing here is graded strong; the closest photos "
                       "follow.", err=True)
        for r in results:
            grade = f"  {r.grade:<6}" if r.grade else ""
            score = f"{r.score:.3f}" if r.score is not None else f"{r.width}x{r.height}"
            click.echo(f"{r.rank:>3}  {score}{grade}  {human(r.path)}")


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.argument("labels", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="The scores as JSON.")
@library_options
@model_options
@friendly_errors
def classify(image, labels, as_json, library, model, pretrained, device, precision):
    """Zero-shot: how well each of the LABELS describes IMAGE (the classic CLIP demo)."""
    if any(not label.strip() for label in labels):
        raise click.UsageError("a LABEL is blank")
    from .api import classify as classify_image
    from .api import default_library_dir
    from .layout import CATALOG_NAME

    lib_dir = Path(library) if library else default_library_dir()
    if (lib_dir / CATALOG_NAME).is_file():  # use the library's default model
        with open_library(library, None, None, device, precision, low_memory=True) as lib:
            scores = lib.classify(image, list(labels), model=model, pretrained=pretrained)
    else:  # no library needed, and none is created
        scores = classify_image(image, list(labels), model=model, pretrained=pretrained,
                                device=device, precision=precision)
    if as_json:
        write_json([s.to_dict() for s in scores])
        return
    width = max(len(s.label) for s in scores)
    for s in scores:
        bar = "#" * round(s.probability * 40)
        click.echo(f"{s.label:<{width}}  {s.probability:6.1%}  {bar}")
    if len(scores) == 1:
        click.echo("(probabilities compare the labels given: with one label it is always "
                   "100%; give two or more)", err=True)


@main.command()
@click.option("--errors", "show_errors", is_flag=True, help="List every file that failed.")
@click.option("--json", "as_json", is_flag=True, help="The status as JSON.")
@library_options
@friendly_errors
def status(show_errors, as_json, library):
    """Show the library: roots, counts, models, size on disk, errors."""
    with open_library(library, create=False) as lib:
        st = lib.status(errors=show_errors)
    if as_json:
        write_json(st.to_dict())
        return
    shared = (f", plus {format_size(st.shared_bytes)} of model files shared with the model "
              "cache" if st.shared_bytes else "")  # hard links: not freed with the library
    click.echo(f"Library: {human(st.path)} ({format_size(st.data_bytes)}{shared})")
    if st.default_model:
        click.echo(f"Default model: {st.default_model['id']}")
    else:
        click.echo(f"Default model: none yet (`clipsearch index` uses {st.index_model})")
    todo = f", {st.unindexed} to index (clipsearch index)" if st.unindexed else ""
    click.echo(f"Files: {st.files} ({st.indexed} indexed{todo}, {_count(st.errors, 'error')})")
    click.echo("Roots:" if st.roots else "Roots: none (clipsearch index FOLDER)")
    for root in st.roots:
        click.echo(f"  {human(root)}")
    if st.models:
        click.echo("Models:")
        for model_id, count in st.models.items():
            click.echo(f"  {model_id}: {_count(count, 'vector')}")
            click.echo(_index_line(st.vector_indexes.get(model_id) or {}))
    if st.error_list:
        click.echo("Errors:")
    for err in st.error_list:
        click.echo(f"  error {human(err['path'])}: {err['error_reason']}: {err['error_message']}")
    if st.errors and not show_errors:
        click.echo("(clipsearch status --errors lists them)")


def _index_line(info: dict) -> str:
    """One line on a model's vector index (docs/scale.md)."""
    if not info.get("kind"):
        return "    index: not built yet (the next query or index run builds it)"
    stale = "" if info.get("up_to_date") else "; behind the catalog, updated on next use"
    if info.get("exact"):
        return f"    index: exact scan ({info['kind']}){stale}"
    return (f"    index: approximate {info['kind']}, {info['nlist']} cells, nprobe "
            f"{info['nprobe']}, measured recall@10 {info['recall_at_10']:.3f} (--exact scans "
            f"all){stale}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@main.command("remove-root")
@click.argument("path", type=click.Path())
@library_options
@wait_option
@click.option("--json", "as_json", is_flag=True, help="The result as JSON.")
@friendly_errors
def remove_root(path, library, wait, as_json):
    """Forget the root folder PATH and its files."""
    with open_library(library, create=False) as lib:
        n = lib.remove_root(path, wait=wait)
    if as_json:
        write_json({"root": os.path.abspath(path), "files_removed": n})
    else:
        click.echo(f"Removed {os.path.abspath(path)} ({n} files)")


@main.command("default-model")
@click.argument("model", required=False)
@click.option("--pretrained", help="Pretrained tag or weights file for MODEL.")
@library_options
@click.option("--json", "as_json", is_flag=True, help="The default model as JSON.")
@friendly_errors
def default_model(model, pretrained, library, as_json):
    """Show, or set, the model this library uses when --model is not given (MODEL: a --model
    spec or a model id from `status`, with vectors in this library)."""
    with open_library(library, create=False) as lib:
        ref = lib.set_default_model(model, pretrained) if model else lib.default_model
        unset = lib.status().default_model is None
    if as_json:
        write_json(None if unset else {"id": ref.model_id, **ref.to_spec()})
    elif unset:
        click.echo(f"none yet (`clipsearch index` uses {ref.model_id})")
    else:
        click.echo(ref.model_id)


@main.command("remove-model")
@click.argument("model")
@click.option("--pretrained", help="Pretrained tag or weights file for MODEL.")
@library_options
@wait_option
@click.option("--json", "as_json", is_flag=True, help="The result as JSON.")
@friendly_errors
def remove_model(model, pretrained, library, wait, as_json):
    """Delete every vector made by MODEL (a model id from `status`, or a --model spec)."""
    with open_library(library, create=False) as lib:
        n = lib.remove_model(model, pretrained, wait=wait)
    if as_json:
        write_json({"model": model, "vectors_removed": n})
    else:
        click.echo(f"Removed {n} vectors")


@main.command()
@click.option("--repair", is_flag=True, help="Salvage a damaged catalog (kept as a backup "
              "file) and drop the files derived from it; they are rebuilt.")
@library_options
@wait_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def doctor(repair, library, wait, as_json):
    """Check the library's files (catalog integrity, text towers); exit 4 if damaged."""
    from .api import Library

    report = Library.doctor(library, repair=repair, wait=wait)
    if as_json:
        write_json(report.to_dict())
    else:
        for problem in report.catalog_problems + report.damaged_towers:
            click.echo(f"damaged: {problem}")
        for note in report.notes:
            click.echo(f"repaired: {note}")
        if report.backup:
            click.echo(f"The damaged catalog is kept as {human(report.backup)}")
        if report.healthy:
            click.echo("No problems found.")
        elif not report.repaired:
            click.echo("Run `clipsearch doctor --repair` to repair it.")
    if not (report.healthy or report.repaired):
        sys.exit(EXIT_DAMAGED)


@main.command()
@click.option("--threshold", type=click.FloatRange(-1, 1), default=None,
              help="Vector cosine above which two photos are candidates (default 0.95); "
              "candidates are confirmed on their pixels (docs/search.md).")
@click.option("--json", "as_json", is_flag=True, help="The groups as JSON.")
@library_options
@click.option("--model", help="Whose vectors to compare (default: the library's default).")
@click.option("--pretrained", help="Pretrained tag or weights file for --model.")
@friendly_errors
def duplicates(threshold, as_json, library, model, pretrained):
    """Group near-duplicate photos (bursts, resized or re-encoded copies, small crops) and
    exact copies: largest group first, each with its best photo first (most pixels, then
    newest)."""
    with open_library(library, create=False, low_memory=True) as lib:
        groups = lib.duplicates(threshold=threshold, model=model, pretrained=pretrained)
    if as_json:
        write_json([g.to_dict() for g in groups])
        return
    if not groups:
        click.echo("No duplicates found.", err=True)
    for n, group in enumerate(groups, 1):
        kind = "exact copies" if group.exact else "near-duplicates"
        click.echo(f"Group {n}: {len(group.members)} photos, {kind}")
        for i, m in enumerate(group.members):
            mark = "best " if i == 0 else f"{m.score:.3f}"
            click.echo(f"  {mark}  {m.width}x{m.height}  {human(m.path)}")


def _register_subgroups() -> None:
    from .cli_models import models
    from .cli_serve import make_serve, make_watch
    from .cli_shards import add_commands

    main.add_command(models)
    add_commands(main, library_options, model_options, wait_option, open_library)
    main.add_command(make_serve(library_options, model_options, open_library))
    main.add_command(make_watch(library_options, open_library))


_register_subgroups()

if __name__ == "__main__":
    main()
