"""open_clip's pretrained table and architecture configs, read without importing open_clip."""

from __future__ import annotations

import functools
import json
from pathlib import Path

# -- open_clip's tables without `import open_clip` -----------------------------------------
# Importing open_clip takes 3-12 s (torch, torchvision, transformers), far too long to tell a
# user that a file is missing. Its pretrained table and architecture configs are plain data,
# read here straight from the installed package's files.


def openclip_package_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


@functools.lru_cache(maxsize=1)
def pretrained_table() -> dict[str, dict[str, dict]]:
    """open_clip.pretrained._PRETRAINED ({architecture: {tag: cfg}}), built by running only
    the cfg helpers and table assignments of open_clip/pretrained.py (~20 ms). Falls back to
    importing open_clip if that file ever stops fitting this shape."""
    import ast
    import copy

    try:
        folder = openclip_package_dir()
        source = (folder / "pretrained.py").read_text(encoding="utf-8")
        constants = (folder / "constants.py").read_text(encoding="utf-8")
        namespace: dict = {"copy": copy}
        exec(compile(constants, "open_clip/constants.py", "exec"), namespace)
        tree = ast.parse(source)
        tree.body = [
            node for node in tree.body
            if isinstance(node, ast.Assign | ast.For | ast.Expr)
            or (isinstance(node, ast.FunctionDef) and node.name.endswith("cfg"))
        ]
        exec(compile(tree, "open_clip/pretrained.py", "exec"), namespace)
        table = namespace["_PRETRAINED"]
        if not isinstance(table, dict) or not table:
            raise ValueError("empty table")
        return table
    except Exception:  # any drift in open_clip's source: pay for the import instead
        from open_clip.pretrained import _PRETRAINED

        return _PRETRAINED


def pretrained_cfg(name: str, tag: str) -> dict:
    """Same answer as open_clip.pretrained.get_pretrained_cfg, without importing torch."""
    return dict(pretrained_table().get(name, {}).get(tag.lower().replace("-", "_"), {}))


@functools.lru_cache(maxsize=1)
def architecture_configs() -> dict[str, dict]:
    """open_clip's built-in model configs (model_configs/*.json) by architecture name."""
    folder = openclip_package_dir()
    configs: dict[str, dict] = {}
    for path in sorted((folder / "model_configs").glob("*.json")) if folder else []:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        if all(key in cfg for key in ("embed_dim", "vision_cfg", "text_cfg")):
            configs[path.stem] = cfg
    return configs


def default_pretrained(arch: str) -> str | None:
    """The tag `--model ARCH` means when --pretrained is not given (ViT-B-32, the project's
    default, is decided in clip_core.models.ref): the architecture's only tag; else its first
    LAION-2B tag (open_clip's recommended weights: ViT-B-16 laion2b_s34b_b88k, ViT-L-14
    laion2b_s32b_b82k, ViT-H-14, ViT-bigG-14, convnext_*); else `openai`; else the first tag
    open_clip lists.
    None when open_clip has no weights for ARCH (or does not know it)."""
    try:
        tags = list(pretrained_table().get(arch, {}))
    except ImportError:  # no open_clip at all: the loader will say so
        return None
    laion = [t for t in tags if t.startswith("laion2b")]
    if len(tags) == 1 or not (laion or "openai" in tags):
        return tags[0] if tags else None
    return laion[0] if laion else "openai"


