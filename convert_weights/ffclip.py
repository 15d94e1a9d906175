"""FFCLIP release/training checkpoint (`{'state_dict': {'module.att_mapper.*', 'module.generator.*'}, 'opts'}`, an
`EditModel` saved from DDP; keys without `module.` are accepted too) -> ffclip-jax directories:
DIR (model 'ffclip_mapper', `ffclip_jax.models.mapper.DynamicMapper`) and DIR/generator (model 'stylegan2').

Upstream keeps the generator's latent_avg as a plain attribute, so the file usually lacks it: then it is taken from
`--latent-avg-from` (a converted stylegan2 directory or a rosinality checkpoint with 'latent_avg'), or zeros with a
warning.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import jax
import jax.numpy as jnp

from convert_weights import common
from convert_weights import stylegan2 as stylegan2_converter
from convert_weights.mapping import Rule, apply_rules, linear
from ffclip_jax.errors import ConversionError
from ffclip_jax.models.mapper import DynamicMapper
from ffclip_jax.models.stylegan2 import n_latent

NAME = "ffclip"
MODEL = "ffclip_mapper"
HELP = "FFCLIP checkpoint (semantic modulation mapper + its StyleGAN2 generator) -> Flax"


def _torch_tensor(a: np.ndarray) -> np.ndarray:
    """Linear weights (out, in) -> (in, out); LayerNorm weights and biases (1-D) unchanged."""
    return linear(a) if a.ndim == 2 else a


RULES = [
    Rule(r"att_mapper\.\d+\.(attention_layer\.)?[qkv]_matrix\.weight", linear),
    Rule(r"att_mapper\.(\d+)\.(gamma_|beta_)\.(\d)\.(weight|bias)", _torch_tensor,
         target=r"params/att_mapper_\1/\2/layers_\3/\4"),
]
# Upstream's att_module.fc is created but never used in forward.
IGNORE = [r"att_mapper\.\d+\.fc\.(weight|bias)"]


def split_state_dict(sd: Mapping[str, np.ndarray], source: str) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """EditModel state dict (optionally DDP-prefixed `module.`) -> (Dynamic_mapper state dict with 'att_mapper.{i}.*'
    keys, generator state dict)."""
    mapper, generator, other = {}, {}, []
    for key, value in sd.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if k.startswith("att_mapper."):
            mapper[k[len("att_mapper."):]] = value
        elif k.startswith("generator."):
            generator[k[len("generator."):]] = value
        else:
            other.append(key)
    if other:
        raise ConversionError(f"{source}: unexpected keys outside att_mapper/generator: {', '.join(sorted(other)[:5])}")
    if not mapper:
        raise ConversionError(f"{source}: no 'module.att_mapper.*' keys; expected an FFCLIP EditModel state dict")
    return mapper, generator


def infer_config(sd: Mapping[str, np.ndarray], source: str) -> Dict[str, int]:
    """n_latent, style_dim and num_blocks read off a Dynamic_mapper state dict."""
    k_key, q_key = "att_mapper.0.attention_layer.k_matrix.weight", "att_mapper.0.q_matrix.weight"
    for key in (k_key, q_key):
        if key not in sd:
            raise ConversionError(f"{source}: missing {key}; not an FFCLIP Dynamic_mapper state dict")
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"att_mapper\.(\d+)\.", k))}
    return dict(n_latent=int(sd[k_key].shape[0]), style_dim=int(sd[q_key].shape[0]), num_blocks=len(blocks))


def convert_mapper(sd: Mapping[str, np.ndarray], *, source: str = "checkpoint", dtype=np.float32):
    """Dynamic_mapper state dict ('att_mapper.{i}.*') -> (config, variables) for `DynamicMapper`."""
    config = infer_config(sd, source)
    mapper = DynamicMapper(**config)
    w = jnp.zeros((1, config["n_latent"], config["style_dim"]))
    expected = jax.eval_shape(lambda: mapper.init(jax.random.PRNGKey(0), w, w[:, :1]))
    return config, apply_rules(sd, RULES, expected, ignore=IGNORE, source=source, dtype=dtype)


def add_arguments(parser) -> None:
    parser.add_argument("--latent-avg-from", metavar="PATH",
                        help="take the generator's latent_avg from a converted stylegan2 directory or a StyleGAN2 "
                             "checkpoint (FFCLIP files do not store it; default: zeros with a warning)")


def recognise(ckpt: Mapping[str, Any]) -> bool:
    """An FFCLIP EditModel: `state_dict` with (module.)att_mapper.* keys."""
    return any(k.startswith(("module.att_mapper.", "att_mapper.")) for k in common.string_keys(ckpt.get("state_dict")))


def convert(input, output, *, force: bool = False, latent_avg_from: Optional[str] = None) -> None:
    ckpt = common.load_dict(input)
    common.refuse_other_kinds(ckpt, NAME, input)
    if "state_dict" not in ckpt:
        found = ", ".join(sorted(k for k in ckpt if isinstance(k, str))[:8])
        raise ConversionError(f"{input}: no 'state_dict' entry (found: {found}); expected an FFCLIP checkpoint")
    source = f"{input}[state_dict]"
    mapper_sd, generator_sd = split_state_dict(common.state_dict(ckpt["state_dict"], source), source)
    config, variables = convert_mapper(mapper_sd, source=f"{source}[att_mapper]")

    generator = None
    if generator_sd:
        latent_avg: Optional[np.ndarray] = ckpt.get("latent_avg")
        if latent_avg_from:
            latent_avg = common.read_latent_avg(latent_avg_from)
        gen_config, gen_variables = stylegan2_converter.convert_state_dict(
            generator_sd, latent_avg, source=f"{source}[generator]")
        if n_latent(gen_config["size"]) != config["n_latent"]:
            raise ConversionError(f"{input}: the mapper expects n_latent {config['n_latent']} but the "
                                  f"{gen_config['size']}px generator has {n_latent(gen_config['size'])} latents")
        generator = (gen_config, gen_variables)
    else:
        print(f"warning: {input} holds no generator (module.generator.*); writing the mapper only")
    common.save(input, output, MODEL, config, variables, force=force, generator=generator)
    wrote = f"{MODEL} (n_latent {config['n_latent']})"
    if generator is not None:
        wrote += f" and generator/ (size {generator[0]['size']})"
    print(f"wrote {wrote} to {output}")
