"""Refining inversions (`ffclip_jax.refine`): W+ optimisation and pivotal tuning on a tiny generator (32 px, 64-d
styles, 32 channels) built in PyTorch (tests/torch_ref/stylegan2.py) and converted, with a random LPIPS(alex).

One batch of three images serves most tests (each stage compiles once for it): 0 a target rendered from a known w*,
refined from a perturbed code; 1 skimage's astronaut (outside the generator's range) from the mean latent; 2 a target
with a NaN. Also: one step of each stage against the PyTorch reference loop (tests/torch_ref/refine.py: our torch
generator + torch LPIPS + torch.optim.Adam), a tuned generator saved and reloaded, upstream's schedules, bad settings.
"""
import dataclasses
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

from convert_weights.lpips import convert_state_dicts
from convert_weights.mapping import apply_rules
from convert_weights.stylegan2 import IGNORE, RULES, convert_state_dict
from ffclip_jax import refine
from ffclip_jax.errors import InputError
from ffclip_jax.models.lpips import LPIPS
from ffclip_jax.models.stylegan2 import Generator
from ffclip_jax.weights import pretrained
from parity import nchw
from torch_ref import lpips as torch_lpips
from torch_ref import refine as torch_refine
from torch_ref.stylegan2 import Generator as TorchGenerator, randomize_

SIZE, STYLE_DIM, CHANNELS = 32, 64, 32
N_LATENT = 8
EPS32 = float(np.finfo(np.float32).eps)
# float32 parity, as tests/test_lpips.py: our error against PyTorch's float64 truth within MARGIN x PyTorch's own
# float32 error (measured in the same test), float32 eps (relative to the largest entry) as a floor
MARGIN = 4.0
EPS_RATIO = float(np.finfo(np.float64).eps / np.finfo(np.float32).eps)
# the W+ run of the shared batch: from a code 0.5 per entry away from w*, Adam at PTI's projector rate (0.01; upstream
# W+ default 0.1 is sized for a start at the mean latent and wanders along the directions the image ignores)
W_PLUS = refine.WPlusSettings(steps=100, lr=0.01, l2_weight=1.0)
PTI = refine.PTISettings(steps=60)


@pytest.fixture(scope="module")
def nets():
    """torch generator + its latent_avg, torch LPIPS(alex), and the converted (module, variables) pairs."""
    torch.manual_seed(0)
    tg = randomize_(TorchGenerator(SIZE, STYLE_DIM, n_mlp=2, channel_multiplier=1, channel_max=CHANNELS), seed=0)
    tg = tg.eval().requires_grad_(False)
    latent_avg = torch.randn(STYLE_DIM) * 0.1
    config, gvars = convert_state_dict({k: v.numpy() for k, v in tg.state_dict().items()}, latent_avg.numpy(),
                                       overrides=dict(channel_max=CHANNELS))
    G = Generator(**dict(config, blur_kernel=tuple(config["blur_kernel"])))
    tl = torch_lpips.build("alex", seed=0)
    _, lvars = convert_state_dicts({k: v.numpy() for k, v in tl.backbone_state_dict(
        torch_lpips.small_classifier("alex")).items()}, {k: v.numpy() for k, v in tl.heads_state_dict().items()},
        "alex")
    return dict(tg=tg, latent_avg=latent_avg, tl=tl, G=G, gvars=jax.device_put(gvars), L=LPIPS("alex"),
                lvars=jax.device_put(lvars))


def astronaut(size=SIZE):
    """skimage's astronaut, area-resized to `size`, in [-1, 1]."""
    import skimage.data

    image = Image.fromarray(skimage.data.astronaut()).resize((size, size), Image.BOX)
    return np.asarray(image, np.float32) / 127.5 - 1


