"""PyTorch oracle for rosinality/stylegan2-pytorch's `Generator` (our own code; state-dict keys identical to upstream,
NCHW, the pure-PyTorch `upfirdn2d` and `fused_leaky_relu` paths). Used by tests and benchmarks only."""
import math

import torch
import torch.nn.functional as F
from torch import nn


def make_kernel(k):
    k = torch.tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = torch.outer(k, k)
    return k / k.sum()


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """Zero-insert upsample, pad/crop, correlate with the flipped kernel, subsample (NCHW)."""
    if len(pad) == 2:
        pad = (pad[0], pad[1], pad[0], pad[1])
    px0, px1, py0, py1 = pad
    b, c, h, w = x.shape
    x = x.reshape(b * c, 1, h, 1, w, 1)
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
    x = x.reshape(b * c, 1, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0):x.shape[2] - max(-py1, 0), max(-px0, 0):x.shape[3] - max(-px1, 0)]
    k = torch.flip(kernel, [0, 1])[None, None].to(x)
    x = F.conv2d(x, k)
    x = x[:, :, ::down, ::down]
    return x.reshape(b, c, x.shape[2], x.shape[3])


def fused_leaky_relu(x, bias, negative_slope=0.2, scale=2 ** 0.5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), negative_slope) * scale


class PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


class Upsample(nn.Module):
    def __init__(self, kernel, factor=2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor ** 2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class Blur(nn.Module):
    def __init__(self, kernel, pad, upsample_factor=1):
        super().__init__()
        self.register_buffer("kernel", make_kernel(kernel) * upsample_factor ** 2)
        self.pad = pad

    def forward(self, x):
        return upfirdn2d(x, self.kernel, pad=self.pad)


class EqualLinear(nn.Module):
    def __init__(self, in_dim, out_dim, bias=True, bias_init=0.0, lr_mul=1.0, activation=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init)) if bias else None
        self.activation = activation
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x):
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        bias = None if self.bias is None else self.bias * self.lr_mul
        return F.linear(x, self.weight * self.scale, bias=bias)


class ModulatedConv2d(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, style_dim, demodulate=True, upsample=False,
                 blur_kernel=(1, 3, 3, 1), fused=True):
        super().__init__()
        self.eps = 1e-8
        self.kernel_size, self.in_channel, self.out_channel = kernel_size, in_channel, out_channel
        self.upsample = upsample
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        self.demodulate = demodulate
        self.fused = fused

    def forward(self, x, style):
        b, cin, h, w = x.shape
        k, cout = self.kernel_size, self.out_channel
        style = self.modulation(style)
        if not self.fused:
            weight = self.scale * self.weight.squeeze(0)
            if self.demodulate:
                wb = weight.unsqueeze(0) * style.view(b, 1, cin, 1, 1)
                dcoefs = (wb.square().sum((2, 3, 4)) + 1e-8).rsqrt()
            x = x * style.reshape(b, cin, 1, 1)
            if self.upsample:
                out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), padding=0, stride=2))
            else:
                out = F.conv2d(x, weight, padding=self.padding)
            if self.demodulate:
                out = out * dcoefs.view(b, -1, 1, 1)
            return out
        weight = self.scale * self.weight * style.view(b, 1, cin, 1, 1)
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
            weight = weight * demod.view(b, cout, 1, 1, 1)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * cin, cout, k, k)
            out = F.conv_transpose2d(x.reshape(1, b * cin, h, w), weight, padding=0, stride=2, groups=b)
            out = self.blur(out.view(b, cout, out.shape[2], out.shape[3]))
        else:
            out = F.conv2d(x.reshape(1, b * cin, h, w), weight.view(b * cout, cin, k, k), padding=self.padding,
                           groups=b)
            out = out.view(b, cout, h, w)
        return out


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, image, noise=None):
        if noise is None:
            b, _, h, w = image.shape
            noise = image.new_empty(b, 1, h, w).normal_()
        return image + self.weight * noise


class ConstantInput(nn.Module):
    def __init__(self, channel, size=4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch):
        return self.input.repeat(batch, 1, 1, 1)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channel):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))

    def forward(self, x):
        return fused_leaky_relu(x, self.bias)


class StyledConv(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, style_dim, upsample=False, blur_kernel=(1, 3, 3, 1),
                 demodulate=True, fused=True):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, demodulate=demodulate,
                                    upsample=upsample, blur_kernel=blur_kernel, fused=fused)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x, style, noise=None):
        return self.activate(self.noise(self.conv(x, style), noise=noise))


class ToRGB(nn.Module):
    def __init__(self, in_channel, style_dim, upsample=True, blur_kernel=(1, 3, 3, 1), fused=True):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False, fused=fused)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, style, skip=None):
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class Generator(nn.Module):
    def __init__(self, size, style_dim=512, n_mlp=8, channel_multiplier=2, blur_kernel=(1, 3, 3, 1), lr_mlp=0.01,
                 fused=True, channel_max=512):
        super().__init__()
        self.size, self.style_dim = size, style_dim
        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu") for _ in range(n_mlp)])
        cm = channel_multiplier
        # channel_max caps the widths like ffclip_jax's Generator(channel_max=...) (512: upstream's table)
        self.channels = {k: min(v, channel_max) for k, v in {
            4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm,
            1024: 16 * cm}.items()}
        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim, blur_kernel=blur_kernel, fused=fused)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False, fused=fused)
        self.log_size = int(math.log2(size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))
        in_ch = self.channels[4]
        for i in range(3, self.log_size + 1):
            out_ch = self.channels[2 ** i]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True, blur_kernel=blur_kernel,
                                         fused=fused))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel, fused=fused))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_kernel=blur_kernel, fused=fused))
            in_ch = out_ch
        self.n_latent = self.log_size * 2 - 2

    def forward(self, styles, input_is_latent=False, noise=None, randomize_noise=True, truncation=1.0,
                truncation_latent=None, inject_index=None, return_latents=False):
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if noise is None:
            noise = ([None] * self.num_layers if randomize_noise
                     else [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)])
        if truncation < 1:
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
        if len(styles) < 2:
            latent = styles[0] if styles[0].ndim == 3 else styles[0].unsqueeze(1).repeat(1, self.n_latent, 1)
        else:
            latent = torch.cat([styles[0].unsqueeze(1).repeat(1, inject_index, 1),
                                styles[1].unsqueeze(1).repeat(1, self.n_latent - inject_index, 1)], 1)
        out = self.input(latent.shape[0])
        out = self.conv1(out, latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for c1, c2, n1, n2, to_rgb in zip(self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2], self.to_rgbs):
            out = c1(out, latent[:, i], noise=n1)
            out = c2(out, latent[:, i + 1], noise=n2)
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return (skip, latent) if return_latents else (skip, None)


def randomize_(module, seed=0, scale=0.1):
    """Give every parameter that upstream initialises to a constant (biases, noise weights) random values, so parity
    tests exercise them; weights keep their randn init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or name.endswith("noise.weight"):
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return module
