"""PyTorch oracle for torchvision's `resnet50` as MoCo v2 uses it (our own code; state-dict keys identical to
torchvision: conv1, bn1, layer{1..4}.{j}.conv{1,2,3}/bn{1,2,3}/downsample.{0,1}, fc), and a writer of MoCo v2
checkpoint files (`module.encoder_q.*`, `module.encoder_k.*`, the queue). Tests and benchmarks only."""
import torch
from torch import nn

from torch_ref.irse import randomize_


class Bottleneck(nn.Module):
    def __init__(self, in_ch, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or in_ch != width * 4:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, width * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(width * 4))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """torchvision ResNet with Bottleneck blocks; forward is e4e's MoCo extractor (all children but fc, flattened)."""

    def __init__(self, stage_sizes=(3, 4, 6, 3), width=64, fc_dims=(2048, 128)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = width
        for i, n in enumerate(stage_sizes):
            w = width * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(in_ch, w, 2 if (i > 0 and j == 0) else 1))
                in_ch = w * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        # MoCo v2's MLP projection head (dropped by every consumer)
        self.fc = nn.Sequential(nn.Linear(in_ch, fc_dims[0]), nn.ReLU(), nn.Linear(fc_dims[0], fc_dims[1]))
        self.n_stages = len(stage_sizes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return torch.flatten(self.avgpool(x), 1)


def build(stage_sizes=(3, 4, 6, 3), width=64, seed=0, calibration=None):
    """Random weights, perturbed BatchNorm parameters and statistics (`torch_ref.irse.randomize_`), eval mode. With a
    `calibration` batch (NCHW) the running statistics first fit that batch: a random ResNet-50 otherwise maps every
    image to nearly the same feature direction, leaving 1 - cos at float32 round-off."""
    torch.manual_seed(seed)
    return randomize_(ResNet(stage_sizes, width), calibration=calibration, seed=seed)


def save_moco_checkpoint(model: ResNet, path, queue_len=16):
    """Write the layout of `moco_v2_800ep_pretrain.pth.tar`."""
    sd = {f"module.encoder_q.{k}": v for k, v in model.state_dict().items()}
    sd.update({f"module.encoder_k.{k}": v.clone() for k, v in model.state_dict().items()})
    sd["module.queue"] = torch.randn(128, queue_len)
    sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}},
               path)