@pytest.fixture(scope="module")
def batch(nets):
    """(w*, start codes (3, L, D), targets (3, H, W, 3)) for the three images of the module docstring."""
    G, gvars = nets["G"], nets["gvars"]
    rs = np.random.RandomState(0)
    z = jnp.asarray(rs.randn(1, STYLE_DIM), jnp.float32)
    image, w_star = jax.jit(lambda v, z: G.apply(v, z, truncation=0.7, return_latents=True))(gvars, z)
    w_star = np.asarray(w_star)
    mean = np.broadcast_to(np.asarray(gvars["buffers"]["latent_avg"]), (1, N_LATENT, STYLE_DIM))
    start = np.concatenate([w_star + 0.5 * rs.randn(*w_star.shape), mean, mean]).astype(np.float32)
    photo = astronaut()
    targets = np.stack([np.asarray(image)[0], photo, photo])
    targets[2, 5, 7, 1] = np.nan
    return w_star[0], start, targets


def image_loss(result, i):
    return float(result.lpips[i] + result.mse[i])


@pytest.fixture(scope="module")
def w_plus_run(nets, batch):
    _, start, targets = batch
    calls = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = refine.refine_w_plus((nets["G"], nets["gvars"]), (nets["L"], nets["lvars"]), start, targets, W_PLUS,
                                      progress=lambda done, total: calls.append((done, total)))
    return result, calls, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.fixture(scope="module")
def pti_run(nets, batch, w_plus_run):
    """PTI around the W+ codes (PTI's procedure: an inversion, then tuning around it)."""
    _, _, targets = batch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = refine.refine_pti((nets["G"], nets["gvars"]), (nets["L"], nets["lvars"]), w_plus_run[0].codes,
                                   targets, PTI, progress=False)
    return result, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_w_plus_recovers_a_known_code(w_plus_run, batch):
    """Image 0: LPIPS + MSE falls at least 10x; the code moves towards w*: closer to it, and the displacement's cosine
    with w* - w0 is above 3 / sqrt(L D), three standard deviations of the cosine of a direction unrelated to w* (the
    image ignores most directions of w+, so the distance itself shrinks only a little: measured 11.2 -> 10.9)."""
    result, _, _ = w_plus_run
    w_star, start, _ = batch
    before, after = float(result.lpips_start[0] + result.mse_start[0]), image_loss(result, 0)
    moved, wanted = result.codes[0] - start[0], w_star - start[0]
    cosine = float(np.sum(moved * wanted) / np.linalg.norm(moved) / np.linalg.norm(wanted))
    print(f"LPIPS+MSE {before:.4f} -> {after:.4f} ({before / after:.1f}x); |w - w*| {np.linalg.norm(wanted):.3f} -> "
          f"{np.linalg.norm(result.codes[0] - w_star):.3f}; cosine {cosine:.3f}")
    assert after <= before / 10
    assert np.linalg.norm(result.codes[0] - w_star) < np.linalg.norm(wanted)
    assert cosine > 3 / math.sqrt(N_LATENT * STYLE_DIM)
    assert result.steps[0] == W_PLUS.steps and not result.converged[0] and not result.failed[0]
    assert result.codes.shape == start.shape and result.codes.dtype == np.float32


def test_nan_image_keeps_its_input(w_plus_run, pti_run, batch, nets):
    """Image 2 (a NaN in its target) stops at step 0 with a message and keeps the e4e code / the original
    generator exactly; images 0 and 1 refine as if it were not there."""
    _, start, _ = batch
    result, _, warned = w_plus_run
    assert list(result.failed) == [False, False, True]
    np.testing.assert_array_equal(result.codes[2], start[2])
    assert len(result.messages) == 1 and "image 2" in result.messages[0] and "\n" not in result.messages[0]
    assert warned == list(result.messages)
    assert image_loss(result, 1) < float(result.lpips_start[1] + result.mse_start[1])
    tuned, warned = pti_run
    assert list(tuned.failed) == [False, False, True] and warned == list(tuned.messages)
    assert "image 2" in tuned.messages[0] and "original generator" in tuned.messages[0]
    for ours, original in zip(jax.tree.leaves(tuned.params), jax.tree.leaves(nets["gvars"]["params"])):
        np.testing.assert_array_equal(np.asarray(ours[2]), np.asarray(original))


