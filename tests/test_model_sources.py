"""One ModelSource per kind of model reference: what each says when its files are missing,
which files stamp its compiled model and which an export takes, table-driven over every kind,
and a registry that covers every kind `parse_model` produces."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from clip_core.models import ref as model_ref
from clip_core.models.files import MissingModelError, ensure_local
from clip_core.models.places import CONFIG_NAME, WEIGHT_NAMES
from clip_core.models.ref import BUNDLED_MODELS_DIR, parse_model
from clip_core.models.sources import SOURCES, Missing, Unusable, source_for

TINY = BUNDLED_MODELS_DIR / "shapes-tiny"
DOWNLOAD = "on a machine with internet: `clipsearch models download {spec}`"
EXPORT = ("air-gapped: on a connected machine run `clipsearch models export {spec} -o "
          "model.clipsearch`, copy the file here, then `clipsearch models import "
          "model.clipsearch`")
POINT = ("or point --model at files you already have: `--model local-dir:PATH` (an open_clip "
         "bundle or a Hugging Face transformers CLIP folder) or `--pretrained FILE`")
COPY_BACK = ("from the machine that has the model: `clipsearch models export MODEL -o "
             "model.clipsearch` there, copy the file here, then `clipsearch models import "
             "model.clipsearch` (it prints the --model to use)")


def download_fix(spec: str, store_dir: Path) -> list[str]:
    return [DOWNLOAD.format(spec=spec), EXPORT.format(spec=spec),
            f"or put the expected file(s) into {store_dir}", POINT]


def own_fix(path: Path) -> list[str]:
    return [f"check the path {path} (a folder needs {CONFIG_NAME} or a transformers "
            "config.json, and a weights file)", COPY_BACK]


@pytest.fixture
def places(tmp_path, monkeypatch) -> dict[str, Path]:
    """An empty model store, HF cache and home (open_clip's URL cache) for each case."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return {"models": tmp_path / "models", "hf": tmp_path / "hf", "tmp": tmp_path}


def _copy_tiny(folder: Path) -> Path:
    shutil.copytree(TINY, folder)
    return folder


# Per kind: the reference, its missing files (expected, looked in, fix), how to put the files
# there, then the files its compile stamp covers and the names its export carries.
def _openclip(p: dict[str, Path]) -> dict:
    store_dir = p["models"] / "ViT-B-32" / "openai"
    return {
        "ref": parse_model("ViT-B-32", "openai"),
        "expected": list(WEIGHT_NAMES),
        "looked_in": [store_dir,
                      p["hf"] / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots",
                      p["tmp"] / "home" / ".cache" / "clip"],  # open_clip's URL cache
        "fix": download_fix("ViT-B-32 --pretrained openai", store_dir),
        "make": lambda: _put(store_dir / WEIGHT_NAMES[0]),
        "stamp": [store_dir / WEIGHT_NAMES[0]],
        "export": {WEIGHT_NAMES[0], CONFIG_NAME},
    }


def _random(p: dict[str, Path]) -> dict:
    return {"ref": parse_model("ViT-B-32", "none"), "stamp": [], "export": None,
            "fix": download_fix("ViT-B-32 --pretrained none", p["models"] / "ViT-B-32" / "None")}


def _file(p: dict[str, Path]) -> dict:
    weights = p["tmp"] / "w" / "my weights.safetensors"
    return {
        "ref": parse_model("ViT-B-32", str(weights)),
        "expected": [str(weights)], "looked_in": [weights.parent], "fix": own_fix(weights),
        "make": lambda: _put(weights),
        "stamp": [weights], "export": {WEIGHT_NAMES[0], CONFIG_NAME},
        "folder_name": "ViT-B-32-my_weights",
    }


def _hub(p: dict[str, Path]) -> dict:
    store_dir = p["models"] / "hf-hub" / "org" / "tiny"
    return {
        "ref": parse_model("hf-hub:org/tiny"),
        "expected": [f"{CONFIG_NAME} + {WEIGHT_NAMES[0]} (open_clip bundle)",
                     "or config.json + model.safetensors (transformers CLIP repository)"],
        "looked_in": [store_dir, p["hf"] / "models--org--tiny" / "snapshots"],
        "fix": download_fix("hf-hub:org/tiny", store_dir),
        "make": lambda: _copy_tiny(store_dir),
        "stamp": [store_dir / CONFIG_NAME, store_dir / WEIGHT_NAMES[0]],
        "export": {CONFIG_NAME, WEIGHT_NAMES[0]},
    }


def _local_dir(p: dict[str, Path]) -> dict:
    folder = p["tmp"] / "my-model"
    return {
        "ref": parse_model(f"local-dir:{folder}"),
        "expected": [CONFIG_NAME, WEIGHT_NAMES[0]], "looked_in": [folder],
        "fix": own_fix(folder), "make": lambda: _copy_tiny(folder),
        "stamp": [folder / CONFIG_NAME, folder / WEIGHT_NAMES[0]],
        "export": {"README.md", CONFIG_NAME, WEIGHT_NAMES[0]}, "folder_name": "my-model",
    }


def _bundled(p: dict[str, Path]) -> dict:
    return {"ref": parse_model("shapes-tiny"), "fix": own_fix(TINY),
            "stamp": [TINY / CONFIG_NAME, TINY / WEIGHT_NAMES[0]],
            "export": {"README.md", CONFIG_NAME, WEIGHT_NAMES[0]}, "folder_name": "shapes-tiny"}


CASES = {"openclip": _openclip, "random": _random, "file": _file, "hf-hub": _hub,
         "local-dir": _local_dir, "bundled": _bundled}


def _put(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")


def test_every_kind_has_a_source_and_a_case():
    assert set(SOURCES) == set(model_ref.KINDS) == set(CASES)
    assert all(cls.kind == kind for kind, cls in SOURCES.items())


@pytest.mark.parametrize("model,pretrained,kind", [
    ("ViT-B-32", None, "openclip"), ("ViT-B-32", "openai", "openclip"),
    ("ViT-B-32", "none", "random"), ("ViT-B-32", "/x/w.safetensors", "file"),
    ("ViT-B-32", "w.bin", "file"), ("hf-hub:org/repo", None, "hf-hub"),
    ("org/repo", None, "hf-hub"), ("org/repo@v2", None, "hf-hub"),
    ("local-dir:/x/y", None, "local-dir"), (str(TINY), None, "local-dir"),
    ("shapes-tiny", None, "bundled"),
])
def test_parse_model_produces_only_registered_kinds(model, pretrained, kind):
    ref = parse_model(model, pretrained)
    assert ref.kind == kind and ref.kind in SOURCES
    assert parse_model(**ref.to_spec()).model_id == ref.model_id  # to_spec round-trips


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_kind_says_what_is_missing_then_stamps_and_exports_its_files(kind, places):
    case = CASES[kind](places)
    source = source_for(case["ref"], places["models"])
    assert type(source) is SOURCES[kind]
    assert source.fix() == case["fix"]
    if "make" in case:
        missing = source.missing()
        assert missing == Missing(case["expected"], case["looked_in"], case["fix"], missing.detail)
        assert source.weight_files() == ([] if kind != "file" else case["stamp"])
        with pytest.raises(MissingModelError) as err:  # the one raise site says the same
            ensure_local(case["ref"], places["models"])
        assert (err.value.expected, err.value.looked_in, err.value.fix) == (
            case["expected"], case["looked_in"], case["fix"])
        case["make"]()
    assert source.missing() is None
    ensure_local(case["ref"], places["models"])
    assert source.weight_files() == case["stamp"]
    exported = source.export_files()
    if case["export"] is None:
        assert isinstance(exported, Unusable) and source.no_files
        return
    assert set(exported.files) == case["export"]
    assert exported.folder_name == case.get("folder_name")


@pytest.mark.parametrize("kind,spec,folder_name,where", [
    ("openclip", {"model": "ViT-B-32", "pretrained": "openai"}, "", "ViT-B-32/openai"),
    ("openclip", {"model": "ViT-B-32", "pretrained": "../x"}, "", None),
    ("hf-hub", {"model": "hf-hub:org/tiny"}, "", "hf-hub/org/tiny"),
    ("hf-hub", {"model": "hf-hub:org/../x"}, "", None),
    ("local-dir", {"model": "local-dir:/elsewhere/m"}, "m", "local-dir/m"),
    ("local-dir", {"model": "local-dir:/elsewhere/m"}, ".m", None),
    ("file", {"model": "ViT-B-32", "pretrained": "/w.bin"}, "w", None),  # travels as local-dir
    ("bundled", {"model": "local-dir:/x/shapes-tiny"}, "shapes-tiny", None),  # likewise
    ("random", {"model": "ViT-B-32", "pretrained": "none"}, "", None),
])
def test_each_kind_says_where_an_imported_bundle_goes(kind, spec, folder_name, where, places):
    models = places["models"]
    found = SOURCES[kind].installed(spec, folder_name, models)
    if where is None:
        assert found is None
        return
    folder, ref = found
    assert folder == models / where and ref.kind == kind
    assert source_for(ref, models).missing() is not None  # nothing installed there yet


@pytest.mark.parametrize("kind,at", [("hf-hub", 1), ("local-dir", 0)])
def test_a_half_copied_transformers_folder_says_to_finish_it_first_or_after_a_download(
        kind, at, places):
    """Finishing the folder itself is a fix too: after the download (hub), before the generic
    advice (the user's own folder)."""
    folder = places["models"] / "hf-hub" / "org" / "half" if kind == "hf-hub" \
        else places["tmp"] / "half"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "clip", "architectures": ["CLIPModel"]}')
    ref = parse_model("hf-hub:org/half" if kind == "hf-hub" else f"local-dir:{folder}")
    source = source_for(ref, places["models"])
    missing = source.missing()
    assert isinstance(missing, Missing) and missing.looked_in == [folder]
    general = source.fix()
    assert missing.fix == [*general[:at], f"copy the missing file(s) into {folder} from the "
                           "model's Hugging Face repository (or another copy of it)", *general[at:]]
    assert missing.detail == f"{folder} has config.json but no weights file"
