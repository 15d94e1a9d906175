"""Latent sources for the `ffclip_latents` dataset: the shape each domain expects, and synthetic w+ (files of inverted
w+ are read by `ffclip_jax.inputs.load_latents`, memory-mapped).

Both give arrays (N, n_latent, style_dim) (float, possibly memory-mapped or a broadcast view) that the TFDS
builder writes example by example. Nothing here writes files.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ffclip_jax.errors import ConfigError, InputError
from ffclip_jax.inputs import LatentShape
from ffclip_jax.weights import pretrained


@dataclasses.dataclass(frozen=True)
class Domain:
    """A dataset config: the generator's default n_latent (None: any) and the built-in prompt list."""
    n_latent: Optional[int]
    prompts: Optional[str]
    description: str


DOMAINS = {
    "ffhq": Domain(18, "ffhq", "FFHQ / CelebA-HQ faces: e4e latents of a 1024px generator (18 x 512)."),
    "car": Domain(16, "car", "Stanford Cars: e4e latents of a 512px generator (16 x 512)."),
    "church": Domain(14, "church", "LSUN churches: e4e latents of a 256px generator (14 x 512)."),
    "custom": Domain(None, None, "Any generator: latents (n_latent x style_dim) of the user's choice."),
}
STYLE_DIM = 512


def expected_shape(domain: str, *, n_latent: Optional[int] = None, generator=None,
                   generator_dir: Optional[str] = None) -> LatentShape:
    """Expected (n_latent, style_dim): an explicit n_latent, else the generator's, else the domain default."""
    if domain not in DOMAINS:
        raise ConfigError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    style_dim = generator.style_dim if generator is not None else (None if domain == "custom" else STYLE_DIM)
    if n_latent is not None:
        return LatentShape(int(n_latent), style_dim, f"--n-latent {n_latent}")
    if generator is not None:
        return LatentShape(generator.n_latent, style_dim, f"generator {generator_dir} (size {generator.size})")
    return LatentShape(DOMAINS[domain].n_latent, style_dim, f"domain {domain}")


def load_generator(generator_dir: str):
    """(module, variables) of a converted StyleGAN2 directory; a one-line error for any other model."""
    meta = pretrained.read_meta(generator_dir)
    if meta["model"] != "stylegan2":
        raise ConfigError(f"{generator_dir}: holds a {meta['model']!r} model, expected a converted stylegan2 "
                          f"generator (`ffclip convert stylegan2 ...`)")
    return pretrained.load(generator_dir)


@functools.partial(jax.jit, static_argnames=("module",))
def _mapped_w(module, variables, key, indices, truncation):
    """w (n, style_dim) of z_i = N(0, I) drawn from fold_in(key, i), truncated toward latent_avg when t < 1."""
    z = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (module.style_dim,), jnp.float32))(indices)
    w = module.apply(variables, z, method=module.mapping)
    avg = variables["buffers"]["latent_avg"]
    return jnp.where(truncation < 1.0, avg + truncation * (w - avg), w)


def synthetic_latents(module, variables, num: int, *, seed: int, stream: int, truncation: float = 1.0,
                      chunk: int = 1024, desc: str = "mapping z") -> np.ndarray:
    """w+ of `num` mapped z ~ N(0, I): a read-only view (num, n_latent, style_dim) of (num, style_dim) w.

    z_i depends only on (seed, stream, i) (stream separates the splits), so the result does not depend on `chunk`.
    With truncation t < 1, w = latent_avg + t * (w - latent_avg) (the generator's `latent_avg` buffer).
    """
    if num <= 0:
        raise ConfigError(f"number of synthetic latents must be positive, got {num}")
    if not 0.0 <= truncation <= 1.0:
        raise ConfigError(f"truncation must be in [0, 1], got {truncation}")
    key = jax.random.fold_in(jax.random.key(seed), stream)
    chunk = min(chunk, num)
    w = np.empty((num, module.style_dim), np.float32)
    for start in tqdm(range(0, num, chunk), desc=desc, unit="chunk"):
        indices = np.arange(start, start + chunk, dtype=np.uint32)  # the last chunk is padded: one compilation
        n = min(chunk, num - start)
        w[start:start + n] = np.asarray(_mapped_w(module, variables, key, indices, np.float32(truncation)))[:n]
    if not np.isfinite(w).all():
        raise InputError("synthetic latents contain NaN or inf (generator weights broken?)")
    return np.broadcast_to(w[:, None, :], (num, module.n_latent, module.style_dim))
