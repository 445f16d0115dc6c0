"""clipsearch's model store: list, export, import and verify model files (downloads into it:
clip_core/weights/download.py, the only code in clipsearch that opens a network connection,
and only when a user asks for it). Store layout (model_files.store_dir_for):

    MODELS/ARCH/TAG/            open_clip weights for a pretrained tag (tokenizer/ if needed)
    MODELS/hf-hub/ORG/REPO/     an open_clip hub bundle: open_clip_config.json + weights
    MODELS/local-dir/NAME/      an imported local folder (open_clip or transformers format)

Every folder written here carries `.clipsearch/manifest.json` with the sha256 and size of each
file, so `verify` can check it later and `export` can refuse to copy a corrupt file. The
metadata lives in a hidden folder because a local-dir model id fingerprints top-level *.json.
No torch import anywhere in this module: it must answer in milliseconds.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from clip_core.atomic_json import write_json
from clip_core.models import hf_layout
from clip_core.models.files import (
    CONFIG_NAME,
    default_models_dir,
    hf_cache_dir,
    hub_snapshots,
    is_openclip_bundle,
    is_transformers_clip,
    locate_pretrained,
    raise_problem,
    require,
)
from clip_core.models.open_clip_tables import architecture_configs, pretrained_table
from clip_core.models.places import SAFE_NAME
from clip_core.models.ref import BUNDLED_MODELS_DIR, WEIGHT_SUFFIXES, ModelRef
from clip_core.models.sources import SOURCES, source_for
from clip_core.weights.manifest import check_manifest
from clipsearch_errors import BadInputError, StoreError

META_DIR = ".clipsearch"
MANIFEST = "manifest.json"
PARTIAL_DIR = ".partial"
BUNDLE_FORMAT = "clipsearch-model"
BUNDLE_VERSION = 1
# Shown by `models list` without --all (plus everything available locally).
COMMON = (
    ("ViT-B-32", "laion2b_s34b_b79k"), ("ViT-B-32", "openai"),
    ("ViT-B-32-256", "datacomp_s34b_b86k"), ("ViT-B-16", "laion2b_s34b_b88k"),
    ("ViT-B-16", "openai"), ("ViT-B-16-SigLIP", "webli"), ("ViT-L-14", "laion2b_s32b_b82k"),
    ("ViT-L-14", "datacomp_xl_s13b_b90k"), ("ViT-L-14", "openai"),
    ("ViT-SO400M-14-SigLIP", "webli"), ("ViT-H-14", "laion2b_s32b_b79k"),
    ("ViT-bigG-14", "laion2b_s39b_b160k"), ("convnext_base_w", "laion2b_s13b_b82k_augreg"),
)
_CHUNK = 1 << 20


class OfflineError(StoreError):
    """Download refused because offline mode is on."""


class DownloadError(StoreError):
    """The server could not be reached or the transfer broke (rerun to resume)."""


class ChecksumError(StoreError, BadInputError):
    """A file's sha256 differs from the expected one; the file was rejected."""


class BundleError(StoreError, BadInputError):
    """An export bundle is malformed, unsafe or corrupt; nothing was installed."""


# -- small helpers ---------------------------------------------------------------------------

def clipsearch_version() -> str:
    try:
        from importlib.metadata import version

        return version("clipsearch")
    except Exception:
        return "unknown"


def is_offline(flag: bool = False) -> bool:
    truthy = {"1", "ON", "YES", "TRUE"}
    return flag or any(os.environ.get(name, "").strip().upper() in truthy
                       for name in ("CLIPSEARCH_OFFLINE", "HF_HUB_OFFLINE"))


def sha256_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def read_manifest(folder: Path) -> dict | None:
    path = folder / META_DIR / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_manifest(folder: Path, manifest: dict) -> None:
    meta = folder / META_DIR
    meta.mkdir(parents=True, exist_ok=True)
    write_json(meta / MANIFEST, manifest, indent=2, sort_keys=True)


