"""IR and IR-SE residual units and the ResNet-IR backbone (input layer + body) shared by e4e/pSp and ArcFace.

Mirrors e4e's `models/encoders/helpers.py` (`bottleneck_IR`, `bottleneck_IR_SE`, `SEModule`, `get_blocks`) and
InsightFace_Pytorch `model.py`, in NHWC. Flax submodule names are the upstream state-dict keys with `.N.` -> `_N/`
(`input_layer_0`, `body_3/res_layer_1`, `body_3/shortcut_layer_0`, `body_3/res_layer_5/fc1`), so converters map
every key with one rule. BatchNorm runs in inference mode (running stats in 'batch_stats', eps 1e-5).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ffclip_jax.errors import ConfigError
from ffclip_jax.nn.layers import BatchNorm2d, Conv2d, PReLU

MODES = ("ir", "ir_se")
# depth -> units per stage; stage depths 64, 128, 256, 512; the first unit of every stage has stride 2.
STAGE_UNITS: Dict[int, Tuple[int, int, int, int]] = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
STAGE_DEPTHS = (64, 128, 256, 512)


def unit_specs(num_layers: int) -> List[Tuple[int, int, int]]:
    """`get_blocks(num_layers)` flattened: one (in_channel, depth, stride) per body unit."""
    if num_layers not in STAGE_UNITS:
        raise ConfigError(f"num_layers must be one of {sorted(STAGE_UNITS)}, got {num_layers}")
    specs, in_ch = [], 64
    for depth, n in zip(STAGE_DEPTHS, STAGE_UNITS[num_layers]):
        specs += [(in_ch, depth, 2)] + [(depth, depth, 1)] * (n - 1)
        in_ch = depth
    return specs


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")


class SEModule(nn.Module):
    """`SEModule(C, reduction)`: x * sigmoid(fc2(relu(fc1(avgpool(x))))), fc1/fc2 1x1 convs without bias."""
    channels: int
    reduction: int = 16

    @nn.compact
    def __call__(self, x):
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.relu(Conv2d(self.channels // self.reduction, 1, use_bias=False, name="fc1")(s))
        s = jax.nn.sigmoid(Conv2d(self.channels, 1, use_bias=False, name="fc2")(s))
        return x * s


def strided_subsample(x, stride: int):
    """`MaxPool2d(1, stride)`: a 1x1 max pool is a strided subsample, output ceil(H / stride) x ceil(W / stride)."""
    return x[:, ::stride, ::stride, :]


class IRBottleneck(nn.Module):
    """`bottleneck_IR` (mode 'ir') / `bottleneck_IR_SE` (mode 'ir_se'): (B, H, W, in) -> (B, H/s, W/s, depth).

    res_layer: BN -> Conv3x3(s1) -> PReLU -> Conv3x3(stride) -> BN [-> SE(16)];
    shortcut_layer: MaxPool2d(1, stride) when in == depth, else Conv1x1(stride) -> BN.
    """
    in_channel: int
    depth: int
    stride: int
    mode: str = "ir_se"

    @nn.compact
    def __call__(self, x):
        if self.in_channel == self.depth:
            shortcut = strided_subsample(x, self.stride)
        else:
            shortcut = Conv2d(self.depth, 1, self.stride, use_bias=False, name="shortcut_layer_0")(x)
            shortcut = BatchNorm2d(name="shortcut_layer_1")(shortcut)
        r = BatchNorm2d(name="res_layer_0")(x)
        r = Conv2d(self.depth, 3, 1, 1, use_bias=False, name="res_layer_1")(r)
        r = PReLU(name="res_layer_2")(r)
        r = Conv2d(self.depth, 3, self.stride, 1, use_bias=False, name="res_layer_3")(r)
        r = BatchNorm2d(name="res_layer_4")(r)
        if self.mode == "ir_se":
            r = SEModule(self.depth, 16, name="res_layer_5")(r)
        return r + shortcut


def irse_backbone(x, num_layers: int, mode: str, taps: Sequence[int] = ()) -> Tuple[jax.Array, List[jax.Array]]:
    """input_layer (Conv3x3(3->64) -> BN -> PReLU) and body, created in the calling compact module (names
    `input_layer_{0,1,2}`, `body_{i}`). x (B, H, W, 3) -> (final (B, H/16, W/16, 512), [output of body unit i for i
    in taps])."""
    check_mode(mode)
    x = Conv2d(64, 3, 1, 1, use_bias=False, name="input_layer_0")(x)
    x = BatchNorm2d(name="input_layer_1")(x)
    x = PReLU(name="input_layer_2")(x)
    tapped: Dict[int, jax.Array] = {}
    for i, (in_ch, depth, stride) in enumerate(unit_specs(num_layers)):
        x = IRBottleneck(in_ch, depth, stride, mode, name=f"body_{i}")(x)
        if i in taps:
            tapped[i] = x
    return x, [tapped[i] for i in taps]

