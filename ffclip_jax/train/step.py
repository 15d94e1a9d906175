"""One FFCLIP training step, sharded and jit-compiled (FFCLIP `Coach.train`):
e = prompt_table[prompt]; x = G(w) (no gradient); w_hat = mapper(w, e); x_hat = G(w_hat);
loss = sum_k weight_k * term_k over the configured terms
  clip       mean_i 1 - cos(CLIP(x_hat_i), e_i)            (upstream: Upsample x7 + AvgPool, logits / 100)
  embedding  mean |CLIP_img(x) - CLIP_img(x_hat)|           (bicubic align_corners to 224)
  latent     mean |w - w_hat|
  id         mean 1 - cos(ArcFace(x_hat), ArcFace(x))       (faces)
  background MSE outside the parsed hair region             (faces)
  moco       mean 1 - cos(MoCo(x_hat), MoCo(x))             (cars, churches)
  image_l1   mean |x - x_hat|                               (upstream's `x_l2`, off by default)
Only the mapper is trained; the frozen networks are jit *arguments* (not constants), placed by `sharding`.
Also the evaluation losses and the grid renderer.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Tuple

import chex
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ffclip_jax import losses
from ffclip_jax.errors import ConfigError
from ffclip_jax.train.config import active_terms
from ffclip_jax.train.networks import Networks
from ffclip_jax.sharding import DATA_AXIS, batch_sharding, replicated
from ffclip_jax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """Static choices compiled into the step."""
    loss_weights: Tuple[Tuple[str, float], ...]
    compute_dtype: str = "float32"
    noise_mode: str = "const"
    accum_steps: int = 1


def step_options(config) -> StepOptions:
    if config.model.noise_mode not in ("const", "random"):
        raise ConfigError(f"model.noise_mode must be 'const' or 'random', got {config.model.noise_mode!r}")
    if config.model.compute_dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"model.compute_dtype must be 'float32' or 'bfloat16', got {config.model.compute_dtype!r}")
    return StepOptions(tuple(sorted(active_terms(config).items())), config.model.compute_dtype,
                       config.model.noise_mode, int(config.train.accum_steps))


def _cast(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def loss_terms(params, frozen, batch, rng, nets: Networks, opts: StepOptions):
    """(total loss, {term: value}, (x, x_hat)) for a batch {"w": (B, L, D), "prompt": (B,) int}; frozen holds the
    networks' variables and "prompts": the (P, D) text-embedding table."""
    chex.assert_rank(batch["w"], 3)
    chex.assert_shape(batch["prompt"], batch["w"].shape[:1])
    dtype = jnp.dtype(opts.compute_dtype)
    out_dtype = jnp.promote_types(dtype, jnp.float32)  # losses and latents: float32 (float64 in x64 parity tests)
    w = batch["w"].astype(out_dtype)
    e = jnp.asarray(frozen["prompts"])[batch["prompt"]]
    gen_vars = _cast(frozen["generator"], dtype)
    rngs = {"noise": rng} if opts.noise_mode == "random" else None

    def render(latents):
        return nets.generator.apply(gen_vars, latents.astype(dtype), input_is_latent=True,
                                    noise_mode=opts.noise_mode, rngs=rngs)

    x = jax.lax.stop_gradient(render(w))
    # the mapper stays in float32 under bf16 compute: it is tiny next to the networks, and its channel-attention
    # LayerNorm normalises differences far below bf16's resolution at init
    w_hat = nets.mapper.apply({"params": _cast(params, out_dtype)}, w, e.astype(out_dtype))
    x_hat = render(w_hat)
    xs, xs_hat = x.astype(dtype), x_hat.astype(dtype)

    def net(name):
        return getattr(nets, name), _cast(frozen[name], dtype)

    weights = dict(opts.loss_weights)
    compute = {
        "clip": lambda: jnp.mean(losses.clip_loss(net("clip"), xs_hat, e.astype(dtype))),
        "embedding": lambda: losses.embedding_loss(net("clip"), xs, xs_hat),
        "latent": lambda: losses.latent_l1(w, w_hat),
        "id": lambda: losses.id_loss(net("arcface"), xs_hat, xs),
        "background": lambda: losses.background_loss(net("parsenet"), xs, xs_hat),
        "moco": lambda: losses.moco_loss(net("moco"), xs_hat, xs),
        "image_l1": lambda: losses.image_l1(x, x_hat),
    }
    terms = {k: compute[k]().astype(out_dtype) for k in weights}
    total = sum(weights[k] * terms[k] for k in weights)
    return total, terms, (x, x_hat)


