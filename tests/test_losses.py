"""ID, background and MoCo losses against PyTorch oracles of the upstream loss modules (FFCLIP `IDLoss`, HairCLIP /
FFCLIP `BackgroundLoss`, e4e `MocoLoss`), with randomly initialised networks converted through the CLIs: values and
gradients w.r.t. the edited image; the L1 losses; bad input."""
import copy
import os

import chex
import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convert_weights.__main__ import main as convert_main
from ffclip_jax import losses
from ffclip_jax.weights import pretrained
from ffclip_jax.errors import InputError
from test_moco import SMALL as SMALL_MOCO, converted_moco
from test_parsenet import converted_parsenet
from torch_ref import irse as torch_irse
from torch_ref import moco as torch_moco
from torch_ref import parsenet as torch_parsenet
from parity import U32, assert_float32_parity, float64_copy, nchw


# ---------------------------------------------------------------------------------------------------------------
# PyTorch oracles: the upstream loss computations on NCHW tensors


def torch_id_loss(arcface, y_hat, y):
    def feats(x):
        if x.shape[2] != 256:
            x = F.adaptive_avg_pool2d(x, (256, 256))
        return arcface(F.adaptive_avg_pool2d(x[:, :, 35:223, 32:220], (112, 112)))

    target = feats(y).detach()
    return sum(1 - feats(y_hat)[i].dot(target[i]) for i in range(y.shape[0])) / y.shape[0]


def torch_background_mask(parsenet, x):
    labels = parsenet(F.adaptive_avg_pool2d(x, (512, 512))).detach()
    mask_512 = (torch.unsqueeze(torch.max(labels, 1)[1], 1) != 13).float()
    return F.adaptive_avg_pool2d(mask_512, tuple(x.shape[2:]))


def torch_background_loss(parsenet, x, x_hat):
    both = ((torch_background_mask(parsenet, x) + torch_background_mask(parsenet, x_hat)) == 2).float()
    return F.mse_loss(x * both, x_hat * both)


def torch_moco_loss(resnet, y_hat, y):
    def feats(x):
        return F.normalize(resnet(F.interpolate(x, size=224)), dim=1)

    target = feats(y).detach()
    return sum(1 - feats(y_hat)[i].dot(target[i]) for i in range(y.shape[0])) / y.shape[0]


# ---------------------------------------------------------------------------------------------------------------
# set-up


def images(size, batch, seed=0):
    """A pair of smooth random images in [-1, 1]: x_hat mixes x with another image and noise, so that the losses are
    well above float32 round-off (1 - cos of nearly equal features would not be)."""
    rs = np.random.RandomState(seed)
    low = torch.from_numpy(rs.uniform(-1, 1, (2, batch, 3, 8, 8)).astype(np.float32))
    x, other = (F.interpolate(a, size=size, mode="bicubic", align_corners=True).clamp(-1, 1) for a in low)
    noise = torch.from_numpy(rs.standard_normal(x.shape).astype(np.float32))
    x_hat = (0.6 * x + 0.4 * other + 0.2 * noise).clamp(-1, 1)
    return x.permute(0, 2, 3, 1).numpy(), x_hat.permute(0, 2, 3, 1).numpy()


def calibrate_hair_class(parsenet, pair):
    """Make class 13 ('hair') a real decision of the random parsing net: scale its final weights so that the margin
    logit_13 - max(other logits) varies by O(1) over the pixels, and shift its bias so that 2-6% of the parsed pixels
    are hair (a 64x64 image pixel keeps its background only if none of its 8x8 parsed pixels is hair), with the
    threshold in the widest gap between sorted margins. Returns (half that gap, the largest float32 rounding error
    of PyTorch's margins, against a float64 copy of the calibrated net)."""
    def margins(net=parsenet, dtype=torch.float32, sort=True):
        with torch.no_grad():
            logits = torch.cat([net(F.adaptive_avg_pool2d(nchw(a).to(dtype), (512, 512))) for a in pair])
        others = torch.cat([logits[:, :13], logits[:, 14:]], 1).max(1)[0]
        m = (logits[:, 13] - others).numpy().ravel()
        return np.sort(m) if sort else m

    with torch.no_grad():
        parsenet.final.weight[13] /= float(margins().std())
        m = margins()
        lo, hi = int(0.94 * m.size), int(0.98 * m.size)
        i = lo + int(np.argmax(np.diff(m[lo:hi])))
        parsenet.final.bias[13] -= float(m[i] + m[i + 1]) / 2
    error = np.abs(margins(sort=False) - margins(float64_copy(parsenet), torch.float64, sort=False)).max()
    return float(m[i + 1] - m[i]) / 2, float(error)


