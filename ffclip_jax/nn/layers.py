"""Every generic layer, written once: equalized-lr linear/conv, fused leaky ReLU, PixelNorm, upfirdn2d, blur,
modulated convolution, noise injection (rosinality/stylegan2-pytorch `model.py`, `op/upfirdn2d.py`,
`op/fused_act.py`), and the plain torch.nn layers the other networks are made of (Conv2d, BatchNorm2d, Linear,
LayerNorm, PReLU, max pool), in NHWC with HWIO kernels. Parameter names follow the PyTorch attribute names so that
the converters stay declarative.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

SQRT2 = math.sqrt(2.0)
IntPair = Union[int, Tuple[int, int]]


def _pair(v: IntPair) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def make_kernel(k: Sequence[float]) -> np.ndarray:
    """rosinality `make_kernel`: outer(k, k) for a 1D k, normalised to sum 1 (float32 numpy)."""
    k = np.asarray(k, dtype=np.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def leaky_relu(x, negative_slope):
    """torch `F.leaky_relu` / `nn.PReLU`: x where x >= 0, else x * negative_slope (a scalar or per-channel array)."""
    return jnp.where(x >= 0, x, x * negative_slope)


def fused_leaky_relu(x, bias=None, negative_slope: float = 0.2, scale: float = SQRT2):
    """`fused_leaky_relu`: leaky_relu(x + bias, 0.2) * sqrt(2); bias broadcasts over the last (channel) axis."""
    if bias is not None:
        x = x + bias.astype(x.dtype)
    return leaky_relu(x, negative_slope) * jnp.asarray(scale, x.dtype)


def l2_normalize(x, axis: int = -1, eps: float = 0.0):
    """x / max(||x||_2, eps) along `axis`: eps 0 is OpenAI CLIP's / InsightFace's plain division, 1e-12 torch's
    `F.normalize`."""
    norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
    return x / (jnp.maximum(norm, eps) if eps else norm)


def pixel_norm(x, axis: int = -1, eps: float = 1e-8):
    """`PixelNorm`: x * rsqrt(mean(x^2 over `axis`) + eps)."""
    return x * lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + eps)


# ----------------------------------------------------------------------------------------------------------------
# upfirdn2d


def _fir_along(x, taps: np.ndarray, axis: int):
    """Valid correlation of `x` with the 1D `taps` along `axis` (as shifted slices: no grouped convolution)."""
    n = x.shape[axis] - len(taps) + 1
    out = None
    for i, t in enumerate(taps):
        if t == 0:
            continue
        term = lax.slice_in_dim(x, i, i + n, axis=axis) * jnp.asarray(t, x.dtype)
        out = term if out is None else out + term
    if out is None:
        out = jnp.zeros(x.shape[:axis] + (n,) + x.shape[axis + 1:], x.dtype)
    return out


def _fir_2d(x, kernel: np.ndarray):
    """Valid 2D correlation over (H, W) of NHWC `x` with a constant kernel; separable kernels run as two 1D passes."""
    u, s, vt = np.linalg.svd(kernel.astype(np.float64))
    if s.size > 1 and s[1] <= 1e-7 * s[0]:
        col = (u[:, 0] * math.sqrt(s[0])).astype(np.float32)
        row = (vt[0] * math.sqrt(s[0])).astype(np.float32)
        if col.sum() < 0:
            col, row = -col, -row
        return _fir_along(_fir_along(x, col, 1), row, 2)
    kh, kw = kernel.shape
    oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = jnp.zeros(x.shape[:1] + (oh, ow) + x.shape[3:], x.dtype)
    for i in range(kh):
        for j in range(kw):
            if kernel[i, j] != 0:
                out = out + x[:, i:i + oh, j:j + ow] * jnp.asarray(kernel[i, j], x.dtype)
    return out


def _pad_or_crop(x, axis: int, lo: int, hi: int):
    if lo < 0:
        x = lax.slice_in_dim(x, -lo, x.shape[axis], axis=axis)
        lo = 0
    if hi < 0:
        x = lax.slice_in_dim(x, 0, x.shape[axis] + hi, axis=axis)
        hi = 0
    if lo or hi:
        cfg = [(0, 0)] * x.ndim
        cfg[axis] = (lo, hi)
        x = jnp.pad(x, cfg)
    return x


def upfirdn2d(x, kernel, up: IntPair = 1, down: IntPair = 1, pad: Sequence[int] = (0, 0)):
    """Upsample (zero insertion), pad (negative pads crop), FIR filter with the flipped kernel, downsample.

    Equal to rosinality's `upfirdn2d(input, kernel, up, down, pad)` on NHWC input. `pad` is (p0, p1) for both axes or
    (x0, x1, y0, y1) as upstream. `kernel` is a constant 2D array (numpy), not a traced value.
    """
    up_x, up_y = _pair(up) if not isinstance(up, int) else (up, up)
    down_x, down_y = _pair(down) if not isinstance(down, int) else (down, down)
    if len(pad) == 2:
        pad = (pad[0], pad[1], pad[0], pad[1])
    px0, px1, py0, py1 = (int(p) for p in pad)
    kernel = np.asarray(kernel, np.float32)
    if kernel.ndim != 2:
        raise ValueError(f"upfirdn2d: kernel must be 2D, got shape {kernel.shape}")
    b, h, w, c = x.shape
    if up_y > 1 or up_x > 1:
        x = x.reshape(b, h, 1, w, 1, c)
        x = jnp.pad(x, [(0, 0), (0, 0), (0, up_y - 1), (0, 0), (0, up_x - 1), (0, 0)])
        x = x.reshape(b, h * up_y, w * up_x, c)
    x = _pad_or_crop(x, 1, py0, py1)
    x = _pad_or_crop(x, 2, px0, px1)
    x = _fir_2d(x, kernel[::-1, ::-1])
    if down_y > 1 or down_x > 1:
        x = x[:, ::down_y, ::down_x, :]
    return x


class Blur(nn.Module):
    """`Blur`: upfirdn2d with make_kernel(kernel) (times factor^2 after an upsample) and the given pad."""
    kernel: Sequence[float] = (1, 3, 3, 1)
    pad: Tuple[int, int] = (0, 0)
    upsample_factor: int = 1

    def __call__(self, x):
        k = make_kernel(self.kernel) * (self.upsample_factor ** 2)
        return upfirdn2d(x, k, pad=self.pad)


class Upsample(nn.Module):
    """`Upsample`: upfirdn2d(up=factor) with make_kernel(kernel) * factor^2."""
    kernel: Sequence[float] = (1, 3, 3, 1)
    factor: int = 2

    def __call__(self, x):
        k = make_kernel(self.kernel) * (self.factor ** 2)
        p = k.shape[0] - self.factor
        return upfirdn2d(x, k, up=self.factor, pad=((p + 1) // 2 + self.factor - 1, p // 2))


class Downsample(nn.Module):
    """`Downsample`: upfirdn2d(down=factor) with make_kernel(kernel)."""
    kernel: Sequence[float] = (1, 3, 3, 1)
    factor: int = 2

    def __call__(self, x):
        k = make_kernel(self.kernel)
        p = k.shape[0] - self.factor
        return upfirdn2d(x, k, down=self.factor, pad=((p + 1) // 2, p // 2))


# ----------------------------------------------------------------------------------------------------------------
# Equalized learning-rate layers


def _normal_over(lr_mul: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.normal(key, shape, dtype) / lr_mul
    return init


class EqualLinear(nn.Module):
    """`EqualLinear`: y = x @ (W * lr_mul / sqrt(in)) + b * lr_mul, optionally followed by fused leaky ReLU.

    weight (in, out) [torch (out, in), transposed], bias (out,).
    """
    features: int
    use_bias: bool = True
    bias_init: float = 0.0
    lr_mul: float = 1.0
    activation: Optional[str] = None  # None or "fused_lrelu"

    @nn.compact
    def __call__(self, x):
        in_dim = x.shape[-1]
        weight = self.param("weight", _normal_over(self.lr_mul), (in_dim, self.features))
        scale = self.lr_mul / math.sqrt(in_dim)
        y = jnp.dot(x, (weight * scale).astype(x.dtype))
        bias = None
        if self.use_bias:
            bias = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,)) * self.lr_mul
        if self.activation == "fused_lrelu":
            return fused_leaky_relu(y, bias)
        if self.activation is not None:
            raise ValueError(f"EqualLinear: unknown activation {self.activation!r}")
        return y if bias is None else y + bias.astype(y.dtype)


def conv2d(x, kernel, stride: IntPair = 1, padding: IntPair = 0, groups: int = 1, lhs_dilation=(1, 1)):
    """NHWC x HWIO convolution with PyTorch's symmetric integer padding."""
    ph, pw = _pair(padding)
    return lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=_pair(stride), padding=[(ph, ph), (pw, pw)],
        lhs_dilation=lhs_dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def conv_transpose2d_stride2(x, kernel, groups: int = 1):
    """PyTorch `conv_transpose2d(x, w.transpose(0, 1), stride=2, padding=0)` for a conv weight w: a stride-1 conv of the
    zero-dilated input padded by k-1, with `kernel` = w in HWIO flipped spatially; (B, H, W, C) -> (B, 2H+kh-2,
    2W+kw-2, O). On CPU its kernel derivative is taken as matrix products (`_kernel_tangent_by_phases`): XLA:CPU
    computes the dilated conv's kernel gradient with a naive loop, 80x slower than PyTorch at 16 x 16, 512 channels
    (what PTI and any tuning of the generator's weights spend their time in)."""
    kernel = kernel.astype(x.dtype)
    return lax.platform_dependent(x, kernel, cpu=functools.partial(_transposed_matmul_kernel_tangent, groups=groups),
                                  default=functools.partial(_transposed_by_dilation, groups=groups))


