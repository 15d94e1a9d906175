"""Steps every converter shares: reading a checkpoint as a dict, recognising which upstream model a file holds (by
asking each converter's `recognise` in registry order), `module.` stripping, latent_avg lookup, and writing outputs
(a single model, or a model plus the generator stored in the same upstream file)."""
from __future__ import annotations

import importlib
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import jax
import jax.numpy as jnp

from ffclip_jax.errors import CheckpointError
from ffclip_jax.weights import pretrained, registry
from convert_weights.torch_io import ensure_loaded, flatten_state_dict, load_checkpoint

GENERATOR_SUBDIR = "generator"  # where e4e and FFCLIP conversions put the generator stored in their file


def converter(name: str):
    """The module `convert_weights.<name>`."""
    return importlib.import_module(f"convert_weights.{name}")


def load_dict(path) -> Dict[str, Any]:
    """Read a checkpoint that must be a dict at the top level."""
    obj = load_checkpoint(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    return dict(obj)


def state_dict(obj: Any, where: str) -> Dict[str, np.ndarray]:
    ensure_loaded(obj, where)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where}: expected a state dict, found {type(obj).__name__}")
    return flatten_state_dict(obj)


def string_keys(obj: Any) -> Tuple[str, ...]:
    """The string keys of a mapping (none for anything else): what recognition rules look at."""
    return tuple(k for k in obj if isinstance(k, str)) if isinstance(obj, Mapping) else ()


def inner_keys(ckpt: Mapping[str, Any]) -> Tuple[str, ...]:
    """Keys of `ckpt['state_dict']` when it is a mapping, else of `ckpt` itself."""
    inner = ckpt.get("state_dict")
    return string_keys(inner if isinstance(inner, Mapping) else ckpt)


def strip_prefix(sd: Mapping[str, np.ndarray], prefix: str = "module.") -> Dict[str, np.ndarray]:
    """Remove `prefix` (DataParallel's `module.`) from the keys that have it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def recognise(ckpt: Mapping[str, Any]) -> Optional[str]:
    """The converter whose `recognise(ckpt)` accepts a loaded checkpoint dict (registry order), or None."""
    return next((name for name in registry.CONVERTERS if converter(name).recognise(ckpt)), None)


def refuse_other_kinds(ckpt: Mapping[str, Any], expected: str, path) -> None:
    """Raise if the file is recognisably another model, naming the converter to use instead."""
    kind = recognise(ckpt)
    if kind is not None and kind != expected:
        raise CheckpointError(f"{path}: this is a {kind} checkpoint, not {expected}; use "
                              f"`python -m convert_weights {kind} --input {path} --output DIR`")


def image_model_shapes(module, height: int, width: Optional[int] = None):
    """Shape tree of an image network's variables for a (1, height, width, 3) input, nothing computed: the target a
    conversion must fill."""
    x = jnp.zeros((1, height, width or height, 3))
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x))


def read_latent_avg(path: str, option: str = "--latent-avg-from") -> np.ndarray:
    """latent_avg (style_dim,) from a converted stylegan2 directory or a checkpoint file holding 'latent_avg'."""
    if os.path.isdir(path):
        meta = pretrained.read_meta(path)
        if meta["model"] != "stylegan2":
            raise CheckpointError(f"{option} {path}: holds model '{meta['model']}', expected a converted stylegan2 "
                                  f"generator directory")
        variables = pretrained.restore_variables(os.path.join(path, pretrained.VARIABLES_DIR))
        latent_avg = variables["buffers"]["latent_avg"]
    else:
        ckpt = load_dict(path)
        if ckpt.get("latent_avg") is None:
            raise CheckpointError(f"{option} {path}: no 'latent_avg' entry")
        latent_avg = ensure_loaded(ckpt["latent_avg"], f"{path}[latent_avg]")
    return np.asarray(latent_avg, np.float32).reshape(-1, np.shape(latent_avg)[-1])[0]


def save(input, output: str, model: str, config, variables, *, force: bool = False,
         generator: Optional[Tuple[Dict[str, Any], Any]] = None, extra: Optional[Dict[str, Any]] = None) -> None:
    """Atomically write the conversion of `input` as a converted directory `output` (--force overwrites); with
    `generator` = (config, variables), the generator stored in the same upstream file goes to output/generator."""
    extra = dict(extra or {}, source=str(input))
    with pretrained.atomic_output_dir(output, force) as tmp:
        pretrained.write_model_dir(tmp, model, config, variables, extra=extra)
        if generator is not None:
            os.makedirs(os.path.join(tmp, GENERATOR_SUBDIR))
            pretrained.write_model_dir(os.path.join(tmp, GENERATOR_SUBDIR), "stylegan2", *generator,
                                       extra={"source": str(input), "from": model})
