"""Converted-weights directories: `model.json` (which model, its config) + `variables/` (an orbax checkpoint).

    module, variables = ffclip_jax.pretrained.load("weights/stylegan2")
    image = module.apply(variables, w_plus, input_is_latent=True)

Composite sources (an e4e or FFCLIP file also holding the generator) write the extra model in a subdirectory
(`DIR/generator`), itself a converted directory.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import tempfile
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from ffclip_jax.errors import CheckpointError

FORMAT = "ffclip-jax"
FORMAT_VERSION = 1
META_FILE = "model.json"
VARIABLES_DIR = "variables"

# model name -> "module:attr". attr is a flax Module class (built as cls(**config)) or a loader function
# `loader(directory, meta) -> (module, variables)` for models that are not plain Flax modules.
MODELS: Dict[str, str] = {
    "stylegan2": "ffclip_jax.stylegan2:Generator",
    "e4e": "ffclip_jax.e4e:Encoder4Editing",
    "psp": "ffclip_jax.e4e:GradualStyleEncoder",
    "ffclip_mapper": "ffclip_jax.mapper:DynamicMapper",
    "clip": "ffclip_jax.clip:load_converted",
    "arcface": "ffclip_jax.arcface:Backbone",
    "parsenet": "ffclip_jax.parsenet:UNet",
    "moco": "ffclip_jax.moco:ResNet50",
}


def register(name: str, target: str) -> None:
    """Register a model name for `load` ("package.module:ClassOrLoader")."""
    MODELS[name] = target


def _resolve(name: str):
    if name not in MODELS:
        raise CheckpointError(f"unknown model {name!r} in {META_FILE}; known: {', '.join(sorted(MODELS))}")
    mod, attr = MODELS[name].split(":")
    return getattr(importlib.import_module(mod), attr)


def read_meta(directory: str) -> Dict[str, Any]:
    path = os.path.join(directory, META_FILE)
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: no such directory of converted weights")
    if not os.path.isfile(path):
        raise CheckpointError(f"{directory}: not a converted ffclip-jax directory (no {META_FILE}); create one with "
                              f"`python -m convert_weights <model> --input FILE --output {directory}`")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    if meta.get("format") != FORMAT or "model" not in meta:
        raise CheckpointError(f"{path}: not an ffclip-jax model description (missing format/model fields)")
    return meta


def save_variables(path: str, variables) -> None:
    import orbax.checkpoint as ocp

    tree = _to_numpy_tree(variables)
    with ocp.PyTreeCheckpointer() as ckpt:
        ckpt.save(os.path.abspath(path), tree)


def restore_variables(path: str):
    import orbax.checkpoint as ocp

    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: missing variables checkpoint")
    with ocp.PyTreeCheckpointer() as ckpt:
        return ckpt.restore(os.path.abspath(path))


def _to_numpy_tree(tree):
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: _to_numpy_tree(v) for k, v in tree.items()}
    return np.asarray(tree)


def write_meta(directory: str, model: str, config: Dict[str, Any], extra: Optional[Dict[str, Any]] = None) -> None:
    """Write model.json (which model, its config, extra facts such as the source file) into `directory`."""
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model, "config": config,
            "extra": extra or {}}
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)


def write_model_dir(directory: str, model: str, config: Dict[str, Any], variables, *,
                    extra: Optional[Dict[str, Any]] = None) -> None:
    """Write model.json and variables/ into `directory` (which must exist; see `atomic_output_dir`)."""
    write_meta(directory, model, config, extra)
    save_variables(os.path.join(directory, VARIABLES_DIR), variables)


@contextlib.contextmanager
def atomic_output_dir(directory: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary sibling directory; on success it replaces `directory`, on error it is removed, so no partial
    output is ever left at `directory`."""
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and not overwrite:
        raise CheckpointError(f"{directory}: already exists (pass --force to replace it)")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
    os.chmod(tmp, 0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(directory):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old-", dir=parent)
        os.rmdir(old)
        os.rename(directory, old)
    os.rename(tmp, directory)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def save(directory: str, model: str, config: Dict[str, Any], variables, *, extra=None, overwrite=False) -> None:
    """Atomically write one converted model directory."""
    with atomic_output_dir(directory, overwrite) as tmp:
        write_model_dir(tmp, model, config, variables, extra=extra)


def load(directory: str, **overrides) -> Tuple[Any, Any]:
    """Load any converted directory: returns (module, variables); `overrides` change config fields
    (e.g. modconv="grouped", remat=True)."""
    directory = os.fspath(directory)
    meta = read_meta(directory)
    target = _resolve(meta["model"])
    import flax.linen as nn

    if isinstance(target, type) and issubclass(target, nn.Module):
        config = {k: tuple(v) if isinstance(v, list) else v
                  for k, v in dict(meta.get("config", {}), **overrides).items()}
        try:
            module = target(**config)
        except TypeError as e:
            raise CheckpointError(f"{directory}/{META_FILE}: config does not fit {meta['model']}: {e}") from None
        return module, restore_variables(os.path.join(directory, VARIABLES_DIR))
    return target(directory, dict(meta, config=dict(meta.get("config", {}), **overrides)))
