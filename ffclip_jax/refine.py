"""Refining an inversion, the stage between e4e and the mapper (photo -> align -> e4e -> **refine** -> mapper ->
generator): W+ optimisation of the e4e code, and pivotal tuning (PTI) of the generator around a pivot code.

    result = refine_w_plus((G, gvars), (lpips_vgg, lvars), codes, targets)          # codes (N, L, D), targets
    result.codes                                                                    # (N, L, D) refined w+
    tuned = refine_pti((G, gvars), (lpips_alex, avars), result.codes, targets)      # per-image generators
    images = render_tuned(G, tuned.params, tuned.buffers, edited_codes)             # (N, [K,] H, W, 3)
    save_tuned_generator("out/tuned_0", G, tuned, 0)                                # reloads with pretrained.load

Targets are the photos at the generator's size, (N, size, size, 3) float in [-1, 1]; codes are w+ (N, n_latent,
style_dim). Each image is refined on its own (its own loss, Adam state, early stop and failure), a batch together:
one jit-compiled step inside a compiled `lax.while_loop`, run in chunks of `chunk_steps` steps between which only the
progress bar is updated. Both stages render with the generator's fixed noise buffers (noise mode 'const', as FFCLIP
and PTI's tuning do); noise is not optimised (see WPlusSettings). A non-finite loss or gradient stops that image, which
keeps its input (the e4e code; the original generator) and is named in `messages`; the others go on.

Devices: `mesh=` (a 1-D `data` mesh, `ffclip_jax.sharding`) splits the images over its devices: the k-th 1/D of them
on its k-th device, the networks copied to each, and every compiled call runs per device on that device's images
(dispatched to all devices before any result is awaited). Each device thus runs exactly the program one device runs
at that batch (the same bits; SPMD partitioning of the batched step was measured to round differently), and PTI's
per-image generator parameters live on the device of their image (`PTIResult.params`: split along `data`). The image
count must be a multiple of the device count (the Editor pads).

Defaults are upstream's, one table: `WPlusSettings` (rosinality/stylegan2-pytorch `projector.py`, the W+ projector
GANInverter's benchmark runs) and `PTISettings` (danielroich/PTI `configs/hyperparameters.py`,
`training/coaches/{base,single_id}_coach.py`, `criteria/localitly_regulizer.py`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tqdm.auto import tqdm

from jax.sharding import Mesh

from ffclip_jax.errors import InputError
from ffclip_jax.models.arcface import arcface_input
from ffclip_jax.models.lpips import LPIPS
from ffclip_jax.nn import image_ops
from ffclip_jax.sharding import batch_sharding
from ffclip_jax.weights import pretrained

Network = Tuple[Any, Any]  # (flax module, variables), what pretrained.load returns
Progress = Union[bool, Callable[[int, int], None]]

# per-image status inside the loop
RUNNING, DONE, CONVERGED, FAILED = 0, 1, 2, 3
BATCHINGS = ("auto", "vmap", "map")
LOOPS = ("auto", "compiled", "python")


@dataclasses.dataclass(frozen=True)
class WPlusSettings:
    """W+ optimisation of an e4e code (rosinality `projector.py --w_plus`; GANInverter `configs/optim` runs the same
    code for its 'optimisation in W+' row). Loss per image: lpips_weight LPIPS + l2_weight MSE (both on the images
    area-downsampled to `loss_size`) + id_weight (1 - ArcFace cosine) + latent_weight mean((w - w_e4e)^2).

    Noise: upstream also optimises the noise maps (1e5 x an autocorrelation penalty, renormalised every step). Here
    the generator's fixed buffers are kept, as FFCLIP renders and as PTI does with its pivot (PTI's projector optimises
    noise on a deep copy of G and discards it): optimised maps would be per-image state that every later stage (the
    mapper's edits, the tuned generators, saved directories) must carry, and they absorb detail that no edit moves."""
    steps: int = 1000            # projector.py --step 1000 (GANInverter configs/optim/optim_celeba-hq.yaml optim_step)
    lr: float = 0.1              # projector.py --lr 0.1 (GANInverter options/test_options.py --lr)
    lr_rampup: float = 0.05      # projector.py get_lr(rampup=0.05): linear warm-up over the first 5 % of the steps
    lr_rampdown: float = 0.25    # get_lr(rampdown=0.25): cosine ramp-down over the last 25 %
    w_noise: float = 0.05        # --noise 0.05: w + N(0, 1) x latent_std x w_noise x max(0, 1 - t / w_noise_ramp)^2
    w_noise_ramp: float = 0.75   # --noise_ramp 0.75
    latent_std_samples: int = 10000  # n_mean_latent: latent_std = sqrt(sum((w - mean)^2) / n) over mapped z
    lpips_weight: float = 1.0    # p_loss = percept(img_gen, imgs).sum(), weight 1 (LPIPS VGG: pass lpips_vgg)
    l2_weight: float = 0.0       # --mse 0 (GANInverter optim_l2_lambda 0.); PTI's tuning uses 1
    id_weight: float = 0.0       # ours: no upstream projector has an ID term (needs arcface=)
    latent_weight: float = 0.0   # ours: a pull towards the e4e code (0 = none, as upstream)
    loss_size: Optional[int] = 256  # projector.py: images above 256 are area-averaged down to 256 for the losses
    lpips_threshold: Optional[float] = None  # no early stop upstream; a value stops an image when LPIPS <= it
    b1: float = 0.9              # torch.optim.Adam defaults (projector.py passes only lr)
    b2: float = 0.999
    eps: float = 1e-8


@dataclasses.dataclass(frozen=True)
class PTISettings:
    """Pivotal tuning (PTI `SingleIDCoach.train`): the pivot fixed, every generator parameter tuned by Adam, each image
    from the original generator. Loss: l2_weight MSE(G(pivot), target) + lpips_weight LPIPS (the network passed: PTI
    uses alex) + the locality regulariser: per sample, z ~ N(0, I), w = mapping(z) truncated to `truncation` towards
    latent_avg, w_r = pivot + alpha (w - pivot) / ||w - pivot|| (norm over the whole (L, D) code),
    regularizer_l2_weight MSE + regularizer_lpips_weight LPIPS between G_orig(w_r) and G_tuned(w_r), noise 'none',
    averaged over the samples. Before each update the image stops when LPIPS <= lpips_threshold (upstream's break)."""
    steps: int = 350                  # hyperparameters.max_pti_steps
    lr: float = 3e-4                  # hyperparameters.pti_learning_rate (Adam over G.parameters())
    l2_weight: float = 1.0            # hyperparameters.pt_l2_lambda (criteria/l2_loss.py: MSELoss mean)
    lpips_weight: float = 1.0         # hyperparameters.pt_lpips_lambda; lpips_type 'alex'
    lpips_threshold: Optional[float] = 0.06  # LPIPS_value_threshold: 0.06 on master (commit f1331c4), 0.07 at first
    locality: bool = True             # use_locality_regularization: True in the first commit and the paper
    #                                   (False on master)
    regularizer_alpha: float = 30.0   # hyperparameters.regulizer_alpha
    regularizer_l2_weight: float = 0.1     # regulizer_l2_lambda
    regularizer_lpips_weight: float = 0.1  # regulizer_lpips_lambda
    regularizer_samples: int = 1      # latent_ball_num_of_samples (locality_regularization_interval 1: every step)
    truncation: float = 0.5           # localitly_regulizer.py: mapping(z, truncation_psi=0.5)
    loss_size: Optional[int] = None   # base_coach.calc_loss: MSE and LPIPS on G's full-size output
    b1: float = 0.9                   # torch.optim.Adam defaults (base_coach.configure_optimizers passes only lr)
    b2: float = 0.999
    eps: float = 1e-8


@dataclasses.dataclass
class Refinement:
    """Per image (N,): `steps` taken, `converged` (stopped at the LPIPS threshold), `failed` (a non-finite loss or
    gradient: the input kept), LPIPS and MSE (at the settings' loss size, without the W+ noise) of the input
    (`*_start`) and of the result; `messages`: one line per failed image."""
    steps: np.ndarray
    converged: np.ndarray
    failed: np.ndarray
    lpips_start: np.ndarray
    mse_start: np.ndarray
    lpips: np.ndarray
    mse: np.ndarray
    messages: Tuple[str, ...]


@dataclasses.dataclass
class WPlusResult(Refinement):
    codes: np.ndarray = None  # (N, L, D) refined w+ (the input code where failed)


@dataclasses.dataclass
class PTIResult(Refinement):
    pivots: np.ndarray = None  # (N, L, D) the codes the generators were tuned around
    params: Any = None         # the tuned generators' `params`, every leaf with a leading N axis (jax arrays)
    buffers: Any = None        # the generator's `buffers` (latent_avg, fixed noise), shared by all images

    def variables(self, index: int):
        """Image `index`'s tuned generator variables, for `G.apply`."""
        return {"params": jax.tree.map(lambda p: p[index], self.params), "buffers": self.buffers}


# ---- settings and input checks ---------------------------------------------------------------------------------

_WEIGHTS = ("lpips_weight", "l2_weight", "id_weight", "latent_weight", "regularizer_l2_weight",
            "regularizer_lpips_weight", "regularizer_alpha", "w_noise")
_FRACTIONS = ("lr_rampup", "lr_rampdown", "w_noise_ramp", "truncation")


def check_settings(settings: Union[WPlusSettings, PTISettings]) -> None:
    """Bad values -> a one-line InputError naming the field."""
    name = type(settings).__name__

    def fail(field, value, want):
        raise InputError(f"{name}.{field} must be {want}, got {value!r}")

    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    def is_real(v):
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)

    for field in dataclasses.fields(settings):
        f, v = field.name, getattr(settings, field.name)
        if f in ("steps", "latent_std_samples", "regularizer_samples"):
            if not is_int(v) or v < 1:
                fail(f, v, "an integer >= 1")
        elif f == "loss_size":
            if v is not None and (not is_int(v) or v < 1):
                fail(f, v, "None or an integer >= 1")
        elif f == "lpips_threshold":
            if v is not None and (not is_real(v) or v < 0):
                fail(f, v, "None or a finite number >= 0")
        elif f == "locality":
            if not isinstance(v, bool):
                fail(f, v, "True or False")
        elif f in ("lr", "eps"):
            if not is_real(v) or v <= 0:
                fail(f, v, "a finite number > 0")
        elif f in ("b1", "b2"):
            if not is_real(v) or not 0 <= v < 1:
                fail(f, v, "in [0, 1)")
        elif f in _FRACTIONS:
            if not is_real(v) or not 0 <= v <= 1:
                fail(f, v, "in [0, 1]")
        elif f in _WEIGHTS:
            if not is_real(v) or v < 0:
                fail(f, v, "a finite number >= 0")
    if settings.lpips_weight == 0 and settings.l2_weight == 0 and getattr(settings, "id_weight", 0) == 0:
        raise InputError(f"{name}: every image loss weight (lpips_weight, l2_weight, id_weight) is 0: nothing to fit")


