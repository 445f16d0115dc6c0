"""open_clip's pretrained table and architecture configs, read without importing open_clip."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

from clip_core.atomic_json import write_json

# -- open_clip's tables without `import open_clip` -----------------------------------------
# Importing open_clip takes 3-12 s (torch, torchvision, transformers), far too long to tell a
# user that a file is missing. Its architecture configs are JSON files, read straight from the
# installed package. Its pretrained table is Python (open_clip/pretrained.py): a subprocess
# imports it once per installed open_clip and the answer is cached as JSON in the user cache
# (measured: ~0.3 s once, then ~2 ms per process to read the JSON).

CACHE_FORMAT = 1

# Run in a subprocess: import open_clip.pretrained for real, without the package's __init__
# (which imports torch) when it allows, else the whole package; print its table as JSON.
_DUMP = r"""
import importlib, importlib.util, json, sys, types
def table():
    spec = importlib.util.find_spec("open_clip")
    stub = types.ModuleType("open_clip")
    stub.__path__ = list(spec.submodule_search_locations)
    sys.modules["open_clip"] = stub
    for optional in ("safetensors.torch", "huggingface_hub"):  # optional there, and slow
        sys.modules.setdefault(optional, None)
    try:
        return importlib.import_module("open_clip.pretrained")._PRETRAINED
    except Exception:  # pretrained.py came to need the package: pay for the full import
        for name in [n for n in sys.modules if n == "open_clip" or n.startswith("open_clip.")]:
            del sys.modules[name]
        for optional in ("safetensors.torch", "huggingface_hub"):
            if sys.modules.get(optional) is None:
                sys.modules.pop(optional, None)
        return importlib.import_module("open_clip.pretrained")._PRETRAINED
json.dump(table(), sys.stdout)
"""


def openclip_package_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def _cache_file() -> Path:
    env = os.environ.get("CLIPSEARCH_CACHE")
    if env:
        return Path(env).expanduser() / "open_clip-pretrained.json"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("clipsearch", appauthor=False)) / "open_clip-pretrained.json"


def _table_key(folder: Path) -> str:
    """The installed open_clip's version and pretrained.py's size and mtime: an upgrade (or an
    edited source checkout) reads the table again."""
    version_file = folder / "version.py"
    version = version_file.read_text(encoding="utf-8").strip() if version_file.exists() else ""
    st = (folder / "pretrained.py").stat()
    return f"{CACHE_FORMAT}|{folder}|{version}|{st.st_size}|{st.st_mtime_ns}"


def _tuples(value):
    """JSON has no tuples: open_clip's cfgs hold only tuples (mean, std), so lists go back."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _read_cache(path: Path, key: str) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or not data.get("table"):
        return None
    return data["table"]


def _write_cache(path: Path, key: str, table: dict) -> None:
    """Atomic: processes that race write the same content."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"key": key, "table": table})
    except OSError:  # a read-only cache: every process reads the table again, still correct
        pass


def _read_in_subprocess() -> dict:
    done = subprocess.run([sys.executable, "-c", _DUMP], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise ImportError("open_clip's pretrained table could not be read: "
                          + (done.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(done.stdout)


@functools.lru_cache(maxsize=1)
def pretrained_table() -> dict[str, dict[str, dict]]:
    """open_clip.pretrained._PRETRAINED ({architecture: {tag: cfg}}): from open_clip itself when
    this process already imported it, else from the JSON cache, else read in a subprocess and
    cached. ImportError without open_clip."""
    loaded = sys.modules.get("open_clip.pretrained")
    if loaded is not None and hasattr(loaded, "_PRETRAINED"):
        return loaded._PRETRAINED
    folder = openclip_package_dir()
    if folder is None:
        raise ImportError("open_clip is not installed")
    key, path = _table_key(folder), _cache_file()
    table = _read_cache(path, key)
    if table is None:
        table = _read_in_subprocess()
        _write_cache(path, key, table)
    return _tuples(table)


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


