"""OpenAI CLIP (ViT) on transformers' Flax CLIP (`clip/model.py` CLIP).

`CLIP` is transformers' `FlaxCLIPModule` (parameters named exactly as in `FlaxCLIPModel`) with OpenAI's entry points:
`encode_text(ids)` pools at argmax(ids) (the end token) like OpenAI, `encode_image(images)` takes NHWC images at the
model resolution. The `config` of a converted directory uses OpenAI's names (`embed_dim`, `vision_width`, ...).
Prompt tables: `ffclip_jax.text.embeddings`; the two FFCLIP CLIP losses: `ffclip_jax.losses`.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
from transformers import CLIPConfig
from transformers.models.clip.modeling_flax_clip import FlaxCLIPModule

from ffclip_jax.errors import CheckpointError, InputError
from ffclip_jax.nn.image_ops import check_images
from ffclip_jax.nn.layers import l2_normalize

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
        return jnp.exp(self.logit_scale) * jnp.sum(l2_normalize(image_features) * l2_normalize(text_features), -1)

    def __call__(self, images, ids):
        """OpenAI's CLIP.forward: (logits_per_image (Bi, Bt), logits_per_text (Bt, Bi))."""
        i = l2_normalize(self.encode_image(images))
        t = l2_normalize(self.encode_text(ids))
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


def encode_image(clip: Network, images, *, normalize: bool = False):
    """(B, R, R, 3) images at the model resolution -> (B, embed_dim) features (jit-able, differentiable).
    normalize=True maps [-1, 1] images to [0, 1] and applies CLIP's mean/std (`standardize`: OpenAI's preprocessing,
    which FFCLIP omits)."""
    module, variables = clip
    check_images("images", images)
    res = module.config.vision_config.image_size
    if images.shape[1:3] != (res, res):
        raise InputError(f"images: expected (B, {res}, {res}, 3) at the CLIP resolution, got {tuple(images.shape)}")
    return module.apply(variables, standardize(images) if normalize else images, method=CLIP.encode_image)


def standardize(images):
    """[-1, 1] images -> [0, 1] -> (x - MEAN) / STD per channel: what OpenAI's preprocessing feeds CLIP."""
    return ((images + 1) / 2 - jnp.asarray(MEAN, images.dtype)) / jnp.asarray(STD, images.dtype)

