"""Checks of a model bundle's manifest.json, before any of its files touch the disk.

A bundle comes from another machine (or a stranger): every field is checked for type and
shape here, so a bad one gets a message naming the field instead of a TypeError or KeyError
from deep inside the import.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

from clipsearch_errors import BadInputError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(BadInputError, ValueError):
    """The manifest is malformed; the message names the field."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _need(ok: bool, field: str, expected: str, value: Any) -> None:
    if not ok:
        raise ManifestError(f"manifest.json: {field!r} must be {expected}, got {value!r:.80}")


def check_manifest(manifest: Any, bundle_format: str, newest_version: int) -> dict[str, dict]:
    """Raise ManifestError unless `manifest` is a well-formed bundle manifest; return its file
    entries by name. File names are checked for safety by the caller (_safe_relpath)."""
    _need(isinstance(manifest, dict), "manifest", "a JSON object", manifest)
    _need(manifest.get("format") == bundle_format, "format", repr(bundle_format),
          manifest.get("format"))
    version = manifest.get("version")
    _need(_is_int(version) and version >= 1, "version", "a whole number >= 1", version)
    if version > newest_version:
        raise ManifestError(f"the bundle needs a newer clipsearch (bundle version {version}, "
                            f"this one reads up to {newest_version})")
    _need(isinstance(manifest.get("kind"), str), "kind", "a string", manifest.get("kind"))
    spec = manifest.get("spec")
    _need(isinstance(spec, dict), "spec", "an object", spec)
    _need(isinstance(spec.get("model"), str), "spec.model", "a string", spec.get("model"))
    _need(spec.get("pretrained") is None or isinstance(spec["pretrained"], str),
          "spec.pretrained", "a string or null", spec.get("pretrained"))
    if "folder_name" in manifest:
        _need(isinstance(manifest["folder_name"], str), "folder_name", "a string",
              manifest["folder_name"])
    files = manifest.get("files")
    _need(isinstance(files, list), "files", "a list", files)
    listed: dict[str, dict] = {}
    for i, entry in enumerate(files):
        where = f"files[{i}]"
        _need(isinstance(entry, dict), where, "an object", entry)
        name = entry.get("name")
        _need(isinstance(name, str) and name != "", f"{where}.name", "a file name", name)
        _need(isinstance(entry.get("sha256"), str) and bool(_SHA256.match(entry["sha256"])),
              f"{where}.sha256", "64 lowercase hex digits", entry.get("sha256"))
        size = entry.get("size")
        _need(_is_int(size) and size >= 0, f"{where}.size", "a whole number >= 0", size)
        if name in listed:
            raise ManifestError(f"manifest.json lists {name!r} twice")
        listed[name] = entry
    for name in listed:  # `a` and `a/b` cannot both be files
        for parent in PurePosixPath(name).parents:
            if str(parent) in listed:
                raise ManifestError(f"manifest.json lists both {str(parent)!r} and {name!r}: "
                                    f"{str(parent)!r} cannot be a file and a folder")
    return listed