def build_networks(directory, pair, full_size):
    """Torch oracles and their converted Flax pairs: {'arcface' | 'parsenet' | 'moco': (torch model, (module, vars))}.
    Full size: IR-SE50, UNet(feature_scale=4), ResNet-50; otherwise the parsing and MoCo networks are small."""
    torch.manual_seed(0)
    both = torch.cat([nchw(a) for a in pair])
    arcface = torch_irse.randomize_(torch_irse.Backbone(112, 50, "ir_se"),
                                    calibration=F.adaptive_avg_pool2d(both, (112, 112)), seed=0)
    torch.save(arcface.state_dict(), os.path.join(directory, "model_ir_se50.pth"))
    convert_main(["arcface", "--input", os.path.join(directory, "model_ir_se50.pth"),
                  "--output", os.path.join(directory, "arcface_jax")])
    parsenet = torch_parsenet.build(feature_scale=4 if full_size else 16, seed=1)
    half_gap, error = calibrate_hair_class(parsenet, pair)
    # every parsed pixel's hair decision is half_gap from its tie; ours rounds the margin by at most 4x PyTorch's
    # float32 error (parity.PARITY_FACTOR), so both take the same decisions if half_gap exceeds that with 2x to spare
    assert half_gap > 8 * error, f"parsing decisions too close to ties for a stable test ({half_gap:.3g}, {error:.3g})"
    moco = torch_moco.build(**({} if full_size else SMALL_MOCO), seed=2,
                            calibration=F.interpolate(both, size=224))
    return {"arcface": (arcface, pretrained.load(os.path.join(directory, "arcface_jax"))),
            "parsenet": (parsenet, converted_parsenet(parsenet, directory)),
            "moco": (moco, converted_moco(moco, directory))}


def torch_value_and_grad(torch_fn, torch_net, x, x_hat, edited_first, dtype):
    net = copy.deepcopy(torch_net).to(dtype)
    tx, tx_hat = nchw(x).to(dtype), nchw(x_hat).to(dtype).requires_grad_(True)
    loss = torch_fn(net, tx_hat, tx) if edited_first else torch_fn(net, tx, tx_hat)
    loss.backward()
    return loss.item(), tx_hat.grad.permute(0, 2, 3, 1).numpy().astype(np.float64)


def check_loss(name, torch_fn, jax_fn, torch_net, jax_net, x, x_hat, edited_first=True):
    """The loss value as accurate as PyTorch's float32 value against the float64 one (parity.py); its gradient
    w.r.t. x_hat, measured against PyTorch's float64 gradient relative to the gradient's largest entry, within 1e-4
    (max) / 1e-5 (mean), the project's gradient target, or within 3x PyTorch's own float32 autograd error where that
    is larger (deep random networks amplify float32 round-off in the backward pass: up to ~1% of the largest entry
    for the full IR-SE50 and ResNet-50)."""
    want, want_grad = torch_value_and_grad(torch_fn, torch_net, x, x_hat, edited_first, torch.float32)
    exact, exact_grad = torch_value_and_grad(torch_fn, torch_net, x, x_hat, edited_first, torch.float64)
    module, variables = jax_net

    def f(xh, x, v):  # weights and images as arguments: closed-over arrays would be constant-folded by XLA
        return jax_fn((module, v), xh, x) if edited_first else jax_fn((module, v), x, xh)

    got, got_grad = jax.jit(jax.value_and_grad(f))(x_hat, x, variables)
    rel = abs(float(got) - want) / abs(want)
    assert_float32_parity(np.float64(got), want, exact, f"{name} value")
    scale = np.abs(exact_grad).max()
    assert scale > 0, f"{name}: zero gradient"
    torch_err = np.abs(want_grad - exact_grad) / scale
    jax_err = np.abs(np.asarray(got_grad, np.float64) - exact_grad) / scale
    max_tol, mean_tol = max(1e-4, 3 * torch_err.max()), max(1e-5, 3 * torch_err.mean())
    assert jax_err.max() <= max_tol and jax_err.mean() <= mean_tol, (
        f"{name} gradient error (relative to its max): jax max {jax_err.max():.3g} mean {jax_err.mean():.3g}, "
        f"torch float32 max {torch_err.max():.3g} mean {torch_err.mean():.3g}")
    print(f"{name}: value rel {rel:.2g}; gradient error jax max {jax_err.max():.2g} mean {jax_err.mean():.2g}, "
          f"torch float32 max {torch_err.max():.2g} mean {torch_err.mean():.2g}")


# ---------------------------------------------------------------------------------------------------------------
# default suite: 64x64 images, small parsing / MoCo networks, the full ArcFace IR-SE50


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    pair = images(64, 2)
    return pair, build_networks(str(tmp_path_factory.mktemp("loss_nets")), pair, full_size=False)


def test_id_loss(small):
    (x, x_hat), nets = small
    # batch 1: the full IR-SE50 is the costliest network here (the batch mean is covered by the other losses)
    check_loss("id_loss", torch_id_loss, losses.id_loss, *nets["arcface"], x[:1], x_hat[:1])