def test_progress_in_chunks(w_plus_run):
    """The compiled loop returns to Python every chunk_steps (10) steps, and only there."""
    _, calls, _ = w_plus_run
    assert calls == [(k, W_PLUS.steps) for k in range(10, W_PLUS.steps + 1, 10)]


def test_pti_beats_w_plus_outside_the_range(w_plus_run, pti_run, nets):
    """Image 1 (the astronaut, which the generator cannot draw): tuning the generator around the W+ code
    reconstructs it better than the W+ code alone. Image 0 is already below PTI's LPIPS threshold after W+: it stops
    before the first update (upstream's break), its generator unchanged."""
    w_plus, _, _ = w_plus_run
    tuned, _ = pti_run
    print(f"astronaut LPIPS+MSE: W+ {image_loss(w_plus, 1):.4f}, PTI {image_loss(tuned, 1):.4f} "
          f"({tuned.steps[1]} steps)")
    assert image_loss(tuned, 1) < image_loss(w_plus, 1)
    np.testing.assert_allclose(tuned.lpips_start[:2], w_plus.lpips[:2], rtol=1e-5)  # the same images measured
    assert tuned.converged[0] and tuned.steps[0] == 0 and tuned.lpips[0] <= PTI.lpips_threshold
    assert not tuned.converged[1] and tuned.steps[1] == PTI.steps
    for ours, original in zip(jax.tree.leaves(tuned.params), jax.tree.leaves(nets["gvars"]["params"])):
        np.testing.assert_array_equal(np.asarray(ours[0]), np.asarray(original))
    np.testing.assert_array_equal(tuned.pivots, w_plus.codes)


def test_tuned_generator_saved_and_reloaded(pti_run, nets, tmp_path):
    """A tuned generator written as a converted directory reloads (pretrained.load) and renders bit-identically
    what its variables render through the same program; render_tuned (the per-image batched renderer) agrees with
    it within 5e-5 / 5e-6 (max / mean), the bound of two float32 evaluations of this generator in
    tests/test_stylegan2.py."""
    tuned, _ = pti_run
    G = nets["G"]
    out = tmp_path / "tuned_1"
    refine.save_tuned_generator(str(out), G, tuned, 1)
    module, variables = pretrained.load(str(out))
    assert module == G and pretrained.read_meta(str(out))["extra"]["steps"] == int(tuned.steps[1])
    render = jax.jit(lambda v, w: G.apply(v, w, input_is_latent=True))
    pivot = tuned.pivots[1:2]
    np.testing.assert_array_equal(np.asarray(render(variables, pivot)), np.asarray(render(tuned.variables(1), pivot)))
    edits = np.stack([tuned.pivots, tuned.pivots[::-1]], 1)  # (N, K, L, D): K codes per tuned generator
    rows = np.asarray(refine.render_tuned(G, tuned.params, tuned.buffers, edits))
    assert rows.shape == (3, 2, SIZE, SIZE, 3)
    for i in range(2):
        d = np.abs(rows[i, :1] - np.asarray(render(tuned.variables(i), tuned.pivots[i:i + 1])))
        assert d.max() <= 5e-5 and d.mean() <= 5e-6, (i, d.max(), d.mean())
    with pytest.raises(InputError, match="one row per tuned generator"):
        refine.render_tuned(G, tuned.params, tuned.buffers, tuned.pivots[:2])
    with pytest.raises(InputError, match=r"index must be an image index in \[0, 3\)"):
        refine.save_tuned_generator(str(tmp_path / "bad"), G, tuned, 3)


# ---- one step against PyTorch -------------------------------------------------------------------------------------

def adam_step_bound(truth_grad, bound, lr, eps, truth_after, dtype_eps):
    """Per element: how far a first Adam step (update lr g / (|g| + eps) after bias correction) may land from the
    truth's, for a gradient within `bound` of the truth gradient g*: lr sup_{|d| <= bound} |f(g* + d) - f(g*)| with
    f(g) = g / (|g| + eps) (monotone, so the sup is at g* +- bound), plus the rounding of p - lr u and of the bias
    corrections (4 roundings of the update)."""
    f = lambda g: g / (np.abs(g) + eps)
    reach = np.maximum(np.abs(f(truth_grad + bound) - f(truth_grad)), np.abs(f(truth_grad - bound) - f(truth_grad)))
    return lr * reach + dtype_eps * (np.abs(truth_after) + 4 * lr)


