"""Shared layers against the PyTorch reference ops (upfirdn2d over a grid of up/down/pad cases, blur/up/downsample,
modulated conv in both forms), and the safe checkpoint reader with and without torch."""
import argparse
import functools
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ffclip_jax.nn import layers
from ffclip_jax.errors import CheckpointError
from convert_weights.torch_io import load_checkpoint, placeholder_name
from torch_ref import stylegan2 as ref
from parity import assert_float32_parity, float64_copy, nchw, nhwc


@pytest.mark.parametrize("up,down,pad", [(1, 1, (0, 0)), (2, 1, (2, 1)), (1, 2, (1, 1)), (2, 2, (1, 2)), (3, 1, (2, 2)),
                                         (1, 3, (0, 0)), (2, 1, (-1, 2)), (1, 1, (-2, -1)), (1, 2, (3, 0))])
@pytest.mark.parametrize("kernel", [(1, 3, 3, 1), (1, 2, 1), "2d"])
def test_upfirdn2d_matches_reference(up, down, pad, kernel):
    rs = np.random.RandomState(up * 10 + down)
    x = rs.randn(2, 11, 9, 3).astype(np.float32)
    k = rs.rand(3, 4).astype(np.float32) if kernel == "2d" else layers.make_kernel(kernel)
    ours = layers.upfirdn2d(jnp.asarray(x), k, up=up, down=down, pad=pad)
    theirs = ref.upfirdn2d(nchw(x), torch.from_numpy(k), up=up, down=down, pad=pad)
    truth = ref.upfirdn2d(nchw(x).double(), torch.from_numpy(k).double(), up=up, down=down, pad=pad)
    assert_float32_parity(ours, nhwc(theirs), nhwc(truth), f"upfirdn2d up {up} down {down} pad {pad}")


def test_upfirdn2d_separate_axes_pads():
    x = np.random.RandomState(0).randn(1, 8, 6, 2).astype(np.float32)
    k = layers.make_kernel((1, 3, 3, 1))
    out = layers.upfirdn2d(jnp.asarray(x), k, pad=(1, 2, 0, 1))  # (x0, x1, y0, y1) as upstream
    assert out.shape == (1, 8 + 1 - 3, 6 + 3 - 3, 2)


def test_blur_upsample_downsample():
    x = np.random.RandomState(1).randn(2, 8, 8, 4).astype(np.float32)

    def check(ours, torch_fn, what):  # torch_fn(NCHW input) in float32, then in float64: the truth
        assert_float32_parity(ours, nhwc(torch_fn(nchw(x))), nhwc(torch_fn(nchw(x).double())), what)
    k = ref.make_kernel((1, 3, 3, 1))
    upsample, blur = ref.Upsample((1, 3, 3, 1)), ref.Blur((1, 3, 3, 1), (2, 1), 2)
    check(layers.Upsample((1, 3, 3, 1)).apply({}, jnp.asarray(x)),
          lambda t: upsample(t) if t.dtype == torch.float32 else float64_copy(upsample)(t), "upsample")
    check(layers.Downsample((1, 3, 3, 1)).apply({}, jnp.asarray(x)),
          lambda t: ref.upfirdn2d(t, k.to(t.dtype), down=2, pad=(1, 1)), "downsample")
    check(layers.Blur((1, 3, 3, 1), pad=(2, 1), upsample_factor=2).apply({}, jnp.asarray(x)),
          lambda t: blur(t) if t.dtype == torch.float32 else float64_copy(blur)(t), "blur")


def _torch_modconv(conv, x, s, r, dtype):
    """(output NHWC, (d/dparams, d/dx NHWC, d/ds)) of sum(R * conv(x, s)) for the torch reference in `dtype` (a
    float64 copy for the truth)."""
    conv = conv if dtype == torch.float32 else float64_copy(conv)
    xt, st = nchw(x).to(dtype).requires_grad_(True), torch.from_numpy(s).to(dtype).requires_grad_(True)
    out = conv(xt, st)
    (out * torch.from_numpy(r).to(dtype)).sum().backward()
    grads = ({"weight": conv.weight.grad.numpy()[0].transpose(2, 3, 1, 0),
              "modulation": {"weight": conv.modulation.weight.grad.numpy().T,
                             "bias": conv.modulation.bias.grad.numpy()}}, nhwc(xt.grad), st.grad.numpy())
    return nhwc(out.detach()), grads


