"""ArcFace identity network: InsightFace `Backbone(input_size, num_layers, mode)` (TreB1eN/InsightFace_Pytorch
`model.py`, e4e's `models/encoders/model_irse.py`) in Flax, NHWC, inference mode (dropout is the identity).

Variables: `params` named as the upstream keys (`input_layer_*`, `body_*`, `output_layer_{0,3,4}`) and
`batch_stats` (BatchNorm running stats). FFCLIP's ID loss uses Backbone(112, 50, 'ir_se').
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ffclip_jax.errors import ConfigError, InputError
from ffclip_jax.models.irse import irse_backbone
from ffclip_jax.nn import image_ops
from ffclip_jax.nn.layers import BatchNorm2d, Linear, l2_normalize

INPUT_SIZES = (112, 224)
ID_POOL_SIZE = 256
ID_CROP = (slice(35, 223), slice(32, 220))  # rows, columns of the 256x256 pooled face
ARCFACE_SIZE = 112


def arcface_input(x):
    """FFCLIP's IDLoss.extract_feats preprocessing of images of any size: adaptive avg pool to 256, crop
    [35:223, 32:220], adaptive avg pool to 112 (overlapping PyTorch windows). (B, H, W, 3) -> (B, 112, 112, 3)."""
    x = image_ops.adaptive_avg_pool2d(x, ID_POOL_SIZE)
    return image_ops.adaptive_avg_pool2d(x[:, ID_CROP[0], ID_CROP[1], :], ARCFACE_SIZE)


class Backbone(nn.Module):
    """`Backbone(input_size, num_layers, mode)`: x (B, S, S, 3) in [-1, 1], S = input_size -> (B, 512) L2-normalised
    features. Output layer: BN2d -> Dropout (identity) -> flatten in NCHW order -> Linear(512 * (S/16)^2, 512) ->
    BN1d."""
    input_size: int = 112
    num_layers: int = 50
    mode: str = "ir_se"

    @nn.compact
    def __call__(self, x):
        if self.input_size not in INPUT_SIZES:
            raise ConfigError(f"ArcFace input_size must be one of {INPUT_SIZES}, got {self.input_size}")
        s = self.input_size
        if x.ndim != 4 or x.shape[1:] != (s, s, 3):
            raise InputError(f"ArcFace Backbone({s}) expects images (B, {s}, {s}, 3), got shape {tuple(x.shape)}")
        x, _ = irse_backbone(x, self.num_layers, self.mode)
        x = BatchNorm2d(name="output_layer_0")(x)
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch Flatten of NCHW
        x = Linear(512, name="output_layer_3")(x)
        x = BatchNorm2d(name="output_layer_4")(x)  # BatchNorm1d(512): same inference formula over the last axis
        return l2_normalize(x)
