"""CLIP directories: transformers' on-disk format (config.json + flax_model.msgpack) plus our model.json, so
`FlaxCLIPModel.from_pretrained(DIR)` reads a converted directory too. Apart from `pretrained` so that loading any
other network does not import transformers.

    save_clip("weights/clip", config, variables)            # config: OpenAI's names (`ffclip_jax.models.clip`)
    module, variables = pretrained.load("weights/clip")     # the registry's loader for model 'clip': `load_clip`
"""
from __future__ import annotations

import os
from typing import Any, Dict

import jax
import jax.numpy as jnp
from flax import serialization
from transformers import FlaxCLIPModel

from ffclip_jax.errors import CheckpointError
from ffclip_jax.fileio import atomic_output_dir
from ffclip_jax.models.clip import build, hf_config
from ffclip_jax.weights.pretrained import CLIP_WEIGHTS, sha256_file, to_numpy_tree, write_meta


def save_clip(directory: str, config: Dict[str, Any], variables, *, extra=None, overwrite=False) -> None:
    """Atomically write a CLIP directory: config.json + flax_model.msgpack + model.json (with the weights' sha256,
    the key of the prompt-embedding cache)."""
    params = to_numpy_tree(dict(variables["params"]))
    with atomic_output_dir(directory, overwrite) as tmp:
        FlaxCLIPModel(hf_config(config), _do_init=False).save_pretrained(tmp, params=params)
        sha = sha256_file(os.path.join(tmp, CLIP_WEIGHTS))
        write_meta(tmp, "clip", config, dict(extra or {}, weights_sha256=sha))


def load_clip(directory: str, meta: Dict[str, Any]):
    """(CLIP module, {'params': ...}) from DIR/flax_model.msgpack."""
    path = os.path.join(directory, CLIP_WEIGHTS)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: missing CLIP weights (convert with `ffclip convert clip`)")
    with open(path, "rb") as f:
        params = serialization.msgpack_restore(f.read())
    return build(meta["config"]), {"params": jax.tree.map(jnp.asarray, params)}
