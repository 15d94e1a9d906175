"""Face-parsing UNet of HairCLIP's / FFCLIP's background loss (`criteria/parse_related_loss/unet.py`,
`unet(feature_scale=4, n_classes=19, is_deconv=True, is_batchnorm=True)`, blocks from pytorch-semseg's
`unetConv2` / `unetUp`), NHWC. Submodules are named after the upstream attributes ('up_concat4.conv.conv1.0.weight'
-> params/up_concat4/conv/conv1_0/weight).
"""
from __future__ import annotations

import flax.linen as nn

import jax.numpy as jnp

from ffclip_jax.errors import InputError
from ffclip_jax.nn.layers import BatchNorm2d, Conv2d, conv_transpose2d_stride2, max_pool

BASE_FILTERS = (64, 128, 256, 512, 1024)
DEPTH = len(BASE_FILTERS) - 1  # 2x2 max-pools: input sides must divide by 2**DEPTH


class UnetConv2(nn.Module):
    """`unetConv2`: two [Conv3x3 (pad 1, bias) -> BatchNorm -> ReLU] as `conv1` and `conv2` (Sequential: `_0` conv,
    `_1` BN); without batchnorm the ReLU follows the conv directly."""
    features: int
    is_batchnorm: bool = True

    @nn.compact
    def __call__(self, x):
        for name in ("conv1", "conv2"):
            x = Conv2d(self.features, 3, 1, 1, name=f"{name}_0")(x)
            if self.is_batchnorm:
                x = BatchNorm2d(name=f"{name}_1")(x)
            x = nn.relu(x)
        return x


class ConvTranspose2x2(nn.Module):
    """`nn.ConvTranspose2d(in, out, kernel_size=2, stride=2)` (padding 0): doubles H and W.
    weight (2, 2, in, out) = the flipped equivalent forward-conv kernel [torch (in, out, 2, 2)], bias (out,)."""
    features: int

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", nn.initializers.lecun_normal(), (2, 2, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return conv_transpose2d_stride2(x, weight) + bias.astype(x.dtype)


class UnetUp(nn.Module):
    """`unetUp` with is_deconv: `up` (transposed conv 2x2/2, in -> out channels) on the coarse input, concatenated
    after the skip input along channels ([skip, up]), then `conv` = UnetConv2(out)."""
    features: int
    is_batchnorm: bool = True

    @nn.compact
    def __call__(self, skip, coarse):
        up = ConvTranspose2x2(self.features, name="up")(coarse)
        return UnetConv2(self.features, self.is_batchnorm, name="conv")(jnp.concatenate([skip, up], axis=-1))


class UNet(nn.Module):
    """`unet`: (B, H, W, 3) image (the generator's [-1, 1] range, no normalisation) -> (B, H, W, n_classes) logits.

    Encoder conv1..conv4 (UnetConv2, each followed by a 2x2 max-pool) and `center`, with filters
    (64, 128, 256, 512, 1024) / feature_scale; decoder up_concat4..1; `final` 1x1 conv. H and W must divide by 16
    (upstream fails otherwise).
    """
    feature_scale: int = 4
    n_classes: int = 19
    is_batchnorm: bool = True

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4 or x.shape[1] % 2 ** DEPTH or x.shape[2] % 2 ** DEPTH:
            raise InputError(f"parsenet: expected NHWC images with H and W divisible by {2 ** DEPTH}, "
                             f"got shape {tuple(x.shape)}")
        filters = [f // self.feature_scale for f in BASE_FILTERS]
        skips = []
        for i in range(DEPTH):
            x = UnetConv2(filters[i], self.is_batchnorm, name=f"conv{i + 1}")(x)
            skips.append(x)
            x = max_pool(x, 2, 2)
        x = UnetConv2(filters[DEPTH], self.is_batchnorm, name="center")(x)
        for i in reversed(range(DEPTH)):
            x = UnetUp(filters[i], self.is_batchnorm, name=f"up_concat{i + 1}")(skips[i], x)
        return Conv2d(self.n_classes, 1, name="final")(x)
