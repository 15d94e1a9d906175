"""FFCLIP's text-conditioned latent mapper: the official `Dynamic_mapper` (kristen-rang/FFCLIP `edit/dynamic_mapper.py`,
`edit/modules.py`), four chained semantic modulation blocks mapping (w+, CLIP text embedding) to an offset.

    mapper = DynamicMapper(n_latent=18)
    w_hat = mapper.apply(variables, w, text_embedding)              # w + delta (upstream behaviour)
    w_hat = mapper.apply(variables, w, text_embedding, strength=0.5)
    delta = mapper.apply(variables, w, text_embedding, method=DynamicMapper.delta)

Parameter names mirror the upstream state-dict keys ('att_mapper.0.attention_layer.k_matrix.weight' ->
params/att_mapper_0/attention_layer/k_matrix/weight; the `gamma_`/`beta_` Sequentials' members are `layers_0/1/3`);
linear weights are stored (in, out). Initialisation follows PyTorch's defaults (nn.Linear: U(-1/sqrt(in), 1/sqrt(in))
for weights and biases; LayerNorm: ones/zeros), so training from scratch starts where upstream does.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ffclip_jax.errors import InputError
from ffclip_jax.nn.layers import LayerNorm, Linear, layer_norm, leaky_relu, pixel_norm

LEAKY_SLOPE = 0.01  # torch.nn.LeakyReLU() default


def qkv_projections(features: int, key_features: int):
    """Upstream's q_matrix, k_matrix, v_matrix: bias-free Linear layers to (features, key_features, features)."""
    return (Linear(features, use_bias=False), Linear(key_features, use_bias=False),
            Linear(features, use_bias=False))


class ModulationMLP(nn.Module):
    """Upstream `gamma_` / `beta_`: Sequential(Linear, LayerNorm, LeakyReLU(0.01), Linear), (..., C) -> (..., C)."""
    features: int

    def setup(self):
        self.layers_0 = Linear(self.features)
        self.layers_1 = LayerNorm()
        self.layers_3 = Linear(self.features)

    def __call__(self, e):
        return self.layers_3(leaky_relu(self.layers_1(self.layers_0(e)), LEAKY_SLOPE))


class ChannelAttention(nn.Module):
    """Upstream `attention_mapping`: the text-driven translation (B, 1, C).

    x (B, L, C) w+ codes, e (B, 1, C): q = x Wq, k = Linear(1 -> L)(e^T) (B, C, L), v = x Wv;
    out = v softmax(k q / sqrt(C)) (B, L, C), averaged over the L layers, LayerNorm without affine.
    """
    n_latent: int
    features: int

    def setup(self):
        self.q_matrix, self.k_matrix, self.v_matrix = qkv_projections(self.features, self.n_latent)

    def __call__(self, x, e):
        q = self.q_matrix(x)
        k = self.k_matrix(jnp.swapaxes(e, -1, -2))
        v = self.v_matrix(x)
        attention = jax.nn.softmax(jnp.matmul(k, q) / math.sqrt(self.features), axis=-1)
        out = jnp.matmul(v, attention)
        return layer_norm(jnp.mean(out, axis=1, keepdims=True))


class SemanticModulation(nn.Module):
    """Upstream `att_module`, one semantic modulation block: x (B, L, C), e (B, 1, C) -> (B, L, C).

    PixelNorm over the layer axis -> semantic_alignment -> LayerNorm (no affine) -> semantic_injection.
    (Upstream's `fc` Linear is never used in its forward; it has no counterpart here and converters ignore it.)
    """
    n_latent: int
    features: int

    def setup(self):
        self.q_matrix, self.k_matrix, self.v_matrix = qkv_projections(self.features, self.features)
        self.attention_layer = ChannelAttention(self.n_latent, self.features)
        self.gamma_ = ModulationMLP(self.features)
        self.beta_ = ModulationMLP(self.features)

    def semantic_alignment(self, x, e):
        """Position attention (softmax over the layer axis of K q, unscaled: a per-layer scale of V) plus the
        channel-attention translation. x (B, L, C) pixel-normalised, e (B, 1, C) -> (B, L, C)."""
        layer_scale = jax.nn.softmax(jnp.matmul(self.k_matrix(x), jnp.swapaxes(self.q_matrix(e), -1, -2)), axis=1)
        return layer_scale * self.v_matrix(x) + self.attention_layer(x, e)

    def semantic_injection(self, h, e):
        """LeakyReLU(0.01)(h * (1 + gamma(e)) + beta(e)). h (B, L, C), e (B, 1, C) -> (B, L, C)."""
        return leaky_relu(h * (1 + self.gamma_(e)) + self.beta_(e), LEAKY_SLOPE)

    def __call__(self, x, e):
        x = pixel_norm(x, axis=1)
        return self.semantic_injection(layer_norm(self.semantic_alignment(x, e)), e)


class DynamicMapper(nn.Module):
    """Upstream `Dynamic_mapper` (+ `EditModel`'s residual): w+ (B, n_latent, C) and a CLIP text embedding
    (B, C) or (B, 1, C) (unnormalised `encode_text`; batch 1 broadcasts) -> w_hat = w + strength * delta.

    n_latent: 18 for a 1024 generator, 16 for 512, 14 for 256 (upstream's Linear(1 -> 18) follows it).
    strength: a scalar or one value per sample (B,); 1 is upstream's behaviour.
    """
    n_latent: int = 18
    style_dim: int = 512
    num_blocks: int = 4

    def setup(self):
        self.att_mapper = [SemanticModulation(self.n_latent, self.style_dim) for _ in range(self.num_blocks)]

    def _check(self, w, text_embedding):
        w = jnp.asarray(w)
        e = jnp.asarray(text_embedding)
        want_w = (self.n_latent, self.style_dim)
        if w.ndim != 3 or tuple(w.shape[1:]) != want_w:
            raise InputError(f"DynamicMapper: w must have shape (B, {want_w[0]}, {want_w[1]}), got {tuple(w.shape)}")
        if e.ndim == 2:
            e = e[:, None, :]
        if e.ndim != 3 or e.shape[1] != 1 or e.shape[2] != self.style_dim:
            raise InputError(f"DynamicMapper: text embedding must have shape (B, {self.style_dim}) or "
                             f"(B, 1, {self.style_dim}), got {tuple(jnp.shape(text_embedding))}")
        if e.shape[0] not in (1, w.shape[0]):
            raise InputError(f"DynamicMapper: text embedding batch {e.shape[0]} does not match w batch {w.shape[0]} "
                             f"(expected {w.shape[0]} or 1)")
        return w, jnp.broadcast_to(e, (w.shape[0],) + e.shape[1:]).astype(w.dtype)

    def delta(self, w, text_embedding):
        """The offset delta (B, n_latent, C): the last block's output."""
        x, e = self._check(w, text_embedding)
        for block in self.att_mapper:
            x = block(x, e)
        return x

    def __call__(self, w, text_embedding, strength=1.0):
        w = jnp.asarray(w)
        delta = self.delta(w, text_embedding)
        strength = jnp.asarray(strength, w.dtype)
        if strength.ndim == 1:
            strength = strength[:, None, None]
        elif strength.ndim != 0:
            raise InputError(f"DynamicMapper: strength must be a scalar or one value per sample (B,), got shape "
                             f"{tuple(strength.shape)}")
        return w + strength * delta
