"""e4e's `Encoder4Editing` and pSp's `GradualStyleEncoder` (omertov/encoder4editing `models/encoders/psp_encoders.py`)
in Flax, NHWC: photo in [-1, 1] -> w+ codes (B, n_latent, style_dim), latent_avg added as pSp does.

Variables: `params` (named as the upstream `encoder.*` keys without the prefix), `batch_stats` (BatchNorm running
stats) and `buffers` (`latent_avg` (n_latent, style_dim)).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from ffclip_jax.errors import ConfigError, InputError
from ffclip_jax.nn.image_ops import resize_bilinear_align_corners
from ffclip_jax.models.irse import irse_backbone
from ffclip_jax.models.stylegan2 import n_latent as latents_of_size
from ffclip_jax.nn.layers import Conv2d, EqualLinear, leaky_relu

COARSE_IND, MIDDLE_IND = 3, 7  # styles [0, 3) read c3, [3, 7) the FPN's p2, [7, n) p1
TAPS = (6, 20, 23)  # body units whose outputs are c1 (128 ch), c2 (256 ch), c3 (512 ch)
ENCODER_TYPES = {"Encoder4Editing": "e4e", "GradualStyleEncoder": "psp"}


def style_spatial(i: int) -> int:
    """The feature size GradualStyleBlock i is built for (16, 32 or 64): log2 of it is its number of stride-2 convs."""
    return 16 if i < COARSE_IND else 32 if i < MIDDLE_IND else 64


class GradualStyleBlock(nn.Module):
    """`GradualStyleBlock(512, width, spatial)`: log2(spatial) x [Conv3x3 stride 2 pad 1 -> LeakyReLU(0.01)], flatten,
    EqualLinear(width, width). (B, h, w, C) -> (B, width); the convs must bring h, w down to 1."""
    width: int
    spatial: int

    @nn.compact
    def __call__(self, x):
        for j in range(int(math.log2(self.spatial))):
            x = Conv2d(self.width, 3, 2, 1, name=f"convs_{2 * j}")(x)
            x = leaky_relu(x, 0.01)
        if x.shape[1:3] != (1, 1):
            raise InputError(f"GradualStyleBlock(spatial={self.spatial}): features end at {x.shape[1]}x{x.shape[2]} "
                             f"instead of 1x1; the encoder input is too large for this block")
        return EqualLinear(self.width, name="linear")(x.reshape(x.shape[0], self.width))


def upsample_add(x, y):
    """`_upsample_add`: bilinear (align_corners=True) upsample of x to y's size, plus y."""
    return resize_bilinear_align_corners(x, y.shape[1:3]) + y


class _StyleEncoder(nn.Module):
    """IR-SE backbone with taps c1, c2, c3, the FPN (latlayer1/2) and n_latent GradualStyleBlocks; subclasses say how
    the styles combine. Config: num_layers (50/100/152), mode ('ir'/'ir_se'), stylegan_size (n_latent =
    2 log2(size) - 2), style_dim (512 upstream; smaller only for tests), input_size (H, W) the photos are resized to
    (256x256; cars 192x256; any size whose features reach the style blocks' 1x1 works), start_from_latent_avg."""
    num_layers: int = 50
    mode: str = "ir_se"
    stylegan_size: int = 1024
    style_dim: int = 512
    input_size: Tuple[int, int] = (256, 256)
    start_from_latent_avg: bool = True

    @property
    def n_latent(self) -> int:
        return latents_of_size(self.stylegan_size)

    def _check(self, x):
        if 2 ** int(math.log2(self.stylegan_size)) != self.stylegan_size or self.stylegan_size < 8:
            raise ConfigError(f"stylegan_size must be a power of two >= 8, got {self.stylegan_size}")
        if x.ndim != 4 or x.shape[-1] != 3:
            raise InputError(f"encoder input must be NHWC RGB images (B, H, W, 3) in [-1, 1], got shape "
                             f"{tuple(x.shape)}")

    def _pyramid(self, x):
        """Backbone taps and FPN: [c3 (B, H/16, W/16, 512), p2 (H/8), p1 (H/4)], the inputs of style groups coarse,
        middle and fine. p2 = upsample(c3) + latlayer1(c2), p1 = upsample(p2) + latlayer2(c1). (Under jit, levels
        that no style reads are dropped by XLA.)"""
        _, (c1, c2, c3) = irse_backbone(x, self.num_layers, self.mode, TAPS)
        p2 = upsample_add(c3, Conv2d(512, 1, name="latlayer1")(c2))
        p1 = upsample_add(p2, Conv2d(512, 1, name="latlayer2")(c1))
        return [c3, p2, p1]

    def _style(self, i: int, pyramid):
        """GradualStyleBlock i on the level it reads: c3 (i < 3), p2 (3 <= i < 7), p1 (i >= 7)."""
        level = 0 if i < COARSE_IND else 1 if i < MIDDLE_IND else 2
        return GradualStyleBlock(self.style_dim, style_spatial(i), name=f"styles_{i}")(pyramid[level])

    def _add_latent_avg(self, w):
        latent_avg = self.variable("buffers", "latent_avg", jnp.zeros, (self.n_latent, self.style_dim), jnp.float32)
        return w + latent_avg.value.astype(w.dtype)[None] if self.start_from_latent_avg else w


class Encoder4Editing(_StyleEncoder):
    """e4e `Encoder4Editing`: w0 = styles[0](c3) repeated to every style; then, for i = 1 .. progressive_stage,
    w[:, i] += styles[i](c3 | p2 | p1). progressive_stage None = all deltas (upstream ProgressiveStage.Inference).
    __call__(x (B, H, W, 3) in [-1, 1]) -> codes (B, n_latent, style_dim) (+ latent_avg)."""
    progressive_stage: Optional[int] = None

    @nn.compact
    def __call__(self, x):
        self._check(x)
        pyramid = self._pyramid(x)
        n = self.n_latent
        stage = n - 1 if self.progressive_stage is None else min(int(self.progressive_stage), n - 1)
        w0 = self._style(0, pyramid)
        deltas = [jnp.zeros_like(w0)] + [self._style(i, pyramid) for i in range(1, stage + 1)]
        deltas += [jnp.zeros_like(w0)] * (n - len(deltas))
        w = w0[:, None, :] + jnp.stack(deltas, axis=1)
        return self._add_latent_avg(w)


class GradualStyleEncoder(_StyleEncoder):
    """pSp `GradualStyleEncoder`: styles[i] on c3 (i < 3), p2 (3 <= i < 7), p1 (i >= 7), stacked.
    __call__(x (B, H, W, 3) in [-1, 1]) -> codes (B, n_latent, style_dim) (+ latent_avg)."""

    @nn.compact
    def __call__(self, x):
        self._check(x)
        pyramid = self._pyramid(x)
        latents = [self._style(i, pyramid) for i in range(self.n_latent)]
        return self._add_latent_avg(jnp.stack(latents, axis=1))
