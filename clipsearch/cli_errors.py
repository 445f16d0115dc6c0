"""How the CLI ends on known failures: one clear message and an exit code, never a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

EXIT_PROBLEM = 1  # bad input, storage problem, unknown model in this library
EXIT_MODEL = 2  # model files missing or unusable
EXIT_USAGE = 2  # the request itself cannot be done as asked (as click's usage errors)
EXIT_BUSY = 3  # another process is writing this library
EXIT_DAMAGED = 4  # the library's catalog is damaged: `clipsearch doctor --repair`
EXIT_INTERRUPTED = 130  # Ctrl-C


def _known_errors() -> list[tuple[tuple[type[BaseException], ...], int]]:
    """Exit codes by the error family's categories (clipsearch_errors), first match wins;
    the builtins the API documents (FileNotFoundError, LookupError, ...) are problems too.
    Anything else is a bug and keeps its traceback."""
    # Imported late: `clipsearch --help` should not pay for them.
    from . import (
        CatalogDamagedError,
        ClipsearchError,
        LibraryBusyError,
        ModelError,
        UsageError,
    )

    return [
        ((CatalogDamagedError,), EXIT_DAMAGED),  # a StorageError whose fix is doctor --repair
        ((ModelError,), EXIT_MODEL),
        ((UsageError,), EXIT_USAGE),
        ((LibraryBusyError,), EXIT_BUSY),
        ((ClipsearchError, LookupError, OSError), EXIT_PROBLEM),  # storage, bad input, ...
    ]


def interrupt_note(note: str) -> Callable[[Callable], Callable]:
    """What Ctrl-C leaves behind, said by friendly_errors (put it below @friendly_errors)."""

    def mark(func: Callable) -> Callable:
        func.interrupt_note = note  # type: ignore[attr-defined]
        return func

    return mark


def friendly_errors(func: Callable) -> Callable:
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:  # not click's "Aborted!" and exit 1: one line, exit 130
            note = getattr(func, "interrupt_note", "nothing was changed.")
            click.echo(f"Interrupted; {note}", err=True)
            _exit_now(EXIT_INTERRUPTED)
        except BrokenPipeError:  # `clipsearch status | head`: the reader left, nothing to say
            _silence_stdout()
            sys.exit(141)  # 128 + SIGPIPE, as a command killed by it
        except Exception as exc:
            exc = _as_damage(exc, kwargs.get("library"))
            for types, code in _known_errors():
                if isinstance(exc, types):
                    click.echo(f"Error: {exc}", err=True)
                    sys.exit(code)
            raise

    return wrapper


def _as_damage(exc: Exception, library: str | None) -> Exception:
    """Damage found mid-command (not when the catalog opened) arrives as sqlite3's own
    error: the same message and exit code as damage found at open."""
    from . import default_library_dir
    from .doctor import damage_error
    from .layout import CATALOG_NAME

    folder = Path(library).expanduser().absolute() if library else default_library_dir()
    return damage_error(exc, folder / CATALOG_NAME)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _exit_now(code: int) -> None:
    """Exit without waiting for background threads (a model still loading) or the final
    garbage collections: the command's own cleanup has already run on the way here."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