def _check_codes(generator, codes, what: str):
    shape = (generator.n_latent, generator.style_dim)
    codes = jnp.asarray(codes)
    if codes.ndim != 3 or codes.shape[1:] != shape or codes.shape[0] < 1 or not jnp.issubdtype(codes.dtype,
                                                                                                 jnp.floating):
        raise InputError(f"{what}: expected float w+ codes (N, {shape[0]}, {shape[1]}) for the {generator.size} px "
                         f"generator, got {codes.dtype} {tuple(codes.shape)}")
    return codes


def _check_targets(generator, targets, n: int, what: str, dtype):
    targets = jnp.asarray(targets)
    size = generator.size
    if targets.ndim != 4 or targets.shape[1:] != (size, size, 3) or not jnp.issubdtype(targets.dtype, jnp.floating):
        raise InputError(f"targets: expected float images (N, {size}, {size}, 3) in [-1, 1] at the generator's size, "
                         f"got {targets.dtype} {tuple(targets.shape)}")
    if targets.shape[0] != n:
        raise InputError(f"{n} {what} for {targets.shape[0]} target images: give one per image")
    return targets.astype(dtype)


def _loop(loop: str) -> str:
    if loop not in LOOPS:
        raise InputError(f"loop must be one of {', '.join(LOOPS)}, got {loop!r}")
    if loop == "auto":  # XLA:CPU runs convolution gradients inside while loops without its fast kernels (README)
        return "python" if jax.default_backend() == "cpu" else "compiled"
    return loop


