"""Resizes and pools that match PyTorch exactly, as separable linear maps (one (out, in) matrix per axis).

Every loss uses these (CLIP, embedding, ID, background, MoCo) so the preprocessing is written once:
- `adaptive_avg_pool2d`: torch AdaptiveAvgPool2d; window i = [floor(i*in/out), ceil((i+1)*in/out)).
- `resize_nearest`: F.interpolate(mode='nearest'); source index floor(i * in / out).
- `resize_bicubic_align_corners`: F.interpolate(mode='bicubic', align_corners=True); A = -0.75, border clamp.
- `upsample_nearest_then_avg_pool`: nn.Upsample(scale_factor=s) then AvgPool2d(k) (FFCLIP's CLIP-loss 7x / 32), without
  ever building the upsampled tensor.
Images are NHWC; the maps act on axes 1 and 2 and are differentiable, jit-able constants.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from ffclip_jax.errors import InputError


def check_images(name: str, x) -> None:
    """NHWC RGB (B, H, W, 3), else a one-line InputError naming `name`."""
    if getattr(x, "ndim", None) != 4 or x.shape[-1] != 3:
        raise InputError(f"{name}: expected NHWC RGB images of shape (B, H, W, 3), got shape "
                         f"{tuple(getattr(x, 'shape', ()))}")


@functools.lru_cache(maxsize=None)
def adaptive_avg_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        lo = (i * n_in) // n_out
        hi = -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


@functools.lru_cache(maxsize=None)
def nearest_matrix(n_in: int, n_out: int) -> np.ndarray:
    m = np.zeros((n_out, n_in), np.float64)
    src = np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(np.int64), n_in - 1)
    m[np.arange(n_out), src] = 1.0
    return m


def _cubic_weights(t: float, a: float = -0.75):
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return (far(t + 1), near(t), near(1 - t), far(2 - t))


@functools.lru_cache(maxsize=None)
def bicubic_align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    # float32 arithmetic for the source position and weights, as PyTorch computes them for float32 images
    m = np.zeros((n_out, n_in), np.float64)
    f32 = np.float32
    scale = f32(n_in - 1) / f32(n_out - 1) if n_out > 1 else f32(0)
    for i in range(n_out):
        x = f32(scale * f32(i))
        x0 = int(np.floor(x))
        t = f32(x - f32(x0))
        for k, w in zip(range(-1, 3), _cubic_weights(t, f32(-0.75))):
            m[i, min(max(x0 + k, 0), n_in - 1)] += w
    return m


@functools.lru_cache(maxsize=None)
def avg_pool_matrix(n_in: int, kernel: int, stride: int | None = None) -> np.ndarray:
    stride = stride or kernel
    n_out = (n_in - kernel) // stride + 1
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        m[i, i * stride:i * stride + kernel] = 1.0 / kernel
    return m


def apply_separable(x, mh: np.ndarray, mw: np.ndarray):
    """y[b, i, j, c] = sum_{h, w} mh[i, h] mw[j, w] x[b, h, w, c] for NHWC x."""
    if x.ndim != 4:
        raise ValueError(f"expected NHWC images of rank 4, got shape {tuple(x.shape)}")
    dt = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    y = jnp.einsum("ih,bhwc->biwc", jnp.asarray(mh, dt), x.astype(dt))
    return jnp.einsum("jw,biwc->bijc", jnp.asarray(mw, dt), y)


def _size2(size):
    return (size, size) if isinstance(size, int) else tuple(size)


def adaptive_avg_pool2d(x, size):
    oh, ow = _size2(size)
    return apply_separable(x, adaptive_avg_pool_matrix(x.shape[1], oh), adaptive_avg_pool_matrix(x.shape[2], ow))


def resize_nearest(x, size):
    oh, ow = _size2(size)
    return apply_separable(x, nearest_matrix(x.shape[1], oh), nearest_matrix(x.shape[2], ow))


def resize_bicubic_align_corners(x, size):
    oh, ow = _size2(size)
    return apply_separable(x, bicubic_align_corners_matrix(x.shape[1], oh),
                           bicubic_align_corners_matrix(x.shape[2], ow))


@functools.lru_cache(maxsize=None)
def upsample_then_pool_matrix(n_in: int, scale: int, kernel: int) -> np.ndarray:
    return avg_pool_matrix(n_in * scale, kernel) @ nearest_matrix(n_in, n_in * scale)


def upsample_nearest_then_avg_pool(x, scale: int = 7, kernel: int = 32):
    """nn.Upsample(scale_factor=scale) (nearest) then nn.AvgPool2d(kernel): 1024 -> 224 for FFCLIP's CLIP loss."""
    return apply_separable(x, upsample_then_pool_matrix(x.shape[1], scale, kernel),
                           upsample_then_pool_matrix(x.shape[2], scale, kernel))


@functools.lru_cache(maxsize=None)
def bilinear_align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    # PyTorch's float32 source index scale * i, lambda clamped to [0, 1], right neighbour clamped at the border
    m = np.zeros((n_out, n_in), np.float64)
    if n_in == n_out:
        m[np.arange(n_out), np.arange(n_out)] = 1.0
        return m
    f32 = np.float32
    scale = f32(n_in - 1) / f32(n_out - 1) if n_out > 1 else f32(0)
    for i in range(n_out):
        x = f32(scale * f32(i))
        x0 = int(x)
        t = min(max(f32(x - f32(x0)), f32(0)), f32(1))
        m[i, x0] += f32(1) - t
        m[i, min(x0 + 1, n_in - 1)] += t
    return m


def resize_bilinear_align_corners(x, size):
    """F.interpolate(mode='bilinear', align_corners=True) on NHWC `x` to `size` (int or (H, W))."""
    oh, ow = _size2(size)
    return apply_separable(x, bilinear_align_corners_matrix(x.shape[1], oh),
                           bilinear_align_corners_matrix(x.shape[2], ow))
