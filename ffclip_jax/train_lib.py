"""FFCLIP training pieces used by `train.py`: the config schema, weight checks, networks, the trainable state
(mapper parameters + Adam), the loss composition, the sharded jitted step, evaluation, checkpoints and export.

One step (FFCLIP `Coach.train`): e = prompt_table[prompt]; x = G(w) (no gradient); w_hat = mapper(w, e);
x_hat = G(w_hat); loss = sum_k weight_k * term_k over the configured terms
  clip       mean_i 1 - cos(CLIP(x_hat_i), e_i)            (upstream: Upsample x7 + AvgPool, logits / 100)
  embedding  mean |CLIP_img(x) - CLIP_img(x_hat)|           (bicubic align_corners to 224)
  latent     mean |w - w_hat|
  id         mean 1 - cos(ArcFace(x_hat), ArcFace(x))       (faces)
  background MSE outside the parsed hair region             (faces)
  moco       mean 1 - cos(MoCo(x_hat), MoCo(x))             (cars, churches)
  image_l1   mean |x - x_hat|                               (upstream's `x_l2`, off by default)
Only the mapper is trained; the frozen networks are jit *arguments* (not constants), replicated over the mesh or
sharded by the `sharding.frozen` rule.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ffclip_jax import pretrained
from ffclip_jax.errors import CheckpointError, ConfigError
from ffclip_jax.fileio import write_json_atomic  # noqa: F401  (train.py uses tl.write_json_atomic)

DATA_AXIS = "data"
LOSS_TERMS = ("clip", "embedding", "latent", "id", "background", "moco", "image_l1")
# loss term -> the frozen network it needs (besides the generator)
TERM_NETWORK = {"clip": "clip", "embedding": "clip", "id": "arcface", "background": "parsenet", "moco": "moco"}
# network (config.weights field) -> the model a converted directory must hold, and how to make one
NETWORK_MODEL = {"generator": "stylegan2", "clip": "clip", "arcface": "arcface", "parsenet": "parsenet",
                 "moco": "moco"}
CONVERT_HINT = {"generator": "python -m convert_weights stylegan2 --input stylegan2-ffhq-config-f.pt --output DIR",
                "clip": "python -m convert_weights clip --input ViT-B-32.pt --output DIR",
                "arcface": "python -m convert_weights arcface --input model_ir_se50.pth --output DIR",
                "parsenet": "python -m convert_weights parsenet --input parsenet.pth --output DIR",
                "moco": "python -m convert_weights moco --input moco_v2_800ep_pretrain.pth.tar --output DIR"}
CHECKPOINT_DIR = "checkpoints"
WEIGHTS_DIR = "weights"
GRIDS_DIR = "grids"
CONFIG_FILE = "config.json"
BEST_FILE = "best.json"
MANIFEST = "manifest.json"


# ---------------------------------------------------------------------------------------------------------------
# config


def base_config() -> ml_collections.ConfigDict:
    """Every field `train.py` reads, with upstream FFCLIP's (FFHQ) values; configs/*.py start from this."""
    c = ml_collections.ConfigDict()
    c.domain = "ffhq"              # ffclip_latents dataset config (ffhq, car, church, custom)
    c.data_dir = ""                # TFDS data dir holding ffclip_latents/<domain> (python -m ffclip_jax.data build)
    c.prompts = "ffhq"             # built-in prompt list name or a file, one prompt per line
    c.prompt_cache_dir = ""        # CLIP text-embedding cache ("" = WORKDIR/prompt_cache)
    c.init_from = ""               # converted FFCLIP directory (convert_weights ffclip) to fine-tune from
    c.tiny = False                 # build random tiny networks + synthetic latents in WORKDIR/tiny_assets
    c.seed = 0
    c.distributed = ml_collections.ConfigDict()  # multi-host: jax.distributed.initialize() before anything else
    c.distributed.enabled = False
    c.distributed.coordinator_address = ""  # "" = auto-detected (TPU slices, SLURM, Open MPI, ...)
    c.distributed.num_processes = 0         # 0 = auto-detected
    c.distributed.process_id = -1           # -1 = auto-detected
    c.jit_cache_dir = ""           # persistent XLA compilation cache ("" = off)

    c.weights = ml_collections.ConfigDict()  # converted directories; "" = not used (its loss weight must be 0)
    for name in NETWORK_MODEL:
        c.weights[name] = ""

    c.loss = ml_collections.ConfigDict(dict(clip=1.0, embedding=1.0, latent=1.6, id=0.9, background=2.0, moco=0.0,
                                            image_l1=0.0))

    c.model = ml_collections.ConfigDict()
    c.model.mapper_blocks = 4
    c.model.compute_dtype = "float32"  # "bfloat16": the frozen networks compute in bf16; the (small) mapper, the
    #                                    latents, the losses, parameters and Adam stay float32
    c.model.remat = False              # rematerialise generator blocks in the backward pass (less memory)
    c.model.noise_mode = "const"       # generator noise: upstream's fixed buffers ("const") or "random"

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 0             # global batch; 0 = per_device_batch_size x device count
    c.train.per_device_batch_size = 8
    c.train.accum_steps = 1            # gradient accumulation: the global batch is split into this many micro-batches
    c.train.num_epochs = 20
    c.train.num_steps = 0              # > 0 overrides num_epochs
    c.train.learning_rate = 5e-4
    c.train.adam_eps = 1e-8
    c.train.lr_milestones = (0.5, 0.75, 0.9, 0.95)  # fractions of training (MultiStepLR)
    c.train.lr_gamma = 0.5
    c.train.grad_clip_norm = 5.0
    c.train.prefetch = 2

    c.sharding = ml_collections.ConfigDict()
    c.sharding.frozen = "replicate"    # "replicate" or "fsdp" (shard large frozen arrays over the data axis)
    c.sharding.fsdp_min_size = 2 ** 20

    c.log = ml_collections.ConfigDict()
    c.log.every_steps = 50             # TensorBoard scalars and progress-bar metrics
    c.log.checkpoint_every_steps = 1000
    c.log.keep_checkpoints = 3         # latest K (the best by validation loss is kept as well)

    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 2000
    c.eval.num_examples = 64           # test latents in the validation loss
    c.eval.batch_size = 0              # 0 = the training batch size
    c.eval.grid_rows = 4               # test latents in the PNG grid
    c.eval.grid_prompts = ("Bald", "Blue eyes", "Purple hair", "Sad", "Taylor Swift")
    return c


