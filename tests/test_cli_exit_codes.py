"""One exit code per kind of mistake, from every command that takes a model (issue 19 item 5),
and a sensible default tag when --pretrained is not given."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from clip_core.models.open_clip_tables import default_pretrained
from clip_core.models.ref import parse_model
from clipsearch import Library
from clipsearch.cli import main
from clipsearch.cli_errors import EXIT_MODEL

MISTAKES = {  # --model/--pretrained arguments -> what the message must say
    "unknown architecture": (["NotAModel-99"], "Unknown open_clip architecture 'NotAModel-99'"),
    "unknown tag": (["ViT-B-32", "--pretrained", "notatag"],
                    "Unknown pretrained tag 'notatag' for ViT-B-32"),
    "architecture without weights": (["ViT-M-16"], "ViT-M-16 has no pretrained weights"),
    "model not on disk": (["ViT-L-14"], "ViT-L-14 (pretrained=laion2b_s32b_b82k) is not "
                                        "available"),
}
COMMANDS = ["index", "query", "classify", "models download", "models compile",
            "models export"]


@pytest.fixture
def places(tmp_path, monkeypatch) -> Path:
    from PIL import Image

    monkeypatch.setenv("CLIPSEARCH_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # download must fail on the name, not the network
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (32, 32), "red").save(tmp_path / "photos" / "red.png")
    Library(tmp_path / "lib").close()  # query needs a library (without one, that is the error)
    return tmp_path


def _args(command: str, model: list[str], tmp: Path) -> list[str]:
    lib = ["--library", str(tmp / "lib")]
    if command == "index":
        return ["index", str(tmp / "photos"), *lib, "--model", *model]
    if command == "query":
        return ["query", "a red circle", *lib, "--model", *model]
    if command == "classify":
        return ["classify", str(tmp / "photos" / "red.png"), "red", "blue", "--model", *model]
    extra = ["-o", str(tmp / "out.tar")] if command == "models export" else []
    return [*command.split(), *model, *extra]


@pytest.mark.parametrize("mistake", list(MISTAKES))
@pytest.mark.parametrize("command", COMMANDS)
def test_same_mistake_same_exit_code_everywhere(places, command, mistake):
    model, message = MISTAKES[mistake]
    if mistake == "model not on disk" and command == "models download":
        pytest.skip("fetching a model that is not on disk is what download is for")
    result = CliRunner().invoke(main, _args(command, model, places), catch_exceptions=False)
    assert result.exit_code == EXIT_MODEL, (result.exit_code, result.stderr)
    assert message in result.stderr and "Traceback" not in result.output
    assert not (places / "out.tar").exists()


def test_default_tag_per_architecture():
    # The project's default, open_clip's recommended LAION-2B weights, an only tag, openai.
    assert parse_model("ViT-B-32").pretrained == "laion2b_s34b_b79k"
    assert parse_model("ViT-L-14").pretrained == "laion2b_s32b_b82k"
    assert parse_model("ViT-B-16").pretrained == "laion2b_s34b_b88k"
    assert parse_model("ViT-SO400M-14-SigLIP").pretrained == "webli"
    assert parse_model("RN50").pretrained == "openai"
    assert default_pretrained("ViT-M-16") is None
    # The chosen tag is the same model as the one typed: same id, same vectors.
    assert parse_model("ViT-L-14") == parse_model("ViT-L-14", "laion2b_s32b_b82k")
    assert parse_model("ViT-L-14").model_id == "ViT-L-14/laion2b_s32b_b82k"
