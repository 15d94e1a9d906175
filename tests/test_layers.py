"""Shared layers against the PyTorch reference ops (upfirdn2d over a grid of up/down/pad cases, blur/up/downsample,
modulated conv in both forms), and the safe checkpoint reader with and without torch."""
import argparse
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
from parity import nchw, nhwc


@pytest.mark.parametrize("up,down,pad", [(1, 1, (0, 0)), (2, 1, (2, 1)), (1, 2, (1, 1)), (2, 2, (1, 2)), (3, 1, (2, 2)),
                                         (1, 3, (0, 0)), (2, 1, (-1, 2)), (1, 1, (-2, -1)), (1, 2, (3, 0))])
@pytest.mark.parametrize("kernel", [(1, 3, 3, 1), (1, 2, 1), "2d"])
def test_upfirdn2d_matches_reference(up, down, pad, kernel):
    rs = np.random.RandomState(up * 10 + down)
    x = rs.randn(2, 11, 9, 3).astype(np.float32)
    k = rs.rand(3, 4).astype(np.float32) if kernel == "2d" else layers.make_kernel(kernel)
    ours = layers.upfirdn2d(jnp.asarray(x), k, up=up, down=down, pad=pad)
    theirs = ref.upfirdn2d(nchw(x), torch.from_numpy(k), up=up, down=down, pad=pad)
    np.testing.assert_allclose(ours, nhwc(theirs), atol=1e-5, rtol=1e-5)


def test_upfirdn2d_separate_axes_pads():
    x = np.random.RandomState(0).randn(1, 8, 6, 2).astype(np.float32)
    k = layers.make_kernel((1, 3, 3, 1))
    out = layers.upfirdn2d(jnp.asarray(x), k, pad=(1, 2, 0, 1))  # (x0, x1, y0, y1) as upstream
    assert out.shape == (1, 8 + 1 - 3, 6 + 3 - 3, 2)


def test_blur_upsample_downsample():
    x = np.random.RandomState(1).randn(2, 8, 8, 4).astype(np.float32)
    up = layers.Upsample((1, 3, 3, 1)).apply({}, jnp.asarray(x))
    np.testing.assert_allclose(up, nhwc(ref.Upsample((1, 3, 3, 1))(nchw(x))), atol=1e-5)
    down = layers.Downsample((1, 3, 3, 1)).apply({}, jnp.asarray(x))
    k = ref.make_kernel((1, 3, 3, 1))
    np.testing.assert_allclose(down, nhwc(ref.upfirdn2d(nchw(x), k, down=2, pad=(1, 1))), atol=1e-5)
    blur = layers.Blur((1, 3, 3, 1), pad=(2, 1), upsample_factor=2).apply({}, jnp.asarray(x))
    np.testing.assert_allclose(blur, nhwc(ref.Blur((1, 3, 3, 1), (2, 1), 2)(nchw(x))), atol=1e-5)


@pytest.mark.parametrize("upsample,demodulate,k", [(False, True, 3), (True, True, 3), (False, False, 1)])
def test_modulated_conv_forms_match_reference(upsample, demodulate, k):
    """Both forms: outputs and the gradients of sum(R * out) w.r.t. the input, the styles and the parameters equal the
    reference's and torch autograd's."""
    torch.manual_seed(0)
    conv = ref.ModulatedConv2d(6, 5, k, 8, demodulate=demodulate, upsample=upsample)
    with torch.no_grad():
        conv.modulation.bias.add_(torch.randn(6) * 0.1)
    rs = np.random.RandomState(2)
    x, s = rs.randn(3, 7, 7, 6).astype(np.float32), rs.randn(3, 8).astype(np.float32)
    xt, st = nchw(x).requires_grad_(True), torch.from_numpy(s).requires_grad_(True)
    theirs = conv(xt, st)
    r = rs.randn(*theirs.shape).astype(np.float32)
    (theirs * torch.from_numpy(r)).sum().backward()
    params = {"weight": conv.weight.detach().numpy()[0].transpose(2, 3, 1, 0),
              "modulation": {"weight": conv.modulation.weight.detach().numpy().T,
                             "bias": conv.modulation.bias.detach().numpy()}}
    torch_grads = ({"weight": conv.weight.grad.numpy()[0].transpose(2, 3, 1, 0),
                    "modulation": {"weight": conv.modulation.weight.grad.numpy().T,
                                   "bias": conv.modulation.bias.grad.numpy()}}, nhwc(xt.grad), st.grad.numpy())
    for form in layers.MODCONV_FORMS:
        m = layers.ModulatedConv2d(5, k, demodulate=demodulate, upsample=upsample, modconv=form)
        ours = m.apply({"params": params}, jnp.asarray(x), jnp.asarray(s))
        np.testing.assert_allclose(ours, nhwc(theirs.detach()), atol=2e-5, rtol=1e-4, err_msg=form)
        r_nhwc = r.transpose(0, 2, 3, 1)
        grads = jax.grad(lambda p, x, s: jnp.sum(m.apply({"params": p}, x, s) * r_nhwc), argnums=(0, 1, 2))(
            params, jnp.asarray(x), jnp.asarray(s))
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(torch_grads)):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4,
                                       err_msg=f"{form} d/d{jax.tree_util.keystr(path)}")


def test_downsampling_modulated_conv_forms_agree():
    rs = np.random.RandomState(3)
    x, s = jnp.asarray(rs.randn(2, 8, 8, 4), jnp.float32), jnp.asarray(rs.randn(2, 8), jnp.float32)
    m = layers.ModulatedConv2d(3, 3, downsample=True)
    variables = m.init(jax.random.PRNGKey(0), x, s)
    a = m.apply(variables, x, s)
    b = m.clone(modconv="grouped").apply(variables, x, s)
    assert a.shape == (2, 4, 4, 3)
    np.testing.assert_allclose(a, b, atol=1e-5)


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
