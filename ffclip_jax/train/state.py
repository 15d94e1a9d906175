"""The trainable state (step, mapper parameters, Adam, RNG key) and the optimizer: upstream's grad-norm clip + Adam
with MultiStepLR."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
    """Everything that changes during training: step, mapper params, Adam state, base RNG key (uint32 (2,))."""
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def lr_schedule(config, total_steps: int):
    """MultiStepLR: learning_rate x gamma^k after the k-th milestone (fractions of `total_steps`)."""
    t = config.train
    boundaries = {}
    for f in t.lr_milestones:
        step = int(round(float(f) * total_steps))
        boundaries[step] = boundaries.get(step, 1.0) * t.lr_gamma
    return optax.piecewise_constant_schedule(t.learning_rate, boundaries)


def make_optimizer(config, total_steps: int):
    """Upstream: clip_grad_norm_(5) then Adam(lr, eps=1e-8) on the mapper only; returns (optimizer, schedule)."""
    schedule = lr_schedule(config, total_steps)
    t = config.train
    return optax.chain(optax.clip_by_global_norm(t.grad_clip_norm),
                       optax.adam(schedule, eps=t.adam_eps)), schedule


def abstract_state(mapper, optimizer) -> TrainState:
    """Shapes and dtypes of the TrainState (nothing computed)."""
    return jax.eval_shape(lambda: create_state(mapper_init(mapper, jax.random.PRNGKey(0)), optimizer, 0))


def create_state(params, optimizer, seed: int) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      rng=jax.random.PRNGKey(seed))


def mapper_init(mapper, key):
    w = jnp.zeros((1, mapper.n_latent, mapper.style_dim))
    return mapper.init(key, w, w[:, 0])["params"]