def check_step(name, ours, torch32, truth, grad32, grad_truth, lr, ours_dtype, eps=1e-8):
    """ours / torch32 / truth: parameters after one step; grad32 / grad_truth: PyTorch's float32 and float64
    gradients. PyTorch's float32 step must lie within the Adam reach of its own per-element gradient error (the
    bound's derivation checked on the other framework); ours, in float32, within the reach of MARGIN x PyTorch's
    float32 gradient error (max over the array; float32 eps of the largest gradient as a floor), in float64 within
    the reach of MARGIN x EPS_RATIO x (that bound + PyTorch's float32 error)."""
    scale = np.abs(grad_truth).max()
    torch_err = np.abs(grad32 - grad_truth)
    bound = MARGIN * max(torch_err.max(), EPS32 * scale)
    assert np.all(np.abs(torch32 - truth) <= adam_step_bound(grad_truth, torch_err, lr, eps, truth, EPS32)), name
    if ours_dtype == np.float64:
        bound = MARGIN * EPS_RATIO * (bound + torch_err.max())
    tol = adam_step_bound(grad_truth, bound, lr, eps, truth, float(np.finfo(ours_dtype).eps))
    err = np.abs(ours - truth)
    assert np.all(err <= tol), (name, err.max(), np.argmax(err - tol))
    decided = np.abs(grad_truth) > bound  # elements whose update direction no such error can flip
    print(f"{name} ({np.dtype(ours_dtype).name}): step max {err.max():.2g} mean {err.mean():.2g} (PyTorch float32 "
          f"max {np.abs(torch32 - truth).max():.2g}); gradient error bound {bound / max(scale, 1e-300):.2g} of the "
          f"largest; {decided.mean():.1%} of the updates beyond its reach")


def parity_batch(batch):
    """The shared batch with the NaN image replaced by the astronaut mirrored."""
    _, start, targets = batch
    targets = targets.copy()
    targets[2] = targets[1][:, ::-1]
    return start, targets


def run_ours(fn, nets, start, targets, settings, dtype, **kwargs):
    """A refinement in `dtype` (float64: networks, inputs and arithmetic in float64)."""
    cast = lambda tree: jax.tree.map(lambda a: np.asarray(a, dtype), tree)
    with jax.enable_x64(dtype == np.float64):
        return fn((nets["G"], cast(nets["gvars"])), (nets["L"], cast(nets["lvars"])), start.astype(dtype),
                  targets.astype(dtype), settings, progress=False, **kwargs)


def w_plus_step_parity(nets, start, targets, settings, dtype, loop="auto"):
    ours = run_ours(refine.refine_w_plus, nets, start, targets, settings, dtype, loop=loop)
    assert not ours.failed.any() and np.all(ours.steps == 1) and ours.codes.dtype == dtype

    def torch_step(torch_dtype):
        g, tl = nets["tg"].to(torch_dtype), nets["tl"].to(torch_dtype)
        loop = torch_refine.WPlusLoop(g, tl, torch.from_numpy(start).to(torch_dtype),
                                      nchw(targets).to(torch_dtype), steps=1, lr=settings.lr, lr_rampup=0.0,
                                      lr_rampdown=settings.lr_rampdown, lpips_weight=settings.lpips_weight,
                                      l2_weight=settings.l2_weight, loss_size=settings.loss_size)
        loop.step(0)
        out = loop.w.detach().numpy().astype(np.float64), loop.w.grad.numpy().astype(np.float64)
        g.float(), tl.float()
        return out

    (torch32, grad32), (truth, grad_truth) = torch_step(torch.float32), torch_step(torch.float64)
    check_step("W+ codes", ours.codes.astype(np.float64), torch32, truth, grad32, grad_truth, settings.lr, dtype)


W_PLUS_STEP = refine.WPlusSettings(steps=1, lr=0.01, lr_rampup=0.0, w_noise=0.0, l2_weight=1.0)


