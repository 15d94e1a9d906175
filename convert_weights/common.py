"""Helpers shared by the converters: loading a checkpoint as a dict, recognising which upstream model a file holds."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import numpy as np

from ffclip_jax.errors import CheckpointError
from ffclip_jax.torch_io import flatten_state_dict, load_checkpoint


def load_dict(path) -> Dict[str, Any]:
    """Read a checkpoint that must be a dict at the top level."""
    obj = load_checkpoint(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    return dict(obj)


def state_dict(obj: Any, where: str) -> Dict[str, np.ndarray]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where}: expected a state dict, found {type(obj).__name__}")
    return flatten_state_dict(obj)


def detect_kind(ckpt: Mapping[str, Any]) -> Optional[str]:
    """Which upstream format a loaded checkpoint dict is, by content: 'stylegan2', 'e4e', 'ffclip', 'clip',
    'arcface', 'parsenet', 'moco' or None."""
    keys = set(k for k in ckpt if isinstance(k, str))
    if "g_ema" in keys or ("g" in keys and "d" in keys):
        return "stylegan2"
    inner = ckpt.get("state_dict")
    if isinstance(inner, Mapping):
        ik = [k for k in inner if isinstance(k, str)]
        if any(k.startswith("module.att_mapper.") or k.startswith("att_mapper.") for k in ik):
            return "ffclip"
        if any(k.startswith("module.encoder_q.") for k in ik):
            return "moco"
        if any(k.startswith("encoder.") for k in ik):
            return "e4e"
        keys = set(ik)
    flat = keys
    if any(k.startswith("module.encoder_q.") for k in flat):
        return "moco"
    if "text_projection" in flat or "visual.proj" in flat or any(k.startswith("text_model.") for k in flat):
        return "clip"
    if any(k.startswith("output_layer.") for k in flat) and any(k.startswith("body.") for k in flat):
        return "arcface"
    if any(k.startswith("conv1.conv1.") or k.startswith("up_concat") for k in flat):
        return "parsenet"
    return None


def refuse_other_kinds(ckpt: Mapping[str, Any], expected: str, path) -> None:
    """Raise if the file is recognisably another model, naming the converter to use instead."""
    kind = detect_kind(ckpt)
    if kind is not None and kind != expected:
        raise CheckpointError(f"{path}: this is a {kind} checkpoint, not {expected}; use "
                              f"`python -m convert_weights {kind} --input {path} --output DIR`")


def image_model_shapes(module, height: int, width: Optional[int] = None):
    """Shape tree of an image network's variables for a (1, height, width, 3) input, nothing computed: the target a
    conversion must fill."""
    import jax
    import jax.numpy as jnp

    x = jnp.zeros((1, height, width or height, 3))
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x))


def save_converted(args, name: str, config, variables) -> None:
    """Write the conversion of `args.input` as a converted directory `args.output` (atomic; --force overwrites)."""
    from ffclip_jax import pretrained

    pretrained.save(args.output, name, config, variables, extra={"source": str(args.input)}, overwrite=args.force)
