"""`clipsearch embed-shards` and `import-shards`: a thin layer over clipsearch.embed_shards and
Library.import_shards (indexer/shards.py; docs/scale.md).

cli.py hands in its shared options (importing cli.py from here would be circular)."""

from __future__ import annotations

from collections.abc import Callable

import click

from .cli_errors import friendly_errors
from .output import human, write_json


def add_commands(group: click.Group, library_options: Callable, model_options: Callable,
                 wait_option: Callable, open_library: Callable) -> None:
    group.add_command(_embed_command(model_options))
    group.add_command(_import_command(library_options, wait_option, open_library))


def _embed_command(model_options: Callable) -> click.Command:
    return click.command("embed-shards")(_embed_options(model_options)(embed_shards))


def _import_command(library_options: Callable, wait_option: Callable,
                    open_library: Callable) -> click.Command:
    def run(folder, library, wait, as_json):
        """Add the shards in FOLDER (from embed-shards) to the library; safe to repeat."""
        with open_library(library) as lib:
            report = lib.import_shards(folder, wait=wait)
        _print_import(report, as_json)

    run = friendly_errors(run)
    run = click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")(run)
    run = library_options(wait_option(run))
    return click.command("import-shards")(click.argument("folder")(run))


def _embed_options(model_options: Callable) -> Callable:
    def apply(func: Callable) -> Callable:
        for option in reversed(_EMBED_OPTIONS):
            func = option(func)
        return model_options(func)

    return apply


_EMBED_OPTIONS = [
    click.argument("root"),  # a folder or s3://bucket/prefix: embed_shards checks it
    click.option("--ray", "ray_address", metavar="ADDRESS", required=True,
                 help="The Ray cluster: auto, ray://host:10001, or local."),
    click.option("--out", required=True,
                 help="Folder (or s3://bucket/prefix) the workers write Parquet shards to."),
    click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
                 help="Images per encoder call and per shard block."),
    click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
]


@friendly_errors
def embed_shards(root, ray_address, out, model, pretrained, device, precision, batch_size,
                 as_json):
    """Embed ROOT's images (a folder or s3://bucket/prefix) on a Ray cluster into Parquet
    shards (no library needed)."""
    from . import IndexSettings
    from .api import embed_shards as embed

    files = embed(root, out, ray=ray_address, model=model, pretrained=pretrained,
                  device=device, precision=precision,
                  settings=IndexSettings(batch_size=batch_size))
    if as_json:
        write_json({"root": root, "out": out, "files": files})
    else:
        click.echo(f"Embedded {files} files of {human(root)} into shards in {out} "
                   f"(`clipsearch import-shards {out}` adds them to a library)")


def _print_import(report, as_json: bool) -> None:
    if as_json:
        write_json(report.to_dict())
        return
    click.echo(f"Imported {report.imported} files, {report.unchanged} already in the library, "
               f"{report.stale} changed since (the next `clipsearch index` does them).")
    for shard in report.ignored:
        click.echo(f"  ignored (unreadable, half-written?) {shard}", err=True)
