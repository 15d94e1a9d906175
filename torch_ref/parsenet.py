"""PyTorch oracle for HairCLIP's face-parsing `unet` (`criteria/parse_related_loss/unet.py` with pytorch-semseg's
`unetConv2` / `unetUp`): our own code, state-dict keys identical to upstream. Tests and benchmarks only."""
import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.irse import randomize_


class UnetConv2(nn.Module):
    def __init__(self, in_ch, out_ch, is_batchnorm=True):
        super().__init__()

        def layer(i):
            parts = [nn.Conv2d(i, out_ch, 3, 1, 1)] + ([nn.BatchNorm2d(out_ch)] if is_batchnorm else [])
            return nn.Sequential(*parts, nn.ReLU())

        self.conv1 = layer(in_ch)
        self.conv2 = layer(out_ch)

    def forward(self, x):
        return self.conv2(self.conv1(x))


class UnetUp(nn.Module):
    def __init__(self, in_ch, out_ch, is_batchnorm=True):
        super().__init__()
        self.conv = UnetConv2(in_ch, out_ch, is_batchnorm)
        self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)

    def forward(self, skip, coarse):
        up = self.up(coarse)
        offset = up.shape[2] - skip.shape[2]
        skip = F.pad(skip, 2 * [offset // 2, offset // 2])
        return self.conv(torch.cat([skip, up], 1))


class UNet(nn.Module):
    def __init__(self, feature_scale=4, n_classes=19, is_batchnorm=True):
        super().__init__()
        f = [c // feature_scale for c in (64, 128, 256, 512, 1024)]
        self.conv1 = UnetConv2(3, f[0], is_batchnorm)
        self.conv2 = UnetConv2(f[0], f[1], is_batchnorm)
        self.conv3 = UnetConv2(f[1], f[2], is_batchnorm)
        self.conv4 = UnetConv2(f[2], f[3], is_batchnorm)
        self.center = UnetConv2(f[3], f[4], is_batchnorm)
        self.up_concat4 = UnetUp(f[4], f[3], is_batchnorm)
        self.up_concat3 = UnetUp(f[3], f[2], is_batchnorm)
        self.up_concat2 = UnetUp(f[2], f[1], is_batchnorm)
        self.up_concat1 = UnetUp(f[1], f[0], is_batchnorm)
        self.final = nn.Conv2d(f[0], n_classes, 1)

    def forward(self, x):
        c1 = self.conv1(x)
        c2 = self.conv2(F.max_pool2d(c1, 2))
        c3 = self.conv3(F.max_pool2d(c2, 2))
        c4 = self.conv4(F.max_pool2d(c3, 2))
        center = self.center(F.max_pool2d(c4, 2))
        up = self.up_concat4(c4, center)
        up = self.up_concat3(c3, up)
        up = self.up_concat2(c2, up)
        return self.final(self.up_concat1(c1, up))


def build(feature_scale=4, n_classes=19, seed=0):
    """Random weights, perturbed biases and BatchNorm parameters and statistics (`torch_ref.irse.randomize_`), eval."""
    torch.manual_seed(seed)
    return randomize_(UNet(feature_scale, n_classes), seed=seed)
