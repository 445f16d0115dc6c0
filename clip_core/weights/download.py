"""`clipsearch models download`: the only code in clipsearch that opens a network connection,
and only when a user asks for it.

The transport is huggingface_hub's: `get_hf_file_metadata` asks the hub's resolve route what a
file is (size, ETag = the sha256 of LFS files, commit, where to fetch it: redirects within the
hub followed, a CDN redirect not, the token sent only to the hub) and `http_get` fetches it
(its session: HF_ENDPOINT mirrors, proxies, retries on 408/429 and on cut connections, Range
resume). What stays ours, as the rest of the store needs it:

- Files go into clipsearch's model store (MODELS/ARCH/TAG/, MODELS/hf-hub/ORG/REPO/), not the
  Hugging Face cache: the store's names are the ones `clip_core.models.files` looks for, each
  folder's manifest records every file's sha256 for `models verify` / `export`, and a model
  folder moves as one tar bundle. (Models already in the HF cache are used where they are.)
  `hf_hub_download` would keep its own partial files and metadata beside ours; `http_get`
  writes into the store's own `.partial/NAME.part`, which `verify` lists and a rerun resumes.
- Every file's sha256 is checked against the hub's (or the OpenAI URL's) before it is moved
  into place; a mismatch deletes it.
- The offline switch (--offline, CLIPSEARCH_OFFLINE, HF_HUB_OFFLINE) refuses before any
  request, and each failure is one message saying what to do.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from clip_core.models import hf_layout
from clip_core.models.files import (
    CONFIG_NAME,
    WEIGHT_NAMES,
    check_known,
    default_models_dir,
)
from clip_core.models.open_clip_tables import architecture_configs, pretrained_cfg
from clip_core.models.places import SAFE_NAME, TOKENIZER_FILES, store_name
from clip_core.models.ref import ModelRef, split_revision
from clip_core.quiet import quiet_libraries
from clip_core.weights.store import (
    META_DIR,
    PARTIAL_DIR,
    ChecksumError,
    DownloadError,
    OfflineError,
    StoreError,
    _new_manifest,
    _record,
    hub_repo,
    is_offline,
    read_manifest,
    sha256_file,
    write_manifest,
)


@dataclass
class Remote:
    """What the hub's resolve route (or a plain URL) says about one file."""

    url: str  # where the bytes are (the CDN for LFS files)
    size: int | None
    sha256: str | None  # the hub's ETag for LFS files is their sha256
    etag: str | None
    commit: str | None


@dataclass
class DownloadResult:
    ref: ModelRef
    folder: Path
    files: list[dict] = field(default_factory=list)
    downloaded_bytes: int = 0


def hub_endpoint(endpoint: str | None = None) -> str:
    """HF_ENDPOINT (a mirror) when set, like huggingface_hub itself."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc) or type(exc).__name__


def _sha_from_url(url: str) -> str | None:
    """OpenAI's URLs carry the file's sha256 as a path segment; open_clip checks it too."""
    for part in url.split("/"):
        if re.fullmatch(r"[0-9a-f]{64}", part):
            return part
    return None


def _same_host(url: str, endpoint: str) -> bool:
    return urlsplit(url).netloc == urlsplit(endpoint).netloc


def _http_status(exc: BaseException) -> int | None:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return exc.response.status_code
    return None


def _head(url: str, endpoint: str, timeout: float) -> Remote | None:
    """The file's metadata, None on 404. The hub's token (HF_TOKEN or `hf auth login`) goes
    to the hub only."""
    from huggingface_hub import get_hf_file_metadata

    on_hub = _same_host(url, endpoint)
    try:
        meta = get_hf_file_metadata(url, token=None if on_hub else False, timeout=timeout,
                                    library_name="clipsearch", endpoint=endpoint)
    except Exception as exc:  # huggingface_hub's errors, or its HTTP client's (no connection)
        code = _http_status(exc)
        if code == 404:
            return None
        if code in (401, 403):
            raise DownloadError(f"{url}: HTTP {code}: the repository is gated or private; "
                                "accept its terms on the hub and set HF_TOKEN.") from exc
        if code is not None:
            raise DownloadError(f"{url}: HTTP {code}") from exc
        if isinstance(exc, OSError | RuntimeError) or type(exc).__module__.startswith(
                ("httpx", "httpcore", "huggingface_hub")):
            raise DownloadError(
                f"Could not reach {endpoint if on_hub else url} ({_reason(exc)}). Check the "
                "network or set HF_ENDPOINT to a mirror; on an air-gapped machine use "
                "`clipsearch models export` on a connected one and `clipsearch models import` "
                "here.") from exc
        raise
    etag = meta.etag.lower() if meta.etag else None
    return Remote(meta.location, meta.size,
                  etag if etag and re.fullmatch(r"[0-9a-f]{64}", etag) else None, etag,
                  meta.commit_hash)


@contextlib.contextmanager
def _quiet_unless(progress: bool) -> Iterator[None]:
    """huggingface_hub's progress bar, or none (`-q`)."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    hide = not progress and not are_progress_bars_disabled()
    if hide:
        disable_progress_bars()
    try:
        yield
    finally:
        if hide:
            enable_progress_bars()


