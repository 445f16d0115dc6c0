"""End to end through the real `clipsearch` CLI with the bundled tiny model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipsearch.output import format_size
from clipsearch.shapes import draw
from tests.helpers import PAIRS, cli, cli_json, draw_photos, pair_of


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A library over fresh shape photos in nested folders, indexed once for the module."""
    base = tmp_path_factory.mktemp("e2e")
    photos = base / "photos"
    draw_photos(photos / "set-a", per_pair=1, seed=101, size=96)
    draw_photos(photos / "set b", per_pair=1, seed=202, size=(160, 120))
    library = base / "library"
    report = cli_json("index", str(photos), "--model", "shapes-tiny", "-q", library=library)
    assert report["indexed"] == 2 * len(PAIRS) and not report["skipped"]
    return photos, library


def test_text_to_image_recall_at_1(indexed):
    photos, library = indexed
    hits = 0
    for colour, shape in PAIRS:
        top = cli_json("query", f"a {colour} {shape}", "-n", "1", library=library)
        hits += pair_of(top[0]["path"]) == (colour, shape)
    recall = hits / len(PAIRS)
    print(f"recall@1 over {len(PAIRS)} colour-shape pairs: {recall:.3f}")
    assert recall >= 0.9


def test_query_outputs_table_json_paths_and_scope(indexed):
    photos, library = indexed
    table = cli("query", "a red circle", "-n", "3", library=library).stdout.splitlines()
    assert len(table) == 3 and table[0].split()[0] == "1"
    results = cli_json("query", "a red circle", "-n", "5", library=library)
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    assert results[0]["score"] >= results[-1]["score"]
    assert all(Path(r["path"]).is_file() for r in results)
    paths = cli("query", "a red circle", "-n", "4", "--paths", library=library).stdout
    assert paths.splitlines() == [r["path"] for r in results[:4]]
    scoped = cli_json("query", "a red circle", "-n", "50", "--in", str(photos / "set b"),
                      library=library)
    assert len(scoped) == len(PAIRS)
    assert all(r["path"].startswith(str(photos / "set b") + os.sep) for r in scoped)


def test_query_words_need_no_quotes(indexed):
    """`clipsearch query a dog` failed with "unexpected extra argument (dog)" (issue 19.12)."""
    photos, library = indexed
    quoted = cli_json("query", "a red circle", "-n", "5", library=library)
    assert cli_json("query", "a", "red", "-n", "5", "circle", library=library) == quoted
    for args in (["a", "cat", "--image", quoted[0]["path"]], [], [" ", " "]):
        result = cli("query", *args, library=library, ok=False)
        assert result.exit_code == 2 and "TEXT or --image" in result.stderr, result.stderr


def test_query_by_image_finds_same_pair(indexed):
    photos, library = indexed
    probe = photos / "probe.png"
    draw("blue", "star", background="white", size=96,
         rng=__import__("random").Random(5)).save(probe)
    results = cli_json("query", "--image", str(probe), "-n", "2", library=library)
    assert pair_of(results[0]["path"]) == ("blue", "star")
    probe.unlink()


def test_classify_zero_shot(indexed):
    photos, library = indexed
    image = next((photos / "set-a").glob("yellow-square-*"))
    scores = cli_json("classify", str(image), "a yellow square", "a red circle",
                      "a blue star", library=library)
    assert scores[0]["label"] == "a yellow square"
    assert abs(sum(s["probability"] for s in scores) - 1) < 1e-5
    table = cli("classify", str(image), "a yellow square", "a red circle",
                library=library).stdout
    assert "a yellow square" in table and "%" in table


def test_status_reports_library(indexed):
    photos, library = indexed
    st = cli_json("status", library=library)
    assert st["roots"] == [str(photos)]
    assert st["files"] == st["indexed"] == 2 * len(PAIRS)
    assert list(st["models"].values()) == [2 * len(PAIRS)]
    assert st["default_model"]["model"].startswith("local-dir:")
    assert st["size_bytes"] > 0
    assert "Files: 48" in cli("status", library=library).stdout


