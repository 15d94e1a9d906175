"""Converted-weights directories: `model.json` (which model, its config) + `variables/` (an orbax checkpoint).

    module, variables = ffclip_jax.weights.pretrained.load("weights/stylegan2")
    image = module.apply(variables, w_plus, input_is_latent=True)

Composite sources (an e4e or FFCLIP file also holding the generator) write the extra model in a subdirectory
(`DIR/generator`), itself a converted directory. Which class or loader builds a model: `registry`.
CLIP directories hold transformers' files (config.json + flax_model.msgpack) instead of `variables/`
(`ffclip_jax.weights.clip_dir`).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from ffclip_jax.errors import CheckpointError
from ffclip_jax.fileio import atomic_output_dir
from ffclip_jax.weights import registry

FORMAT = "ffclip-jax"
FORMAT_VERSION = 1
META_FILE = "model.json"
VARIABLES_DIR = "variables"
CLIP_WEIGHTS = "flax_model.msgpack"  # a CLIP directory's weights file (`clip_dir`)


def read_meta(directory: str) -> Dict[str, Any]:
    path = os.path.join(directory, META_FILE)
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: no such directory of converted weights")
    if not os.path.isfile(path):
        raise CheckpointError(f"{directory}: not a converted ffclip-jax directory (no {META_FILE}); create one with "
                              f"`ffclip convert <model> --input FILE --output {directory}`")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    if meta.get("format") != FORMAT or "model" not in meta:
        raise CheckpointError(f"{path}: not an ffclip-jax model description (missing format/model fields)")
    return meta


def save_variables(path: str, variables) -> None:
    tree = to_numpy_tree(variables)
    with ocp.PyTreeCheckpointer() as ckpt:
        ckpt.save(os.path.abspath(path), tree)


def restore_variables(path: str):
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: missing variables checkpoint")
    with ocp.PyTreeCheckpointer() as ckpt:
        return ckpt.restore(os.path.abspath(path))


def to_numpy_tree(tree):
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: to_numpy_tree(v) for k, v in tree.items()}
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


def same_model(a: str, b: str) -> bool:
    """Whether two converted directories hold the same model: equal model.json model and config, and every variable
    equal array by array."""
    meta_a, meta_b = read_meta(a), read_meta(b)
    if (meta_a["model"], meta_a.get("config")) != (meta_b["model"], meta_b.get("config")):
        return False
    va, vb = (restore_variables(os.path.join(d, VARIABLES_DIR)) for d in (a, b))
    leaves_a, tree_a = jax.tree.flatten(va)
    leaves_b, tree_b = jax.tree.flatten(vb)
    return tree_a == tree_b and all(np.shape(x) == np.shape(y) and np.array_equal(x, y)
                                    for x, y in zip(leaves_a, leaves_b))


def save(directory: str, model: str, config: Dict[str, Any], variables, *, extra=None, overwrite=False) -> None:
    """Atomically write one converted model directory."""
    with atomic_output_dir(directory, overwrite) as tmp:
        write_model_dir(tmp, model, config, variables, extra=extra)


def load(directory: str, **overrides) -> Tuple[Any, Any]:
    """Load any converted directory: returns (module, variables); `overrides` change config fields
    (e.g. modconv="grouped", remat=True)."""
    directory = os.fspath(directory)
    meta = read_meta(directory)
    try:
        target = registry.entry(meta["model"]).resolve()
    except CheckpointError as e:
        raise CheckpointError(f"{directory}/{META_FILE}: {e}") from None
    if isinstance(target, type) and issubclass(target, nn.Module):
        config = {k: tuple(v) if isinstance(v, list) else v
                  for k, v in dict(meta.get("config", {}), **overrides).items()}
        try:
            module = target(**config)
        except TypeError as e:
            raise CheckpointError(f"{directory}/{META_FILE}: config does not fit {meta['model']}: {e}") from None
        return module, restore_variables(os.path.join(directory, VARIABLES_DIR))
    return target(directory, dict(meta, config=dict(meta.get("config", {}), **overrides)))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def clip_weights_hash(directory: str) -> str:
    """sha256 of a CLIP directory's weights (recorded in model.json by `clip_dir.save_clip`; computed if absent)."""
    meta = read_meta(directory)
    return meta.get("extra", {}).get("weights_sha256") or sha256_file(os.path.join(directory, CLIP_WEIGHTS))
