"""StyleGAN2 generator (rosinality/stylegan2-pytorch `Generator`) in Flax, NHWC.

Variables: `params` (weights, named as upstream's state-dict keys with `.N.` -> `_N/`) and `buffers`
(`latent_avg` (style_dim,), `noise_i` (1, H, W, 1): the checkpoint's fixed noise buffers `noises.noise_i`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from ffclip_jax.nn.layers import EqualLinear, FusedLeakyReLU, ModulatedConv2d, NoiseInjection, Upsample, pixel_norm

NOISE_MODES = ("const", "random", "none")


def channels_for(size: int, channel_multiplier: int, channel_max: int = 512) -> int:
    """Feature channels at resolution `size` (upstream's `self.channels`), capped at `channel_max`."""
    cm = channel_multiplier
    return min(channel_max, {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm,
                             512: 32 * cm, 1024: 16 * cm}[size])


def n_latent(size: int) -> int:
    """Number of w+ rows of a `size` px generator (= styles an e4e encoder predicts): 2 log2(size) - 2."""
    return 2 * int(math.log2(size)) - 2


class ConstantInput(nn.Module):
    """`ConstantInput`: learned (1, 4, 4, C) tensor repeated over the batch."""
    channels: int
    size: int = 4

    @nn.compact
    def __call__(self, batch: int, dtype=jnp.float32):
        x = self.param("input", nn.initializers.normal(1.0), (1, self.size, self.size, self.channels))
        return jnp.broadcast_to(x.astype(dtype), (batch,) + x.shape[1:])


class StyledConv(nn.Module):
    """`StyledConv`: modulated conv -> noise injection -> fused leaky ReLU."""
    features: int
    kernel_size: int = 3
    upsample: bool = False
    blur_kernel: Sequence[float] = (1, 3, 3, 1)
    modconv: str = "input_scaling"

    @nn.compact
    def __call__(self, x, style, noise):
        x = ModulatedConv2d(self.features, self.kernel_size, upsample=self.upsample, blur_kernel=self.blur_kernel,
                            modconv=self.modconv, name="conv")(x, style)
        x = NoiseInjection(name="noise")(x, noise)
        return FusedLeakyReLU(name="activate")(x)


class ToRGB(nn.Module):
    """`ToRGB`: 1x1 modulated conv without demodulation + bias, plus the upsampled skip."""
    blur_kernel: Sequence[float] = (1, 3, 3, 1)
    modconv: str = "input_scaling"

    @nn.compact
    def __call__(self, x, style, skip=None):
        out = ModulatedConv2d(3, 1, demodulate=False, modconv=self.modconv, name="conv")(x, style)
        out = out + self.param("bias", nn.initializers.zeros, (3,)).astype(out.dtype)
        if skip is not None:
            out = out + Upsample(self.blur_kernel)(skip)
        return out


class Generator(nn.Module):
    """rosinality `Generator(size, style_dim, n_mlp, channel_multiplier, blur_kernel, lr_mlp)`.

    __call__(styles, ...) -> image (B, size, size, 3) float32 in the generator's raw range (about [-1, 1]), or
    (image, latent (B, n_latent, style_dim)) with return_latents.
    styles: z (B, style_dim), w (B, style_dim) or w+ (B, n_latent, style_dim) with input_is_latent; a list of two
    for style mixing at inject_index.
    noise_mode: "const" (the checkpoint's buffers, as FFCLIP uses), "random" (rng stream "noise"), "none".
    modconv: "input_scaling" (default, fastest on accelerators and CPU) or "grouped".
    channel_max: caps the feature channels (512 = upstream; smaller values make tiny test/demo generators cheap).
    """
    size: int = 1024
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    blur_kernel: Sequence[float] = (1, 3, 3, 1)
    lr_mlp: float = 0.01
    modconv: str = "input_scaling"
    remat: bool = False
    channel_max: int = 512

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        return n_latent(self.size)

    @property
    def num_layers(self) -> int:
        return (self.log_size - 2) * 2 + 1

    def setup(self):
        if self.size < 4 or 2 ** self.log_size != self.size or self.size > 1024:
            raise ValueError(f"Generator: size must be a power of two in [4, 1024], got {self.size}")
        self.style = [EqualLinear(self.style_dim, lr_mul=self.lr_mlp, activation="fused_lrelu", name=f"style_{i}")
                      for i in range(1, self.n_mlp + 1)]
        channels = [channels_for(2 ** i, self.channel_multiplier, self.channel_max)
                    for i in range(2, self.log_size + 1)]
        self.input = ConstantInput(channels[0])
        self.conv1 = StyledConv(channels[0], blur_kernel=self.blur_kernel, modconv=self.modconv)
        self.to_rgb1 = ToRGB(self.blur_kernel, self.modconv)
        conv = nn.remat(StyledConv) if self.remat else StyledConv
        rgb = nn.remat(ToRGB) if self.remat else ToRGB
        self.convs = [conv(channels[1 + j // 2], upsample=j % 2 == 0, blur_kernel=self.blur_kernel,
                           modconv=self.modconv)
                      for j in range(2 * (self.log_size - 2))]
        self.to_rgbs = [rgb(self.blur_kernel, self.modconv) for _ in range(self.log_size - 2)]
        self.latent_avg = self.variable("buffers", "latent_avg", jnp.zeros, (self.style_dim,), jnp.float32)
        self.noises = {
            f"noise_{i}": self.variable(
                "buffers", f"noise_{i}",
                lambda s: jax.random.normal(self.make_rng("params"), s, jnp.float32),
                (1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), 1))
            for i in range(self.num_layers)}

    def mapping(self, z):
        """The mapping network `style`: PixelNorm then n_mlp EqualLinear(lr_mul=lr_mlp, fused lrelu). (B, D) -> (B, D)."""
        x = pixel_norm(z)
        for layer in self.style:
            x = layer(x)
        return x

    def w_plus(self, z, truncation=1.0):
        """z (B, D) -> mapping -> truncation (a number or one per row, (B,)) towards latent_avg -> w+ (B, n_latent,
        D), every row the same w."""
        w = self.mapping(z)
        avg = self.variables["buffers"]["latent_avg"]
        w = avg + jnp.reshape(jnp.asarray(truncation, w.dtype), (-1, 1)) * (w - avg)
        return jnp.broadcast_to(w[:, None], (w.shape[0], self.n_latent, w.shape[-1]))

    def mean_latent(self, n: int, key):
        """`mean_latent(n)`: the mean of n mapped z ~ N(0, I), shape (1, style_dim)."""
        z = jax.random.normal(key, (n, self.style_dim), jnp.float32)
        return self.mapping(z).mean(0, keepdims=True)

    def _check_styles(self, styles, input_is_latent):
        for s in styles:
            ok = (s.ndim == 2 and s.shape[-1] == self.style_dim) or (
                input_is_latent and s.ndim == 3 and s.shape[1:] == (self.n_latent, self.style_dim))
            if not ok:
                want = f"(B, {self.style_dim})" + (
                    f" or w+ (B, {self.n_latent}, {self.style_dim})" if input_is_latent else " (z)")
                raise ValueError(f"Generator(size={self.size}): styles must have shape {want}, got {tuple(s.shape)}")

    def _noise(self, noise_mode, noise, batch):
        if noise is not None:
            if len(noise) != self.num_layers:
                raise ValueError(f"Generator: expected {self.num_layers} noise maps, got {len(noise)}")
            return list(noise)
        if noise_mode == "const":
            return [self.noises[f"noise_{i}"].value for i in range(self.num_layers)]
        if noise_mode == "random":
            key = self.make_rng("noise")
            keys = jax.random.split(key, self.num_layers)
            return [jax.random.normal(keys[i], (batch, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), 1))
                    for i in range(self.num_layers)]
        if noise_mode == "none":
            return [None] * self.num_layers
        raise ValueError(f"Generator: noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")

    def __call__(self, styles, *, input_is_latent: bool = False, noise_mode: str = "const",
                 noise: Optional[Sequence] = None, truncation: float = 1.0, truncation_latent=None,
                 inject_index: Union[int, jax.Array, None] = None, return_latents: bool = False):
        styles = list(styles) if isinstance(styles, (list, tuple)) else [styles]
        if not 1 <= len(styles) <= 2:
            raise ValueError(f"Generator: give one style or two (style mixing), got {len(styles)}")
        styles = [jnp.asarray(s) for s in styles]
        self._check_styles(styles, input_is_latent)
        if not input_is_latent:
            styles = [self.mapping(s) for s in styles]
        if truncation < 1:
            t_lat = self.latent_avg.value if truncation_latent is None else jnp.asarray(truncation_latent)
            t_lat = t_lat.reshape((1,) * (styles[0].ndim - 1) + (self.style_dim,)) if t_lat.size == self.style_dim \
                else t_lat
            styles = [t_lat + truncation * (s - t_lat) for s in styles]
        if len(styles) == 1:
            s = styles[0]
            latent = s if s.ndim == 3 else jnp.broadcast_to(s[:, None], (s.shape[0], self.n_latent, self.style_dim))
        else:
            if inject_index is None:
                raise ValueError("Generator: style mixing needs inject_index (1 .. n_latent-1)")
            s0, s1 = (s if s.ndim == 2 else s[:, 0] for s in styles)
            first = (jnp.arange(self.n_latent) < inject_index)[None, :, None]
            latent = jnp.where(first, s0[:, None], s1[:, None])
        batch = latent.shape[0]
        noise = self._noise(noise_mode, noise, batch)

        x = self.input(batch, latent.dtype)
        x = self.conv1(x, latent[:, 0], noise[0])
        skip = self.to_rgb1(x, latent[:, 1])
        i = 1
        for k, to_rgb in enumerate(self.to_rgbs):
            x = self.convs[2 * k](x, latent[:, i], noise[2 * k + 1])
            x = self.convs[2 * k + 1](x, latent[:, i + 1], noise[2 * k + 2])
            skip = to_rgb(x, latent[:, i + 2], skip)
            i += 2
        image = skip.astype(jnp.promote_types(skip.dtype, jnp.float32))
        return (image, latent) if return_latents else image
