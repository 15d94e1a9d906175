"""MoCo v2 feature extractor: torchvision's ResNet-50 (v1.5: stride on the 3x3 conv) without `fc`, global-average
pooled to (B, 2048) features, as e4e's `criteria/moco_loss.py` uses it for non-face domains.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from ffclip_jax.nn.layers import BatchNorm2d, Conv2d, max_pool


class ResNetBottleneck(nn.Module):
    """torchvision `Bottleneck` (expansion 4): 1x1 -> 3x3 (stride) -> 1x1, each with BN; ReLU after the residual sum.
    `downsample` (1x1 conv with stride, BN) on the shortcut when the shape changes."""
    width: int
    stride: int = 1
    downsample: bool = False

    @nn.compact
    def __call__(self, x):
        out = nn.relu(BatchNorm2d(name="bn1")(Conv2d(self.width, 1, use_bias=False, name="conv1")(x)))
        out = Conv2d(self.width, 3, self.stride, 1, use_bias=False, name="conv2")(out)
        out = nn.relu(BatchNorm2d(name="bn2")(out))
        out = BatchNorm2d(name="bn3")(Conv2d(self.width * 4, 1, use_bias=False, name="conv3")(out))
        if self.downsample:
            x = Conv2d(self.width * 4, 1, self.stride, use_bias=False, name="downsample_0")(x)
            x = BatchNorm2d(name="downsample_1")(x)
        return nn.relu(out + x)


class ResNet50(nn.Module):
    """torchvision `resnet50` without `fc`: (B, H, W, 3) -> (B, 4 * 8 * width) = (B, 2048) pooled features.

    Stem conv1 7x7/2 (no bias) -> bn1 -> ReLU -> maxpool 3/2 pad 1; layer1..4 of `stage_sizes` Bottlenecks with widths
    width * (1, 2, 4, 8), the first of layers 2-4 with stride 2; global average pool. Submodules are named after the
    torchvision keys (`layer1_0/downsample_0` for 'layer1.0.downsample.0'). `stage_sizes`/`width` other than the
    defaults only serve small test models.
    """
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    width: int = 64

    @nn.compact
    def __call__(self, x):
        x = Conv2d(self.width, 7, 2, 3, use_bias=False, name="conv1")(x)
        x = max_pool(nn.relu(BatchNorm2d(name="bn1")(x)), 3, 2, 1)
        in_ch = self.width
        for i, n_blocks in enumerate(self.stage_sizes):
            width = self.width * 2 ** i
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                x = ResNetBottleneck(width, stride, downsample=(j == 0 and (stride != 1 or in_ch != width * 4)),
                               name=f"layer{i + 1}_{j}")(x)
                in_ch = width * 4
        return jnp.mean(x, axis=(1, 2))
