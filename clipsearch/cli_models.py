"""`clipsearch models ...`: a thin layer over clip_core.weights.store.

`download` is the only clipsearch command that may use the network; with --offline,
CLIPSEARCH_OFFLINE=1 or HF_HUB_OFFLINE=1 it refuses before opening any connection.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from clip_core.models.files import default_models_dir
from clip_core.models.ref import parse_model
from clip_core.weights import store as model_store
from clip_core.weights.download import download as fetch_model

from .cli_errors import EXIT_PROBLEM, friendly_errors, interrupt_note
from .output import format_size, human, write_json


def _models_dir(ctx: click.Context) -> Path:
    return ctx.find_object(dict)["models_dir"]


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
    folder = Path(models_dir).expanduser() if models_dir else default_models_dir()
    ctx.obj = {"models_dir": folder, "offline": offline}


@models.command("list")
@click.option("--all", "include_all", is_flag=True, help="Every open_clip pretrained tag, not "
              "just the common ones and those on this machine.")
@click.option("--json", "as_json", is_flag=True, help="The list as JSON (full paths).")
@click.pass_context
@friendly_errors
def list_cmd(ctx: click.Context, include_all: bool, as_json: bool) -> None:
    """Models clipsearch knows, their size, and where each one is on this machine."""
    infos = model_store.list_models(_models_dir(ctx), include_all)
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


def _size(info: model_store.ModelInfo) -> str:
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
    ref = parse_model(model, pretrained)
    result = fetch_model(ref, _models_dir(ctx), offline=ctx.obj["offline"],
                         endpoint=endpoint, revision=revision, progress=not quiet)
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
    ref = parse_model(model, pretrained)
    if output == "-":
        if as_json:
            raise click.UsageError("--json and -o - would both write to stdout: pick one")
        if sys.stdout.isatty():
            raise click.UsageError("-o - writes the tar to stdout, which is a terminal here: "
                                   "redirect it (`-o - > model.tar`, `| ssh ...`) or give a "
                                   "file name")
        result = model_store.export_bundle(ref, sys.stdout.buffer, _models_dir(ctx))
        sys.stdout.buffer.flush()
        size = sum(f["size"] for f in result.files)
        click.echo(f"Wrote the bundle to stdout ({format_size(size)} of model files, "
                   f"{len(result.files)} files, sha256 inside).", err=True)
        return
    result = model_store.export_bundle(ref, Path(output), _models_dir(ctx), force=force)
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
    result = model_store.import_bundle(Path(bundle), _models_dir(ctx))
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
    results = model_store.verify_store(_models_dir(ctx))
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
    from clip_core.compiled.cache import compile_supported, find_compiled
    from clip_core.compiled.compiler import compile_model

    if not compile_supported():
        raise click.ClickException("compiling needs onnxruntime and onnx "
                                   "(pip install onnxruntime onnx)")
    ref = parse_model(model, pretrained)
    found = None if force else find_compiled(ref, _models_dir(ctx))
    compiled = found or compile_model(ref, models_dir=_models_dir(ctx), force=force)[0]
    if as_json:
        write_json({"folder": str(compiled.folder), "reused": found is not None,
                    **compiled.meta})
        return
    image = compiled.meta["image"]
    state = "already compiled" if found else f"compiled in {compiled.meta['compile_seconds']} s"
    click.echo(f"{ref.display}: {state} in {human(str(compiled.folder))}")
    click.echo(f"image tower: {image['backend']} ({image.get('reason', '')})")
    if "agreement_int8_vs_fp32" in image:
        agree = image["agreement_int8_vs_fp32"]
        speeds = ", ".join(f"{k} {v} img/s" for k, v in image["images_per_second"].items())
        click.echo(f"int8 vs fp32: min cosine {agree['min_cos']} over {agree['probes']} "
                   f"probe images; measured {speeds}")


@models.command()
@click.option("--json", "as_json", is_flag=True, help="The path as JSON.")
@click.pass_context
def path(ctx: click.Context, as_json: bool) -> None:
    """Print the model store folder."""
    if as_json:
        write_json({"path": str(_models_dir(ctx))})
    else:
        click.echo(str(_models_dir(ctx)))
