"""`clipsearch doctor`: check a library's files and, when asked, repair them.

Checks the catalog (PRAGMA integrity_check plus the catalog's own consistency checks) and
re-hashes every text tower. Repair salvages a damaged catalog into a fresh one (the damaged
file kept as `catalog.db.damaged-TIME`), drops the FAISS caches (rebuilt from the catalog by
the next query) and damaged text towers (rebuilt on first use).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from clip_core.text import file_check
from store import Catalog, CatalogDamagedError, WriterLock, is_damage
from store.salvage import check, salvage


@dataclass
class DoctorReport:
    library: str
    catalog_problems: list[str] = field(default_factory=list)
    damaged_towers: list[str] = field(default_factory=list)
    repaired: bool = False
    backup: str | None = None
    kept: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not (self.catalog_problems or self.damaged_towers)

    def to_dict(self) -> dict:
        return {**asdict(self), "healthy": self.healthy}


def run_doctor(folder: Path, *, repair: bool = False, wait: float = 0.0) -> DoctorReport:
    from .layout import CATALOG_NAME, LOCK_NAME, TEXT_TOWERS_DIR, VECTORS_DIR

    catalog = folder / CATALOG_NAME
    derived = [folder / VECTORS_DIR, folder / TEXT_TOWERS_DIR]
    if not catalog.exists() and not any(d.is_dir() for d in derived):
        raise FileNotFoundError(f"no clipsearch library at {folder}")
    report = DoctorReport(library=str(folder))
    report.catalog_problems = check(catalog)
    towers = sorted((folder / TEXT_TOWERS_DIR).glob("*.safetensors"))
    for tower in towers:
        try:
            file_check.verify(tower, full=True, remember=False)
        except (file_check.DamagedFile, OSError) as exc:
            report.damaged_towers.append(str(exc))
    if not repair or report.healthy:
        return report
    lock = WriterLock(folder / LOCK_NAME)
    lock.acquire(wait=wait)
    try:
        _repair(report, catalog, towers, folder / VECTORS_DIR)
    finally:
        lock.release()
    return report


def _repair(report: DoctorReport, catalog: Path, towers: list[Path], vectors: Path) -> None:
    if report.catalog_problems:
        if catalog.is_file() and catalog.stat().st_size > 0:
            done = salvage(catalog)
            report.backup, report.kept = str(done.backup), done.kept
            report.notes.append(f"salvaged {done.kept['files']} file rows and "
                                f"{done.kept['embeddings']} vectors ({', '.join(done.sources)})"
                                "; run `clipsearch index` to index what was lost")
        else:  # nothing to salvage: a new catalog, and the user adds the folders again
            if catalog.exists():
                report.backup = f"{catalog}.damaged-empty"
                os.replace(catalog, report.backup)
            Catalog(catalog).close()
            report.notes.append("the catalog was empty: its roots are lost; run "
                                "`clipsearch index FOLDER` for each photo folder again")
        for cache in vectors.glob("*") if vectors.is_dir() else []:
            cache.unlink(missing_ok=True)  # made from the old catalog: rebuilt on demand
    for tower in towers:
        try:
            file_check.verify(tower, full=True, remember=True)
        except (file_check.DamagedFile, OSError):
            file_check.remove(tower)  # rebuilt by the next index run or query
            report.notes.append(f"removed damaged {tower.name} (rebuilt on first use)")
    report.repaired = True


def damage_error(exc: Exception, catalog: Path) -> Exception:
    """sqlite3's own error for damage found mid-command, as the CatalogDamagedError that
    damage found when the catalog opened gives (message, `doctor --repair` advice); any other
    error as it is."""
    return CatalogDamagedError(catalog, str(exc)) if is_damage(exc) else exc