def _batching(batching: str) -> str:
    if batching not in BATCHINGS:
        raise InputError(f"batching must be one of {', '.join(BATCHINGS)}, got {batching!r}")
    if batching == "auto":  # vmap over per-image weights lowers to grouped convolutions, slow on XLA:CPU (README)
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return batching


# ---- schedules (upstream's, as functions of t = step / steps) ----------------------------------------------------

def lr_ramp(t, rampup: float, rampdown: float):
    """projector.py `get_lr(t, lr) / lr`: min(1, (1 - t) / rampdown) through a half cosine, times min(1, t / rampup); a
    ramp of 0 is no ramp."""
    down = jnp.where(rampdown > 0, jnp.minimum(1.0, (1.0 - t) / jnp.where(rampdown > 0, rampdown, 1.0)), 1.0)
    up = jnp.where(rampup > 0, jnp.minimum(1.0, t / jnp.where(rampup > 0, rampup, 1.0)), 1.0)
    return (0.5 - 0.5 * jnp.cos(down * jnp.pi)) * up


def w_noise_scale(t, w_noise: float, ramp: float):
    """projector.py's latent noise strength / latent_std: w_noise x max(0, 1 - t / ramp)^2 (0 when ramp is 0)."""
    return jnp.where(ramp > 0, w_noise * jnp.maximum(0.0, 1.0 - t / jnp.where(ramp > 0, ramp, 1.0)) ** 2, 0.0)


def locality_z(key, step, samples: int, style_dim: int, dtype=jnp.float32):
    """The z (samples, style_dim) the locality regulariser draws at `step` from an image's key
    (`jax.random.fold_in(jax.random.PRNGKey(seed), index)`), for reproducing a run."""
    return jax.random.normal(jax.random.fold_in(key, step), (samples, style_dim), dtype)


def image_keys(seed: int, indices):
    """One PRNG key per image: fold_in(PRNGKey(seed), index) for each of `indices` (an int n: 0 .. n-1), so an image's
    randomness does not depend on the batch it is refined in."""
    base = jax.random.PRNGKey(seed)
    indices = jnp.arange(indices) if np.ndim(indices) == 0 else jnp.asarray(np.asarray(indices), jnp.int32)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(indices)


# ---- the compiled loop -------------------------------------------------------------------------------------------

class _Program(NamedTuple):
    """The static part of a refinement (hashable: the jit cache key)."""
    stage: str                      # "w_plus" | "pti"
    generator: Any
    lpips: Any
    arcface: Any                    # None unless an ArcFace network was given (the ID term)
    loss_size: Optional[int]
    locality: bool
    samples: int
    batching: str                   # "vmap" | "map": the images in one batched program, or one at a time
    loop: str                       # "compiled" | "python": steps in a compiled while loop, or one call per step


class _State(NamedTuple):
    """One image's loop state (leading N axis when batched)."""
    step: Any      # steps taken
    status: Any    # RUNNING / DONE / CONVERGED / FAILED
    x: Any         # W+: the code (L, D); PTI: the generator params
    opt: Any       # Adam state of x
    lpips: Any     # the last measured LPIPS (for the progress bar)


_STRUCTURAL = ("loss_size", "latent_std_samples", "regularizer_samples", "lpips_threshold", "locality")


def _hyper(settings, dtype, **extra) -> Dict[str, jnp.ndarray]:
    """The numeric settings as traced scalars (changing them does not recompile); the structural ones are static."""
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name not in _STRUCTURAL}
    # no threshold: -inf, which no LPIPS (nor NaN) is <= to
    values["lpips_threshold"] = -np.inf if settings.lpips_threshold is None else settings.lpips_threshold
    values.update(extra)
    return {k: jnp.asarray(v, jnp.int32 if k == "steps" else dtype) for k, v in values.items()}


