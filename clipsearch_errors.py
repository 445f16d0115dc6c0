"""The one family of errors clipsearch raises on purpose: a base class and five categories.

Every package of the project (clip_core, store, indexer, search, clipsearch) may import this
module, and it imports nothing of the project, so clip_core and store share the family without
knowing of each other. Apps take the names from `clipsearch`:

    from clipsearch import ClipsearchError, LibraryBusyError, Library

    try:
        Library("~/photo-index").index(["~/Photos"])
    except LibraryBusyError:
        ...  # another process is indexing: try later
    except ClipsearchError as exc:
        print(exc)  # one message for a person; every error below says what to do

Each error keeps the builtin base it always had (a UsageError is a ValueError, a
MissingModelError a RuntimeError), so code that caught those still does. The CLI maps an
exit code to each category (clipsearch/cli_errors.py).
"""

from __future__ import annotations


class ClipsearchError(Exception):
    """Base of every error clipsearch raises on purpose; str() is one message for a person.
    Not in a category below: an optional part is not installed (MissingExtraError), a model
    store operation failed (StoreError). CLI exit 1."""


class UsageError(ClipsearchError, ValueError):
    """The request itself cannot be done as asked: options that do not go together
    (--precision int8 with --device cuda), a malformed query, no folder to index.
    CLI exit 2."""


class ModelError(ClipsearchError):
    """A model cannot be had: unknown name or tag, files not on this machine
    (MissingModelError), files that cannot be used (ModelLoadError). CLI exit 2."""


class StorageError(ClipsearchError, RuntimeError):
    """The library's files, or the disk under them, refused: full, read-only, an I/O error;
    a catalog problem is its subclass CatalogError (store). Committed work is intact.
    CLI exit 1; a damaged catalog (CatalogDamagedError) exit 4."""


class LibraryBusyError(ClipsearchError, RuntimeError):
    """Another process holds the library's writer lock (an index run); the message names it.
    CLI exit 3."""


class BadInputError(ClipsearchError):
    """Something given or found cannot be used as it is: an image that does not decode, a
    damaged or malformed file (a model bundle, a text tower, a checksum that differs), a model
    or file this library does not hold. Nothing was changed because of it. CLI exit 1."""


class StoreError(ClipsearchError, RuntimeError):
    """A model-store operation (download, export, import) failed; the message says what to
    do. Its kinds are in clip_core/weights/store.py (OfflineError, DownloadError, and the
    BadInputErrors ChecksumError and BundleError). CLI exit 1."""


class MissingExtraError(ClipsearchError, ImportError):
    """An optional part is not installed (Ray for --ray, onnxruntime for compiling); the
    message says how to get it. CLI exit 1."""


__all__ = ["BadInputError", "ClipsearchError", "LibraryBusyError", "MissingExtraError",
           "ModelError", "StorageError", "StoreError", "UsageError"]
