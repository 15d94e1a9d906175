"""OpenAI CLIP (ViT) at run time, on transformers' Flax CLIP: text and image features, prompt-embedding tables, and
FFCLIP's two CLIP losses with upstream's exact preprocessing.

    clip = pretrained.load("weights/clip")                     # (module, variables); from `convert_weights clip`
    e = encode_text(clip, ["Bald", "Blue eyes"])               # (2, 512) = OpenAI model.encode_text(clip.tokenize(..))
    table = prompt_embeddings("weights/clip", prompts)         # computed once, cached on disk
    loss = clip_loss(clip, images, e)                          # (B,) per sample, images NHWC in [-1, 1]

`CLIP` is transformers' `FlaxCLIPModule` (parameters named exactly as in `FlaxCLIPModel`) with OpenAI's entry points:
`encode_text(ids)` pools at argmax(ids) (the end token) like OpenAI, `encode_image(images)` takes NHWC images at the
model resolution. The `config` of a converted directory uses OpenAI's names (`embed_dim`, `vision_width`, ...).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from transformers import CLIPConfig
from transformers.models.clip.modeling_flax_clip import FlaxCLIPModule

from ffclip_jax import image_ops
from ffclip_jax.errors import CheckpointError, InputError
from ffclip_jax.fileio import atomic_write

HF_WEIGHTS = "flax_model.msgpack"  # written beside model.json with config.json: FlaxCLIPModel.from_pretrained(DIR)
LOSS_LOGIT_SCALE = 100.0  # FFCLIP divides logits by the released CLIP's exp(logit_scale) = 100
UPSAMPLE = 7  # FFCLIP's nn.Upsample(scale_factor=7) before the average pool
# OpenAI's preprocessing statistics (for `normalize=True`, which FFCLIP does not use)
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_KEYS = ("embed_dim", "image_resolution", "vision_layers", "vision_width", "vision_heads", "vision_patch_size",
               "context_length", "vocab_size", "transformer_width", "transformer_heads", "transformer_layers")

Network = Tuple[Any, Any]  # (CLIP module, variables), what `pretrained.load` returns


def vit_b_32_config() -> Dict[str, int]:
    """OpenAI ViT-B/32 (FFCLIP's CLIP)."""
    return dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_heads=12,
                vision_patch_size=32, context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                transformer_layers=12)


def tiny_config() -> Dict[str, int]:
    """A small random CLIP for tests and the tiny training config (224 input, 2 layers, width 128, 2 heads)."""
    return dict(embed_dim=64, image_resolution=224, vision_layers=2, vision_width=128, vision_heads=2,
                vision_patch_size=32, context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=2,
                transformer_layers=2)


def hf_config(config: Mapping[str, int]):
    """OpenAI-style config -> transformers `CLIPConfig` (quick_gelu, LayerNorm eps 1e-5, MLP ratio 4)."""
    unknown = set(config) - set(CONFIG_KEYS)
    missing = set(CONFIG_KEYS) - set(config)
    if unknown or missing:
        raise CheckpointError(f"CLIP config: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}; "
                              f"expected {', '.join(CONFIG_KEYS)}")
    c = config
    text = dict(vocab_size=c["vocab_size"], hidden_size=c["transformer_width"],
                intermediate_size=4 * c["transformer_width"], num_hidden_layers=c["transformer_layers"],
                num_attention_heads=c["transformer_heads"], max_position_embeddings=c["context_length"],
                hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=0)
    vision = dict(hidden_size=c["vision_width"], intermediate_size=4 * c["vision_width"],
                  num_hidden_layers=c["vision_layers"], num_attention_heads=c["vision_heads"],
                  image_size=c["image_resolution"], patch_size=c["vision_patch_size"], hidden_act="quick_gelu",
                  layer_norm_eps=1e-5)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=c["embed_dim"])