def train_step(state: TrainState, frozen, batch, *, nets: Networks, opts: StepOptions, optimizer, schedule,
               mesh: Mesh):
    """One optimisation step: (new state, metrics {loss, loss_<term>, grad_norm, lr}). With accum_steps A the batch
    is split into A micro-batches (each still split over the data axis) whose gradients are averaged, equal to the
    full-batch gradient since every term is a batch mean."""
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params, micro):
        total, terms, _ = loss_terms(params, frozen, micro, rng, nets, opts)
        return total, terms

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    a = opts.accum_steps
    if a == 1:
        (loss, terms), grads = grad_fn(state.params, batch)
    else:
        micro = jax.tree.map(lambda v: jnp.swapaxes(v.reshape((v.shape[0] // a, a) + v.shape[1:]), 0, 1), batch)
        micro = jax.lax.with_sharding_constraint(micro, NamedSharding(mesh, P(None, DATA_AXIS)))

        def body(carry, mb):
            (l, t), g = grad_fn(state.params, mb)
            return jax.tree.map(jnp.add, carry, (l, t, g)), None

        zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: grad_fn(state.params, jax.tree.map(
            lambda v: v[0], micro))))
        zeros = (zeros[0][0], zeros[0][1], zeros[1])
        (loss, terms, grads), _ = jax.lax.scan(body, zeros, micro)
        loss, terms, grads = jax.tree.map(lambda v: v / a, (loss, terms, grads))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    metrics = {"loss": loss, **{f"loss_{k}": v for k, v in terms.items()},
               "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)
    return new, metrics


def make_train_step(nets: Networks, opts: StepOptions, optimizer, schedule, mesh: Mesh, state_shardings,
                    frozen_shardings):
    """jit of `train_step`: state (donated) and frozen variables as given, batch split over `data`."""
    fn = functools.partial(train_step, nets=nets, opts=opts, optimizer=optimizer, schedule=schedule, mesh=mesh)
    return jax.jit(fn, in_shardings=(state_shardings, frozen_shardings, batch_sharding(mesh)),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,))


def eval_losses(params, frozen, batch, *, nets: Networks, opts: StepOptions):
    """Per-example (B,) total and terms on a test batch (each example scored alone, so padding rows can be masked)."""
    rng = jax.random.PRNGKey(0)

    def one(example):
        total, terms, _ = loss_terms(params, frozen, jax.tree.map(lambda v: v[None], example), rng, nets, opts)
        return {"loss": total, **{f"loss_{k}": v for k, v in terms.items()}}
    return jax.vmap(one)({"w": batch["w"], "prompt": batch["prompt"]})


def make_eval_step(nets: Networks, opts: StepOptions, mesh: Mesh, params_shardings, frozen_shardings):
    fn = functools.partial(eval_losses, nets=nets, opts=opts)
    return jax.jit(fn, in_shardings=(params_shardings, frozen_shardings, batch_sharding(mesh)),
                   out_shardings=replicated(mesh))


def render_edits(params, generator_vars, w, embeddings, *, nets: Networks, strength=1.0):
    """The grid: w (R, L, D) test latents, embeddings (P, D) -> (R, 1 + P, H, W, 3): source, then one edit per
    prompt."""
    chex.assert_rank([w, embeddings], [3, 2])

    def gen(latents):
        return nets.generator.apply(generator_vars, latents, input_is_latent=True)

    def edit(e):
        return gen(nets.mapper.apply({"params": params}, w, jnp.broadcast_to(e, (w.shape[0],) + e.shape), strength))
    edits = jax.lax.map(edit, embeddings)  # (P, R, H, W, 3)
    return jnp.concatenate([gen(w)[:, None], jnp.swapaxes(edits, 0, 1)], axis=1)