def _fetch(remote: Remote, folder: Path, name: str, endpoint: str, progress: bool
           ) -> tuple[str, int, int]:
    """Download `remote` into folder/name through folder/.partial/name.part, resuming a
    previous partial transfer (huggingface_hub's http_get sends the Range request and retries
    a cut connection itself). Returns (sha256, size, fetched)."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    partial = folder / PARTIAL_DIR
    partial.mkdir(parents=True, exist_ok=True)
    part = partial / (name.replace("/", "__") + ".part")
    state_file = part.with_name(part.name + ".json")
    state = {"url": remote.url.split("?")[0], "etag": remote.etag, "size": remote.size}
    try:
        same = json.loads(state_file.read_text()) == state
    except (OSError, ValueError):
        same = False
    if not same or not remote.etag:  # unknown version: never append to another one's bytes
        part.unlink(missing_ok=True)
        state_file.write_text(json.dumps(state))
    start = part.stat().st_size if part.exists() else 0
    if remote.size is not None and start > remote.size:
        part.unlink()
        start = 0
    if remote.size is None or start < remote.size:
        # A CDN URL is signed: the hub's token stays with the hub.
        headers = build_hf_headers(library_name="clipsearch") if _same_host(
            remote.url, endpoint) else {}
        try:
            with open(part, "ab") as out, _quiet_unless(progress):
                http_get(remote.url, out, resume_size=start, headers=headers,
                         expected_size=remote.size, displayed_filename=name)
        except Exception as exc:
            code = _http_status(exc)
            if code is not None:
                raise DownloadError(f"{remote.url}: HTTP {code}") from exc
            got = part.stat().st_size if part.exists() else 0
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DownloadError(
                    f"The disk is full: {name} stopped after {got} of {remote.size or '?'} "
                    f"bytes in {folder}. Free some space and run the same command again to "
                    "resume.") from exc
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # the disk (read-only, I/O error): the CLI says so
            raise DownloadError(
                f"Connection lost after {got} of {remote.size or '?'} bytes of {name} "
                f"({_reason(exc)}); run the same command again to resume.") from exc
    sha, size = sha256_file(part)
    if remote.size is not None and size != remote.size:
        raise DownloadError(f"{name}: got {size} of {remote.size} bytes; run the same "
                            "command again to resume.")
    if remote.sha256 and sha != remote.sha256:
        part.unlink()
        state_file.unlink(missing_ok=True)
        raise ChecksumError(f"{name} from {remote.url} has sha256 {sha}, expected "
                            f"{remote.sha256}; the file was rejected (deleted). Try again, "
                            "or check HF_ENDPOINT.")
    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, target)
    state_file.unlink(missing_ok=True)
    return sha, size, size - start


@dataclass
class _Plan:
    """One file to fetch: the first of `candidates` that exists in `repo`."""

    candidates: tuple[str, ...]
    save_as: str | None = None  # store name, when it differs from the remote one
    repo: str | None = None  # None: candidates are full URLs
    required: bool = True
    keep_name: bool = False  # transformers files keep the repository's own names


def _plan(ref: ModelRef) -> list[_Plan]:
    if ref.kind == "openclip":
        cfg = pretrained_cfg(ref.name, str(ref.pretrained))  # check_known passed
        plans: list[_Plan] = []
        repo_id, filename = hub_repo(cfg)
        if repo_id:  # open_clip prefers the hub over URLs, and so do we
            plans.append(_Plan((filename,) if filename else WEIGHT_NAMES, None, repo_id))
        else:
            plans.append(_Plan((cfg["url"],), "model.pt"))
        tok = architecture_configs().get(ref.name, {}).get("text_cfg", {}).get(
            "hf_tokenizer_name")
        if tok:
            plans += [_Plan((n,), f"tokenizer/{n}", tok, False)
                      for n in (*TOKENIZER_FILES, "config.json")]
        return plans
    if ref.kind == "hf-hub":
        # An open_clip bundle, else a transformers CLIP repository; the rest of the plan is
        # known once the config has arrived (_more_plans).
        repo = split_revision(ref.name)[0]
        return [_Plan((CONFIG_NAME, hf_layout.CONFIG_FILE), None, repo, keep_name=True)]
    raise StoreError(f"Nothing to download for {ref.display}: it names local files.")


def download(ref: ModelRef, models_dir: Path | None = None, *, offline: bool = False,
             endpoint: str | None = None, revision: str = "main", progress: bool = True,
             timeout: float = 30.0) -> DownloadResult:
    """Fetch a model into the store: resumable, sha256-checked, recorded in its manifest."""
    check_known(ref)  # a misspelt name is that mistake (exit 2 everywhere), even offline
    if is_offline(offline):
        raise OfflineError(
            f"Not downloading {ref.display}: offline mode is on (--offline, CLIPSEARCH_OFFLINE "
            "or HF_HUB_OFFLINE). Unset it, or bring the model in with `clipsearch models "
            "import FILE` (made by `clipsearch models export` on a connected machine).")
    models_dir = models_dir or default_models_dir()
    from clip_core.models.files import store_dir_for

    plans = _plan(ref)
    if ref.kind == "hf-hub":  # hf-hub:ORG/REPO@REV names its revision itself
        revision = split_revision(ref.name)[1] or revision
    folder = store_dir_for(ref, models_dir)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with quiet_libraries():  # huggingface_hub's retry notes: our message says it all
            return _download_into(folder, ref, plans, hub_endpoint(endpoint), revision,
                                  progress, timeout)
    except BaseException:
        if created:  # nothing arrived: leave no empty folders that look like a model
            _remove_empty(folder, models_dir)
        raise


def _remove_empty(folder: Path, stop: Path) -> None:
    """rmdir `folder`'s empty .partial, then `folder` and its parents up to `stop` while they
    are empty (a partial file with bytes in it stays, for the next try to resume)."""
    with contextlib.suppress(OSError):
        (folder / PARTIAL_DIR).rmdir()
    path = folder
    while path != stop and stop in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


def _download_into(folder: Path, ref: ModelRef, plans: list, endpoint: str, revision: str,
                   progress: bool, timeout: float) -> DownloadResult:
    manifest = read_manifest(folder) or _new_manifest(ref, {})
    manifest["source"] = {"endpoint": endpoint}
    result = DownloadResult(ref, folder)
    commits: dict[str, str] = {}  # repo -> commit its first file resolved to
    for plan in plans:  # grows while iterating: a hub config may name a tokenizer repo
        found = _resolve(plan, commits, revision, endpoint, timeout)
        if found is None:
            if plan.required:
                raise DownloadError(f"None of {', '.join(plan.candidates)} found in "
                                    f"{plan.repo or 'the URL'} at {endpoint}.")
            continue
        remote, remote_name = found
        name = plan.save_as or (remote_name if plan.keep_name else store_name(remote_name))
        recorded = {f["name"]: f for f in manifest["files"]}.get(name)
        if (recorded and remote.sha256 == recorded["sha256"] and (folder / name).is_file()
                and (folder / name).stat().st_size == recorded["size"]):
            sha, size, fetched = recorded["sha256"], recorded["size"], 0  # already here
        else:
            sha, size, fetched = _fetch(remote, folder, name, endpoint, progress)
        _record(manifest, name, sha, size)
        if plan.repo:
            manifest["source"].setdefault("repos", {})[plan.repo] = commits.get(plan.repo)
        else:
            manifest["source"]["url"] = remote.url
        write_manifest(folder, manifest)  # after every file: finished work is never lost
        result.downloaded_bytes += fetched
        if ref.kind == "hf-hub":
            plans += _more_plans(folder, name, plan.repo or split_revision(ref.name)[0])
    shutil.rmtree(folder / PARTIAL_DIR, ignore_errors=True)
    result.files = manifest["files"]
    return result


def _resolve(plan: _Plan, commits: dict[str, str], revision: str, endpoint: str,
             timeout: float) -> tuple[Remote, str] | None:
    """Ask for the plan's candidates in order; the first that exists wins."""
    from huggingface_hub import hf_hub_url

    for candidate in plan.candidates:
        if plan.repo is None:
            remote = _head(candidate, endpoint, timeout)
            if remote is not None and not remote.sha256:
                remote.sha256 = _sha_from_url(candidate)
        else:
            url = hf_hub_url(plan.repo, candidate, revision=commits.get(plan.repo, revision),
                             endpoint=endpoint)
            remote = _head(url, endpoint, timeout)
            if remote is not None and remote.commit:
                commits.setdefault(plan.repo, remote.commit)
        if remote is not None:
            return remote, candidate
    return None


