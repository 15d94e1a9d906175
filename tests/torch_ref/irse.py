"""PyTorch oracles for the IR / IR-SE networks (our own code; state-dict keys identical to upstream): e4e's
`Encoder4Editing`, pSp's `GradualStyleEncoder` (encoder4editing `models/encoders/psp_encoders.py`) and InsightFace's
ArcFace `Backbone`. NCHW. Used by the tests and the benchmarks."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.stylegan2 import EqualLinear

STAGE_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}


def unit_specs(num_layers):
    specs, in_ch = [], 64
    for depth, n in zip((64, 128, 256, 512), STAGE_UNITS[num_layers]):
        specs += [(in_ch, depth, 2)] + [(depth, depth, 1)] * (n - 1)
        in_ch = depth
    return specs


class SEModule(nn.Module):
    def __init__(self, channels, reduction=16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class Bottleneck(nn.Module):
    """bottleneck_IR (se=False) / bottleneck_IR_SE (se=True)."""

    def __init__(self, in_channel, depth, stride, se=True):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        layers = [nn.BatchNorm2d(in_channel), nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
                  nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth)]
        if se:
            layers.append(SEModule(depth, 16))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


def input_layer():
    return nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))


def body(num_layers, mode):
    return nn.Sequential(*[Bottleneck(i, d, s, se=mode == "ir_se") for i, d, s in unit_specs(num_layers)])


class GradualStyleBlock(nn.Module):
    def __init__(self, in_c, out_c, spatial):
        super().__init__()
        self.out_c = out_c
        mods = []
        for j in range(int(math.log2(spatial))):
            mods += [nn.Conv2d(in_c if j == 0 else out_c, out_c, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*mods)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1)

    def forward(self, x):
        return self.linear(self.convs(x).view(-1, self.out_c))


def upsample_add(x, y):
    return F.interpolate(x, size=y.shape[2:], mode="bilinear", align_corners=True) + y


class _StyleEncoder(nn.Module):
    def __init__(self, num_layers=50, mode="ir_se", stylegan_size=1024, style_dim=512):
        super().__init__()
        self.input_layer = input_layer()
        self.body = body(num_layers, mode)
        self.style_count = 2 * int(math.log2(stylegan_size)) - 2
        self.styles = nn.ModuleList([GradualStyleBlock(512, style_dim, 16 if i < 3 else 32 if i < 7 else 64)
                                     for i in range(self.style_count)])
        self.latlayer1 = nn.Conv2d(256, 512, 1)
        self.latlayer2 = nn.Conv2d(128, 512, 1)

    def taps(self, x):
        x = self.input_layer(x)
        out = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            out[i] = x
        return out[6], out[20], out[23]


class Encoder4Editing(_StyleEncoder):
    def __init__(self, *args, progressive_stage=18, **kwargs):
        super().__init__(*args, **kwargs)
        self.progressive_stage = progressive_stage

    def forward(self, x):
        c1, c2, c3 = self.taps(x)
        w = self.styles[0](c3).repeat(self.style_count, 1, 1).permute(1, 0, 2)
        features = c3
        for i in range(1, min(self.progressive_stage + 1, self.style_count)):
            if i == 3:
                p2 = features = upsample_add(c3, self.latlayer1(c2))
            elif i == 7:
                features = upsample_add(p2, self.latlayer2(c1))
            w[:, i] += self.styles[i](features)
        return w


class GradualStyleEncoder(_StyleEncoder):
    def forward(self, x):
        c1, c2, c3 = self.taps(x)
        p2 = upsample_add(c3, self.latlayer1(c2))
        p1 = upsample_add(p2, self.latlayer2(c1))
        feats = [c3] * 3 + [p2] * 4 + [p1] * (self.style_count - 7)
        return torch.stack([s(f) for s, f in zip(self.styles, feats)], dim=1)


class Backbone(nn.Module):
    """InsightFace ArcFace Backbone(input_size, num_layers, drop_ratio, mode)."""

    def __init__(self, input_size=112, num_layers=50, mode="ir_se", drop_ratio=0.6):
        super().__init__()
        s = input_size // 16
        self.input_layer = input_layer()
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(drop_ratio), nn.Flatten(),
                                          nn.Linear(512 * s * s, 512), nn.BatchNorm1d(512))
        self.body = body(num_layers, mode)

    def forward(self, x):
        x = self.output_layer(self.body(self.input_layer(x)))
        return x / torch.norm(x, 2, 1, True)


def randomize_(module, calibration=None, seed=0, scale=0.1):
    """Random BatchNorm running stats and affine params, PReLU slopes and biases, so parity tests exercise them.

    With a `calibration` batch, the running stats are first set to that batch's statistics (one train-mode pass with
    momentum 1), keeping activations O(1) through deep bodies; then every statistic and affine parameter is
    perturbed. The module is left in eval mode."""
    g = torch.Generator().manual_seed(seed)

    def rnd(t):
        return torch.randn(t.shape, generator=g)

    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            m.weight.mul_(1 + scale * rnd(m.weight))
            m.bias.add_(scale * rnd(m.bias))
        if calibration is not None:
            for m in bns:
                m.momentum = 1.0
            module.train()
            module(calibration)
            for m in bns:
                m.momentum = 0.1
        for m in bns:
            m.running_mean.add_(scale * rnd(m.running_mean))
            m.running_var.mul_(torch.exp(scale * rnd(m.running_var)))
        for name, p in module.named_parameters():
            if name.endswith("bias") and not any(p is m.bias for m in bns):
                p.add_(scale * rnd(p))
        for m in module.modules():
            if isinstance(m, nn.PReLU):
                m.weight.add_(scale * rnd(m.weight))
    return module.eval()