@pytest.mark.parametrize("dtype, loop", [(np.float32, "python"), (np.float32, "compiled"),
                                         pytest.param(np.float64, "python", marks=pytest.mark.slow)])
def test_w_plus_step_matches_pytorch(nets, batch, dtype, loop):
    """One W+ step (LPIPS + MSE, lr without ramp, no latent noise) on the shared batch (its NaN image replaced),
    against PyTorch's (autograd through our torch generator and LPIPS, torch.optim.Adam), with the steps driven one
    call each (CPU's default) and in a compiled while loop (GPU/TPU's)."""
    w_plus_step_parity(nets, *parity_batch(batch), W_PLUS_STEP, dtype, loop)


@pytest.mark.slow
def test_w_plus_step_area_downsampling_vgg():
    """W+ at 64 px with the losses on images area-averaged to 32 (the projectors' rule, here loss_size 32 for 256)
    and LPIPS-VGG (upstream's W+ perceptual loss), one step against PyTorch's F.interpolate(mode='area')."""
    torch.manual_seed(1)
    tg = randomize_(TorchGenerator(64, STYLE_DIM, n_mlp=2, channel_multiplier=1, channel_max=CHANNELS), seed=1)
    tg = tg.eval().requires_grad_(False)
    latent_avg = torch.randn(STYLE_DIM) * 0.1
    config, gvars = convert_state_dict({k: v.numpy() for k, v in tg.state_dict().items()}, latent_avg.numpy(),
                                       overrides=dict(channel_max=CHANNELS, channel_multiplier=1))
    G = Generator(**dict(config, blur_kernel=tuple(config["blur_kernel"])))
    tl = torch_lpips.build("vgg", seed=1)
    _, lvars = convert_state_dicts({k: v.numpy() for k, v in tl.backbone_state_dict(
        torch_lpips.small_classifier("vgg")).items()}, {k: v.numpy() for k, v in tl.heads_state_dict().items()}, "vgg")
    rs = np.random.RandomState(1)
    start = (0.3 * rs.randn(2, G.n_latent, STYLE_DIM)).astype(np.float32)
    targets = np.stack([astronaut(64), rs.uniform(-1, 1, (64, 64, 3)).astype(np.float32)])
    nets = dict(tg=tg, G=G, gvars=gvars, tl=tl, L=LPIPS("vgg"), lvars=lvars)
    w_plus_step_parity(nets, start, targets, dataclasses.replace(W_PLUS_STEP, loss_size=32), np.float32)


def jax_layout(tg, named, latent_avg, dtype):
    """A torch generator's parameters (or their gradients: `named` {key: tensor}) in our variables' layout."""
    sd = {k: v.detach().numpy() for k, v in tg.state_dict().items()}
    sd.update({k: v.detach().numpy() for k, v in named.items()})
    sd["latent_avg"] = latent_avg.numpy()
    G = Generator(size=SIZE, style_dim=STYLE_DIM, n_mlp=2, channel_multiplier=1, channel_max=CHANNELS)
    expected = jax.eval_shape(lambda: G.init(jax.random.PRNGKey(0), jnp.zeros((1, STYLE_DIM))))
    return apply_rules(sd, RULES, expected, ignore=IGNORE, dtype=dtype)["params"]


@pytest.mark.parametrize("dtype, batching, loop", [
    (np.float32, "map", "python"),
    pytest.param(np.float32, "vmap", "compiled", marks=pytest.mark.slow),
    pytest.param(np.float32, "map", "compiled", marks=pytest.mark.slow),
    pytest.param(np.float64, "map", "python", marks=pytest.mark.slow)])
