"""What a first run prints while it compiles a model (issue 19.9): its steps, one line saying
which image tower was chosen and why, and none of the libraries' own warnings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import PAIRS, draw_photos
from tests.reliability_support import CLIPSEARCH, make_random_bundle, subprocess_env


def test_a_first_index_run_shows_the_compile_steps_and_the_towers_choice(tmp_path):
    model = make_random_bundle(tmp_path / "bundle")
    photos = tmp_path / "p"
    draw_photos(photos, per_pair=1, seed=51)
    env = {**subprocess_env(tmp_path), "CLIPSEARCH_CACHE": str(tmp_path / "cache")}
    env.pop("PYTHONWARNINGS")  # as on a user's machine: the libraries' warnings are live
    out = subprocess.run([CLIPSEARCH, "index", str(photos), "--library", str(tmp_path / "lib"),
                          "--model", model, "-q"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    steps = [line.strip() for line in lines if line.strip().startswith("[")]
    assert [s[:5] for s in steps[:2]] == ["[1/4]", "[2/4]"], out.stderr
    assert steps[2].startswith("[3/4] int8 ("), out.stderr
    chosen = [line.strip() for line in lines if line.strip().startswith("image tower: ")]
    assert len(chosen) == 1, out.stderr
    # the timing step runs unless int8 won on dot-product instructions or AVX2, and the line
    # says so
    timed = steps[-1].startswith("[4/4]")
    untimed = chosen[0].endswith(("this CPU runs int8 products on dot-product instructions",
                                  "this CPU runs int8 products on AVX2"))
    assert timed != untimed, out.stderr
    # e.g. "image tower: int8 (u8s8) kept: min cosine 0.99996 >= 0.999 on 16 probe images"
    assert " kept: min cosine " in chosen[0] or "int8 rejected on this CPU" in chosen[0]
    assert lines[0].startswith("Preparing local-dir:")
    assert not [line for line in lines if line.startswith(("WARNING:", "Traceback"))
                or "Warning:" in line], out.stderr
    again = subprocess.run([CLIPSEARCH, "index", str(photos), "--library",
                            str(tmp_path / "lib2"), "--model", model, "-q", "--json"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads(again.stdout)["indexed"] == len(PAIRS)
    assert "Preparing" not in again.stderr  # compiled once per model and machine


def test_open_clip_and_python_warnings_during_a_compile_stay_off_the_terminal(tmp_path):
    """open_clip's `logging.warning("No pretrained weights loaded ...")` went to the root
    logger, which printed it as "WARNING:root:..." and from then on every clipsearch message
    with a "WARNING:name:" prefix. Inside quiet_libraries it is logged at DEBUG; clipsearch's
    own lines still show, plainly."""
    config = tmp_path / "configs" / "Tiny-Test.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {
        "image_size": 32, "layers": 1, "width": 16, "patch_size": 16, "head_width": 8},
        "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2,
                     "layers": 1}}))
    script = f"""
import logging, warnings
import open_clip
from clip_core.compiled.compiler import _say
from clip_core.quiet import quiet_libraries
open_clip.add_model_config({str(config.parent)!r})
with quiet_libraries():
    open_clip.create_model("Tiny-Test", pretrained=None)  # warns through the root logger
    warnings.warn("a library's UserWarning")
    _say("  [1/4] a step of ours")
_say("after: still plain")
import sys
print("-- loud --", file=sys.stderr, flush=True)
# Without it, the same warning reaches the terminal (what the test above guards against).
# In the same process, after: one import of open_clip (~9 s on an AVX2 VM) serves both.
open_clip.create_model("Tiny-Test", pretrained=None)
"""
    env = {**subprocess_env(tmp_path), "PYTHONPATH": str(Path(__file__).parent.parent)}
    env.pop("PYTHONWARNINGS")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    quiet, marker, loud = out.stderr.partition("-- loud --\n")
    assert marker, out.stderr
    assert quiet.splitlines() == ["  [1/4] a step of ours", "after: still plain"], out.stderr
    assert "No pretrained weights loaded" in loud, out.stderr