def _new_manifest(ref: ModelRef, source: dict) -> dict:
    return {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "kind": ref.kind,
        "spec": ref.to_spec(), "model_id": ref.model_id, "files": [], "source": source,
        "clipsearch_version": clipsearch_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _record(manifest: dict, name: str, sha256: str, size: int) -> None:
    manifest["files"] = [f for f in manifest["files"] if f["name"] != name]
    manifest["files"].append({"name": name, "sha256": sha256, "size": size})
    manifest["files"].sort(key=lambda f: f["name"])


def _safe_relpath(name: str) -> bool:
    """A bundle/manifest file name: at most `dir/file`, no hidden parts, no `..`, no root."""
    parts = PurePosixPath(name).parts
    return (0 < len(parts) <= 2 and "\\" not in name and not name.startswith("/")
            and all(SAFE_NAME.match(p) and p not in (".", "..") for p in parts))


def hub_repo(cfg: dict) -> tuple[str, str]:
    """(repo id, file name or "") of a pretrained cfg's hf_hub entry. open_clip's convention:
    "org/repo/" means its default file names, "org/repo/file" one named file."""
    hub = cfg.get("hf_hub", "")
    if hub.endswith("/"):
        return hub.rstrip("/"), ""
    repo_id, filename = os.path.split(hub)
    return repo_id, filename


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir()
               if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


# -- listing ---------------------------------------------------------------------------------

@dataclass
class ModelInfo:
    model: str  # the --model value
    pretrained: str | None  # the --pretrained value (None for folders and hub bundles)
    source: str  # open_clip | bundled | store | hf-cache
    embed_dim: int | None = None
    size_bytes: int | None = None
    size_approx: bool = False  # estimated from the architecture (fp32), not a real file
    available: bool = False
    location: str | None = None
    common: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def approx_param_count(cfg: dict) -> int | None:
    """Parameters of a plain ViT + text-transformer CLIP from its config (matches open_clip's
    modules within 0.2% for every such built-in config); None for timm, HF-text, ResNet or
    CoCa towers, whose sizes cannot be derived from the config alone."""
    vision, text, embed = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {}), cfg["embed_dim"]
    if ("timm_model_name" in vision or "hf_model_name" in text or "multimodal_cfg" in cfg
            or not isinstance(vision.get("layers"), int)):
        return None

    def blocks(width: int, layers: int, mlp_ratio: float) -> int:
        hidden = int(width * mlp_ratio)
        return layers * (4 * width * width + 2 * width * hidden + 9 * width + hidden)

    width, patch, size = vision.get("width", 768), vision.get("patch_size", 16), vision.get(
        "image_size", 224)
    h, w = (size, size) if isinstance(size, int) else size
    grid = (h // patch) * (w // patch)
    count = (3 * patch * patch * width + (grid + 2) * width + 4 * width + width * embed
             + blocks(width, vision["layers"], vision.get("mlp_ratio", 4.0)))
    tw = text.get("width", 512)
    count += ((text.get("vocab_size", 49408) + text.get("context_length", 77) + 2) * tw
              + tw * embed + blocks(tw, text.get("layers", 12), text.get("mlp_ratio", 4.0)))
    return count + 1  # logit_scale


def list_models(models_dir: Path | None = None, include_all: bool = False) -> list[ModelInfo]:
    """Models clipsearch knows, and where each one is on this machine. No network."""
    models_dir = models_dir or default_models_dir()
    configs = architecture_configs()
    common = set(COMMON)
    infos: list[ModelInfo] = []
    hub_repos: set[str] = set()
    for arch, tags in pretrained_table().items():
        arch_cfg = configs.get(arch, {})
        params = approx_param_count(arch_cfg) if arch_cfg else None
        for tag, cfg in tags.items():
            hub_repos.add(hub_repo(cfg)[0])
            located = locate_pretrained(ModelRef("openclip", arch, tag), cfg, models_dir)
            info = ModelInfo(arch, tag, "open_clip", arch_cfg.get("embed_dim"),
                             common=(arch, tag) in common)
            if located.weights is not None:
                info.available, info.location = True, str(located.weights)
                info.size_bytes = located.weights.stat().st_size
            elif params:
                info.size_bytes, info.size_approx = params * 4, True
            if include_all or info.common or info.available:
                infos.append(info)
    infos.extend(_bundled_models())
    infos.extend(_store_folders(models_dir))
    infos.extend(_hf_cache_bundles(hub_repos))
    return infos


def _folder_info(model: str, folder: Path, source: str) -> ModelInfo:
    embed_dim = None
    for name, keys in ((CONFIG_NAME, ("model_cfg", "embed_dim")), ("config.json",
                                                                   ("projection_dim",))):
        try:
            value: Any = json.loads((folder / name).read_text(encoding="utf-8"))
            for key in keys:
                value = value[key]
            embed_dim = int(value)
            break
        except (OSError, ValueError, KeyError, TypeError):
            continue
    size = _folder_size(folder)  # 0: no weights yet (e.g. an interrupted download)
    return ModelInfo(model, None, source, embed_dim, size, False, size > 0, str(folder),
                     common=True)


def _bundled_models() -> list[ModelInfo]:
    if not BUNDLED_MODELS_DIR.is_dir():
        return []
    return [_folder_info(p.name, p, "bundled") for p in sorted(BUNDLED_MODELS_DIR.iterdir())
            if p.is_dir() and not p.name.startswith(".")]


def _store_folders(models_dir: Path) -> list[ModelInfo]:
    """hf-hub bundles and imported local folders in the store (tags are listed above)."""
    infos = []
    hub = models_dir / "hf-hub"
    for folder in sorted(hub.glob("*/*")) if hub.is_dir() else []:
        if (folder / CONFIG_NAME).is_file() or (folder / hf_layout.CONFIG_FILE).is_file():
            infos.append(_folder_info(f"hf-hub:{folder.parent.name}/{folder.name}", folder,
                                      "store"))
    local = models_dir / "local-dir"
    for folder in sorted(local.iterdir()) if local.is_dir() else []:
        if folder.is_dir() and not folder.name.startswith("."):
            infos.append(_folder_info(f"local-dir:{folder}", folder, "store"))
    return infos


def _hf_cache_bundles(known_repos: set[str]) -> list[ModelInfo]:
    """open_clip bundles and transformers CLIP repositories (a Stable Diffusion user's
    openai/clip-vit-large-patch14) in the HF cache that no pretrained tag points at."""
    infos = []
    cache = hf_cache_dir()
    for repo_dir in sorted(cache.glob("models--*")) if cache.is_dir() else []:
        repo_id = repo_dir.name[len("models--"):].replace("--", "/")
        if repo_id in known_repos:
            continue
        for snap in hub_snapshots(repo_id):  # refs/main's first
            if is_openclip_bundle(snap) or is_transformers_clip(snap):
                infos.append(_folder_info(f"hf-hub:{repo_id}", snap, "hf-cache"))
                break
    return infos




# -- export / import -------------------------------------------------------------------------

@dataclass
class BundleResult:
    spec: dict
    model_id: str
    path: Path  # the bundle file (export) or the installed folder (import)
    files: list[dict]


def _source_files(ref: ModelRef, models_dir: Path
                  ) -> tuple[dict[str, Path | bytes], str | None]:
    """The local files load_model would use, {bundle name: path or generated content}, and
    the folder name for local-dir installs."""
    source = source_for(ref, models_dir)
    raise_problem(ref, source.unknown())  # the same error as every other command
    if source.no_files:
        raise StoreError(source.no_files)
    found = require(ref, source.export_files())
    return found.files, found.folder_name


class _HashingReader:
    def __init__(self, handle: IO[bytes]):
        self.handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        return data


def export_bundle(ref: ModelRef, out: Path | IO[bytes], models_dir: Path | None = None, *,
                  force: bool = False) -> BundleResult:
    """Write one portable tar: manifest.json + files/... (uncompressed: weights don't shrink).
    `out` is a path (written to a temp file, then renamed; an existing file is replaced only
    with `force`) or a binary stream such as stdout into a pipe (written as it goes: a file
    found corrupt on the way cuts the stream before its manifest, so import refuses it)."""
    if not hasattr(out, "write"):
        out = Path(out)
        if out.exists() and not force:
            raise StoreError(f"{out} already exists; not overwritten (use --force to replace "
                             "it).")
    models_dir = models_dir or default_models_dir()
    files, folder_name = _source_files(ref, models_dir)
    paths = [p for p in files.values() if isinstance(p, Path)]
    manifest = _new_manifest(ref, {"exported_from": str(paths[0].parent)})
    if folder_name:  # installed as MODELS/local-dir/NAME on arrival
        manifest["kind"], manifest["folder_name"] = "local-dir", folder_name
    from clip_core.models.files import store_dir_for

    stored = {}  # recorded checksums: a corrupt store file must not travel
    for folder in {p.parent for p in paths} | {store_dir_for(ref, models_dir)}:
        for f in (read_manifest(folder) or {}).get("files", []):
            stored[(folder / f["name"]).resolve()] = f["sha256"]
    if not isinstance(out, Path):
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _write_bundle(tar, files, manifest, stored)
        return BundleResult(manifest["spec"], manifest["model_id"], Path("-"),
                            manifest["files"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _write_bundle(tar, files, manifest, stored)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return BundleResult(manifest["spec"], manifest["model_id"], out, manifest["files"])


def _write_bundle(tar: tarfile.TarFile, files: dict[str, Path | bytes], manifest: dict,
                  stored: dict[Path, str]) -> None:
    for name, content in files.items():
        sha, size = _add_to_tar(tar, f"files/{name}", content)
        if stored.get(content) not in (None, sha):
            raise ChecksumError(f"{content} does not match its recorded sha256: it is "
                                "corrupt (`clipsearch models verify`); not exported.")
        _record(manifest, name, sha, size)
    _add_to_tar(tar, "manifest.json", json.dumps(manifest, indent=2).encode())


def _add_to_tar(tar: tarfile.TarFile, name: str, content: Path | bytes) -> tuple[str, int]:
    """Add a file (streamed, hashed on the way) or generated bytes; returns (sha256, size)."""
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = 0o644, int(time.time())
    with open(content, "rb") if isinstance(content, Path) else io.BytesIO(content) as src:
        info.size = os.fstat(src.fileno()).st_size if isinstance(content, Path) else len(content)
        reader = _HashingReader(src)
        tar.addfile(info, reader)
    return reader.digest.hexdigest(), info.size


def _install_dir(manifest: dict, models_dir: Path) -> tuple[Path, ModelRef]:
    kind, spec = manifest.get("kind"), manifest.get("spec") or {}
    source = SOURCES.get(str(kind))
    found = source.installed(spec, str(manifest.get("folder_name") or ""), models_dir) \
        if source else None
    if found is None:
        raise BundleError(f"The bundle's manifest names no installable model ({kind!r}, "
                          f"{str(spec.get('model') or '')!r}).")
    return found


# What a truncated or not-a-tar file raises while tarfile reads it.
_UNREADABLE = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


def _format_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


def _member_name(member: tarfile.TarInfo) -> str:
    """The store-relative name of a bundle member, or BundleError for anything but a plain
    file at manifest.json or files/SAFE (no absolute paths, `..`, links or devices)."""
    name = member.name
    if not member.isfile():
        raise BundleError(f"Refusing bundle entry {name!r}: not a regular file; nothing was "
                          "installed.")
    if name == "manifest.json":
        return name
    rel = name[len("files/"):] if name.startswith("files/") else ""
    if not _safe_relpath(rel):
        raise BundleError(f"Refusing bundle entry {name!r}: unsafe path; nothing was "
                          "installed.")
    return rel


def _check_space(need: int, models_dir: Path) -> None:
    free = shutil.disk_usage(models_dir).free
    if need > free:
        raise BundleError(f"Not enough disk space in {models_dir}: the bundle needs "
                          f"{_format_bytes(need)}, {_format_bytes(free)} available; nothing "
                          "was installed. Free some space or use --models-dir elsewhere.")


def _read_manifest_member(tar: tarfile.TarFile, member: tarfile.TarInfo, bundle: Path,
                          models_dir: Path) -> tuple[dict, dict[str, dict]]:
    """The checked manifest and its file entries by name; free space checked for them."""
    handle = tar.extractfile(member)
    if handle is None or member.size > 1 << 20:
        raise BundleError(f"{bundle}: manifest.json is unreadable or over 1 MB.")
    try:
        manifest = json.loads(handle.read())
        listed = check_manifest(manifest, BUNDLE_FORMAT, BUNDLE_VERSION)
    except ValueError as exc:  # ManifestError is one; so is bad JSON
        raise BundleError(f"{bundle}: {exc}; nothing was installed.") from exc
    bad = [n for n in listed if not _safe_relpath(n)]
    if bad:
        raise BundleError(f"Refusing bundle {bundle}: unsafe file name {bad[0]!r} in "
                          "manifest.json; nothing was installed.")
    _check_space(sum(f["size"] for f in listed.values()), models_dir)
    return manifest, listed


def _scan(tar: tarfile.TarFile, bundle: Path, models_dir: Path
          ) -> tuple[dict, dict[str, dict]]:
    """First pass, headers only (nothing is written): the checked manifest, and every member
    checked against it. Refuses at the first member that is unsafe, or not listed once the
    manifest is known, so a hostile bundle is never extracted."""
    manifest: dict | None = None
    listed: dict[str, dict] = {}
    seen: dict[str, int] = {}

    def check(rel: str, size: int) -> None:
        entry = listed.get(rel)
        if entry is None:
            raise BundleError(f"Refusing bundle {bundle}: entry 'files/{rel}' is not listed "
                              "in its manifest.json; nothing was installed.")
        if entry["size"] != size:
            raise BundleError(f"Refusing bundle {bundle}: 'files/{rel}' is {size} bytes, its "
                              f"manifest says {entry['size']}; nothing was installed.")

    for member in tar:
        rel = _member_name(member)
        if rel in seen or (rel == "manifest.json" and manifest is not None):
            raise BundleError(f"Refusing bundle entry {member.name!r}: duplicate path; "
                              "nothing was installed.")
        if rel == "manifest.json":
            manifest, listed = _read_manifest_member(tar, member, bundle, models_dir)
            for name, size in seen.items():
                check(name, size)
        elif manifest is not None:
            check(rel, member.size)
        else:  # before the manifest (export writes it last): what cannot fit is refused
            # at its header, not after reading through it
            _check_space(sum(seen.values()) + member.size, models_dir)
        seen[rel] = member.size
    if manifest is None:
        raise BundleError(f"{bundle} has no clipsearch manifest.json; nothing was installed.")
    missing = [n for n in listed if n not in seen]
    if missing:
        raise BundleError(f"{bundle} is incomplete: {', '.join(missing)} missing from the "
                          "bundle; nothing was installed.")
    return manifest, listed


def _extract(tar: tarfile.TarFile, tmp: Path, listed: dict[str, dict]
             ) -> dict[str, tuple[str, int]]:
    """Second pass: stream the members _scan accepted into tmp, hashing as it goes."""
    got = {}
    for member in tar:
        if member.name == "manifest.json":
            continue
        rel = _member_name(member)
        if rel not in listed or rel in got:  # only if the file changed since _scan
            raise BundleError(f"Refusing bundle entry {member.name!r}: not listed (the "
                              "file changed while importing?); nothing was installed.")
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(member)
        if source is None:
            raise BundleError(f"Cannot read bundle entry {member.name!r}.")
        reader, size = _HashingReader(source), 0
        with open(target, "wb") as out:
            while chunk := reader.read(_CHUNK):
                out.write(chunk)
                size += len(chunk)
        got[rel] = (reader.digest.hexdigest(), size)
    return got


def import_bundle(bundle: Path, models_dir: Path | None = None) -> BundleResult:
    """Verify every checksum, then install atomically: check the manifest and every member
    header first (nothing written), then extract to a temp folder in the store, check the
    sha256s, rename into place (an existing copy is replaced only after all checks pass)."""
    models_dir = models_dir or default_models_dir()
    models_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(bundle, "r:*") as tar:
            manifest, listed = _scan(tar, Path(bundle), models_dir)
    except _UNREADABLE as exc:
        raise BundleError(f"{bundle} is not a readable clipsearch model bundle (not a "
                          "tar file, or a truncated copy); nothing was installed.") from exc
    dest, ref = _install_dir(manifest, models_dir)
    if models_dir.resolve() not in dest.resolve().parents:
        raise BundleError(f"Refusing to install outside the store: {dest}")
    tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=models_dir))
    try:
        try:
            with tarfile.open(bundle, "r:*") as tar:
                got = _extract(tar, tmp, listed)
        except _UNREADABLE as exc:
            raise BundleError(f"{bundle} could not be read to the end (changed while "
                              "importing?); nothing was installed.") from exc
        problems = [f"{n}: sha256 {got[n][0]} != {f['sha256']}" for n, f in listed.items()
                    if n in got and (got[n][0] != f["sha256"] or got[n][1] != f["size"])]
        problems += [f"{n}: missing from the bundle" for n in listed if n not in got]
        if problems:
            raise BundleError(f"{bundle} is corrupt; nothing was installed:\n  "
                              + "\n  ".join(problems))
        installed = dict(manifest, spec=ref.to_spec(), installed_from=str(Path(bundle).name),
                         installed=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        write_manifest(tmp, installed)
        _swap_into_place(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return BundleResult(ref.to_spec(), ref.model_id, dest, manifest["files"])


def _swap_into_place(new: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.rename(dest, old)
    try:
        os.rename(new, dest)
    except OSError:
        if old is not None:
            os.rename(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- verify ----------------------------------------------------------------------------------

@dataclass
class VerifyResult:
    folder: str
    spec: dict | None
    status: str  # ok | corrupt | missing | unverified (no manifest: nothing to check against)
    files: list[dict] = field(default_factory=list)  # name, status (ok/corrupt/missing)
    partial: list[str] = field(default_factory=list)  # interrupted downloads to resume

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "unverified")

    def to_dict(self) -> dict:
        return asdict(self)


def _model_folders(models_dir: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(models_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(root)
        if (here / META_DIR / MANIFEST).is_file() or any(
                f.endswith(WEIGHT_SUFFIXES) for f in files) or any(
                (here / PARTIAL_DIR).glob("*.part")):  # a first download, interrupted
            dirs[:] = []  # a model folder: its subfolders (tokenizer/) belong to it
            yield here


def verify_store(models_dir: Path | None = None) -> list[VerifyResult]:
    models_dir = models_dir or default_models_dir()
    results = []
    for folder in _model_folders(models_dir) if models_dir.is_dir() else []:
        manifest = read_manifest(folder)
        partial_dir = folder / PARTIAL_DIR
        partial = sorted(p.name for p in partial_dir.glob("*.part")) if partial_dir.is_dir() \
            else []
        if manifest is None:
            weights = any(p.name.endswith(WEIGHT_SUFFIXES) for p in folder.iterdir())
            results.append(VerifyResult(str(folder), None,
                                        "unverified" if weights else "partial", partial=partial))
            continue
        checks = []
        for f in manifest.get("files", []):
            path = folder / f["name"]
            if not _safe_relpath(f["name"]) or not path.is_file():
                status = "missing"
            else:
                sha, size = sha256_file(path)
                status = "ok" if (sha, size) == (f["sha256"], f["size"]) else "corrupt"
            checks.append({"name": f["name"], "status": status})
        worst = next((s for s in ("corrupt", "missing")
                      if any(c["status"] == s for c in checks)), "ok")
        results.append(VerifyResult(str(folder), manifest.get("spec"), worst, checks, partial))
    return results

