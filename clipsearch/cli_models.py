"""`clipsearch models ...`: a thin layer over clipsearch.ModelStore (clipsearch/models.py).

`download` is the only clipsearch command that may use the network; with --offline,
CLIPSEARCH_OFFLINE=1 or HF_HUB_OFFLINE=1 it refuses before opening any connection.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .cli_errors import EXIT_PROBLEM, friendly_errors, interrupt_note
from .output import format_size, human, write_json

if TYPE_CHECKING:
    from .models import ModelInfo, ModelStore


def _store(ctx: click.Context) -> ModelStore:
    return ctx.find_object(dict)["store"]


def _models_dir(ctx: click.Context) -> Path:
    return _store(ctx).folder


def _use_hint(spec: dict) -> str:
    hint = f"--model {spec['model']}"
    return hint + (f" --pretrained {spec['pretrained']}" if spec.get("pretrained") else "")


@click.group()
@click.option("--offline", is_flag=True, help="Guarantee no network access: download refuses "
              "at once (also CLIPSEARCH_OFFLINE=1 or HF_HUB_OFFLINE=1).")
@click.option("--models-dir", envvar="CLIPSEARCH_MODELS", type=click.Path(file_okay=False),
              help="The model store (env CLIPSEARCH_MODELS; default: the platform's user data "
              "folder).")
@click.pass_context
def models(ctx: click.Context, offline: bool, models_dir: str | None) -> None:
    """Manage CLIP model files (offline-first: only `download` uses the network)."""
    if offline:
        # Also for anything this process may load: huggingface_hub honours HF_HUB_OFFLINE.
        os.environ["CLIPSEARCH_OFFLINE"] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"
    from . import ModelStore

    ctx.obj = {"store": ModelStore(models_dir, offline=offline)}


@models.command("list")
@click.option("--all", "include_all", is_flag=True, help="Every open_clip pretrained tag, not "
              "just the common ones and those on this machine.")
@click.option("--json", "as_json", is_flag=True, help="The list as JSON (full paths).")
@click.pass_context
@friendly_errors
def list_cmd(ctx: click.Context, include_all: bool, as_json: bool) -> None:
    """Models clipsearch knows, their size, and where each one is on this machine."""
    infos = _store(ctx).list_models(include_all)
    if as_json:
        write_json([i.to_dict() for i in infos])
        return
    rows = [(i.model, i.pretrained or "-", str(i.embed_dim or "?"), _size(i),
             f"yes  {human(i.location)}" if i.available else "no") for i in infos]
    head = ("MODEL", "PRETRAINED", "DIM", "SIZE", "LOCAL")
    # A long name (local-dir:/a/long/path) goes on a line of its own above its row, so one
    # imported folder does not push every other column off the screen.
    fits = [head, *(r for r in rows if len(r[0]) <= _NAME_WIDTH)]
    widths = [max(len(r[0]) for r in fits),
              *(max(len(r[c]) for r in [head, *rows]) for c in range(1, 4))]
    for row in [head, *rows]:
        if len(row[0]) > widths[0]:
            click.echo(row[0])
            row = ("", *row[1:])
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False))
                   + "  " + row[4])
    if not include_all:
        click.echo("(--all lists every pretrained tag; ~ = estimated fp32 size)", err=True)


_NAME_WIDTH = 32  # the longest open_clip architecture names fit


def _size(info: ModelInfo) -> str:
    if info.size_bytes is None:
        return "?"
    return ("~" if info.size_approx else "") + format_size(info.size_bytes)


@models.command()
@click.argument("model")
@click.option("--pretrained", help="Pretrained tag (default: one per architecture, "
              "laion2b_s34b_b79k for ViT-B-32; see docs/models.md).")
@click.option("--revision", default="main", show_default=True, help="Hub branch, tag or commit.")
@click.option("--endpoint", help="Hub address (default: HF_ENDPOINT or https://huggingface.co).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="The result as JSON.")
@click.pass_context
@friendly_errors
@interrupt_note("the part already fetched is kept: run the same command again to resume.")
def download(ctx: click.Context, model: str, pretrained: str | None, revision: str,
             endpoint: str | None, quiet: bool, as_json: bool) -> None:
    """Fetch MODEL into the store (resumable, sha256-checked). The only networked command."""
    result = _store(ctx).download(model, pretrained, endpoint=endpoint, revision=revision,
                                  progress=not quiet)
    ref = result.ref
    total = sum(f["size"] for f in result.files)
    if as_json:
        write_json({"model_id": ref.model_id, **ref.to_spec(), "folder": str(result.folder),
                    "files": len(result.files), "bytes": total,
                    "downloaded_bytes": result.downloaded_bytes})
        return
    click.echo(f"{ref.display}: {len(result.files)} file(s), {format_size(total)} in "
               f"{human(str(result.folder))} ({format_size(result.downloaded_bytes)} fetched, "
               "sha256 recorded).", err=True)
    click.echo(f"Use it with: {_use_hint(ref.to_spec())}", err=True)


@models.command()
@click.argument("model")
@click.option("--pretrained", help="Pretrained tag, as for --model elsewhere.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="Bundle file to write (a tar); '-' streams it to stdout (a pipe or file, "
              "not a terminal).")
@click.option("--force", is_flag=True, help="Replace an existing bundle file.")
@click.option("--json", "as_json", is_flag=True, help="The result as JSON.")
@click.pass_context
@friendly_errors
@interrupt_note("no bundle was written.")
def export(ctx: click.Context, model: str, pretrained: str | None, output: str, force: bool,
           as_json: bool) -> None:
    """Write MODEL's local files into one portable bundle file (for air-gapped machines)."""
    if output == "-":
        if as_json:
            raise click.UsageError("--json and -o - would both write to stdout: pick one")
        if sys.stdout.isatty():
            raise click.UsageError("-o - writes the tar to stdout, which is a terminal here: "
                                   "redirect it (`-o - > model.tar`, `| ssh ...`) or give a "
                                   "file name")
        result = _store(ctx).export_bundle(model, sys.stdout.buffer, pretrained)
        sys.stdout.buffer.flush()
        size = sum(f["size"] for f in result.files)
        click.echo(f"Wrote the bundle to stdout ({format_size(size)} of model files, "
                   f"{len(result.files)} files, sha256 inside).", err=True)
        return
    result = _store(ctx).export_bundle(model, output, pretrained, force=force)
    size = Path(output).stat().st_size
    if as_json:
        write_json({"bundle": str(result.path), "bytes": size, "files": len(result.files)})
        return
    click.echo(f"Wrote {human(str(result.path))} ({format_size(size)}, "
               f"{len(result.files)} files, sha256 inside).", err=True)
    click.echo(f"On the other machine: clipsearch models import {Path(output).name}", err=True)