def test_pti_step_matches_pytorch(nets, batch, dtype, batching, loop):
    """One PTI step (MSE + LPIPS + the locality regulariser at the z the run draws) per image, against PyTorch's
    (autograd through our torch generator and LPIPS, torch.optim.Adam over every parameter): every parameter of the
    tuned generators of the in-range image and the astronaut; per-image weights one image at a time (map) or batched
    (vmap: grouped convolutions), the steps one call each (python) or in a compiled while loop: CPU's defaults (map,
    python) here, GPU/TPU's (vmap, compiled) and the others in the slow suite."""
    start, targets = parity_batch(batch)
    settings = refine.PTISettings(steps=1, lpips_threshold=0.0)
    ours = run_ours(refine.refine_pti, nets, start, targets, settings, dtype, batching=batching, loop=loop)
    assert not ours.failed.any() and list(ours.steps) == [1, 1, 1]
    with jax.enable_x64(dtype == np.float64):
        keys = refine.image_keys(0, 3)
        z = [np.array(refine.locality_z(keys[i], 0, 1, STYLE_DIM, dtype)) for i in range(2)]

    def torch_step(i, torch_dtype):
        g, tl = nets["tg"].to(torch_dtype), nets["tl"].to(torch_dtype)
        loop = torch_refine.PTILoop(g, tl, torch.from_numpy(start[i:i + 1]).to(torch_dtype),
                                    nchw(targets[i:i + 1]).to(torch_dtype), lr=settings.lr, l2_weight=1.0,
                                    lpips_weight=1.0, alpha=settings.regularizer_alpha,
                                    reg_l2=settings.regularizer_l2_weight, reg_lpips=settings.regularizer_lpips_weight,
                                    truncation=settings.truncation, latent_avg=nets["latent_avg"].to(torch_dtype))
        loop.step(torch.from_numpy(z[i]).to(torch_dtype))
        named = dict(loop.g.named_parameters())
        grads = {k: p.grad if p.grad is not None else torch.zeros_like(p) for k, p in named.items()}
        out = (jax_layout(loop.g, named, nets["latent_avg"], np.float64),
               jax_layout(loop.g, grads, nets["latent_avg"], np.float64))
        g.float(), tl.float()
        return out

    flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(v, np.float64)
                         for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
    for i in range(2):  # the third image is the astronaut mirrored
        (torch32, grad32), (truth, grad_truth) = torch_step(i, torch.float32), torch_step(i, torch.float64)
        t32, tt, g32, gt, mine = map(flat, (torch32, truth, grad32, grad_truth, ours.variables(i)["params"]))
        for k in tt:
            check_step(f"image {i} {k}", mine[k], t32[k], tt[k], g32[k], gt[k], settings.lr, dtype)


@pytest.mark.slow
def test_identity_and_latent_terms(nets, batch):
    """The optional terms act: with id_weight the ArcFace distance to the target ends lower than without; with
    latent_weight the code ends nearer its start (the astronaut, 10 steps of upstream's lr 0.1)."""
    from ffclip_jax import losses, tiny
    from ffclip_jax.models.arcface import Backbone

    module, rng = Backbone(**tiny.ARCFACE), np.random.RandomState(2)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 112, 112, 3)))
    arcface = module, jax.tree_util.tree_map_with_path(lambda p, leaf: tiny._random_like(p, leaf, rng), shapes)
    _, start, targets = batch
    start, targets = start[1:2], targets[1:2]
    base = refine.WPlusSettings(steps=10, l2_weight=1.0)  # the three runs share one compiled program
    run = lambda s: refine.refine_w_plus((nets["G"], nets["gvars"]), (nets["L"], nets["lvars"]), start, targets, s,
                                         arcface=arcface, progress=False)
    plain, with_id = run(base), run(dataclasses.replace(base, id_weight=1.0))
    pulled = run(dataclasses.replace(base, latent_weight=100.0))
    render = jax.jit(lambda v, w: nets["G"].apply(v, w, input_is_latent=True))
    identity = lambda codes: float(losses.id_loss(arcface, render(nets["gvars"], codes), jnp.asarray(targets)))
    print(f"ID distance: plain {identity(plain.codes):.4f}, with the ID term {identity(with_id.codes):.4f}")
    assert identity(with_id.codes) < identity(plain.codes)
    moved = lambda r: float(np.linalg.norm(r.codes - start))
    print(f"|w - w0|: plain {moved(plain):.3f}, pulled {moved(pulled):.3f}")
    assert moved(pulled) < moved(plain)


# ---- schedules and settings -----------------------------------------------------------------------------------------

