"""FFCLIP's image-preservation losses with upstream's exact preprocessing; pure, jit-able and differentiable w.r.t.
the edited image. Images are NHWC in the generator's range (about [-1, 1]); any square or rectangular size.

Each network argument is a `(module, variables)` pair, exactly what `ffclip_jax.pretrained.load(dir)` returns. To jit
with the weights as arguments rather than baked-in constants, rebuild the pair inside:
`jax.jit(lambda v, a, b: id_loss((module, v), a, b))`.

- `id_loss` (FFCLIP `losses/ID/id_loss.py`): ArcFace IR-SE50 identity distance.
- `background_loss` (HairCLIP / FFCLIP `BackgroundLoss`): MSE outside the parsed hair region.
- `moco_loss` (e4e `criteria/moco_loss.py`): MoCo v2 feature distance for cars / churches.
- `latent_l1`, `image_l1`: mean absolute differences (FFCLIP `Coach.calc_loss`).
As upstream, the reference image's features are constants (detached) and the parsing masks carry no gradient.
"""
from __future__ import annotations

from typing import Any, Tuple

import jax
import jax.numpy as jnp

from ffclip_jax import image_ops
from ffclip_jax.errors import InputError

Network = Tuple[Any, Any]  # (flax module, variables)

ID_POOL_SIZE = 256
ID_CROP = (slice(35, 223), slice(32, 220))  # rows, columns of the 256x256 pooled face
ARCFACE_SIZE = 112
PARSE_SIZE = 512
HAIR_LABEL = 13  # the parsing class excluded from the background
MOCO_SIZE = 224


def _check_image(name: str, x) -> None:
    if getattr(x, "ndim", None) != 4 or x.shape[-1] != 3:
        raise InputError(f"{name}: expected NHWC RGB images of shape (B, H, W, 3), got shape "
                         f"{tuple(getattr(x, 'shape', ()))}")


def _check_pair(a_name: str, a, b_name: str, b) -> None:
    _check_image(a_name, a)
    _check_image(b_name, b)
    if a.shape != b.shape:
        raise InputError(f"{a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)} must have the same shape")


def _apply(net: Network, x):
    module, variables = net
    return module.apply(variables, x)


def _mean_one_minus_cosine(f_hat, f):
    """mean over the batch of 1 - <f_hat_i, f_i> for unit-norm features; `f` is treated as a constant."""
    return jnp.mean(1.0 - jnp.sum(f_hat * jax.lax.stop_gradient(f), axis=-1))


def arcface_input(x):
    """Upstream IDLoss.extract_feats preprocessing: adaptive avg pool to 256, crop [35:223, 32:220], adaptive avg pool
    to 112 (overlapping PyTorch windows). (B, H, W, 3) -> (B, 112, 112, 3)."""
    x = image_ops.adaptive_avg_pool2d(x, ID_POOL_SIZE)
    return image_ops.adaptive_avg_pool2d(x[:, ID_CROP[0], ID_CROP[1], :], ARCFACE_SIZE)


def id_loss(arcface: Network, x_hat, x):
    """mean(1 - cos(arcface(x_hat), arcface(x))) with ArcFace's L2-normalised 512-d features. Scalar."""
    _check_pair("x_hat", x_hat, "x", x)
    return _mean_one_minus_cosine(_apply(arcface, arcface_input(x_hat)), _apply(arcface, arcface_input(x)))


def background_mask(parsenet: Network, x):
    """1.0 where no pixel of the upstream mask window is hair, else 0.0: (B, H, W, 1), no gradient.

    Upstream parses AdaptiveAvgPool(512)(x), takes mask = (argmax != 13) at 512 and brings it back to the image size
    with AdaptiveAvgPool2d, then keeps pixels whose pooled mask is exactly 1 in both images. Pooling the hair indicator
    instead and testing == 0 is the same test without float round-off (all pooling weights are positive)."""
    logits = _apply(parsenet, image_ops.adaptive_avg_pool2d(jax.lax.stop_gradient(x), PARSE_SIZE))
    hair = (jnp.argmax(logits, axis=-1) == HAIR_LABEL).astype(x.dtype)[..., None]
    return (image_ops.adaptive_avg_pool2d(hair, x.shape[1:3]) == 0).astype(x.dtype)


def background_loss(parsenet: Network, x, x_hat):
    """MSE between x and x_hat over the pixels that are background (not hair) in both images. Scalar."""
    _check_pair("x", x, "x_hat", x_hat)
    mask = background_mask(parsenet, x) * background_mask(parsenet, x_hat)
    return jnp.mean(jnp.square((x - x_hat) * mask))


def moco_features(moco: Network, x):
    """Nearest resize to 224 (F.interpolate default), ResNet-50 pooled features, L2-normalised (F.normalize,
    eps 1e-12): (B, H, W, 3) -> (B, 2048)."""
    f = _apply(moco, image_ops.resize_nearest(x, MOCO_SIZE))
    return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)


def moco_loss(moco: Network, x_hat, x):
    """mean(1 - cos(moco(x_hat), moco(x))). Scalar."""
    _check_pair("x_hat", x_hat, "x", x)
    return _mean_one_minus_cosine(moco_features(moco, x_hat), moco_features(moco, x))


def latent_l1(w, w_hat):
    """mean |w - w_hat| over every element (FFCLIP's latent loss)."""
    if jnp.shape(w) != jnp.shape(w_hat):
        raise InputError(f"w {tuple(jnp.shape(w))} and w_hat {tuple(jnp.shape(w_hat))} must have the same shape")
    return jnp.mean(jnp.abs(w - w_hat))


def image_l1(x, x_hat):
    """mean |x - x_hat| over every element (FFCLIP's `x_l2` loss, an L1 despite its name)."""
    _check_pair("x", x, "x_hat", x_hat)
    return jnp.mean(jnp.abs(x - x_hat))
