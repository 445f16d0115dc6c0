"""Sources of an open_clip architecture: with a pretrained tag, random weights, or a weights
file of the user's."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from clip_core.models.open_clip_tables import architecture_configs, pretrained_cfg, pretrained_table
from clip_core.models.places import (
    CONFIG_NAME,
    SAFE_NAME,
    TOKENIZER_FILES,
    WEIGHT_NAMES,
    Located,
    clip_url_cache_dir,
    hub_snapshot_files,
    pretrained_files,
    store_name,
)
from clip_core.models.random_weights import SEED, random_weights_file
from clip_core.models.random_weights import cache_dir as random_weights_cache_dir
from clip_core.models.random_weights import file_name as random_weights_name
from clip_core.models.ref import ModelRef
from clip_core.models.sources.base import (
    ExportFiles,
    LoadPlan,
    Missing,
    ModelSource,
    OwnFiles,
    Problem,
    Unusable,
)


class _Architecture(ModelSource):
    def unknown(self) -> Unusable | None:
        """Names open_clip does not know, read from its config files without importing torch
        (the same lists as open_clip.list_models / list_pretrained_tags)."""
        known = architecture_configs()
        if not known or self.ref.name in known:
            return None  # no open_clip: the loader will say so
        close = [m for m in sorted(known) if self.ref.name.lower() in m.lower()][:8]
        hint = f" Similar: {', '.join(close)}." if close else ""
        return Unusable(f"Unknown open_clip architecture {self.ref.name!r}.{hint} "
                        "`clipsearch models list` shows them all.")

    def _arch(self) -> dict | None:
        return architecture_configs().get(self.ref.name)

    def preprocess_config(self) -> tuple[dict, dict] | None:
        arch = self._arch()
        return None if arch is None else (arch["vision_cfg"], arch.get("preprocess_cfg", {}))

    def text_config(self) -> dict | None:
        return (self._arch() or {}).get("text_cfg", {})

    def tokenizer_dir(self, hf_name: str) -> Path | Missing | None:
        # Any pretrained tag of the architecture shares the tokenizer.
        own = self.store_dir / "tokenizer"
        arch_dir = self.models_dir / self.ref.name
        found = [d for d in [own, *sorted(arch_dir.glob("*/tokenizer"))]
                 if (d / "tokenizer_config.json").is_file()]
        if found:
            return found[0]
        return self.missing_here([f"tokenizer files of {hf_name} (tokenizer.json, "
                                  "tokenizer_config.json, ...)"],
                                 [own, arch_dir / "*" / "tokenizer"])


class OpenClipSource(_Architecture):
    """An open_clip architecture + pretrained tag: weights in the store, the HF cache or
    open_clip's URL cache."""

    kind = "openclip"

    def _cfg(self) -> dict:
        return pretrained_cfg(self.ref.name, str(self.ref.pretrained))

    def unknown(self) -> Unusable | None:
        problem = super().unknown()
        if problem or not architecture_configs() or self._cfg():
            return problem
        ref = self.ref
        if ref.tag_defaulted:  # the user typed no tag: do not name the one we tried
            return Unusable(f"{ref.name} has no pretrained weights in open_clip: pass "
                            "--pretrained FILE (your weights) or --pretrained none "
                            "(random weights, for tests).")
        tags = list(pretrained_table().get(ref.name, {}))
        return Unusable(f"Unknown pretrained tag {ref.pretrained!r} for {ref.name}. "
                        f"Known tags: {', '.join(tags) or 'none'}; or pass a weights "
                        "file path.")

    def locate(self, cfg: dict | None = None) -> Located:
        """Find weights for the (architecture, tag) pair without any network access."""
        cfg = self._cfg() if cfg is None else cfg
        located = Located()
        own = self.store_dir
        located.searched.append(own)
        for name in (*WEIGHT_NAMES, "open_clip_model.bin", "model.pt"):
            if (own / name).is_file():
                located.weights = own / name
                return located
        hub = cfg.get("hf_hub", "")
        if hub:
            # open_clip's convention: "org/repo/" means the default file names, else
            # "org/repo/file".
            repo_id, filename = os.path.split(hub)
            files, places = hub_snapshot_files(repo_id, (filename,) if filename else WEIGHT_NAMES)
            located.searched.extend(places)
            if files:
                located.weights = files[0]
                return located
        url = cfg.get("url", "")
        if url:
            cached = clip_url_cache_dir() / os.path.basename(url)
            located.searched.append(clip_url_cache_dir())
            if cached.is_file():
                located.weights = cached
        return located

    def _weights(self) -> Path | Missing:
        cfg = self._cfg()
        located = self.locate(cfg)
        if located.weights is None:
            return self.missing_here(pretrained_files(cfg), located.searched)
        return located.weights

    def missing(self) -> Problem | None:
        if not self._cfg():
            return None  # open_clip's tables unreadable here: its loader will say what
        found = self._weights()
        return found if isinstance(found, Missing) else None

    def weight_files(self) -> list[Path]:
        weights = self.locate().weights
        return [weights] if weights else []

    def load_plan(self) -> LoadPlan | Problem:
        weights = self._weights()
        if isinstance(weights, Missing):
            return weights
        return LoadPlan(self.ref.name, str(weights), quick_gelu=bool(self._cfg().get("quick_gelu")))

    def preprocess_config(self) -> tuple[dict, dict] | None:
        found = super().preprocess_config()
        return found and (found[0], {**found[1], **self._cfg()})

    @classmethod
    def installed(cls, spec: dict, folder_name: str, models_dir: Path
                  ) -> tuple[Path, ModelRef] | None:
        model, pretrained = str(spec.get("model") or ""), str(spec.get("pretrained"))
        if not (SAFE_NAME.match(model) and SAFE_NAME.match(pretrained)):
            return None
        ref = ModelRef(cls.kind, model, pretrained)
        return cls(ref, models_dir).store_dir, ref

    def export_files(self) -> ExportFiles | Problem:
        weights = self._weights()
        if isinstance(weights, Missing):
            return weights
        own = self.store_dir
        if weights.parent == own:
            name = weights.name
        elif weights.parent == clip_url_cache_dir():
            name = "model.pt"
        else:
            name = store_name(weights.name)
        files: dict[str, Path | bytes] = {name: weights.resolve()}
        arch_cfg = self._arch()
        if (own / CONFIG_NAME).is_file():
            files[CONFIG_NAME] = (own / CONFIG_NAME).resolve()
        elif arch_cfg:  # makes the bundle self-describing, and usable as `local-dir:` too
            files[CONFIG_NAME] = bundle_config(arch_cfg, self._cfg())
        tok = (arch_cfg or {}).get("text_cfg", {}).get("hf_tokenizer_name")
        if tok:
            tok_dir = own / "tokenizer"
            found = ([p for p in tok_dir.iterdir() if p.is_file()] if tok_dir.is_dir()
                     else hub_snapshot_files(tok, (*TOKENIZER_FILES, "config.json"))[0])
            files.update({f"tokenizer/{p.name}": p.resolve() for p in found})
        return ExportFiles(files)