@models.command("import")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="The result as JSON.")
@click.pass_context
@friendly_errors
@interrupt_note("nothing was installed.")
def import_cmd(ctx: click.Context, bundle: str, as_json: bool) -> None:
    """Verify every checksum in BUNDLE and install it into the store."""
    result = _store(ctx).import_bundle(bundle)
    if as_json:
        write_json({"model_id": result.model_id, **result.spec, "folder": str(result.path),
                    "files": len(result.files)})
        return
    click.echo(f"Installed {result.model_id} in {human(str(result.path))} "
               f"({len(result.files)} files verified).", err=True)
    click.echo(f"Use it with: {_use_hint(result.spec)}", err=True)


@models.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model folder.")
@click.pass_context
@friendly_errors
@interrupt_note("nothing was changed (verify only reads).")
def verify(ctx: click.Context, as_json: bool) -> None:
    """Check every stored model against its recorded sha256; exit 1 on any problem."""
    results = _store(ctx).verify()
    if as_json:
        write_json([r.to_dict() for r in results])
    else:
        if not results:
            click.echo(f"No models in {human(str(_models_dir(ctx)))}.")
        for r in results:
            click.echo(f"{r.status:<10}  {human(r.folder)}")
            for f in r.files:
                if f["status"] != "ok":
                    click.echo(f"            {f['status']}: {f['name']}")
            for name in r.partial:
                click.echo(f"            partial download: {name} (rerun download to resume)")
    if not all(r.ok for r in results):
        sys.exit(EXIT_PROBLEM)


@models.command("compile")
@click.argument("model")
@click.option("--pretrained", help="Pretrained tag, as for --model elsewhere.")
@click.option("--force", is_flag=True, help="Compile again even when a current one exists.")
@click.option("--json", "as_json", is_flag=True, help="The compiled model's details as JSON.")
@click.pass_context
@friendly_errors
@interrupt_note("no compiled model was written; one already in place is kept.")
def compile_cmd(ctx: click.Context, model: str, pretrained: str | None, force: bool,
                as_json: bool) -> None:
    """Prepare MODEL for fast torch-free CPU indexing (int8 ONNX image tower + numpy text
    tower, checked against fp32 here). The first `index` does this by itself; run it ahead
    to keep that first index run short."""
    compiled = _store(ctx).compile(model, pretrained, force=force)
    if as_json:
        write_json({"folder": str(compiled.folder), "reused": compiled.reused,
                    **compiled.meta})
        return
    image = compiled.meta["image"]
    state = ("already compiled" if compiled.reused
             else f"compiled in {compiled.meta['compile_seconds']} s")
    click.echo(f"{compiled.display}: {state} in {human(str(compiled.folder))}")
    click.echo(f"image tower: {image['backend']} ({image.get('reason', '')})")
    if "agreement_int8_vs_fp32" in image:
        agree = image["agreement_int8_vs_fp32"]
        speeds = ", ".join(f"{k} {v} img/s"
                           for k, v in image.get("images_per_second", {}).items())
        click.echo(f"int8 vs fp32: min cosine {agree['min_cos']} over {agree['probes']} "
                   f"probe images" + (f"; measured {speeds}" if speeds else ""))


@models.command()
@click.option("--json", "as_json", is_flag=True, help="The path as JSON.")
@click.pass_context
def path(ctx: click.Context, as_json: bool) -> None:
    """Print the model store folder."""
    if as_json:
        write_json({"path": str(_models_dir(ctx))})
    else:
        click.echo(str(_models_dir(ctx)))
