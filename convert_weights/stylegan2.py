"""rosinality StyleGAN2 checkpoint (`{'g_ema': state_dict, 'latent_avg', 'g', 'd', 'g_optim', 'd_optim', 'args'}`)
-> ffclip-jax `stylegan2` directory. Also used for the generator inside e4e (`decoder.*`) and FFCLIP
(`module.generator.*`) files."""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional

import numpy as np
import jax
import jax.numpy as jnp

from convert_weights.mapping import Rule, conv, apply_rules, linear, nchw, reshape
from convert_weights import common
from ffclip_jax.errors import ConversionError
from ffclip_jax.models.stylegan2 import Generator
from ffclip_jax.nn.layers import make_kernel

NAME = "stylegan2"
HELP = "rosinality StyleGAN2 generator (g_ema) -> Flax"

RULES = [
    Rule(r"style\.\d+\.weight", linear),
    Rule(r"style\.\d+\.bias"),
    Rule(r"input\.input", nchw),
    Rule(r".*conv\.weight", conv),
    Rule(r".*conv\.modulation\.weight", linear),
    Rule(r".*conv\.modulation\.bias"),
    Rule(r".*noise\.weight"),
    Rule(r".*activate\.bias"),
    Rule(r"(to_rgb1|to_rgbs\.\d+)\.bias", reshape(3)),
    Rule(r"noises\.(noise_\d+)", nchw, target=r"buffers/\1"),
    Rule(r"latent_avg", reshape(-1), target="buffers/latent_avg"),
]
# Blur kernels are buffers fixed by the config; `infer_config` checks them against blur_kernel.
IGNORE = [r".*\.blur\.kernel", r".*\.upsample\.kernel"]


def _kernel_1d(k2d: np.ndarray, scale: float) -> list:
    k = np.asarray(k2d, np.float64) / scale
    row = k.sum(axis=0)
    row = row / row[row > 0].min()
    return [float(np.round(v, 6)) for v in row]


def infer_config(sd: Mapping[str, np.ndarray], source: str) -> Dict[str, Any]:
    """size, style_dim, n_mlp, channel_multiplier and blur_kernel read off a g_ema state dict."""
    if "input.input" not in sd or "style.1.weight" not in sd:
        raise ConversionError(f"{source}: not a StyleGAN2 generator state dict (no input.input / style.1.weight)")
    n_rgb = len({int(m.group(1)) for k in sd if (m := re.fullmatch(r"to_rgbs\.(\d+)\..*", k))})
    size = 2 ** (n_rgb + 2)
    n_mlp = len({int(m.group(1)) for k in sd if (m := re.fullmatch(r"style\.(\d+)\.weight", k))})
    style_dim = int(sd["style.1.weight"].shape[1])
    cm = 2
    if size >= 64:
        cm = int(sd["convs.6.conv.weight"].shape[1]) // 256
    kernel = [1.0, 3.0, 3.0, 1.0]
    if "to_rgbs.0.upsample.kernel" in sd:
        kernel = _kernel_1d(sd["to_rgbs.0.upsample.kernel"], 4.0)
    cfg = dict(size=size, style_dim=style_dim, n_mlp=n_mlp, channel_multiplier=cm, blur_kernel=kernel)
    for key, arr in sd.items():
        if key.endswith(".kernel"):
            want = make_kernel(kernel) * 4
            if arr.shape != want.shape or not np.allclose(arr, want, atol=1e-6):
                raise ConversionError(f"{source}: buffer {key} does not match blur kernel {kernel}")
    return cfg


def convert_state_dict(sd: Mapping[str, np.ndarray], latent_avg: Optional[np.ndarray], *, source: str = "checkpoint",
                       overrides: Optional[Dict[str, Any]] = None):
    """g_ema state dict (+ latent_avg) -> (config, variables) for `ffclip_jax.models.stylegan2.Generator`."""
    config = dict(infer_config(sd, source), lr_mlp=0.01)
    config.update(overrides or {})
    gen = Generator(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    expected = jax.eval_shape(lambda: gen.init(jax.random.PRNGKey(0), jnp.zeros((1, gen.style_dim))))
    sd = dict(sd)
    if latent_avg is None:
        latent_avg = np.zeros((gen.style_dim,), np.float32)
        print(f"warning: {source} has no latent_avg; truncation will use zeros (compute one with mean_latent)")
    latent_avg = np.asarray(latent_avg, np.float32)
    if latent_avg.ndim == 2:  # e4e stores (n_latent, 512) repeats
        latent_avg = latent_avg[0]
    sd["latent_avg"] = latent_avg
    variables = apply_rules(sd, RULES, expected, ignore=IGNORE, source=source)
    return config, variables


def add_arguments(parser) -> None:
    parser.add_argument("--key", default="g_ema", help="which generator in the file: g_ema (default) or g")
    parser.add_argument("--size", type=int, help="override the inferred output size")
    parser.add_argument("--channel-multiplier", type=int, help="override the inferred channel multiplier")
    parser.add_argument("--lr-mlp", type=float, help="mapping network lr multiplier (default 0.01; not in the file)")


def recognise(ckpt: Mapping[str, Any]) -> bool:
    """A rosinality training checkpoint: `g_ema`, or `g` beside `d`."""
    keys = set(common.string_keys(ckpt))
    return "g_ema" in keys or {"g", "d"} <= keys


def convert(input, output, *, force: bool = False, key: str = "g_ema", size: Optional[int] = None,
            channel_multiplier: Optional[int] = None, lr_mlp: Optional[float] = None) -> None:
    ckpt = common.load_dict(input)
    common.refuse_other_kinds(ckpt, NAME, input)
    if key not in ckpt:
        found = ", ".join(sorted(k for k in ckpt if isinstance(k, str))[:8])
        raise ConversionError(f"{input}: no '{key}' entry (found: {found}); expected a rosinality StyleGAN2 checkpoint")
    sd = common.state_dict(ckpt[key], f"{input}[{key}]")
    overrides = {k: v for k, v in dict(size=size, channel_multiplier=channel_multiplier, lr_mlp=lr_mlp).items()
                 if v is not None}
    config, variables = convert_state_dict(sd, ckpt.get("latent_avg"), source=f"{input}[{key}]", overrides=overrides)
    common.save(input, output, NAME, config, variables, force=force)
    print(f"wrote {NAME} (size {config['size']}, channel_multiplier {config['channel_multiplier']}) to {output}")