def moco_domain_config(domain: str) -> ml_collections.ConfigDict:
    """base_config for a domain without faces (cars, churches): its latents (data/ffclip_latents/<domain>), prompt
    list and generator (weights/stylegan2-<domain>), and MoCo v2 feature similarity (weight 0.5, e4e's car setting)
    in place of the face-only ArcFace identity and hair-parsing background losses."""
    c = base_config()
    c.domain = domain
    c.prompts = domain
    c.data_dir = "data"
    c.weights.generator = f"weights/stylegan2-{domain}"
    c.weights.clip = "weights/clip"
    c.weights.moco = "weights/moco"
    c.loss.id = 0.0
    c.loss.background = 0.0
    c.loss.moco = 0.5
    return c


def resolve_batch(config, num_devices: int) -> Tuple[int, int]:
    """(global train batch, eval batch), checked against the data axis and accumulation."""
    t = config.train
    batch = t.batch_size or t.per_device_batch_size * num_devices
    accum = t.accum_steps
    if accum < 1 or batch % accum:
        raise ConfigError(f"train.accum_steps={accum} must be >= 1 and divide the global batch {batch}")
    if (batch // accum) % num_devices:
        raise ConfigError(f"micro-batch {batch // accum} (train.batch_size {batch} / accum_steps {accum}) does not "
                          f"split over the {num_devices} devices of the '{DATA_AXIS}' axis")
    eval_batch = config.eval.batch_size or batch // accum
    if eval_batch % num_devices:
        raise ConfigError(f"eval.batch_size={eval_batch} does not split over the {num_devices} devices")
    return batch, eval_batch


def active_terms(config) -> Dict[str, float]:
    """The loss terms with a non-zero weight."""
    unknown = set(config.loss.keys()) - set(LOSS_TERMS)
    if unknown:
        raise ConfigError(f"unknown loss terms {sorted(unknown)}; known: {', '.join(LOSS_TERMS)}")
    terms = {k: float(v) for k, v in config.loss.items() if float(v) != 0.0}
    if not terms:
        raise ConfigError("every loss weight is 0: nothing to train")
    return terms


def needed_networks(config) -> Tuple[str, ...]:
    """Networks the configured losses need: always the generator and CLIP (for the prompt table)."""
    need = {"generator", "clip"} | {TERM_NETWORK[t] for t in active_terms(config) if t in TERM_NETWORK}
    return tuple(n for n in NETWORK_MODEL if n in need)


def check_weights(config) -> None:
    """Every needed `weights.*` directory exists and holds the right model, and `init_from` is an FFCLIP directory:
    a one-line ConfigError otherwise. Reads only model.json files (runs before anything is compiled)."""
    terms = active_terms(config)
    for name in needed_networks(config):
        path = config.weights[name]
        users = [f"loss.{t}={terms[t]}" for t in terms if TERM_NETWORK.get(t) == name] or ["rendering"]
        if not path:
            raise ConfigError(f"config.weights.{name} is empty but {', '.join(users)} needs it; convert one with "
                              f"`{CONVERT_HINT[name]}` and pass --config.weights.{name}=DIR")
        _check_model_dir(f"config.weights.{name}", path, NETWORK_MODEL[name], CONVERT_HINT[name])
    if config.init_from:
        _check_model_dir("config.init_from", config.init_from, "ffclip_mapper",
                         "python -m convert_weights ffclip --input ffclip.pth --output DIR")


def _check_model_dir(field: str, path: str, model: str, hint: str) -> None:
    try:
        meta = pretrained.read_meta(path)
    except CheckpointError as e:
        raise ConfigError(f"{field}={path}: {e}") from None
    if meta["model"] != model:
        raise ConfigError(f"{field}={path}: holds a {meta['model']!r} model, expected {model!r} (`{hint}`)")


# ---------------------------------------------------------------------------------------------------------------
# networks


@dataclasses.dataclass(frozen=True)
class Networks:
    """The (hashable) Flax modules of one training setup; their variables travel separately (`frozen`)."""
    generator: Any
    mapper: Any
    clip: Any
    arcface: Any = None
    parsenet: Any = None
    moco: Any = None


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
    from ffclip_jax.mapper import DynamicMapper

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


def mapper_init(mapper, key):
    w = jnp.zeros((1, mapper.n_latent, mapper.style_dim))
    return mapper.init(key, w, w[:, 0])["params"]


# ---------------------------------------------------------------------------------------------------------------
# trainable state and optimizer


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


# ---------------------------------------------------------------------------------------------------------------
# sharding: the one place that says where every array lives


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over every device of every host: the batch is split over `data`."""
    devices = np.asarray(jax.devices() if devices is None else devices).reshape(-1)
    return Mesh(devices, (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_sharding(mesh: Mesh, state) -> Any:
    """The mapper and Adam state are small (a few 10 MB): replicated."""
    return jax.tree.map(lambda _: replicated(mesh), state)


def frozen_sharding(mesh: Mesh, frozen, rule: str = "replicate", min_size: int = 2 ** 20):
    """Frozen variables: replicated, or with rule 'fsdp' each array of >= min_size elements split over `data` along
    its largest axis divisible by the axis size (XLA gathers it where used: less memory, more communication)."""
    if rule not in ("replicate", "fsdp"):
        raise ConfigError(f"sharding.frozen must be 'replicate' or 'fsdp', got {rule!r}")
    n = mesh.shape[DATA_AXIS]

    def one(a):
        shape = np.shape(a)
        if rule == "fsdp" and n > 1 and int(np.prod(shape)) >= min_size:
            for axis in sorted(range(len(shape)), key=lambda i: -shape[i]):
                if shape[axis] % n == 0:
                    spec = [None] * len(shape)
                    spec[axis] = DATA_AXIS
                    return NamedSharding(mesh, P(*spec))
        return replicated(mesh)
    return jax.tree.map(one, frozen)


def initialize_distributed(config) -> None:
    """jax.distributed.initialize with the config's explicit values (auto-detection for those left unset)."""
    d = config.distributed
    if not d.enabled:
        return
    kwargs = dict(coordinator_address=d.coordinator_address or None, num_processes=d.num_processes or None,
                  process_id=None if d.process_id < 0 else d.process_id)
    jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is True on any (a preemption signal seen by one host stops all of them)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


def put(tree, shardings):
    """Host arrays (identical on every host) -> global jax.Arrays with the given shardings (multi-host safe)."""
    def one(a, s):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, s, lambda index: a[index])
    return jax.tree.map(one, tree, shardings)