def test_status_counts_shared_model_files_apart(indexed):
    """A 150-image library showed 242.9 MB, mostly the text tower hard-linked from the
    compile cache, which deleting the library would not free (issue 19.17)."""
    photos, library = indexed
    linked = [p for p in library.rglob("*") if p.is_file() and p.stat().st_nlink > 1]
    assert linked and all("text-towers" in p.parts for p in linked)  # same disk: hard links
    st = cli_json("status", library=library)
    assert st["shared_bytes"] == sum(p.stat().st_size for p in linked)
    own = sum(p.stat().st_size for p in library.rglob("*")
              if p.is_file() and p.stat().st_nlink == 1)
    assert st["data_bytes"] >= own  # plus SQLite's -shm/-wal while status had it open
    assert st["size_bytes"] == st["data_bytes"] + st["shared_bytes"]
    first = cli("status", library=library).stdout.splitlines()[0]
    assert first.endswith(f"({format_size(st['data_bytes'])}, plus "
                          f"{format_size(st['shared_bytes'])} of model files shared with the "
                          "model cache)"), first


def test_incremental_reindex_change_move_delete(tmp_path):
    photos = tmp_path / "photos"
    files = draw_photos(photos, per_pair=1, seed=303)
    library = tmp_path / "lib"
    first = cli_json("index", str(photos), "--model", "shapes-tiny", "-q", library=library)
    assert first["indexed"] == len(files)
    again = cli_json("index", "-q", library=library)
    assert again["unchanged"] == len(files) and again["indexed"] == 0

    # change: a different picture under the same name is re-embedded
    changed = photos / "red-circle-0.png"
    draw("green", "square", size=96, rng=__import__("random").Random(1)).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    # move: same bytes, new name -> vector reused, nothing re-embedded
    moved_from = photos / "blue-star-0.png"
    (photos / "sub").mkdir()
    moved_to = photos / "sub" / "blue-star-renamed.png"
    shutil.move(moved_from, moved_to)
    # delete
    (photos / "white-triangle-0.png").unlink()
    report = cli_json("index", "-q", library=library)
    assert report["indexed"] == 1 and report["reused"] == 1 and report["removed"] == 2
    assert report["unchanged"] == len(files) - 3

    results = cli_json("query", "a blue star", "-n", "48", library=library)
    found = {r["path"] for r in results}
    assert str(moved_to) in found and str(moved_from) not in found
    assert not any("white-triangle-0" in p for p in found)
    assert len(results) == len(files) - 1
    top_green = cli_json("query", "a green square", "-n", "2", library=library)
    assert str(changed) in {r["path"] for r in top_green}


def test_second_root_and_remove_root(tmp_path):
    library = tmp_path / "lib"
    a, b = tmp_path / "a", tmp_path / "b"
    draw_photos(a, per_pair=1, seed=1)
    draw_photos(b, per_pair=1, seed=2)
    cli("index", str(a), "--model", "shapes-tiny", "-q", library=library)
    cli("index", str(b), "-q", library=library)
    st = cli_json("status", library=library)
    assert st["roots"] == [str(a), str(b)] and st["files"] == 2 * len(PAIRS)
    cli("remove-root", str(a), library=library)
    st = cli_json("status", library=library)
    assert st["roots"] == [str(b)] and st["files"] == len(PAIRS)
    results = cli_json("query", "a red star", "-n", "100", library=library)
    assert all(r["path"].startswith(str(b)) for r in results)


def test_library_from_environment_variable(tmp_path, monkeypatch):
    photos = tmp_path / "p"
    draw_photos(photos, per_pair=1, seed=4)
    monkeypatch.setenv("CLIPSEARCH_LIBRARY", str(tmp_path / "envlib"))
    cli("index", str(photos), "--model", "shapes-tiny", "-q")
    assert (tmp_path / "envlib" / "catalog.db").is_file()
    assert cli_json("status")["files"] == len(PAIRS)


