"""Weights directories: where the networks of one setup (mapper, generator, e4e encoder, CLIP, loss networks) live.

A weights directory is any of
  * an `ffclip convert all` output or a trainer export (`manifest.json` mapping networks to directories,
    written relative to the manifest so the directory can be moved; absolute paths are read too),
  * a training workdir (its exported `WORKDIR/weights`),
  * a single `convert_weights ffclip` directory (the mapper, with its generator in `generator/`).

    weights = resolve("weights/ffhq")
    weights.path("e4e", "--images")   # DIR/e4e, or a one-line CheckpointError saying what needs it
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional, Tuple

from ffclip_jax.errors import CheckpointError
from ffclip_jax.fileio import write_json_atomic
from ffclip_jax.weights import pretrained, registry

MANIFEST = "manifest.json"
TRAIN_CONFIG, TRAIN_EXPORT = "config.json", "weights"  # a training workdir's files (ffclip_jax.train.checkpoint)
EXPORT_HINT = "python -c \"from ffclip_jax.train.checkpoint import export_weights; export_weights('{workdir}')\""


@dataclasses.dataclass(frozen=True)
class WeightsDir:
    """The networks of a weights directory: `networks` maps a network name to an absolute directory; `manifest`
    holds the manifest's other fields (the trainer's prompt list and domain, ...), empty without a manifest."""
    root: str
    networks: Dict[str, str]
    manifest: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def has(self, network: str) -> bool:
        return network in self.networks

    def path(self, network: str, needed_for: str = "editing") -> str:
        """The directory of `network`, checked to hold one of its models; a one-line error if it is missing."""
        if network not in self.networks:
            description = registry.network_entry(network).description if network in registry.NETWORKS else network
            raise CheckpointError(f"weights directory {self.root} has no {description}: needed for {needed_for}")
        path = self.networks[network]
        try:
            model = pretrained.read_meta(path)["model"]
        except CheckpointError as e:
            raise CheckpointError(f"weights directory {self.root}: {network}: {e}") from None
        models = registry.NETWORKS.get(network, (model,))
        if model not in models:
            raise CheckpointError(f"weights directory {self.root}: {network} at {path} holds a {model!r} model, "
                                  f"expected {' or '.join(repr(m) for m in models)}")
        return path

    def with_overrides(self, **paths: Optional[str]) -> "WeightsDir":
        """A copy with some networks taken from other directories (None leaves a network as it is)."""
        extra = {k: os.path.abspath(v) for k, v in paths.items() if v}
        return dataclasses.replace(self, networks={**self.networks, **extra})


def _read_manifest(directory: str) -> Tuple[Dict[str, str], Dict[str, Any]]:
    """(networks as absolute directories, the manifest's other fields) of DIRECTORY/manifest.json."""
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
    return networks, {k: v for k, v in manifest.items() if k != "networks"}


def write_manifest(directory: str, networks: Dict[str, str], **fields) -> None:
    """DIRECTORY/manifest.json naming each network's directory relative to DIRECTORY (absolute inputs are made
    relative), plus any other `fields`; written atomically."""
    root = os.path.abspath(directory)
    relative = {name: os.path.relpath(os.path.join(root, path), root) for name, path in networks.items()}
    write_json_atomic(os.path.join(root, MANIFEST), {"format": pretrained.FORMAT, "networks": relative, **fields})


def resolve(directory: str) -> WeightsDir:
    """The networks of a weights directory (see the module docstring); a one-line CheckpointError otherwise."""
    root = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(root):
        raise CheckpointError(f"weights directory {directory}: no such directory")
    if os.path.isfile(os.path.join(root, MANIFEST)):
        return WeightsDir(root, *_read_manifest(root))
    is_model_dir = os.path.isfile(os.path.join(root, pretrained.META_FILE))
    if os.path.isfile(os.path.join(root, TRAIN_CONFIG)) and not is_model_dir:
        export = os.path.join(root, TRAIN_EXPORT)
        if os.path.isfile(os.path.join(export, MANIFEST)):
            return WeightsDir(root, *_read_manifest(export))
        raise CheckpointError(f"training workdir {directory} has no exported weights ({export}/{MANIFEST}); export "
                              f"them with `{EXPORT_HINT.format(workdir=directory)}`")
    if is_model_dir:
        model = pretrained.read_meta(root)["model"]
        if model == "ffclip_mapper":
            networks = {"mapper": root}
            if os.path.isdir(os.path.join(root, "generator")):
                networks["generator"] = os.path.join(root, "generator")
            return WeightsDir(root, networks)
        return WeightsDir(root, {registry.network_of(model): root})
    raise CheckpointError(f"weights directory {directory}: no {MANIFEST} (make one with `ffclip convert all "
                          f"--from pretrained_models/ --output {directory}`), not a training workdir and not a "
                          f"converted model directory")