class CLIP(FlaxCLIPModule):
    """transformers' FlaxCLIPModule with OpenAI CLIP's methods (`clip/model.py` CLIP). Build with
    `CLIP(hf_config(config))`; parameters are FlaxCLIPModel's."""

    def __hash__(self):  # a hashable module, so jitted entry points can be cached per model
        return hash((type(self).__name__, self.config.to_json_string(), str(self.dtype)))

    def encode_text(self, ids):
        """(B, L) int token ids -> (B, embed_dim) unnormalised features: ln_final(x)[argmax(ids)] @ text_projection."""
        ids = ids.astype(jnp.int32)
        positions = jnp.broadcast_to(jnp.arange(ids.shape[-1]), ids.shape)
        hidden = self.text_model(input_ids=ids, attention_mask=jnp.ones_like(ids), position_ids=positions,
                                 deterministic=True)[0]
        pooled = jnp.take_along_axis(hidden, jnp.argmax(ids, axis=-1)[:, None, None], axis=1)[:, 0]
        return self.text_projection(pooled)

    def encode_image(self, images):
        """(B, R, R, 3) images at the model resolution R, as given (no normalisation) -> (B, embed_dim)."""
        return self.visual_projection(self.vision_model(pixel_values=images, deterministic=True)[1])

    def paired_logits(self, image_features, text_features):
        """exp(logit_scale) * cos(image_i, text_i) per row: the diagonal of OpenAI's logits_per_image, (B,)."""
        i = image_features / jnp.linalg.norm(image_features, axis=-1, keepdims=True)
        t = text_features / jnp.linalg.norm(text_features, axis=-1, keepdims=True)
        return jnp.exp(self.logit_scale) * jnp.sum(i * t, axis=-1)

    def __call__(self, images, ids):
        """OpenAI's CLIP.forward: (logits_per_image (Bi, Bt), logits_per_text (Bt, Bi))."""
        i = self.encode_image(images)
        t = self.encode_text(ids)
        i = i / jnp.linalg.norm(i, axis=-1, keepdims=True)
        t = t / jnp.linalg.norm(t, axis=-1, keepdims=True)
        logits = jnp.exp(self.logit_scale) * i @ t.T
        return logits, logits.T


def build(config: Mapping[str, int]) -> CLIP:
    return CLIP(hf_config(config))


def _example_inputs(config: Mapping[str, int]):
    res, ctx = config["image_resolution"], config["context_length"]
    return jnp.zeros((1, res, res, 3)), jnp.zeros((1, ctx), jnp.int32)


def init_random(config: Mapping[str, int], seed: int = 0) -> Network:
    """A randomly initialised CLIP (transformers' init) for tests and tiny runs: (module, variables)."""
    module = build(config)
    return module, jax.jit(module.init)(jax.random.PRNGKey(seed), *_example_inputs(config))


def expected_shapes(config: Mapping[str, int]):
    """Shape tree of the variables of `build(config)` (for converters)."""
    return jax.eval_shape(build(config).init, jax.random.PRNGKey(0), *_example_inputs(config))


def save_hf(directory: str, config: Mapping[str, int], variables) -> None:
    """Write config.json + flax_model.msgpack (loadable by `transformers.FlaxCLIPModel.from_pretrained(directory)`)."""
    from transformers import FlaxCLIPModel

    params = jax.tree.map(np.asarray, dict(variables["params"]))
    model = FlaxCLIPModel(hf_config(config), _do_init=False)
    model.save_pretrained(directory, params=params)


def load_converted(directory: str, meta: Mapping[str, Any]) -> Network:
    """`pretrained.load` entry for model 'clip': (CLIP module, {'params': ...}) from DIR/flax_model.msgpack."""
    from flax import serialization

    module = build(meta["config"])
    path = os.path.join(directory, HF_WEIGHTS)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: missing CLIP weights (convert with `python -m convert_weights clip`)")
    with open(path, "rb") as f:
        params = serialization.msgpack_restore(f.read())
    return module, {"params": jax.tree.map(jnp.asarray, params)}


# ---------------------------------------------------------------------------------------------------------------
# text


@functools.lru_cache(maxsize=None)
def _jitted(module: CLIP, method: str):
    return jax.jit(lambda variables, x: module.apply(variables, x, method=getattr(CLIP, method)))