def _transposed_by_dilation(x, kernel, groups: int = 1):
    kh, kw = kernel.shape[:2]
    return lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding=[(kh - 1, kh - 1), (kw - 1, kw - 1)],
        lhs_dilation=(2, 2), dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _transposed_matmul_kernel_tangent(x, kernel, groups):
    """_transposed_by_dilation, whose derivative in the kernel is `_kernel_tangent_by_phases` (the same linear map;
    its transpose, the kernel gradient, is then matrix products); the input's is the conv's own."""
    return _transposed_by_dilation(x, kernel, groups)


@functools.partial(_transposed_matmul_kernel_tangent.defjvp, symbolic_zeros=True)
def _transposed_jvp(groups, primals, tangents):
    (x, kernel), (dx, dkernel) = primals, tangents
    out = _transposed_by_dilation(x, kernel, groups)
    zero = jax.custom_derivatives.SymbolicZero
    parts = ([] if isinstance(dx, zero) else [_transposed_by_dilation(dx, kernel, groups)]) + (
        [] if isinstance(dkernel, zero) else [_kernel_tangent_by_phases(x, dkernel, groups)])
    return out, sum(parts[1:], parts[0]) if parts else jnp.zeros_like(out)


def _phase_taps(n: int, k: int, r: int):
    """One axis of the dilated form, output y = 2t + r: out[y] = sum_i x[(y + i - k + 1) / 2] kernel[i] over the
    taps i of y's parity. -> (its taps, padding (lo, hi) of x, outputs of phase r): out[2t + r] = sum_j
    x_padded[t + j] kernel[taps[j]]."""
    taps = range((k - 1 - r) % 2, k, 2)
    lo = -((r + (k - 1 - r) % 2 - k + 1) // 2)
    outputs = (2 * n + k - 2 - r + 1) // 2
    return taps, (lo, outputs + len(taps) - 1 - n - lo), outputs


def _kernel_tangent_by_phases(x, kernel, groups: int = 1):
    """_transposed_by_dilation as, per output phase (rh, rw), one matrix product of x's shifted copies (one per tap
    of that parity, side by side) with those taps' (in, out) matrices, the phases interleaved: the same products, no
    zeros multiplied; linear in `kernel`, its transpose in `kernel` is matrix products too."""
    (b, h, w, _), (kh, kw, ci, o) = x.shape, kernel.shape
    xg = x.reshape(b, h, w, groups, ci)
    kg = kernel.reshape(kh, kw, ci, groups, o // groups)
    rows = []
    for rh in (0, 1):
        taps_h, pad_h, nh = _phase_taps(h, kh, rh)
        cols = []
        for rw in (0, 1):
            taps_w, pad_w, nw = _phase_taps(w, kw, rw)
            if not (taps_h and taps_w):  # a 1-tap axis has no odd taps: those outputs are zeros
                cols.append(jnp.zeros((b, nh, nw, o), x.dtype))
                continue
            xp = jnp.pad(xg, ((0, 0), pad_h, pad_w, (0, 0), (0, 0)))
            shifted = jnp.concatenate([xp[:, j:j + nh, i:i + nw] for j in range(len(taps_h))
                                       for i in range(len(taps_w))], axis=-1)  # (b, nh, nw, groups, taps * ci)
            matrix = jnp.concatenate([kg[a, a2] for a in taps_h for a2 in taps_w], axis=0)  # (taps * ci, groups, o/g)
            if groups == 1:  # a plain matrix product (a batched one over a unit axis is slower on XLA:CPU)
                out = jnp.einsum("bhwc,co->bhwo", shifted[:, :, :, 0], matrix[:, 0])
            else:
                out = jnp.einsum("bhwgc,cgo->bhwgo", shifted, matrix)
            cols.append(out.reshape(b, nh, nw, o))
        rows.append(_interleave(cols, axis=2))
    return _interleave(rows, axis=1)


def _interleave(phases, axis: int):
    """[even, odd] -> out[2t] = even[t], out[2t+1] = odd[t] along `axis` (even has as many entries as odd, or one
    more)."""
    even, odd = phases
    n = even.shape[axis] + odd.shape[axis]
    pad = [(0, 0)] * odd.ndim
    pad[axis] = (0, even.shape[axis] - odd.shape[axis])
    both = jnp.stack([even, jnp.pad(odd, pad)], axis=axis + 1)
    shape = even.shape[:axis] + (2 * even.shape[axis],) + even.shape[axis + 1:]
    return lax.slice_in_dim(both.reshape(shape), 0, n, axis=axis)


class FusedLeakyReLU(nn.Module):
    """`FusedLeakyReLU`: learned per-channel bias then leaky ReLU(0.2) * sqrt(2)."""

    @nn.compact
    def __call__(self, x):
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        return fused_leaky_relu(x, bias)


class NoiseInjection(nn.Module):
    """`NoiseInjection`: x + weight * noise, noise (B, H, W, 1); weight is a learned scalar of shape (1,)."""

    @nn.compact
    def __call__(self, x, noise):
        weight = self.param("weight", nn.initializers.zeros, (1,))
        if noise is None:
            return x
        return x + weight.astype(x.dtype) * noise.astype(x.dtype)


# Plain torch.nn layers with PyTorch's parameter names (`weight`, `bias`, `running_mean`, `running_var`), so the
# converters of plain torch.nn models (IR-SE, ArcFace, parsing UNet, ResNet) map keys one to one.


class Conv2d(nn.Module):
    """`nn.Conv2d` with PyTorch's symmetric padding: weight (k, k, in, out) [torch (out, in, k, k)], bias (out,)."""
    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True

    def weight_init(self):
        return nn.initializers.lecun_normal()

    def scaled(self, weight):
        """The kernel the convolution uses (equalized learning rate scales it)."""
        return weight

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        weight = self.param("weight", self.weight_init(), (k, k, x.shape[-1], self.features))
        y = conv2d(x, self.scaled(weight), self.stride, self.padding)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(y.dtype)
        return y


class EqualConv2d(Conv2d):
    """`EqualConv2d`: conv with weight * 1/sqrt(in * k^2), N(0, 1) init, PyTorch padding. weight HWIO [torch OIHW]."""

    def weight_init(self):
        return nn.initializers.normal(1.0)

    def scaled(self, weight):
        k, _, in_ch, _ = weight.shape
        return weight * (1 / math.sqrt(in_ch * k * k))


class BatchNorm2d(nn.Module):
    """`nn.BatchNorm2d` in inference mode: (x - running_mean) * rsqrt(running_var + eps) * weight + bias over the
    channel (last) axis. Params `weight`, `bias`; collection 'batch_stats' holds `running_mean`, `running_var`."""
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        weight = self.param("weight", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        mean = self.variable("batch_stats", "running_mean", jnp.zeros, (c,)).value
        var = self.variable("batch_stats", "running_var", jnp.ones, (c,)).value
        scale = (weight * lax.rsqrt(var + self.eps)).astype(x.dtype)
        return (x - mean.astype(x.dtype)) * scale + bias.astype(x.dtype)


def torch_uniform_init(fan_in: int):
    """PyTorch's nn.Linear default for weights (kaiming_uniform with a=sqrt(5)) and biases: U(-1/sqrt(fan_in), +)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


class Linear(nn.Module):
    """torch `nn.Linear(in, features, bias)` with PyTorch's init: weight (in, out) [torch (out, in)], bias (out,)."""
    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        weight = self.param("weight", torch_uniform_init(fan_in), (fan_in, self.features))
        y = jnp.dot(x, weight.astype(x.dtype))
        if self.use_bias:
            y = y + self.param("bias", torch_uniform_init(fan_in), (self.features,)).astype(y.dtype)
        return y


LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm default (flax's is 1e-6)


def layer_norm(x, eps: float = LAYER_NORM_EPS):
    """torch LayerNorm over the last axis without affine: (x - mean) / sqrt(biased var + eps)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * lax.rsqrt(var + eps)


class LayerNorm(nn.Module):
    """torch `nn.LayerNorm(dim)` with affine: params `weight` (ones) and `bias` (zeros), eps 1e-5."""

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        weight = self.param("weight", nn.initializers.ones, (dim,))
        bias = self.param("bias", nn.initializers.zeros, (dim,))
        return layer_norm(x) * weight.astype(x.dtype) + bias.astype(x.dtype)


class PReLU(nn.Module):
    """`nn.PReLU(C)`: max(0, x) + weight * min(0, x) with one slope per channel (last axis). weight (C,)."""

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", nn.initializers.constant(0.25), (x.shape[-1],))
        return leaky_relu(x, weight.astype(x.dtype))


def max_pool(x, kernel: int, stride: int, padding: int = 0):
    """`nn.MaxPool2d(kernel, stride, padding)` (padding with -inf, floor mode) on NHWC."""
    return nn.max_pool(x, (kernel, kernel), strides=(stride, stride), padding=((padding, padding), (padding, padding)))


MODCONV_FORMS = ("input_scaling", "grouped")


class ModulatedConv2d(nn.Module):
    """`ModulatedConv2d`: style-modulated (optionally demodulated) conv, optionally upsampling by 2 (transposed conv
    stride 2 then Blur) or downsampling (Blur then stride 2).

    modconv="input_scaling": x * style -> conv with the shared weight -> * demod (rosinality fused=False; no grouped conv).
    modconv="grouped": per-sample weights in one grouped conv (rosinality fused=True).
    Params: weight (k, k, in, out) [torch (1, out, in, k, k)], modulation = EqualLinear(style -> in, bias_init=1).
    """
    features: int
    kernel_size: int
    demodulate: bool = True
    upsample: bool = False
    downsample: bool = False
    blur_kernel: Sequence[float] = (1, 3, 3, 1)
    modconv: str = "input_scaling"
    eps: float = 1e-8

    def _blur(self):
        factor, k = 2, self.kernel_size
        if self.upsample:
            p = (len(self.blur_kernel) - factor) - (k - 1)
            return Blur(self.blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        p = (len(self.blur_kernel) - factor) + (k - 1)
        return Blur(self.blur_kernel, pad=((p + 1) // 2, p // 2))

    @nn.compact
    def __call__(self, x, style):
        if self.modconv not in MODCONV_FORMS:
            raise ValueError(f"ModulatedConv2d: modconv must be one of {MODCONV_FORMS}, got {self.modconv!r}")
        b, _, _, in_ch = x.shape
        k = self.kernel_size
        weight = self.param("weight", nn.initializers.normal(1.0), (k, k, in_ch, self.features))
        weight = (weight * (1 / math.sqrt(in_ch * k * k))).astype(x.dtype)
        s = EqualLinear(in_ch, bias_init=1.0, name="modulation")(style).astype(x.dtype)  # (B, in)
        demod = None
        if self.demodulate:
            w2 = jnp.einsum("hwio,bi->bo", jnp.square(weight), jnp.square(s))
            demod = lax.rsqrt(w2 + self.eps)  # (B, out)
        blur = self._blur() if (self.upsample or self.downsample) else None

        if self.modconv == "input_scaling":
            x = x * s[:, None, None, :]
            if self.upsample:
                out = blur(conv_transpose2d_stride2(x, weight[::-1, ::-1]))
            elif self.downsample:
                out = conv2d(blur(x), weight, stride=2)
            else:
                out = conv2d(x, weight, padding=k // 2)
            if demod is not None:
                out = out * demod[:, None, None, :]
            return out

        # grouped: per-sample kernels (B, k, k, in, out) laid out as one grouped conv over a batch of one
        wb = weight[None] * s[:, None, None, :, None]
        if demod is not None:
            wb = wb * demod[:, None, None, None, :]
        h, w_ = x.shape[1:3]
        xg = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, h, w_, b * in_ch)
        wg = jnp.transpose(wb, (1, 2, 3, 0, 4)).reshape(k, k, in_ch, b * self.features)
        if self.upsample:
            out = conv_transpose2d_stride2(xg, wg[::-1, ::-1], groups=b)
        elif self.downsample:
            out = conv2d(blur(xg), wg, stride=2, groups=b)
        else:
            out = conv2d(xg, wg, padding=k // 2, groups=b)
        oh, ow = out.shape[1:3]
        out = jnp.transpose(out.reshape(oh, ow, b, self.features), (2, 0, 1, 3))
        if self.upsample:
            out = blur(out)
        return out
