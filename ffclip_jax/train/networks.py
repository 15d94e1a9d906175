"""The networks of one training setup: the frozen ones loaded from their converted directories (the registry's
training networks that the active losses need) and the mapper built to fit the generator."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ffclip_jax.errors import ConfigError
from ffclip_jax.models.mapper import DynamicMapper
from ffclip_jax.train.config import needed_networks
from ffclip_jax.train.state import mapper_init
from ffclip_jax.weights import pretrained


@dataclasses.dataclass(frozen=True)
class Networks:
    """The (hashable) Flax modules of one training setup; their variables travel separately (`frozen`)."""
    generator: Any
    mapper: Any
    clip: Any
    arcface: Any = None
    parsenet: Any = None
    moco: Any = None


def load_networks(config) -> Tuple[Networks, Dict[str, Any]]:
    """(modules, frozen variables {network: variables}) from the converted directories; the mapper follows the
    generator (n_latent, style_dim), whose style_dim must equal CLIP's embedding width."""
    modules, frozen = {}, {}
    for name in needed_networks(config):
        overrides = {"remat": True} if name == "generator" and config.model.remat else {}
        modules[name], frozen[name] = pretrained.load(config.weights[name], **overrides)
    gen = modules["generator"]
    embed = modules["clip"].config.projection_dim
    if embed != gen.style_dim:
        raise ConfigError(f"CLIP {config.weights.clip} embeds text in {embed} dims but the generator "
                          f"{config.weights.generator} has style_dim {gen.style_dim}; the mapper needs them equal")
    mapper = DynamicMapper(n_latent=gen.n_latent, style_dim=gen.style_dim, num_blocks=config.model.mapper_blocks)
    return Networks(mapper=mapper, **modules), frozen


def init_mapper_params(config, mapper, seed: int):
    """Fresh mapper parameters (PyTorch default init), or those of `config.init_from` (checked to fit)."""
    shapes = jax.eval_shape(lambda: mapper_init(mapper, jax.random.PRNGKey(0)))
    if not config.init_from:
        return jax.jit(mapper_init, static_argnums=0)(mapper, jax.random.PRNGKey(seed))
    module, variables = pretrained.load(config.init_from)
    got = jax.tree.map(lambda a: tuple(np.shape(a)), variables["params"])
    want = jax.tree.map(lambda s: tuple(s.shape), shapes)
    if got != want or module.num_blocks != mapper.num_blocks:
        raise ConfigError(f"config.init_from={config.init_from}: mapper (n_latent {module.n_latent}, style_dim "
                          f"{module.style_dim}, {module.num_blocks} blocks) does not fit this generator's mapper "
                          f"(n_latent {mapper.n_latent}, style_dim {mapper.style_dim}, {mapper.num_blocks} blocks)")
    return jax.tree.map(jnp.asarray, variables["params"])