class RandomSource(_Architecture):
    """An architecture with random weights (`--pretrained none`), for tests and benchmarks."""

    kind = "random"
    no_files = "Random weights (--pretrained none) have no files to export."

    def load_plan(self) -> LoadPlan | Problem:
        """A plain CLIP's weights file, made in numpy the first time (every path then loads
        the same weights: clip_core.models.random_weights); other architectures are built by
        torch after seeding it. Both are the same weights in every process."""
        try:
            path = random_weights_file(self.ref.name, SEED)
        except OSError as exc:
            return Unusable(f"Could not write the random weights of {self.ref.name} into "
                            f"{random_weights_cache_dir()}: {exc}")
        if path is None:
            return LoadPlan(self.ref.name, seed=SEED)
        return LoadPlan(self.ref.name, str(path))

    def made_weights(self) -> str | None:
        return random_weights_name(self.ref.name, SEED)


class WeightsFileSource(OwnFiles, _Architecture):
    """An open_clip architecture + a local weights file (`--pretrained FILE`)."""

    kind = "file"

    def _path(self) -> str:
        return str(self.ref.pretrained)

    def missing(self) -> Problem | None:
        weights = Path(self._path())
        if weights.is_file():
            return None
        return self.missing_here([str(weights)], [weights.parent])

    def weight_files(self) -> list[Path]:
        return [Path(self._path())]

    def load_plan(self) -> LoadPlan | Problem:
        return self.missing() or LoadPlan(self.ref.name, self._path())

    def export_files(self) -> ExportFiles | Problem:
        problem = self.missing()
        if problem:
            return problem
        weights = Path(self._path())
        arch_cfg = architecture_configs()[self.ref.name]  # unknown() passed
        from clip_core.pixels.preprocess import OPENAI_MEAN, OPENAI_STD  # open_clip's defaults

        # Travels as a folder bundle (architecture config + weights): `local-dir:` on arrival.
        name = store_name(weights.name if weights.suffix == ".safetensors" else "x.bin")
        preprocess = {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic",
                      "resize_mode": "shortest"}
        return ExportFiles({name: weights.resolve(),
                            CONFIG_NAME: bundle_config(arch_cfg, preprocess)},
                           re.sub(r"[^A-Za-z0-9._+@=-]", "_", f"{self.ref.name}-{weights.stem}"))


def bundle_config(arch_cfg: dict, cfg: dict) -> bytes:
    """An open_clip_config.json for an architecture's weights exported as a folder bundle."""
    model_cfg = dict(arch_cfg)
    if cfg.get("quick_gelu"):
        model_cfg["quick_gelu"] = True
    preprocess = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
    return json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2).encode()
