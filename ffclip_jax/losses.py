"""FFCLIP's losses with upstream's exact preprocessing; pure, jit-able and differentiable w.r.t. the edited image. Images are NHWC in the generator's range (about [-1, 1]); any square or rectangular size.

Each network argument is a `(module, variables)` pair, exactly what `ffclip_jax.weights.pretrained.load(dir)` returns. To jit
with the weights as arguments rather than baked-in constants, rebuild the pair inside:
`jax.jit(lambda v, a, b: id_loss((module, v), a, b))`.

- `clip_loss` (FFCLIP `losses/clip_loss.py`): 1 - CLIP logit / 100 of the edit and its prompt, per sample.
- `embedding_loss` (FFCLIP `Coach.calc_loss`): L1 between the CLIP image features of source and edit.
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
import numpy as np

from ffclip_jax.errors import InputError
from ffclip_jax.models.arcface import arcface_input  # the ID loss's preprocessing (beside the network it feeds)
from ffclip_jax.models import clip as clip_model
from ffclip_jax.models.clip import encode_image
from ffclip_jax.nn import image_ops
from ffclip_jax.nn.image_ops import check_images
from ffclip_jax.nn.layers import l2_normalize

Network = Tuple[Any, Any]  # (flax module, variables)

PARSE_SIZE = 512
HAIR_LABEL = 13  # the parsing class excluded from the background
MOCO_SIZE = 224
LOSS_LOGIT_SCALE = 100.0  # FFCLIP divides logits by the released CLIP's exp(logit_scale) = 100
UPSAMPLE = 7  # FFCLIP's nn.Upsample(scale_factor=7) before the average pool


def _check_pair(a_name: str, a, b_name: str, b) -> None:
    check_images(a_name, a)
    check_images(b_name, b)
    if a.shape != b.shape:
        raise InputError(f"{a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)} must have the same shape")


def _apply(net: Network, x):
    module, variables = net
    return module.apply(variables, x)


def _mean_one_minus_cosine(f_hat, f):
    """mean over the batch of 1 - <f_hat_i, f_i> for unit-norm features; `f` is treated as a constant."""
    return jnp.mean(1.0 - jnp.sum(f_hat * jax.lax.stop_gradient(f), axis=-1))


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
    return l2_normalize(_apply(moco, image_ops.resize_nearest(x, MOCO_SIZE)), eps=1e-12)


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


# ---------------------------------------------------------------------------------------------------------------
# CLIP


def upsample_pool_to_clip(images, resolution: int = 224):
    """FFCLIP's CLIP-loss resize: nn.Upsample(scale_factor=7) (nearest) then nn.AvgPool2d(k) with k = 7 * size /
    resolution per axis, as one separable linear map (1024 -> 224 with k = 32 upstream; 512 -> 16, 256 -> 8, 64 -> 2).
    Each side must be a multiple of resolution / gcd(resolution, 7) (32 for 224)."""
    check_images("images", images)
    kernels = []
    for side in images.shape[1:3]:
        if (side * UPSAMPLE) % resolution:
            raise InputError(f"images: side {side} cannot be upsampled x{UPSAMPLE} and average pooled to "
                             f"{resolution} (needs a multiple of {resolution // np.gcd(resolution, UPSAMPLE)})")
        kernels.append(side * UPSAMPLE // resolution)
    mh, mw = (image_ops.upsample_then_pool_matrix(side, UPSAMPLE, k) for side, k in zip(images.shape[1:3], kernels))
    return image_ops.apply_separable(images, mh, mw)


def _text_features(clip: Network, text, batch: int):
    module, variables = clip
    embed = module.config.projection_dim
    if jnp.issubdtype(text.dtype, jnp.integer):
        context = module.config.text_config.max_position_embeddings
        if text.ndim != 2 or text.shape[1] != context:
            raise InputError(f"text ids: expected shape (B, {context}), got {tuple(text.shape)}")
        text = module.apply(variables, text, method=clip_model.CLIP.encode_text)
    if text.ndim == 3 and text.shape[1] == 1:
        text = text[:, 0]
    if text.ndim != 2 or text.shape[-1] != embed:
        raise InputError(f"text features: expected (B, {embed}) or (B, 1, {embed}) CLIP text embeddings, got shape "
                         f"{tuple(text.shape)}")
    if text.shape[0] not in (1, batch):
        raise InputError(f"text: {text.shape[0]} prompts for {batch} images; expected one per image or one for all")
    return text


def clip_loss(clip: Network, images, text, *, normalize: bool = False):
    """FFCLIP `losses/clip_loss.py`, per sample: (B,) = 1 - logits_per_image[i, i] / 100.

    images: (B, H, W, 3) generator output (~[-1, 1]); resized by `upsample_pool_to_clip` (exactly upstream's
    Upsample(7) + AvgPool2d(32) at 1024). text: (B, L) token ids, or (B, E) / (B, 1, E) text features from
    `encode_text` (the same numbers, cheaper). normalize=False feeds the images as upstream does; True applies CLIP's
    mean/std (see `encode_image`; a deviation from upstream). Pure, jit-able, differentiable w.r.t. the images."""
    module, variables = clip
    text = _text_features(clip, jnp.asarray(text), images.shape[0])
    x = upsample_pool_to_clip(images, module.config.vision_config.image_size)
    image_features = encode_image(clip, x, normalize=normalize)
    text = jnp.broadcast_to(text, image_features.shape[:1] + text.shape[1:])
    logits = module.apply(variables, image_features, text, method=clip_model.CLIP.paired_logits)
    return 1 - logits / LOSS_LOGIT_SCALE


def embedding_loss(clip: Network, x, x_hat, *, normalize: bool = False):
    """FFCLIP's embedding loss (`Coach.calc_loss`): mean |encode_image(resize(x)) - encode_image(resize(x_hat))| with
    F.interpolate(bicubic, align_corners=True) to the CLIP resolution. As upstream (x is rendered without grad), the
    source features are constants; differentiable w.r.t. x_hat. normalize: as in `clip_loss`."""
    module, _ = clip
    check_images("x", x)
    check_images("x_hat", x_hat)
    if x.shape != x_hat.shape:
        raise InputError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)}: expected the same shape")
    res = module.config.vision_config.image_size
    both = image_ops.resize_bicubic_align_corners(jnp.concatenate([x, x_hat]), res)
    features = encode_image(clip, both, normalize=normalize)
    source, edited = jnp.split(features, 2)
    return jnp.mean(jnp.abs(jax.lax.stop_gradient(source) - edited))
