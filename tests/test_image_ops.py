"""image_ops against PyTorch over grids of input/output sizes, including sizes that do not divide (overlapping
adaptive-pool windows) and upsampling."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ffclip_jax.nn import image_ops
from parity import assert_float32_parity

IN_SIZES = (7, 16, 33, 64, 100)
OUT_SIZES = (1, 5, 16, 24, 50, 112, 224)
# (matrix builder, function, torch equivalent for an output size); the grid checks the per-axis matrices (numpy, no
# compilation), a few sizes go through the jnp functions end to end
OPS = {
    "adaptive_avg_pool": (image_ops.adaptive_avg_pool_matrix, image_ops.adaptive_avg_pool2d,
                          lambda t, size: F.adaptive_avg_pool2d(t, size)),
    "nearest": (image_ops.nearest_matrix, image_ops.resize_nearest, lambda t, size: F.interpolate(t, size=size)),
    "bicubic_align_corners": (image_ops.bicubic_align_corners_matrix, image_ops.resize_bicubic_align_corners,
                              lambda t, size: F.interpolate(t, size=size, mode="bicubic", align_corners=True)),
    "bilinear_align_corners": (image_ops.bilinear_align_corners_matrix, image_ops.resize_bilinear_align_corners,
                               lambda t, size: F.interpolate(t, size=size, mode="bilinear", align_corners=True)),
}


def _image(h, w, seed=0):
    return np.random.RandomState(seed).uniform(-1, 1, (2, h, w, 3)).astype(np.float32)


def _torch(fn, x, dtype=torch.float32):
    with torch.no_grad():
        return fn(torch.from_numpy(x).to(dtype).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()


def _check(got, x, fn, op):
    """`got` against torch's `fn` of x: nearest resizing copies pixels, so it must equal PyTorch's float32 result;
    every other op is a weighted sum, held to PyTorch's own float32 error against its float64 result (parity.py)."""
    want = _torch(fn, x)
    assert got.shape == want.shape
    if op == "nearest":
        np.testing.assert_array_equal(got, want)
    else:
        assert_float32_parity(got, want, _torch(fn, x, torch.float64), op)


@pytest.mark.parametrize("op", sorted(OPS))
def test_matrices_over_size_grid(op):
    matrix, _, torch_fn = OPS[op]
    for n_in in IN_SIZES:
        x = _image(n_in, n_in + 3)
        for n_out in OUT_SIZES:
            size = (n_out, n_out + 1)
            rows = np.einsum("ih,bhwc->biwc", matrix(n_in, size[0]), x)
            got = np.einsum("jw,biwc->bijc", matrix(n_in + 3, size[1]), rows)
            _check(got, x, lambda t: torch_fn(t, size), op)


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("n_in,size", [(33, (16, 50)), (100, (224, 224))])
def test_functions(op, n_in, size):
    _, fn, torch_fn = OPS[op]
    x = _image(n_in, n_in)
    _check(fn(x, size), x, lambda t: torch_fn(t, size), op)


@pytest.mark.parametrize("n_in,scale,kernel", [(100, 7, 32), (45, 3, 5)])
def test_upsample_nearest_then_avg_pool(n_in, scale, kernel):
    x = _image(n_in, n_in)
    _check(image_ops.upsample_nearest_then_avg_pool(x, scale, kernel), x,
           lambda t: F.avg_pool2d(F.interpolate(t, scale_factor=scale), kernel), "nearest x7 + avg pool")


def test_composed_pools_gradient():
    """The ID-loss chain pool(256) -> crop -> pool(112) backpropagates as torch does."""
    import jax

    x = _image(100, 100)[:1]

    def f(a):
        a = image_ops.adaptive_avg_pool2d(a, 256)[:, 35:223, 32:220]
        return (image_ops.adaptive_avg_pool2d(a, 112) ** 2).sum()

    grads = []
    for dtype in (torch.float32, torch.float64):
        t = torch.from_numpy(x).to(dtype).permute(0, 3, 1, 2).requires_grad_(True)
        (F.adaptive_avg_pool2d(F.adaptive_avg_pool2d(t, 256)[:, :, 35:223, 32:220], 112) ** 2).sum().backward()
        grads.append(t.grad.permute(0, 2, 3, 1).numpy())
    assert_float32_parity(jax.grad(f)(x), *grads, "gradient of the pooling chain")


@pytest.mark.slow
@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("n_out", (112, 224, 256, 512))
def test_full_size(op, n_out):
    _, fn, torch_fn = OPS[op]
    x = _image(1024, 1024)[:1]
    _check(fn(x, n_out), x, lambda t: torch_fn(t, (n_out, n_out)), op)


@pytest.mark.slow
def test_upsample_then_pool_1024_to_224():
    x = _image(1024, 1024)[:1]
    _check(image_ops.upsample_nearest_then_avg_pool(x), x, lambda t: F.avg_pool2d(F.interpolate(t, scale_factor=7), 32),
           "nearest x7 + avg pool 32")