def test_schedules_match_upstream():
    """lr ramp and latent-noise strength against projector.py's formulas (tests/torch_ref/refine.py), float32."""
    s = refine.WPlusSettings()
    for t in (0.0, 0.01, 0.05, 0.3, 0.75, 0.8, 0.999):
        assert abs(float(refine.lr_ramp(t, s.lr_rampup, s.lr_rampdown)) - torch_refine.lr_ramp(t, s.lr_rampup,
                                                                                            s.lr_rampdown)) <= 4 * EPS32
        want = s.w_noise * max(0.0, 1 - t / s.w_noise_ramp) ** 2
        assert abs(float(refine.w_noise_scale(t, s.w_noise, s.w_noise_ramp)) - want) <= 4 * EPS32 * s.w_noise
    assert float(refine.lr_ramp(0.0, 0.0, 0.0)) == 1.0 and float(refine.w_noise_scale(0.5, 0.05, 0.0)) == 0.0


@pytest.mark.parametrize("settings, message", [
    (refine.WPlusSettings(steps=0), r"WPlusSettings.steps must be an integer >= 1, got 0"),
    (refine.WPlusSettings(steps=2.5), r"steps must be an integer >= 1"),
    (refine.WPlusSettings(lr=float("nan")), r"WPlusSettings.lr must be a finite number > 0, got nan"),
    (refine.PTISettings(lr=float("inf")), r"PTISettings.lr must be a finite number > 0"),
    (refine.PTISettings(l2_weight=-1.0), r"PTISettings.l2_weight must be a finite number >= 0, got -1.0"),
    (refine.WPlusSettings(latent_weight=-0.1), r"latent_weight must be a finite number >= 0"),
    (refine.PTISettings(lpips_threshold=-0.1), r"lpips_threshold must be None or a finite number >= 0"),
    (refine.WPlusSettings(lr_rampup=2.0), r"lr_rampup must be in \[0, 1\]"),
    (refine.WPlusSettings(lpips_weight=0.0), r"every image loss weight .* is 0"),
])
def test_bad_settings(nets, batch, settings, message):
    _, start, targets = batch
    fn = refine.refine_w_plus if isinstance(settings, refine.WPlusSettings) else refine.refine_pti
    with pytest.raises(InputError, match=message) as e:
        fn((nets["G"], nets["gvars"]), (nets["L"], nets["lvars"]), start, targets, settings, progress=False)
    assert "\n" not in str(e.value)


def test_bad_inputs(nets, batch):
    """Wrong sizes, counts and types are one-line errors before anything compiles."""
    _, start, targets = batch
    gen, lp = (nets["G"], nets["gvars"]), (nets["L"], nets["lvars"])
    cases = [
        (lambda: refine.refine_w_plus(gen, lp, start, targets[:, :16, :16]), r"targets: expected float images "
         r"\(N, 32, 32, 3\) in \[-1, 1\] at the generator's size, got float32 \(3, 16, 16, 3\)"),
        (lambda: refine.refine_w_plus(gen, lp, start, np.zeros(targets.shape, np.uint8)), "got uint8"),
        (lambda: refine.refine_w_plus(gen, lp, start[:2], targets), "2 codes for 3 target images"),
        (lambda: refine.refine_pti(gen, lp, start[:, :7], targets), r"pivots: expected float w\+ codes \(N, 8, 64\)"),
        (lambda: refine.refine_pti(gen, lp, start, targets, batching="pmap"), "batching must be one of"),
        (lambda: refine.refine_w_plus(gen, lp, start, targets, loop="scan"), "loop must be one of"),
        (lambda: refine.refine_w_plus(gen, lp, start, targets, refine.WPlusSettings(id_weight=0.1)),
         "id_weight > 0 needs an ArcFace network"),
        (lambda: refine.refine_w_plus(gen, gen, start, targets), "lpips: expected an LPIPS network"),
        (lambda: refine.refine_w_plus(gen, lp, start, targets, chunk_steps=0), "chunk_steps must be an integer"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message) as e:
            call()
        assert "\n" not in str(e.value)