# ---------------------------------------------------------------------------------------------------------------
# losses and step


def _cast(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def loss_terms(params, frozen, batch, rng, nets: Networks, opts: StepOptions):
    """(total loss, {term: value}, (x, x_hat)) for a batch {"w": (B, L, D), "prompt": (B,) int}; frozen holds the
    networks' variables and "prompts": the (P, D) text-embedding table."""
    from ffclip_jax import clip as clip_lib
    from ffclip_jax import losses

    dtype = jnp.dtype(opts.compute_dtype)
    out_dtype = jnp.promote_types(dtype, jnp.float32)  # losses and latents: float32 (float64 in x64 parity tests)
    w = batch["w"].astype(out_dtype)
    e = frozen["prompts"][batch["prompt"]]
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
        "clip": lambda: jnp.mean(clip_lib.clip_loss(net("clip"), xs_hat, e.astype(dtype))),
        "embedding": lambda: clip_lib.embedding_loss(net("clip"), xs, xs_hat),
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
    def gen(latents):
        return nets.generator.apply(generator_vars, latents, input_is_latent=True)

    def edit(e):
        return gen(nets.mapper.apply({"params": params}, w, jnp.broadcast_to(e, (w.shape[0],) + e.shape), strength))
    edits = jax.lax.map(edit, embeddings)  # (P, R, H, W, 3)
    return jnp.concatenate([gen(w)[:, None], jnp.swapaxes(edits, 0, 1)], axis=1)


# ---------------------------------------------------------------------------------------------------------------
# checkpoints and export


def checkpoint_manager(workdir: str, keep: int, *, read_only: bool = False):
    """orbax CheckpointManager over WORKDIR/checkpoints with items `state` (TrainState) and `data` (the input
    pipeline position, JSON); keeps the latest `keep` and the best by `val_loss`."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

    policy = pp.AnyPreservationPolicy([
        pp.LatestN(n=keep),
        pp.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1, keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=not read_only, read_only=read_only,
                                           save_interval_steps=1)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
                                 item_names=("state", "data"), options=options)


def save_checkpoint(manager, state: TrainState, data_state: Mapping[str, Any], metrics=None) -> None:
    import orbax.checkpoint as ocp

    manager.save(int(state.step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                          data=ocp.args.JsonSave(dict(data_state))),
                 metrics=metrics, force=True)


def restore_checkpoint(manager, step: int, target: TrainState, shardings) -> Tuple[TrainState, Dict[str, Any]]:
    """Restore `step` onto `shardings` (any device count: the state is resharded on load)."""
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=s), target, shardings)
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                        data=ocp.args.JsonRestore()))
    return out["state"], dict(out["data"])


def read_best(workdir: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(workdir, BEST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"{workdir}: not a training workdir (no {CONFIG_FILE})")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def restore_params(workdir: str, which: str = "best"):
    """(config, mapper module, params, step) of a training workdir's best (or 'latest') checkpoint, on one device."""
    config = load_run_config(workdir)
    from ffclip_jax.mapper import DynamicMapper

    from ffclip_jax.stylegan2 import Generator

    gen_config = pretrained.read_meta(config.weights.generator)["config"]
    gen = Generator(size=gen_config["size"], style_dim=gen_config["style_dim"])
    mapper = DynamicMapper(n_latent=gen.n_latent, style_dim=gen.style_dim, num_blocks=config.model.mapper_blocks)
    manager = checkpoint_manager(workdir, config.log.keep_checkpoints, read_only=True)
    best = read_best(workdir)
    step = best["step"] if which == "best" and best and best["step"] in manager.all_steps() else manager.latest_step()
    if step is None:
        raise CheckpointError(f"{workdir}/{CHECKPOINT_DIR}: no checkpoint to export")
    target = abstract_state(mapper, make_optimizer(config, 1)[0])
    mesh = make_mesh(jax.devices()[:1])
    state, _ = restore_checkpoint(manager, step, target, state_sharding(mesh, target))
    manager.close()
    return config, mapper, jax.tree.map(np.asarray, state.params), step


def export_weights(workdir: str, out_dir: Optional[str] = None, which: str = "best") -> str:
    """Write a trained mapper as a converted FFCLIP directory (default WORKDIR/weights), the layout
    `convert_weights ffclip` produces: DIR (model 'ffclip_mapper') + DIR/generator (a copy of the generator) and
    DIR/manifest.json naming every network directory (clip, arcface, ...) and the prompt list."""
    config, mapper, params, step = restore_params(workdir, which)
    out_dir = out_dir or os.path.join(workdir, WEIGHTS_DIR)
    mapper_config = dict(n_latent=mapper.n_latent, style_dim=mapper.style_dim, num_blocks=mapper.num_blocks)
    with pretrained.atomic_output_dir(out_dir, overwrite=True) as tmp:
        pretrained.write_model_dir(tmp, "ffclip_mapper", mapper_config, {"params": params},
                                   extra={"source": os.path.abspath(workdir), "step": int(step)})
        shutil.copytree(config.weights.generator, os.path.join(tmp, "generator"))
        networks = {name: os.path.abspath(config.weights[name]) for name in NETWORK_MODEL if config.weights[name]}
        networks.update(mapper=".", generator="generator")
        write_json_atomic(os.path.join(tmp, MANIFEST), {
            "format": pretrained.FORMAT, "networks": networks, "step": int(step), "checkpoint": which,
            "prompts": config.prompts, "domain": config.domain, "workdir": os.path.abspath(workdir)})
    return out_dir