def _time(step, hp):
    """t = step / steps, upstream's schedule variable, in the settings' float dtype."""
    return step.astype(hp["lr"].dtype) / hp["steps"].astype(hp["lr"].dtype)


def _shrink(x, size: Optional[int]):
    """Area downsampling (F.interpolate(mode='area') = adaptive average pooling) to `size` when larger."""
    if size is None or x.shape[1] <= size:
        return x
    return image_ops.adaptive_avg_pool2d(x, size)


def _features(program: _Program, lvars, x):
    return program.lpips.apply(lvars, x, method=LPIPS.normalized_features)


def _lpips_to(program: _Program, lvars, x, target_features):
    """LPIPS of images x (B, h, w, 3) to precomputed target features -> (B,)."""
    return program.lpips.apply(lvars, _features(program, lvars, x), target_features, method=LPIPS.distance)


def _arcface_features(program: _Program, avars, x):
    """ArcFace's unit-length identity features of images at any size (the ID loss's pooling and crop)."""
    return program.arcface.apply(avars, arcface_input(x))


def _image_losses(program, shared, image, target):
    """(LPIPS, MSE) of one image (1, H, W, 3) against its target (`target`: the shrunk image and its features)."""
    small = _shrink(image, program.loss_size)
    lp = _lpips_to(program, shared["lpips"], small, target["features"])[0]
    return lp, jnp.mean(jnp.square(small - target["image"]))


def _render(program, gvars, codes, noise_mode="const"):
    return program.generator.apply(gvars, codes, input_is_latent=True, noise_mode=noise_mode)


def _loss(program: _Program, shared, per, x, step):
    """One image's loss at its variable x -> (loss, LPIPS). `per`: that image's constants; `shared`: the networks'
    variables and the numeric settings `hp`."""
    hp = shared["hp"]
    if program.stage == "w_plus":
        t = _time(step, hp)
        noise = jax.random.normal(jax.random.fold_in(per["key"], step), x.shape, x.dtype)
        code = x + noise * hp["latent_std"] * w_noise_scale(t, hp["w_noise"], hp["w_noise_ramp"])
        image = _render(program, shared["generator"], code[None])
    else:
        gvars = dict(shared["generator"], params=x)
        image = _render(program, gvars, per["pivot"][None])
    lp, mse = _image_losses(program, shared, image, per["target"])
    loss = hp["lpips_weight"] * lp + hp["l2_weight"] * mse
    if program.arcface is not None:
        loss = loss + hp["id_weight"] * (1.0 - jnp.sum(_arcface_features(program, shared["arcface"], image)[0]
                                                       * per["target"]["identity"]))
    if program.stage == "w_plus":  # always compiled in (a few flops), so its weight is traced like the others
        loss = loss + hp["latent_weight"] * jnp.mean(jnp.square(x - per["start"]))
    if program.stage == "pti" and program.locality:
        loss = loss + _locality(program, shared, per, x, step)
    return loss, lp


def _locality(program: _Program, shared, per, params, step):
    """PTI's locality regulariser (criteria/localitly_regulizer.py `ball_holder_loss_lazy`)."""
    hp, G = shared["hp"], program.generator
    original = shared["generator"]
    pivot = per["pivot"]
    z = locality_z(per["key"], step, program.samples, G.style_dim, pivot.dtype)
    w = G.apply(original, z, hp["truncation"], method=G.w_plus)
    direction = w - pivot[None]
    norm = jnp.sqrt(jnp.sum(jnp.square(direction), axis=(1, 2), keepdims=True))
    w_r = pivot[None] + hp["regularizer_alpha"] * direction / norm
    old = jax.lax.stop_gradient(_render(program, original, w_r, "none"))
    new = _render(program, dict(original, params=params), w_r, "none")
    old_small, new_small = _shrink(old, program.loss_size), _shrink(new, program.loss_size)
    reg_lpips = _lpips_to(program, shared["lpips"], new_small, _features(program, shared["lpips"], old_small))
    return (hp["regularizer_l2_weight"] * jnp.mean(jnp.square(old_small - new_small))
            + hp["regularizer_lpips_weight"] * jnp.mean(reg_lpips))


def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def _adam(hp):
    return optax.scale_by_adam(b1=hp["b1"], b2=hp["b2"], eps=hp["eps"])


def _step(program: _Program, shared, per, s: _State) -> _State:
    """One optimisation step of one image: loss and gradient, upstream's early stop (before the update, on the
    current LPIPS), Adam with the scheduled learning rate; a non-finite loss or gradient marks the image FAILED."""
    hp = shared["hp"]
    (loss, lp), grads = jax.value_and_grad(lambda x: _loss(program, shared, per, x, s.step), has_aux=True)(s.x)
    finite = jnp.isfinite(loss) & _all_finite(grads)
    reached = lp <= hp["lpips_threshold"]
    lr = hp["lr"]
    if program.stage == "w_plus":
        lr = lr * lr_ramp(_time(s.step, hp), hp["lr_rampup"], hp["lr_rampdown"])
    updates, opt = _adam(hp).update(grads, s.opt)
    x = jax.tree.map(lambda p, u: p - lr * u, s.x, updates)
    active = s.status == RUNNING  # a stopped image stays as it is
    move = active & finite & ~reached
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(move, a, b), new, old)
    step = s.step + move.astype(s.step.dtype)
    status = jnp.where(~finite, FAILED, jnp.where(reached, CONVERGED, jnp.where(step >= hp["steps"], DONE, RUNNING)))
    status = jnp.where(active, status, s.status).astype(s.status.dtype)
    return _State(step, status, keep(x, s.x), keep(opt, s.opt), jnp.where(active, lp, s.lpips))


