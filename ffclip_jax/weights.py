"""Weights directories: where the networks of one setup (mapper, generator, e4e encoder, CLIP, loss networks) live.

A weights directory is any of
  * a `python -m convert_weights all` output or a trainer export (`manifest.json` mapping networks to directories,
    relative to the manifest or absolute),
  * a training workdir (its exported `WORKDIR/weights`),
  * a single `convert_weights ffclip` directory (the mapper, with its generator in `generator/`).

    weights = resolve("weights/ffhq")
    weights.path("e4e", "--images")   # DIR/e4e, or a one-line CheckpointError saying what needs it
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Optional, Tuple

from ffclip_jax.errors import CheckpointError

MANIFEST = "manifest.json"
TRAIN_CONFIG, TRAIN_EXPORT = "config.json", "weights"  # a training workdir's files (ffclip_jax.train_lib)
# network -> the model names its converted directory may hold, and what a user runs to get one
MODELS: Dict[str, Tuple[str, ...]] = {
    "mapper": ("ffclip_mapper",), "generator": ("stylegan2",), "e4e": ("e4e", "psp"), "clip": ("clip",),
    "arcface": ("arcface",), "parsenet": ("parsenet",), "moco": ("moco",)}
DESCRIPTION = {"mapper": "FFCLIP mapper", "generator": "StyleGAN2 generator", "e4e": "e4e encoder",
               "clip": "CLIP model", "arcface": "ArcFace network", "parsenet": "face-parsing network",
               "moco": "MoCo network"}


@dataclasses.dataclass(frozen=True)
class WeightsDir:
    """The networks of a weights directory: `networks` maps a network name to an absolute directory."""
    root: str
    networks: Dict[str, str]

    def has(self, network: str) -> bool:
        return network in self.networks

    def path(self, network: str, needed_for: str = "editing") -> str:
        """The directory of `network`, checked to hold one of its models; a one-line error if it is missing."""
        if network not in self.networks:
            raise CheckpointError(f"weights directory {self.root} has no {DESCRIPTION.get(network, network)}: "
                                  f"needed for {needed_for}")
        path = self.networks[network]
        from ffclip_jax import pretrained

        try:
            model = pretrained.read_meta(path)["model"]
        except CheckpointError as e:
            raise CheckpointError(f"weights directory {self.root}: {network}: {e}") from None
        if model not in MODELS.get(network, (model,)):
            raise CheckpointError(f"weights directory {self.root}: {network} at {path} holds a {model!r} model, "
                                  f"expected {' or '.join(repr(m) for m in MODELS[network])}")
        return path

    def with_overrides(self, **paths: Optional[str]) -> "WeightsDir":
        """A copy with some networks taken from other directories (None leaves a network as it is)."""
        extra = {k: os.path.abspath(v) for k, v in paths.items() if v}
        return dataclasses.replace(self, networks={**self.networks, **extra})


def _read_manifest(directory: str) -> Dict[str, str]:
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
        entries = manifest["networks"]
        if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
            raise TypeError("'networks' must map names to directories")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable weights manifest ({type(e).__name__}: {e})") from None
    networks = {}
    for name, sub in entries.items():
        full = os.path.normpath(os.path.join(directory, sub))
        if not os.path.isdir(full):
            raise CheckpointError(f"{path}: network {name!r} is at {full}, which does not exist")
        networks[name] = full
    return networks


def resolve(directory: str) -> WeightsDir:
    """The networks of a weights directory (see the module docstring); a one-line CheckpointError otherwise."""
    from ffclip_jax import pretrained

    root = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(root):
        raise CheckpointError(f"weights directory {directory}: no such directory")
    if os.path.isfile(os.path.join(root, MANIFEST)):
        return WeightsDir(root, _read_manifest(root))
    is_model_dir = os.path.isfile(os.path.join(root, pretrained.META_FILE))
    if os.path.isfile(os.path.join(root, TRAIN_CONFIG)) and not is_model_dir:
        export = os.path.join(root, TRAIN_EXPORT)
        if os.path.isfile(os.path.join(export, MANIFEST)):
            return WeightsDir(root, _read_manifest(export))
        raise CheckpointError(f"training workdir {directory} has no exported weights ({export}/{MANIFEST}); export "
                              f"them with `python -c \"from ffclip_jax.train_lib import export_weights; "
                              f"export_weights('{directory}')\"`")
    if is_model_dir:
        model = pretrained.read_meta(root)["model"]
        if model == "ffclip_mapper":
            networks = {"mapper": root}
            if os.path.isdir(os.path.join(root, "generator")):
                networks["generator"] = os.path.join(root, "generator")
            return WeightsDir(root, networks)
        network = next((n for n, models in MODELS.items() if model in models), model)
        return WeightsDir(root, {network: root})
    raise CheckpointError(f"weights directory {directory}: no {MANIFEST} (make one with `python -m convert_weights all "
                          f"--from pretrained_models/ --output {directory}`), not a training workdir and not a "
                          f"converted model directory")