def encode_text(clip: Network, prompts: Union[Sequence[str], np.ndarray], batch_size: int = 64) -> np.ndarray:
    """OpenAI `model.encode_text(clip.tokenize(prompts, truncate=True))` (unnormalised): (N, embed_dim) float32.
    `prompts`: strings, or an (N, context_length) array of token ids. Jit-compiled once per model and batch size
    (N rounded up to a power of two, at most `batch_size`); the last batch is zero padded."""
    from ffclip_jax.tokenizer import tokenize

    module, variables = clip
    context = module.config.text_config.max_position_embeddings
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = np.asarray(prompts) if isinstance(prompts, np.ndarray) else tokenize(list(prompts), context)
    if ids.ndim != 2 or ids.shape[1] != context or not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"token ids: expected an integer array (N, {context}), got {ids.dtype} {ids.shape}")
    fn = _jitted(module, "encode_text")
    n = len(ids)
    batch = min(batch_size, 1 << (n - 1).bit_length())  # power-of-two buckets: few compilations
    padded = np.zeros((-(-n // batch) * batch, context), np.int32)
    padded[:n] = ids
    out = [np.asarray(fn(variables, padded[i:i + batch])) for i in range(0, len(padded), batch)]
    return np.concatenate(out)[:n]


def encode_image(clip: Network, images, *, normalize: bool = False):
    """(B, R, R, 3) images at the model resolution -> (B, embed_dim) features (jit-able, differentiable).
    normalize=True maps [-1, 1] images to [0, 1] and applies CLIP's mean/std (`standardize`: OpenAI's preprocessing,
    which FFCLIP omits)."""
    module, variables = clip
    _check_images("images", images)
    res = module.config.vision_config.image_size
    if images.shape[1:3] != (res, res):
        raise InputError(f"images: expected (B, {res}, {res}, 3) at the CLIP resolution, got {tuple(images.shape)}")
    return module.apply(variables, standardize(images) if normalize else images, method=CLIP.encode_image)


def standardize(images):
    """[-1, 1] images -> [0, 1] -> (x - MEAN) / STD per channel: what OpenAI's preprocessing feeds CLIP."""
    return ((images + 1) / 2 - jnp.asarray(MEAN, images.dtype)) / jnp.asarray(STD, images.dtype)


def weights_hash(clip_dir: str) -> str:
    """sha256 of the converted weights (recorded by the converter in model.json; computed if absent)."""
    from ffclip_jax import pretrained

    meta = pretrained.read_meta(clip_dir)
    return meta.get("extra", {}).get("weights_sha256") or sha256_file(os.path.join(clip_dir, HF_WEIGHTS))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ffclip_jax", "prompt_embeddings")


def prompt_embeddings(clip_dir: str, prompts: Sequence[str], cache_dir: Optional[str] = None,
                      clip: Optional[Network] = None) -> np.ndarray:
    """(P, embed_dim) float32 `encode_text` of `prompts`, cached in `cache_dir` (default ~/.cache/ffclip_jax/...)
    under a key of the weights' sha256 and the exact prompt list; computed (with `clip`, or loading `clip_dir`) only
    when the cache has no entry. The cache file is written atomically."""
    prompts = list(prompts)
    if not prompts:
        raise InputError("no prompts given: expected at least one non-empty text prompt")
    key = hashlib.sha256(json.dumps({"weights": weights_hash(clip_dir), "prompts": prompts}).encode()).hexdigest()
    cache_dir = cache_dir or default_cache_dir()
    path = os.path.join(cache_dir, f"clip_text_{key[:24]}.npz")
    if os.path.isfile(path):
        with np.load(path) as f:
            if list(f["prompts"]) == prompts:
                return f["embeddings"]
    if clip is None:
        from ffclip_jax import pretrained
        clip = pretrained.load(clip_dir)
    table = encode_text(clip, prompts).astype(np.float32)
    atomic_write(path, lambda tmp: np.savez(tmp, embeddings=table, prompts=np.asarray(prompts)))
    return table


# ---------------------------------------------------------------------------------------------------------------
# losses


def _check_images(name: str, x) -> None:
    if getattr(x, "ndim", None) != 4 or x.shape[-1] != 3:
        raise InputError(f"{name}: expected NHWC RGB images of shape (B, H, W, 3), got shape "
                         f"{tuple(getattr(x, 'shape', ()))}")


def upsample_pool_to_clip(images, resolution: int = 224):
    """FFCLIP's CLIP-loss resize: nn.Upsample(scale_factor=7) (nearest) then nn.AvgPool2d(k) with k = 7 * size /
    resolution per axis, as one separable linear map (1024 -> 224 with k = 32 upstream; 512 -> 16, 256 -> 8, 64 -> 2).
    Each side must be a multiple of resolution / gcd(resolution, 7) (32 for 224)."""
    _check_images("images", images)
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
        text = module.apply(variables, text, method=CLIP.encode_text)
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
    logits = module.apply(variables, image_features, text, method=CLIP.paired_logits)
    return 1 - logits / LOSS_LOGIT_SCALE


def embedding_loss(clip: Network, x, x_hat, *, normalize: bool = False):
    """FFCLIP's embedding loss (`Coach.calc_loss`): mean |encode_image(resize(x)) - encode_image(resize(x_hat))| with
    F.interpolate(bicubic, align_corners=True) to the CLIP resolution. As upstream (x is rendered without grad), the
    source features are constants; differentiable w.r.t. x_hat. normalize: as in `clip_loss`."""
    module, _ = clip
    _check_images("x", x)
    _check_images("x_hat", x_hat)
    if x.shape != x_hat.shape:
        raise InputError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)}: expected the same shape")
    res = module.config.vision_config.image_size
    both = image_ops.resize_bicubic_align_corners(jnp.concatenate([x, x_hat]), res)
    features = encode_image(clip, both, normalize=normalize)
    source, edited = jnp.split(features, 2)
    return jnp.mean(jnp.abs(jax.lax.stop_gradient(source) - edited))
