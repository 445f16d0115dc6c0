"""`clipsearch serve`: a thin layer over clipsearch.server."""

from __future__ import annotations

from collections.abc import Callable

import click

from .cli_errors import friendly_errors


def make_serve(library_options: Callable, model_options: Callable,
               open_library: Callable) -> click.Command:
    """The command, given cli.py's shared options (passed in: `python -m clipsearch.cli`
    runs cli.py as __main__, and importing it back from here would load it twice)."""

    @click.command()
    @library_options
    @model_options
    @click.option("--host", default="127.0.0.1", show_default=True,
                  help="Address to listen on. Anything but loopback needs --token.")
    @click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
                  help="Port (0: any free port; the URL printed says which).")
    @click.option("--token", envvar="CLIPSEARCH_TOKEN",
                  help="Every request must carry it (auto: make one; env CLIPSEARCH_TOKEN keeps "
                       "it out of `ps`). The printed URL holds it; the page keeps it in a cookie.")
    @click.option("--read-only", is_flag=True, help="No index runs over HTTP.")
    @click.option("--watch", is_flag=True,
                  help="Keep the library indexed: index on every change under the roots.")
    @click.option("--cors", multiple=True, metavar="ORIGIN",
                  help="Let pages from ORIGIN call the API (repeatable). Default: none.")
    @click.option("--max-upload-mb", type=click.IntRange(1, 4096), default=50, show_default=True,
                  help="Largest image accepted by search-by-image and classify.")
    @click.option("--workers", type=click.IntRange(min=1), default=None,
                  help="Serving processes on the port, each with a warm library (default: "
                       "one per core, at most 4; 1 where the OS cannot share a port).")
    @friendly_errors
    def serve(library, model, pretrained, device, precision, host, port, token, read_only, cors,
              max_upload_mb, watch, workers):
        """Serve the library: a web page at / and an HTTP API under /api/ (docs/api.md)."""
        from .server import ServeConfig, check_binding, default_workers
        from .server import serve as run

        if watch and read_only:
            raise click.UsageError("--watch indexes, --read-only does not: pick one")
        config = ServeConfig(host=host, port=port, token=token, read_only=read_only, watch=watch,
                             cors=list(cors), max_upload_bytes=max_upload_mb * 2**20,
                             workers=workers or default_workers(),
                             library_options={"model": model, "pretrained": pretrained,
                                              "device": device, "precision": precision})
        try:
            check_binding(config)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        with open_library(library, model, pretrained, device, precision) as lib:
            run(lib, config, announce=lambda line: click.echo(line, err=True))

    return serve


def make_watch(library_options: Callable, open_library: Callable) -> click.Command:
    """`clipsearch watch`, given cli.py's shared options (see make_serve)."""

    @click.command()
    @library_options
    @click.option("--include-hidden", is_flag=True,
                  help="Also index dot-files and -folders (.thumbnails, .Trash) and @eaDir.")
    @click.option("--quiet", "-q", is_flag=True, help="Print only failures.")
    @friendly_errors
    def watch(library, include_hidden, quiet):
        """Keep the library indexed: index every root now, then again on every change
        (new, changed, moved, deleted photos) until Ctrl-C. Same writer lock as `index`."""
        import contextlib
        import time

        from . import IndexSettings
        from . import watch as watch_library

        def report(r) -> None:
            skipped = f", {len(r.skipped)} failed" if r.skipped else ""
            if not quiet and (r.indexed or r.reused or r.removed or r.skipped):
                click.echo(f"{time.strftime('%H:%M:%S')} indexed {r.indexed}, moved "
                           f"{r.reused}, removed {r.removed}{skipped}", err=True)

        def busy(exc) -> None:
            click.echo(f"{time.strftime('%H:%M:%S')} waiting: {exc}", err=True)

        with open_library(library, create=False) as lib:
            if not quiet:
                click.echo(f"Watching {', '.join(lib.roots) or 'no folder'} (Ctrl-C stops)",
                           err=True)
            # Ctrl-C is the way a watch ends; what was committed stays.
            with contextlib.suppress(KeyboardInterrupt):
                watch_library(lib, settings=IndexSettings(include_hidden=include_hidden),
                              on_report=report, on_busy=busy)
        if not quiet:
            click.echo("Stopped watching; everything indexed so far is kept.", err=True)

    return watch
