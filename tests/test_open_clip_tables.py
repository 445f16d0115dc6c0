"""open_clip's pretrained table: read once per installed open_clip in a subprocess that imports
its real pretrained.py, cached as JSON in the user cache, equal to open_clip's own answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from clip_core.models import open_clip_tables as tables

REPO = Path(__file__).resolve().parent.parent

PROBE = ("import sys, json; from clip_core.models.open_clip_tables import pretrained_table; "
         "t = pretrained_table(); print(json.dumps([sorted(t), 'torch' in sys.modules, "
         "'open_clip' in sys.modules]))")


def run_probe(cache: Path) -> tuple[list[str], bool, bool]:
    env = {**os.environ, "CLIPSEARCH_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, cwd=REPO, env=env).stdout
    archs, torch_loaded, open_clip_loaded = json.loads(out)
    return archs, torch_loaded, open_clip_loaded


def test_table_equals_open_clips_own_list_and_cfgs():
    import open_clip

    table = tables._tuples(tables._read_in_subprocess())  # what a cold process gets
    pairs = sorted((arch, tag) for arch, tags in table.items() for tag in tags)
    assert pairs == sorted(open_clip.list_pretrained())
    for arch, tag in pairs:
        assert table[arch][tag] == open_clip.pretrained.get_pretrained_cfg(arch, tag), (arch, tag)


def test_table_is_read_once_per_open_clip_and_cached_as_json(tmp_path):
    cache = tmp_path / "cache"
    archs, torch_loaded, open_clip_loaded = run_probe(cache)
    assert "ViT-B-32" in archs and not torch_loaded and not open_clip_loaded
    path = cache / "open_clip-pretrained.json"
    data = json.loads(path.read_text())
    assert data["key"] == tables._table_key(tables.openclip_package_dir())

    # A later process reads the cache (a marker written into it shows up) ...
    data["table"]["marker-arch"] = {"marker": {"url": ""}}
    path.write_text(json.dumps(data))
    assert "marker-arch" in run_probe(cache)[0]
    # ... until open_clip changes (another key): then it reads open_clip again.
    data["key"] = "an older open_clip"
    path.write_text(json.dumps(data))
    assert "marker-arch" not in run_probe(cache)[0]
    assert json.loads(path.read_text())["key"] == tables._table_key(tables.openclip_package_dir())


def test_unreadable_cache_still_gives_the_table(tmp_path):
    blocker = tmp_path / "a-file"  # the cache folder cannot be made under a file
    blocker.write_text("")
    archs, _, _ = run_probe(blocker / "cache")
    assert "ViT-B-32" in archs