def _more_plans(folder: Path, name: str, repo: str) -> list[_Plan]:
    """What an hf-hub download fetches next, once `name` has arrived."""
    if name == CONFIG_NAME:  # an open_clip bundle: its weights, then its tokenizer, which
        # goes into the bundle's own folder (open_clip's local-dir reads it there)
        return [_Plan(WEIGHT_NAMES, None, repo), *_hub_tokenizer_plans(folder / CONFIG_NAME)]
    if name == hf_layout.CONFIG_FILE:  # a transformers repository: the files it really has
        _refuse_non_clip(folder, name, repo)
        weights = tuple(n for index, single in hf_layout.WEIGHT_LAYOUTS for n in (single, index))
        return [_Plan(weights, None, repo, keep_name=True),
                *(_Plan((n,), None, repo, False, keep_name=True)
                  for n in (hf_layout.PREPROCESSOR_FILE, *hf_layout.TOKENIZER_FILES))]
    if any(name == index for index, _ in hf_layout.WEIGHT_LAYOUTS):  # sharded weights
        try:
            shards = sorted(set(json.loads((folder / name).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            raise DownloadError(f"{name} of {repo} is not a usable shard index ({exc}).") from exc
        bad = [n for n in shards if not isinstance(n, str) or not SAFE_NAME.match(n)]
        if bad:
            raise DownloadError(f"{name} of {repo} names unsafe shard files: {bad[:3]}")
        return [_Plan((n,), None, repo, keep_name=True) for n in shards]
    return []


def _refuse_non_clip(folder: Path, name: str, repo: str) -> None:
    """Before fetching gigabytes: a repository whose config.json is not a full CLIPModel
    (a text encoder alone, another model type, a typo that names some other repo) is not
    downloaded, and its config does not stay behind looking like a model."""
    try:
        cfg = hf_layout.read_json(folder / name)
        if hf_layout.is_clip_config(cfg):
            return
        what = f"model_type {cfg.get('model_type')!r}"
    except ValueError as exc:
        what = str(exc)
    (folder / name).unlink(missing_ok=True)
    manifest = read_manifest(folder)
    if manifest and {f["name"] for f in manifest["files"]} <= {name}:
        shutil.rmtree(folder / META_DIR, ignore_errors=True)
    raise StoreError(f"{repo} has neither {CONFIG_NAME} (open_clip) nor a CLIPModel "
                     f"config.json ({what}); nothing was downloaded. clipsearch needs a full "
                     "CLIP model with text and image towers.")


def _hub_tokenizer_plans(config: Path) -> list[_Plan]:
    try:
        text_cfg = json.loads(config.read_text())["model_cfg"].get("text_cfg", {})
    except (OSError, ValueError, KeyError, AttributeError):
        return []
    tok = text_cfg.get("hf_tokenizer_name")
    return [_Plan((n,), None, tok, False) for n in TOKENIZER_FILES] if tok else []
