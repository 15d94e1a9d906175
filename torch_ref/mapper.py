"""PyTorch oracle for FFCLIP's `Dynamic_mapper` (kristen-rang/FFCLIP `edit/dynamic_mapper.py`, `edit/modules.py`):
our own code with upstream's exact state-dict keys, including the `fc` Linear that upstream creates and never uses.
Used by tests and benchmarks only."""
import math
import re

import torch
import torch.nn.functional as F
from torch import nn


def pixel_norm(x):
    """rosinality PixelNorm over dim 1 (the layer axis of a (B, L, C) w+)."""
    return x * torch.rsqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


class AttentionMapping(nn.Module):
    """Upstream `attention_mapping`: channel attention, pooled over layers, LayerNorm without affine."""

    def __init__(self, n_latent=18, dim=512):
        super().__init__()
        self.dk = dim
        self.q_matrix = nn.Linear(dim, dim, bias=False)
        self.k_matrix = nn.Linear(1, n_latent, bias=False)
        self.v_matrix = nn.Linear(dim, dim, bias=False)
        self.pool = nn.AdaptiveAvgPool2d((1, dim))
        self.layer_norm = nn.LayerNorm([dim], elementwise_affine=False)

    def forward(self, w, e):
        q = self.q_matrix(w)
        k = self.k_matrix(e.transpose(-2, -1))
        v = self.v_matrix(w)
        attention = F.softmax(torch.matmul(k, q) / math.sqrt(self.dk), dim=-1)
        return self.layer_norm(self.pool(torch.matmul(v, attention)))


class AttModule(nn.Module):
    """Upstream `att_module` (one semantic modulation block)."""

    def __init__(self, n_latent=18, dim=512):
        super().__init__()
        self.norm1d = nn.LayerNorm([dim], elementwise_affine=False)
        self.q_matrix = nn.Linear(dim, dim, bias=False)
        self.k_matrix = nn.Linear(dim, dim, bias=False)
        self.v_matrix = nn.Linear(dim, dim, bias=False)
        self.gamma_ = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm([dim]), nn.LeakyReLU(), nn.Linear(dim, dim))
        self.beta_ = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm([dim]), nn.LeakyReLU(), nn.Linear(dim, dim))
        self.fc = nn.Linear(dim, dim)  # unused, as upstream
        self.attention_layer = AttentionMapping(n_latent, dim)

    def forward(self, x, e):
        x = pixel_norm(x)
        score = torch.softmax(torch.matmul(self.k_matrix(x), self.q_matrix(e).permute(0, 2, 1)), dim=1)
        h = self.norm1d(score * self.v_matrix(x) + self.attention_layer(x, e))
        return F.leaky_relu(h * (1 + self.gamma_(e)) + self.beta_(e), 0.01)


class DynamicMapper(nn.Module):
    """Upstream `Dynamic_mapper`: returns delta; x (B, L, C), e (B, 1, C)."""

    def __init__(self, n_latent=18, dim=512):
        super().__init__()
        self.att_mapper = nn.ModuleList([AttModule(n_latent, dim) for _ in range(4)])

    def forward(self, x, e):
        for block in self.att_mapper:
            x = block(x, e)
        return x


def randomize_layer_norms_(mapper, seed=0, scale=0.1):
    """Move the affine LayerNorms off their ones/zeros init so parity tests exercise them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in mapper.named_parameters():
            if re.fullmatch(r"att_mapper\.\d+\.(gamma|beta)_\.1\.(weight|bias)", name):
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return mapper


def release_checkpoint(mapper, generator=None, prefix="module."):
    """The upstream training/release file layout: {'state_dict': {prefix + 'att_mapper.*', prefix + 'generator.*'},
    'opts': {...}} (EditModel wrapped in DDP)."""
    sd = {f"{prefix}att_mapper.{k}": v for k, v in mapper.state_dict().items()}
    if generator is not None:
        sd.update({f"{prefix}generator.{k}": v for k, v in generator.state_dict().items()})
    return {"state_dict": sd, "opts": {"train": {"learning_rate": 0.0005}}}