def _per_image(program: _Program, fn, per, shared, *rest):
    """fn(per_image, shared, *rest_per_image) over the images: vmap, or lax.map (one image at a time)."""
    if program.batching == "vmap":
        return jax.vmap(fn, in_axes=(0, None) + (0,) * len(rest))(per, shared, *rest)
    return jax.lax.map(lambda xs: fn(xs[0], shared, *xs[1]), (per, rest))


def _chunk(program: _Program, state: _State, end, per, shared) -> _State:
    """Every running image steps until `end` steps (or its stop): a while loop per image."""
    def one(per_i, shared, s):
        cond = lambda s: (s.status == RUNNING) & (s.step < end)
        return jax.lax.while_loop(cond, lambda s: _step(program, shared, per_i, s), s)
    return _per_image(program, one, per, shared, state)


_chunk_jit = jax.jit(_chunk, static_argnums=0, donate_argnums=1)
# the python loop's units: one step of every image (vmap) or of one image
_step_all_jit = jax.jit(lambda program, state, per, shared: jax.vmap(
    lambda p, s: _step(program, shared, p, s))(per, state), static_argnums=0, donate_argnums=1)
_step_one_jit = jax.jit(lambda program, state, per, shared: _step(program, shared, per, state), static_argnums=0,
                        donate_argnums=1)


def _evaluate(program: _Program, x, per, shared):
    """(LPIPS, MSE) of every image at its variable x (no W+ noise)."""
    def one(per_i, shared, x_i):
        if program.stage == "w_plus":
            image = _render(program, shared["generator"], x_i[None])
        else:
            image = _render(program, dict(shared["generator"], params=x_i), per_i["pivot"][None])
        return _image_losses(program, shared, image, per_i["target"])
    return _per_image(program, one, per, shared, x)


_evaluate_jit = jax.jit(lambda program, *args: _evaluate(program, *args), static_argnums=0)


def _evaluated(program: _Program, x, per, copies, mesh):
    """_evaluate per device, compiled once whatever the loop and the regulariser (they do not enter it)."""
    program = program._replace(loop="-", locality=False, samples=1)
    return _per_device(mesh, lambda xp, shared: _evaluate_jit(program, *xp, shared), (x, per), copies)


def _target_constants(program: _Program, shared, targets):
    """Per image: the shrunk target, its LPIPS features (and ArcFace features), computed once."""
    small = _shrink(targets, program.loss_size)
    out = {"image": small[:, None], "features": jax.tree.map(lambda f: f[:, None], _features(program, shared["lpips"],
                                                                                             small))}
    if program.arcface is not None:
        out["identity"] = _arcface_features(program, shared["arcface"], targets)
    return out


_target_constants_jit = jax.jit(_target_constants, static_argnums=0)


def _init_state(program: _Program, x, hp) -> _State:
    n = jax.tree.leaves(x)[0].shape[0]
    opt = jax.vmap(_adam(hp).init)(x)
    return _State(jnp.zeros((n,), jnp.int32), jnp.zeros((n,), jnp.int32), x, opt, jnp.zeros((n,), hp["lr"].dtype))


def _progress_reporter(progress: Progress, total: int, desc: str):
    """A callable(done) from progress=True (a tqdm bar), False (nothing) or a callable(done, total)."""
    if callable(progress):
        return lambda done, lpips=None: progress(done, total), lambda: None
    if not progress:
        return lambda done, lpips=None: None, lambda: None
    bar = tqdm(total=total, desc=desc, unit="step", leave=False)

    def report(done, lpips=None):
        bar.update(done - bar.n)
        if lpips is not None:
            bar.set_postfix(lpips=f"{lpips:.4f}", refresh=False)
    return report, bar.close


# ---- devices: units of images, each on one device --------------------------------------------------------------

class _Unit(NamedTuple):
    """Images [start, end) of a batch on `device` (None: wherever they are, no mesh); single: one image, unbatched."""
    device: Any
    start: int
    end: int
    single: bool


