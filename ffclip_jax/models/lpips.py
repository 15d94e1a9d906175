"""LPIPS v0.1 perceptual distance (Zhang et al. 2018; the released `lpips` 0.1.4 package, richzhang/
PerceptualSimilarity `lpips/lpips.py`, `lpips/pretrained_networks.py`) with the AlexNet and VGG16 backbones, NHWC.

    d = LPIPS("alex").apply(variables, x0, x1)     # x0, x1 (N, H, W, 3) in [-1, 1] -> (N,)

Upstream's forward: ScalingLayer (x - shift) / scale; torchvision's `features` cut after the ReLUs the upstream
slices end on (alex [0:2] [2:5] [5:8] [8:10] [10:12], vgg16 [0:4] [4:9] [9:16] [16:23] [23:30]); each tapped map
normalised to unit length over channels (f / (sqrt(sum_c f^2) + 1e-10)); squared difference; the `lin` head (Dropout,
inactive in eval, then a 1x1 conv C -> 1 without bias) and the spatial average; the sum over the layers. The head is
linear, so it is applied after the spatial average here (the same value, one (N, C) x (C,) product instead of a conv).

Variables (`params`): `features/<i>/{weight, bias}` for torchvision's `features.<i>.*` (HWIO), `lin<k>/weight`
(1, 1, C_k, 1) for the heads file's `lin<k>.model.1.weight`.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ffclip_jax.errors import ConfigError, InputError
from ffclip_jax.nn.layers import Conv2d, max_pool

# ScalingLayer's buffers, float32 as upstream registers them (torch.Tensor)
SHIFT = np.array([-.030, -.088, -.188], np.float32)
SCALE = np.array([.458, .448, .450], np.float32)
NORM_EPS = 1e-10  # lpips.normalize_tensor
HEAD_INIT_MAX = 0.2  # random heads U(0, 0.2): non-negative like the released ones (max ~1.3, mean ~0.1)


class Conv(NamedTuple):
    features: int
    kernel: int
    stride: int
    padding: int


class Pool(NamedTuple):
    kernel: int
    stride: int


RELU = "relu"


def _vgg16_features() -> Tuple:
    """torchvision `vgg16().features` up to relu5_3 (index 29; the final MaxPool 30 is not used by LPIPS)."""
    layers = []
    for stage, (width, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        if stage:
            layers.append(Pool(2, 2))
        layers += [Conv(width, 3, 1, 1), RELU] * convs
    return tuple(layers)


class BackboneSpec(NamedTuple):
    """torchvision `features` (index i = `features.<i>`) and the indices of the ReLUs LPIPS taps."""
    layers: Tuple
    taps: Tuple[int, ...]

    @property
    def channels(self) -> Tuple[int, ...]:
        """Channels of each tapped map (the last conv before each tap)."""
        return tuple([l.features for l in self.layers[:t] if isinstance(l, Conv)][-1] for t in self.taps)

    @property
    def conv_indices(self) -> Tuple[int, ...]:
        return tuple(i for i, l in enumerate(self.layers) if isinstance(l, Conv))

    def min_size(self) -> int:
        """The smallest input side for which every tapped map is non-empty."""
        return next(s for s in range(1, 1024) if min(self.output_sizes(s)) >= 1)

    def output_sizes(self, side: int) -> Tuple[int, ...]:
        """The side of each tapped map for an input side `side` (PyTorch's floor rules)."""
        sizes = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Conv):
                side = (side + 2 * layer.padding - layer.kernel) // layer.stride + 1
            elif isinstance(layer, Pool):
                side = (side - layer.kernel) // layer.stride + 1
            if i in self.taps:
                sizes.append(side)
        return tuple(sizes)


BACKBONES: Dict[str, BackboneSpec] = {
    # torchvision alexnet().features[:12]: Conv 11x11/4 p2, ReLU, MaxPool 3/2, Conv 5x5 p2, ReLU, MaxPool 3/2,
    # Conv 3x3 p1, ReLU, Conv 3x3 p1, ReLU, Conv 3x3 p1, ReLU
    "alex": BackboneSpec((Conv(64, 11, 4, 2), RELU, Pool(3, 2), Conv(192, 5, 1, 2), RELU, Pool(3, 2),
                          Conv(384, 3, 1, 1), RELU, Conv(256, 3, 1, 1), RELU, Conv(256, 3, 1, 1), RELU),
                         taps=(1, 4, 7, 9, 11)),
    "vgg": BackboneSpec(_vgg16_features(), taps=(3, 8, 15, 22, 29)),
}