@pytest.mark.parametrize("upsample,demodulate,k", [(False, True, 3), (True, True, 3), (False, False, 1)])
def test_modulated_conv_forms_match_reference(upsample, demodulate, k):
    """Both forms: outputs and the gradients of sum(R * out) w.r.t. the input, the styles and the parameters are as
    accurate as the reference's and torch autograd's float32 results (against their float64 truth)."""
    torch.manual_seed(0)
    conv = ref.ModulatedConv2d(6, 5, k, 8, demodulate=demodulate, upsample=upsample)
    with torch.no_grad():
        conv.modulation.bias.add_(torch.randn(6) * 0.1)
    rs = np.random.RandomState(2)
    x, s = rs.randn(3, 7, 7, 6).astype(np.float32), rs.randn(3, 8).astype(np.float32)
    with torch.no_grad():
        out_shape = conv(nchw(x), torch.from_numpy(s)).shape
    r = rs.randn(*out_shape).astype(np.float32)
    theirs, torch_grads = _torch_modconv(conv, x, s, r, torch.float32)
    truth, true_grads = _torch_modconv(conv, x, s, r, torch.float64)
    params = {"weight": conv.weight.detach().numpy()[0].transpose(2, 3, 1, 0),
              "modulation": {"weight": conv.modulation.weight.detach().numpy().T,
                             "bias": conv.modulation.bias.detach().numpy()}}
    for form in layers.MODCONV_FORMS:
        m = layers.ModulatedConv2d(5, k, demodulate=demodulate, upsample=upsample, modconv=form)
        ours = m.apply({"params": params}, jnp.asarray(x), jnp.asarray(s))
        assert_float32_parity(ours, theirs, truth, f"{form} output")
        r_nhwc = r.transpose(0, 2, 3, 1)
        grads = jax.grad(lambda p, x, s: jnp.sum(m.apply({"params": p}, x, s) * r_nhwc), argnums=(0, 1, 2))(
            params, jnp.asarray(x), jnp.asarray(s))
        for (path, a), b, t in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(torch_grads),
                                   jax.tree.leaves(true_grads)):
            assert_float32_parity(a, b, t, f"{form} d/d{jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("k,groups", [(1, 1), (2, 1), (3, 1), (3, 2), (4, 2)])  # 3: StyleGAN2's, 2: the parsing UNet's
def test_transposed_conv_derivatives(k, groups):
    """The transposed conv (on CPU: the dilated conv with its kernel derivative taken as matrix products) against the
    plain dilated conv, in float64: output, both gradients (reverse mode), the tangent (forward mode), under vmap.
    The same products summed in another order: float64 sums of at most k*k*C terms, within 1e-12 of each result's
    scale."""
    rs = np.random.RandomState(k * 10 + groups)

    def results(conv, x, kernel, dx, dk, r):  # output, under vmap, forward-mode tangent, both gradients
        return (conv(x, kernel), jax.vmap(lambda xi: conv(xi[None], kernel)[0])(x),
                jax.jvp(conv, (x, kernel), (dx, dk))[1], *jax.grad(lambda *a: jnp.sum(conv(*a) * r), (0, 1))(x, kernel))
    ours = jax.jit(functools.partial(results, functools.partial(layers.conv_transpose2d_stride2, groups=groups)))
    plain = jax.jit(functools.partial(results, functools.partial(layers._transposed_by_dilation, groups=groups)))
    with jax.enable_x64(True):
        for h, w in ((1, 1), (3, 4)):
            x, kernel = rs.randn(2, h, w, 4 * groups), rs.randn(k, k, 4, 3 * groups)
            r = rs.randn(2, 2 * h + k - 2, 2 * w + k - 2, 3 * groups)
            args = (x, kernel, rs.randn(*x.shape), rs.randn(*kernel.shape), r)
            expected = plain(*args)
            assert expected[0].shape == r.shape  # PyTorch's output size: (H - 1) * 2 + k
            for a, b in zip(ours(*args), expected):
                scale = max(float(jnp.max(jnp.abs(b))), 1.0)
                assert a.shape == b.shape and float(jnp.max(jnp.abs(a - b))) <= 1e-12 * scale, (h, w)


def test_downsampling_modulated_conv_forms_agree():
    """Both forms of the downsampling layer (no torch twin here) against our own float64 result: the grouped form is
    as accurate as the input-scaling one."""
    rs = np.random.RandomState(3)
    x, s = rs.randn(2, 8, 8, 4).astype(np.float32), rs.randn(2, 8).astype(np.float32)
    m = layers.ModulatedConv2d(3, 3, downsample=True)
    variables = m.init(jax.random.PRNGKey(0), jnp.asarray(x), jnp.asarray(s))
    a = m.apply(variables, x, s)
    b = m.clone(modconv="grouped").apply(variables, x, s)
    with jax.enable_x64(True):
        truth = m.apply(jax.tree.map(lambda v: np.asarray(v, np.float64), variables), x.astype(np.float64),
                        s.astype(np.float64))
    assert a.shape == (2, 4, 4, 3)
    assert_float32_parity(b, a, truth, "grouped modconv", reference="input_scaling")


def _sample_checkpoint(path):
    sd = {"w": torch.randn(3, 4), "h": torch.randn(5).half(), "i": torch.arange(6).reshape(2, 3)[:, 1:],
          "b": torch.randn(2, 2).to(torch.bfloat16)}
    torch.save({"g_ema": sd, "args": argparse.Namespace(size=8), "latent_avg": torch.randn(4)}, path)
    return sd


def test_reader_without_torch_equals_torch(tmp_path):
    sd = _sample_checkpoint(tmp_path / "c.pt")
    with_torch = load_checkpoint(tmp_path / "c.pt")
    without = load_checkpoint(tmp_path / "c.pt", use_torch=False)
    assert without["args"].size == 8 and with_torch["args"].size == 8
    for k, v in sd.items():
        np.testing.assert_array_equal(np.asarray(without["g_ema"][k], np.float32), v.float().numpy())
        np.testing.assert_array_equal(np.asarray(with_torch["g_ema"][k], np.float32), v.float().numpy())
    np.testing.assert_array_equal(without["latent_avg"], with_torch["latent_avg"])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("use_torch", [True, False])
def test_arbitrary_pickles_load_inert(tmp_path, use_torch):
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Evil()}, tmp_path / "evil.pt")
    ckpt = load_checkpoint(tmp_path / "evil.pt", use_torch=use_torch)
    np.testing.assert_array_equal(ckpt["state_dict"]["x"], np.zeros(1, np.float32))
    assert placeholder_name(ckpt["payload"]) == f"{os.system.__module__}.system"
    assert ckpt["payload"].args == ("echo pwned",)  # recorded, never called


def test_reader_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="not a zip-format"):
        load_checkpoint(tmp_path / "plain.pkl", use_torch=False)
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("x/readme.txt", "hi")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "other.zip", use_torch=False)