def test_installed_entry_point_and_missing_model_message(tmp_path):
    """The real console script in a fresh process: a missing model fails fast and clearly."""
    exe = Path(sys.executable).parent / "clipsearch"
    env = {**os.environ, "CLIPSEARCH_LIBRARY": str(tmp_path / "lib"),
           "CLIPSEARCH_MODELS": str(tmp_path / "models"), "HF_HOME": str(tmp_path / "hf")}
    draw_photos(tmp_path / "p", per_pair=1, seed=9)
    start = time.monotonic()
    proc = subprocess.run([str(exe), "index", str(tmp_path / "p"), "--model", "ViT-B-32",
                           "--pretrained", "laion2b_s34b_b79k"], capture_output=True, text=True,
                          env=env, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in ("ViT-B-32", "laion2b_s34b_b79k", "open_clip_model.safetensors",
                   str(tmp_path / "models"), "clipsearch models download", "models import"):
        assert needle in proc.stderr, (needle, proc.stderr)
    assert elapsed < 10, elapsed


@pytest.mark.parametrize("args", [["--workers", "-2"], ["--batch-size", "0"],
                                  ["--wait", "-1"], ["--device", "bogus"]])
def test_index_options_out_of_range_are_usage_errors(tmp_path, args):
    result = cli("index", str(tmp_path), *args, library=tmp_path / "lib", ok=False)
    assert result.exit_code == 2 and "Invalid value" in result.stderr
    assert not (tmp_path / "lib").exists()  # refused before anything was made


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    library = tmp_path / "lib"
    draw_photos(tmp_path / "p", per_pair=1, seed=3)
    cli("index", str(tmp_path / "p"), "--model", "shapes-tiny", "-q", library=library)
    cmd = [str(Path(sys.executable).parent / "clipsearch"), "query", "a red circle", "-n",
           "48", "--library", str(library)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `| head` gone before the results come (the model loads first)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err  # 128 + SIGPIPE, as for a killed writer
    assert "Error" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("command", [["query", "a cat"], ["status"], ["default-model"],
                                     ["remove-root", "x"], ["remove-model", "shapes-tiny"]])
def test_reading_commands_do_not_create_a_library_at_a_mistyped_path(tmp_path, command):
    typo = tmp_path / "libary"
    result = cli(*command, library=typo, ok=False)
    assert result.exit_code == 1 and f"no clipsearch library at {typo}" in result.stderr
    assert not typo.exists()
    (tmp_path / "a-file").write_text("x")
    result = cli("status", library=tmp_path / "a-file", ok=False)
    assert result.exit_code == 1 and "is a file, not a library folder" in result.stderr


def test_contradictory_output_options_are_usage_errors(tmp_path):
    for args in (["--json", "--paths"], ["-0"]):
        result = cli("query", "a cat", *args, library=tmp_path / "lib", ok=False)
        assert result.exit_code == 2 and "Usage" in result.stderr, result.stderr



def test_every_library_command_speaks_json(tmp_path):
    library = tmp_path / "lib"
    draw_photos(tmp_path / "p", per_pair=1, seed=4)
    cli("index", str(tmp_path / "p"), "--model", "shapes-tiny", "-q", library=library)
    shown = cli_json("default-model", library=library)
    assert shown["id"].startswith("shapes-tiny@") and "model" in shown
    assert cli_json("remove-model", shown["id"], "--wait", "0", library=library) == \
        {"model": shown["id"], "vectors_removed": len(PAIRS)}
    assert cli_json("remove-root", str(tmp_path / "p"), "--wait", "0.5", library=library) == \
        {"root": str(tmp_path / "p"), "files_removed": len(PAIRS)}


def test_blank_texts_are_usage_errors(tmp_path):
    for args in (["query", "   "], ["query", "\t\n"]):
        result = cli(*args, library=tmp_path / "lib", ok=False)
        assert result.exit_code == 2 and "not blank" in result.stderr