def test_background_loss(small):
    (x, x_hat), nets = small
    torch_net, jax_net = nets["parsenet"]
    module, variables = jax_net
    mask = jax.jit(lambda v, a: losses.background_mask((module, v), a))
    for a in (x, x_hat):
        want = torch_background_mask(torch_net, nchw(a)).permute(0, 2, 3, 1).numpy() == 1
        got = np.asarray(mask(variables, a)) == 1
        assert np.array_equal(got, want) and 0.05 < want.mean() < 0.95, want.mean()
    check_loss("background_loss", torch_background_loss, losses.background_loss, torch_net, jax_net, x, x_hat,
               edited_first=False)


def test_moco_loss(small):
    (x, x_hat), nets = small
    check_loss("moco_loss", torch_moco_loss, losses.moco_loss, *nets["moco"], x, x_hat)


def assert_mean_abs(got, a, b):
    """`got` is mean |a - b| of float32 arrays to float32's rounding: n differences and a sum of n non-negative terms
    err by at most (n + 1) roundings of the mean in any order (Higham, recursive summation), on any CPU."""
    truth = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean()
    np.testing.assert_allclose(np.float64(got), truth, rtol=(np.size(a) + 2) * U32, atol=0)


def test_l1_losses():
    x, x_hat, w, w_hat = np.random.RandomState(3).standard_normal((4, 2, 16, 16, 3)).astype(np.float32)
    w, w_hat = w.reshape(2, 3, 256), w_hat.reshape(2, 3, 256)
    assert_mean_abs(losses.latent_l1(w, w_hat), w, w_hat)
    assert_mean_abs(losses.image_l1(x, x_hat), x, x_hat)
    np.testing.assert_allclose(float(torch.abs(nchw(x) - nchw(x_hat)).mean()), np.abs(x - x_hat).mean(),
                               rtol=(x.size + 2) * U32)  # the upstream formula (torch), to the same bound
    g = jax.grad(lambda a: losses.image_l1(x, a))(x_hat)
    # d mean|x - a| / da = -sign(x - a) / N: one rounding of 1/N (a product by +-1 is exact), 2 roundings apart
    np.testing.assert_allclose(g, -np.sign(x - x_hat) / x.size, rtol=2 * U32, atol=0)


def test_bad_images(small):
    (x, x_hat), nets = small
    jax_nets = {k: v[1] for k, v in nets.items()}
    calls = {"id_loss": lambda a, b: losses.id_loss(jax_nets["arcface"], a, b),
             "background_loss": lambda a, b: losses.background_loss(jax_nets["parsenet"], a, b),
             "moco_loss": lambda a, b: losses.moco_loss(jax_nets["moco"], a, b),
             "image_l1": losses.image_l1}
    bad = {"rank 3": (x[0], x_hat[0]), "4 channels": (np.zeros((2, 64, 64, 4), np.float32),) * 2,
           "NCHW": (x.transpose(0, 3, 1, 2),) * 2, "shape mismatch": (x, x_hat[:1])}
    for name, fn in calls.items():
        for what, (a, b) in bad.items():
            with pytest.raises(InputError) as e:
                fn(a, b)
            assert "\n" not in str(e.value) and "shape" in str(e.value), (name, what, str(e.value))
    with pytest.raises(InputError, match=r"w \(18, 512\) and w_hat \(1, 18, 512\)"):
        losses.latent_l1(np.zeros((18, 512)), np.zeros((1, 18, 512)))


# ---------------------------------------------------------------------------------------------------------------
# slow suite: 1024x1024 images, full-size networks


@pytest.mark.slow
def test_losses_full_size(tmp_path):
    x, x_hat = images(1024, 1, seed=4)
    nets = build_networks(str(tmp_path), (x, x_hat), full_size=True)
    check_loss("id_loss", torch_id_loss, losses.id_loss, *nets["arcface"], x, x_hat)
    check_loss("background_loss", torch_background_loss, losses.background_loss, *nets["parsenet"], x, x_hat,
               edited_first=False)
    check_loss("moco_loss", torch_moco_loss, losses.moco_loss, *nets["moco"], x, x_hat)


class LossesJitAndEagerTest(chex.TestCase):
    """The losses give the same values and gradients jitted and run eagerly (chex variants)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_l1_losses_and_clip_resize(self):
        rng = np.random.RandomState(5)
        x, x_hat = rng.uniform(-1, 1, (2, 2, 64, 64, 3)).astype(np.float32)
        w, w_hat = rng.standard_normal((2, 2, 4, 8)).astype(np.float32)

        @self.variant
        def terms(x_hat, w_hat):
            return losses.image_l1(x, x_hat), losses.latent_l1(w, w_hat), losses.upsample_pool_to_clip(x_hat)

        l_img, l_lat, resized = terms(x_hat, w_hat)
        assert_mean_abs(l_img, x, x_hat)
        assert_mean_abs(l_lat, w, w_hat)
        chex.assert_shape(resized, (2, 224, 224, 3))
        grads = self.variant(jax.grad(lambda a: losses.image_l1(x, a)))(x_hat)
        chex.assert_trees_all_close(grads, -np.sign(x - x_hat) / x.size, rtol=2 * U32, atol=0)  # as test_l1_losses