def backbone_spec(backbone: str) -> BackboneSpec:
    if backbone not in BACKBONES:
        raise ConfigError(f"LPIPS backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    return BACKBONES[backbone]


class TorchvisionFeatures(nn.Module):
    """torchvision `alexnet().features` / `vgg16().features` up to the last tap: (N, H, W, 3) -> the tapped ReLU
    maps, a tuple of (N, h_k, w_k, C_k). Convs are named by their `features` index ('0', '3', ...)."""
    backbone: str = "alex"

    @nn.compact
    def __call__(self, x):
        spec = backbone_spec(self.backbone)
        taps = []
        for i, layer in enumerate(spec.layers):
            if isinstance(layer, Conv):
                x = Conv2d(layer.features, layer.kernel, layer.stride, layer.padding, name=str(i))(x)
            elif isinstance(layer, Pool):
                x = max_pool(x, layer.kernel, layer.stride)
            else:
                x = nn.relu(x)
            if i in spec.taps:
                taps.append(x)
        return tuple(taps)


class NetLinLayer(nn.Module):
    """Upstream `NetLinLayer` in eval mode on the spatially averaged squared difference: Dropout (identity), then
    Conv2d(C, 1, 1, bias=False) as a (N, C) x (C,) product -> (N,). weight (1, 1, C, 1) [torch (1, C, 1, 1)]."""

    @nn.compact
    def __call__(self, d):
        weight = self.param("weight", nn.initializers.uniform(HEAD_INIT_MAX), (1, 1, d.shape[-1], 1))
        return d @ weight[0, 0, :, 0].astype(d.dtype)


def normalize_channels(f):
    """lpips.normalize_tensor over the channel (last) axis: f / (sqrt(sum_c f^2) + 1e-10)."""
    return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + NORM_EPS)


class LPIPS(nn.Module):
    """LPIPS v0.1 (`lpips.LPIPS(net=backbone, version='0.1')` in eval mode): x0, x1 (N, H, W, 3) float in [-1, 1]
    -> (N,) distances (upstream's (N, 1, 1, 1) squeezed); `per_layer=True` gives (N, 5), the terms of the sum
    (upstream's `retPerLayer` list). Any H, W of at least `min_size` (alex 31, vgg 16); float32 or float64 (the
    parameters are cast to the input's dtype).

    For a fixed image compared many times (a refinement target), `normalized_features` once and `distance`:
        target = lpips.apply(variables, y, method=LPIPS.normalized_features)
        d = lpips.apply(variables, lpips.apply(variables, x, method=LPIPS.normalized_features), target,
                        method=LPIPS.distance)
    """
    backbone: str = "alex"

    def setup(self):
        spec = backbone_spec(self.backbone)
        self.features = TorchvisionFeatures(self.backbone)
        for k in range(len(spec.taps)):  # named as upstream's lin0..lin4
            setattr(self, f"lin{k}", NetLinLayer())

    @property
    def min_size(self) -> int:
        return backbone_spec(self.backbone).min_size()

    def _check(self, *images) -> None:
        minimum = self.min_size
        for x in images:
            if (x.ndim != 4 or x.shape[-1] != 3 or not jnp.issubdtype(x.dtype, jnp.floating)
                    or min(x.shape[1:3]) < minimum):
                raise InputError(f"LPIPS({self.backbone}) expects float images (N, H, W, 3) in [-1, 1] with H, W >= "
                                 f"{minimum}, got {x.dtype} {tuple(x.shape)}")
        if len(images) == 2 and images[0].shape != images[1].shape:
            raise InputError(f"LPIPS({self.backbone}) compares images of one shape, got {tuple(images[0].shape)} "
                             f"and {tuple(images[1].shape)}")

    def normalized_features(self, x) -> Tuple[jnp.ndarray, ...]:
        """x (N, H, W, 3) in [-1, 1] -> the channel-normalised tapped maps, a tuple of (N, h_k, w_k, C_k)."""
        self._check(x)
        x = (x - jnp.asarray(SHIFT, x.dtype)) / jnp.asarray(SCALE, x.dtype)
        return tuple(normalize_channels(f) for f in self.features(x))

    def distance(self, f0: Sequence[jnp.ndarray], f1: Sequence[jnp.ndarray], per_layer: bool = False):
        """Two `normalized_features` results -> (N,) distances, or (N, 5) per layer."""
        terms = [getattr(self, f"lin{k}")(jnp.mean(jnp.square(a - b), axis=(1, 2)))
                 for k, (a, b) in enumerate(zip(f0, f1, strict=True))]
        return jnp.stack(terms, axis=-1) if per_layer else sum(terms)

    def __call__(self, x0, x1, per_layer: bool = False):
        # two backbone passes, not one over the concatenated batch: where one image is a constant (a refinement's
        # target), XLA then drops its backward pass entirely (measured 1.3x faster for d/dx0 at 256 px on CPU)
        self._check(x0, x1)
        return self.distance(self.normalized_features(x0), self.normalized_features(x1), per_layer)