def _units(mesh: Optional[Mesh], n: int, single: bool):
    """The batch's units: each image alone (single) or each device's share (the whole batch without a mesh)."""
    devices = [None] if mesh is None else list(mesh.devices.flat)
    per = n // len(devices)
    if single:
        return [_Unit(devices[i // per], i, i + 1, True) for i in range(n)]
    return [_Unit(d, k * per, (k + 1) * per, False) for k, d in enumerate(devices)]


def _split(tree, units):
    """A batched tree's part of each unit, on the unit's device."""
    out = []
    for u in units:
        if u.device is None and not u.single:
            out.append(tree)  # the whole batch, as it is
            continue
        part = jax.tree.map(lambda a: a[u.start] if u.single else a[u.start:u.end], tree)
        out.append(part if u.device is None else jax.device_put(part, u.device))
    return out


def _join(parts, units, mesh: Optional[Mesh]):
    """The inverse of `_split`: one batched tree, split along the mesh's `data` (each device's part where it is)."""
    if units[0].single:  # stack each device's images
        stack = lambda *xs: jnp.stack(xs)
        per = len(parts) // (1 if mesh is None else mesh.size)
        parts = [jax.tree.map(stack, *parts[k:k + per]) for k in range(0, len(parts), per)]
    if mesh is None:
        return parts[0]
    n = units[-1].end
    return jax.tree.map(lambda *xs: jax.make_array_from_single_device_arrays(
        (n,) + xs[0].shape[1:], batch_sharding(mesh), list(xs)), *parts)


def _copies(mesh: Optional[Mesh], shared):
    """{device: shared tree there} for the mesh's devices ({None: shared} without a mesh)."""
    if mesh is None:
        return {None: shared}
    return {d: jax.device_put(shared, d) for d in mesh.devices.flat}


def _per_device(mesh: Optional[Mesh], fn, images, copies):
    """fn(images part, shared) on each device's share of the batched tree `images`, joined (fn(images, shared)
    without a mesh)."""
    units = _units(mesh, jax.tree.leaves(images)[0].shape[0], False)
    return _join([fn(part, copies[u.device]) for part, u in zip(_split(images, units), units)], units, mesh)


def _advance(program: _Program, states, done: int, end: int, pers, shareds):
    """Steps `done` .. `end` of every running image, unit by unit (`_units`: each call dispatched before any is
    awaited). compiled: one call per unit (a while loop per image); python: one call per step (of a unit's images:
    vmap; of each running image: map, one image per unit)."""
    units = list(zip(pers, shareds))
    if program.loop == "compiled":
        return [_chunk_jit(program, s, jnp.int32(end), p, sh) for s, (p, sh) in zip(states, units)]
    for _ in range(done, end):
        if program.batching == "vmap":
            states = [_step_all_jit(program, s, p, sh) for s, (p, sh) in zip(states, units)]
        else:
            states = [_step_one_jit(program, s, p, sh) if int(s.status) == RUNNING else s
                      for s, (p, sh) in zip(states, units)]
    return states


def _run(program: _Program, state: _State, per, copies, mesh, steps: int, chunk_steps: int, progress: Progress,
         desc: str) -> _State:
    """The Python side: the batch split into units (each image alone for the python loop with map, else each
    device's share), the steps in chunks of `chunk_steps` (`_advance`), the progress bar between them."""
    units = _units(mesh, state.step.shape[0], program.loop == "python" and program.batching == "map")
    states, pers, shareds = _split(state, units), _split(per, units), [copies[u.device] for u in units]
    report, close = _progress_reporter(progress, steps, desc)
    try:
        done = 0
        while done < steps:
            end = min(steps, done + chunk_steps)
            states = _advance(program, states, done, end, pers, shareds)
            done = end
            status = np.concatenate([np.atleast_1d(np.asarray(s.status)) for s in states])
            lpips = np.concatenate([np.atleast_1d(np.asarray(s.lpips)) for s in states])
            running = status == RUNNING
            report(done if running.any() else steps, float(np.mean(lpips)))
            if not running.any():
                break
    finally:
        close()
    return _join(states, units, mesh)


def _failure_messages(stage: str, status, steps, lpips, mse, kept: str, indices):
    msgs = []
    for i in np.flatnonzero(status == FAILED):
        msgs.append(f"{stage} image {indices[i]}: non-finite loss or gradient at step {int(steps[i])}; kept {kept}")
    for i in np.flatnonzero((status != FAILED) & ~(np.isfinite(lpips) & np.isfinite(mse))):
        msgs.append(f"{stage} image {indices[i]}: non-finite result after {int(steps[i])} steps; kept {kept}")
    for m in msgs:
        warnings.warn(m, RuntimeWarning, stacklevel=3)
    return tuple(msgs)


def _summary(status, steps, start, final, messages) -> Dict[str, Any]:
    failed = (status == FAILED) | ~(np.isfinite(final[0]) & np.isfinite(final[1]))
    return dict(steps=steps.astype(np.int32), converged=(status == CONVERGED) & ~failed,
                failed=failed, lpips_start=start[0], mse_start=start[1],
                lpips=np.where(failed, start[0], final[0]), mse=np.where(failed, start[1], final[1]),
                messages=messages)


def _check_call(generator: Network, lpips: Network, arcface: Optional[Network], chunk_steps) -> None:
    if not isinstance(chunk_steps, (int, np.integer)) or isinstance(chunk_steps, bool) or chunk_steps < 1:
        raise InputError(f"chunk_steps must be an integer >= 1, got {chunk_steps!r}")
    for name, net in (("generator", generator), ("lpips", lpips), ("arcface", arcface)):
        if net is not None and (not isinstance(net, (tuple, list)) or len(net) != 2):
            raise InputError(f"{name}: expected a (module, variables) pair as pretrained.load returns, got "
                             f"{type(net).__name__}")
    if not isinstance(lpips[0], LPIPS):
        raise InputError(f"lpips: expected an LPIPS network, got {type(lpips[0]).__name__}")


def _mesh_for(mesh: Optional[Mesh], n: int) -> Optional[Mesh]:
    """The mesh to split n images over (None: one device, or none given); n must be a multiple of its devices."""
    if mesh is None or mesh.size == 1:
        return None
    if n % mesh.size:
        raise InputError(f"{n} images do not split evenly over {mesh.size} devices: give a multiple of {mesh.size} "
                         f"(the Editor pads its batches)")
    return mesh


def _indices(indices, n: int) -> np.ndarray:
    if indices is None:
        return np.arange(n)
    indices = np.asarray(indices)
    if indices.shape != (n,) or not np.issubdtype(indices.dtype, np.integer):
        raise InputError(f"indices: expected {n} integers (one per image), got {indices.dtype} {indices.shape}")
    return indices


# ---- W+ ----------------------------------------------------------------------------------------------------------

def refine_w_plus(generator: Network, lpips: Network, codes, targets, settings: WPlusSettings = WPlusSettings(), *,
                  arcface: Optional[Network] = None, seed: int = 0, progress: Progress = True,
                  chunk_steps: int = 10, loop: str = "auto", mesh: Optional[Mesh] = None,
                  indices=None) -> WPlusResult:
    """Adam on w+ from `codes` (N, L, D) (the e4e codes) towards `targets` (N, size, size, 3) in [-1, 1].
    generator, lpips (VGG for upstream's loss), arcface: (module, variables) pairs; give arcface only for the ID term
    (it is then computed every step, whatever id_weight). progress: True (tqdm), False, or callable(done_steps,
    total_steps), called every `chunk_steps` steps. loop: 'compiled' (the steps of a chunk in one compiled while
    loop), 'python' (one compiled call per step), 'auto' (python on CPU, compiled on GPU/TPU). mesh: the images split
    over its devices (module docstring); indices: (N,) ints naming the images (their random keys
    `image_keys(seed, indices)` and messages; default 0 .. N-1). Returns WPlusResult (codes (N, L, D), per-image
    steps and losses)."""
    check_settings(settings)
    _check_call(generator, lpips, arcface, chunk_steps)
    G, gvars = generator
    codes = _check_codes(G, codes, "codes")
    targets = _check_targets(G, targets, codes.shape[0], "codes", codes.dtype)
    if settings.id_weight > 0 and arcface is None:
        raise InputError("WPlusSettings.id_weight > 0 needs an ArcFace network: pass arcface=(module, variables)")
    dtype = codes.dtype
    mesh, indices = _mesh_for(mesh, codes.shape[0]), _indices(indices, codes.shape[0])
    program = _Program("w_plus", G, lpips[0], None if arcface is None else arcface[0], settings.loss_size, False, 1,
                       "vmap", _loop(loop))
    std_key = jax.random.split(jax.random.PRNGKey(seed))[1]  # apart from the images' keys (fold_in of the seed)
    latent_std = float(_latent_std(G, gvars, settings.latent_std_samples, std_key)) if settings.w_noise > 0 else 0.0
    shared = dict(generator=gvars, lpips=lpips[1], arcface=arcface[1] if program.arcface is not None else None,
                  hp=_hyper(settings, dtype, latent_std=latent_std))
    copies = _copies(mesh, shared)
    per = dict(key=image_keys(seed, indices), start=codes,
               target=_per_device(mesh, lambda t, sh: _target_constants_jit(program, sh, t), targets, copies))
    start = [np.asarray(a) for a in _evaluated(program, codes, per, copies, mesh)]
    state = _run(program, _init_state(program, jnp.array(codes), shared["hp"]), per, copies, mesh, settings.steps,
                 chunk_steps, progress, "W+ refinement")
    final = [np.asarray(a) for a in _evaluated(program, state.x, per, copies, mesh)]
    status, steps = np.asarray(state.status), np.asarray(state.step)
    messages = _failure_messages("W+", status, steps, *final, "the input (e4e) code", indices)
    summary = _summary(status, steps, start, final, messages)
    refined = np.where(summary["failed"][:, None, None], np.asarray(codes), np.asarray(state.x))
    return WPlusResult(codes=refined, **summary)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _latent_std(G, gvars, samples: int, key):
    """projector.py: sqrt(sum((w - mean(w))^2) / n) over `samples` mapped z ~ N(0, I)."""
    w = G.apply(gvars, jax.random.normal(key, (samples, G.style_dim)), method=G.mapping)
    return jnp.sqrt(jnp.sum(jnp.square(w - w.mean(0))) / samples)


# ---- PTI ---------------------------------------------------------------------------------------------------------

def refine_pti(generator: Network, lpips: Network, pivots, targets, settings: PTISettings = PTISettings(), *,
               seed: int = 0, progress: Progress = True, chunk_steps: int = 10, batching: str = "auto",
               loop: str = "auto", mesh: Optional[Mesh] = None, indices=None) -> PTIResult:
    """Pivotal tuning: per image, the generator's params tuned from `generator`'s around the fixed pivot code
    (N, L, D) towards `targets` (N, size, size, 3) in [-1, 1]. lpips: LPIPS(alex) for upstream's loss. batching:
    'vmap' (per-image weights batched: grouped convolutions), 'map' (one image at a time), 'auto' (map on CPU, vmap
    on GPU/TPU). progress, chunk_steps, loop, mesh, indices: as refine_w_plus. Returns PTIResult (stacked per-image
    params, on their images' devices with a mesh; shared buffers, pivots, per-image steps and losses)."""
    check_settings(settings)
    _check_call(generator, lpips, None, chunk_steps)
    G, gvars = generator
    pivots = _check_codes(G, pivots, "pivots")
    targets = _check_targets(G, targets, pivots.shape[0], "pivots", pivots.dtype)
    program = _Program("pti", G, lpips[0], None, settings.loss_size, settings.locality, settings.regularizer_samples,
                       _batching(batching), _loop(loop))
    n = pivots.shape[0]
    mesh, indices = _mesh_for(mesh, n), _indices(indices, n)
    shared = dict(generator=gvars, lpips=lpips[1], arcface=None, hp=_hyper(settings, pivots.dtype))
    copies = _copies(mesh, shared)
    per = dict(key=image_keys(seed, indices), pivot=pivots,
               target=_per_device(mesh, lambda t, sh: _target_constants_jit(program, sh, t), targets, copies))
    params = _per_device(mesh, lambda _, sh: _stacked(sh["generator"]["params"], n // (mesh.size if mesh else 1)),
                         pivots, copies)
    start = [np.asarray(a) for a in _evaluated(program, params, per, copies, mesh)]
    state = _run(program, _init_state(program, params, shared["hp"]), per, copies, mesh, settings.steps,
                 chunk_steps, progress, "PTI")
    final = [np.asarray(a) for a in _evaluated(program, state.x, per, copies, mesh)]
    status, steps = np.asarray(state.status), np.asarray(state.step)
    messages = _failure_messages("PTI", status, steps, *final, "the original generator", indices)
    summary = _summary(status, steps, start, final, messages)
    failed = jnp.asarray(summary["failed"])
    tuned = _per_device(mesh, lambda xf, sh: _restore_failed(xf[0], sh["generator"]["params"], xf[1]),
                        (state.x, failed), copies)
    return PTIResult(pivots=np.asarray(pivots), params=tuned, buffers=gvars.get("buffers", {}), **summary)


@functools.partial(jax.jit, static_argnums=1)
def _stacked(params, n: int):
    """n copies of every parameter (a leading N axis): each image's generator starts as the original."""
    return jax.tree.map(lambda p: jnp.broadcast_to(p, (n,) + p.shape) + jnp.zeros((), p.dtype), params)


@jax.jit
def _restore_failed(tuned, original, failed):
    """The original parameters for the failed images."""
    return jax.tree.map(lambda t, o: jnp.where(failed.reshape((-1,) + (1,) * o.ndim), o[None], t), tuned, original)


# ---- the tuned generators: rendering and saving ----------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _render_rows(generator, params, buffers, codes, batching: str, noise_mode: str):
    """Each row group of codes (N, K, L, D) on its image's generator (vmap or lax.map over the images)."""
    def one(row):
        p, c = row
        return generator.apply({"params": p, "buffers": buffers}, c, input_is_latent=True, noise_mode=noise_mode)
    if batching == "vmap":
        return jax.vmap(lambda p, c: one((p, c)))(params, codes)
    return jax.lax.map(one, (params, codes))


def render_tuned(generator, params, buffers, codes, *, batching: str = "auto", noise_mode: str = "const",
                 mesh: Optional[Mesh] = None):
    """Row i of `codes` rendered with image i's tuned generator: params (a PTIResult's, leading N axis), codes
    (N, L, D) or (N, K, L, D) -> images (N, H, W, 3) or (N, K, H, W, 3) float32 (jax array). batching as refine_pti;
    mesh: the images split over its devices (N a multiple of them), each rendered on the device of its share."""
    codes = jnp.asarray(codes)
    single = codes.ndim == 3
    rows = codes[:, None] if single else codes
    n = jax.tree.leaves(params)[0].shape[0]
    shape = (generator.n_latent, generator.style_dim)
    if rows.ndim != 4 or rows.shape[0] != n or rows.shape[2:] != shape:
        raise InputError(f"codes: expected (N, {shape[0]}, {shape[1]}) or (N, K, {shape[0]}, {shape[1]}) with N = {n} "
                         f"(one row per tuned generator), got {tuple(codes.shape)}")
    mesh, batching = _mesh_for(mesh, n), _batching(batching)
    images = _per_device(mesh, lambda pr, b: _render_rows(generator, pr[0], b, pr[1], batching, noise_mode),
                         (params, rows), _copies(mesh, buffers))
    return images[:, 0] if single else images


GENERATOR_CONFIG = ("size", "style_dim", "n_mlp", "channel_multiplier", "blur_kernel", "lr_mlp", "channel_max")


def generator_config(generator) -> Dict[str, Any]:
    """A Generator's architecture fields, as a converted directory's model.json stores them."""
    return {f: list(getattr(generator, f)) if f == "blur_kernel" else getattr(generator, f) for f in GENERATOR_CONFIG}


def save_tuned_generator(directory: str, generator, result: PTIResult, index: int, *, overwrite: bool = False,
                         extra: Optional[Dict[str, Any]] = None) -> None:
    """Image `index`'s tuned generator as a converted generator directory (`pretrained.load(directory)` ->
    (Generator, variables) rendering exactly the same images), written atomically."""
    n = len(result.steps)
    if not isinstance(index, (int, np.integer)) or not 0 <= index < n:
        raise InputError(f"index must be an image index in [0, {n}), got {index!r}")
    facts = dict(steps=int(result.steps[index]), lpips=float(result.lpips[index]), mse=float(result.mse[index]),
                 failed=bool(result.failed[index]))
    save_generator(directory, generator, result.variables(index), extra=dict(facts, **(extra or {})),
                   overwrite=overwrite)


def save_generator(directory: str, generator, variables, *, extra: Optional[Dict[str, Any]] = None,
                   overwrite: bool = False) -> None:
    """Generator variables (a tuned generator's: {"params", "buffers"}) as a converted generator directory, written
    atomically; `extra` (JSON) joins its meta."""
    pretrained.save(directory, "stylegan2", generator_config(generator), jax.device_get(variables),
                    extra=dict(source="ffclip_jax.refine (PTI)", **(extra or {})), overwrite=overwrite)
