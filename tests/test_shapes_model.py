"""The committed tiny OpenCLIP fixture (data/models/shapes-tiny) really retrieves.

Loads the bundle the way users load one (open_clip ``local-dir:``) and queries freshly drawn
images that training never saw (other seed, other sizes, PNG round trip).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image

from clipsearch.shapes import COLOURS, SHAPES, draw, write_corpus

BUNDLE = Path(__file__).resolve().parents[1] / "data" / "models" / "shapes-tiny"
PAIRS = [(c, s) for c in COLOURS for s in SHAPES]
MAX_BYTES = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def bundle():
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{BUNDLE}")
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{BUNDLE}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[tuple[Path, str, str]]:
    root = tmp_path_factory.mktemp("shapes")
    # Seeds and sizes differ from training (seed 0, 64..200 px drawn in memory).
    return write_corpus(root / "sq", per_pair=2, seed=4242, size=96) + write_corpus(
        root / "wide", per_pair=2, seed=4243, size=(180, 120)
    )


@pytest.fixture(scope="module")
@torch.no_grad()
def embedded(bundle, corpus) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image embeddings, embeddings of the 24 "a red circle" queries, image labels)."""
    model, preprocess, tokenizer = bundle
    images = torch.stack([preprocess(Image.open(p).convert("RGB")) for p, _, _ in corpus])
    img = model.encode_image(images, normalize=True)
    txt = model.encode_text(tokenizer([f"a {c} {s}" for c, s in PAIRS]), normalize=True)
    labels = torch.tensor([PAIRS.index((c, s)) for _, c, s in corpus])
    return img, txt, labels


def test_bundle_is_small_and_clean() -> None:
    names = {p.name for p in BUNDLE.iterdir()}
    # open_clip globs for checkpoints, so a stray weights file would be picked up silently.
    assert names - {"README.md"} == {"open_clip_config.json", "open_clip_model.safetensors"}
    assert sum(p.stat().st_size for p in BUNDLE.iterdir()) <= MAX_BYTES
    cfg = json.loads((BUNDLE / "open_clip_config.json").read_text())
    assert cfg["preprocess_cfg"]["resize_mode"] == "shortest"
    assert cfg["model_cfg"]["text_cfg"]["context_length"] == 16


def test_text_to_image_recall_at_1(embedded) -> None:
    img, txt, labels = embedded
    top1 = (txt @ img.T).argmax(1)  # best image for each of the 24 queries
    recall = (labels[top1] == torch.arange(len(PAIRS))).float().mean().item()
    assert recall >= 0.9, f"recall@1 {recall:.3f}"


def test_zero_shot_classification(embedded) -> None:
    img, txt, labels = embedded
    accuracy = ((img @ txt.T).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.8, f"zero-shot accuracy {accuracy:.3f}"


def test_write_corpus_is_deterministic(tmp_path) -> None:
    a = write_corpus(tmp_path / "a", per_pair=1, seed=7, size=(90, 60))
    b = write_corpus(tmp_path / "b", per_pair=1, seed=7, size=(90, 60))
    assert [p.name for p, _, _ in a][:2] == ["red-circle-0.png", "red-square-0.png"]
    assert [(p.name, c, s) for p, c, s in a] == [(p.name, c, s) for p, c, s in b]
    assert len(a) == len(PAIRS)
    assert [p.read_bytes() for p, _, _ in a] == [p.read_bytes() for p, _, _ in b]


def test_shape_stays_in_central_square() -> None:
    # What a shortest-side centre crop keeps must hold the whole shape: the side bands of a
    # wide image on a plain background are a single colour.
    rng = random.Random(3)
    for shape in SHAPES:
        img = draw("red", shape, background="grey", size=(200, 100), rng=rng)
        for band in (img.crop((0, 0, 50, 100)), img.crop((150, 0, 200, 100))):
            assert len(band.getcolors()) == 1
