"""clip_core.crowd: work in progress counted per process and, through a shared table, across
the processes that serve together; the text tower runs a query on every core only when
nothing else is in progress."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clip_core.crowd import Crowd

REPO = Path(__file__).resolve().parent.parent


def test_counts_work_in_this_process():
    crowd = Crowd()
    assert crowd.in_progress() == 0 and not crowd.crowded()
    with crowd.working():
        assert crowd.in_progress() == 1 and not crowd.crowded()  # the caller's own
        with crowd.working():
            assert crowd.crowded()
        assert not crowd.crowded()
    assert crowd.in_progress() == 0
    with pytest.raises(KeyError), crowd.working():  # counted down on an error too
        raise KeyError("x")
    assert crowd.in_progress() == 0


CHILD = """
import sys, time
from clip_core.crowd import Crowd
crowd = Crowd()
crowd.share(int(sys.argv[1]), int(sys.argv[2]))
crowd.enter(); crowd.enter()
print(crowd.in_progress(), flush=True)  # its 2 and the parent's 1
sys.stdin.readline()
crowd.leave()
print(crowd.in_progress(), flush=True)
sys.stdin.readline()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memfd: Linux")
def test_processes_sharing_a_table_see_each_others_work():
    crowd = Crowd()
    fd = crowd.host(3)
    with crowd.working():
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(fd), "2"], pass_fds=[fd],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 cwd=REPO)
        try:
            assert child.stdout.readline().strip() == "3"
            assert crowd.in_progress() == 3 and crowd.crowded()
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "2"
            assert crowd.in_progress() == 2
            # It ends while counting one: whoever sees it end clears its slot.
            child.stdin.write("\n")
            child.stdin.flush()
            child.wait(timeout=30)
            assert crowd.in_progress() == 2
            crowd.clear(2)
            assert crowd.in_progress() == 1 and not crowd.crowded()
            crowd.clear(0)  # never its own slot
            assert crowd.in_progress() == 1
        finally:
            child.kill()
            child.wait()
    assert crowd.in_progress() == 0
    with pytest.raises(ValueError, match="outside"):
        Crowd().share(fd, 3)


def _tiny_tower(tmp_path: Path):
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    pytest.importorskip("onnxruntime")
    from clip_core.text.tower import NumpyTextTower
    from clip_core.torch_backend.text_export import export_text_tower

    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=64, vision_cfg={"image_size": 64, "patch_size": 16, "width": 128,
                                  "layers": 1},
        text_cfg={"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4,
                  "layers": 2}).eval()
    export_text_tower(model, tmp_path / "text.safetensors")
    return NumpyTextTower.load(tmp_path / "text.safetensors", release_pages=False)


def test_text_tower_spreads_a_query_only_when_nothing_else_is_in_progress(tmp_path,
                                                                           monkeypatch):
    from clip_core.text import tower_onnx

    crowd = Crowd()  # this test's count alone
    monkeypatch.setattr(tower_onnx, "CROWD", crowd)
    tower = _tiny_tower(tmp_path)
    tokens = np.random.default_rng(0).integers(1, 400, (3, 16)).astype(np.int64)
    blocks = tower_onnx.OnnxTextBlocks(tower, threads=2)
    used: list[object] = []
    real = blocks._pick
    monkeypatch.setattr(blocks, "_pick", lambda: used.append(real()) or used[-1])
    tower._onnx = blocks
    alone = tower.encode_tokens(tokens)
    assert used == [blocks.session] and blocks._narrow is None  # made only when needed
    with crowd.working(), crowd.working():  # this request and another one
        crowded = tower.encode_tokens(tokens)
    assert used[-1] is blocks._narrow and blocks._narrow not in (None, blocks.session)
    np.testing.assert_allclose(crowded, alone, atol=1e-5)  # the same function
    assert tower.encode_tokens(tokens) is not None and used[-1] is blocks.session
    # Two runs of this process's threads at once: the later one takes one thread.
    assert (real(), real()) == (blocks.session, blocks._narrow)
    blocks._running = 0
    one = tower_onnx.OnnxTextBlocks(tower, threads=1)
    tower._onnx = one
    with crowd.working(), crowd.working():
        np.testing.assert_allclose(tower.encode_tokens(tokens), alone, atol=1e-5)
    assert one._narrow is None  # one thread already: nothing narrower to make
