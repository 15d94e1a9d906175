"""Evaluation metrics of text-driven edits (`ffclip evaluate`), per example, pure and jit-able; and the batched driver.

For a source latent w (rendered x = G(w)) and its edit w_hat = mapper(w, e) (rendered x_hat), with prompt p:
- `clip_score`: 100 * cos(CLIP_image(x_hat), CLIP_text(p)) with OpenAI's own preprocessing (`clip_preprocess`),
  its value on the source image and the change (edit - source).
- `identity`: cos(ArcFace(x), ArcFace(x_hat)) with the ID loss's crop and pools (faces).
- `background_mse` / `background_psnr`: MSE (images in [0, 1]) and PSNR over the pixels that the face parser calls
  background (not hair) in both images, the region of the training background loss (faces);
  `background_fraction` is the share of such pixels.
- `moco_similarity`: cos(MoCo(x), MoCo(x_hat)) (cars, churches, other domains).
- `latent_mean_abs` / `latent_l2`: mean |w_hat - w| and ||w_hat - w||_2 over all n_latent x style_dim entries.
Images are NHWC in the generator's range and are first clipped to [-1, 1] (what a saved image shows). Each network
argument is a `(module, variables)` pair as `pretrained.load` returns.

`evaluate` runs every (latent, prompt) through the Editor's row runners (mapper, generator) and, in the same fixed-size
batches on the same devices (`Editor.run` -> `batching.in_batches`), the jitted `image_features` (one compilation
serves sources and edits) and `compare`.
`metric_networks` loads the scoring networks of a weights directory for a domain (faces, or other domains).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ffclip_jax import losses
from ffclip_jax.errors import CheckpointError, InputError
from ffclip_jax.models.clip import encode_image
from ffclip_jax.nn import image_ops
from ffclip_jax.nn.layers import l2_normalize
from ffclip_jax.weights import pretrained
from ffclip_jax.weights.manifest import WeightsDir

Network = Tuple[Any, Any]  # (flax module, variables)

CLIP_SCORE_SCALE = 100.0  # cosine x 100 (CLIPScore's convention, without its clipping at 0)
PSNR_MAX = 100.0  # dB: the MSE floor 1e-10 keeps identical images finite (JSON has no infinity)
MSE_FLOOR = 10.0 ** (-PSNR_MAX / 10.0)


# ---------------------------------------------------------------------------------------------------------------
# CLIP preprocessing and score


@functools.lru_cache(maxsize=None)
def pil_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of PIL's `Image.resize(..., BICUBIC)` along one axis (antialiased: the cubic kernel is
    stretched by the downscale factor), read off by resizing an identity image with PIL itself."""
    eye = Image.fromarray(np.eye(n_in, dtype=np.float32))
    return np.asarray(eye.resize((n_out, n_in), Image.BICUBIC), np.float64).T


def clip_crop_geometry(height: int, width: int, resolution: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """torchvision Resize(resolution) (shorter side to `resolution`, the longer truncated to int) then
    CenterCrop(resolution): ((resized H, resized W), (crop top, crop left))."""
    if height <= width:
        size = (resolution, int(resolution * width / height))
    else:
        size = (int(resolution * height / width), resolution)
    return size, (int(round((size[0] - resolution) / 2.0)), int(round((size[1] - resolution) / 2.0)))


def clip_preprocess(images, resolution: int = 224):
    """OpenAI CLIP's `preprocess` on generator images, as a differentiable separable linear map: clip to [-1, 1],
    Resize(resolution, BICUBIC) of the shorter side with PIL's antialiased bicubic (`pil_bicubic_matrix`), CenterCrop.
    (B, H, W, 3) -> (B, resolution, resolution, 3), still in [-1, 1]; CLIP's mean/std follow in `clip.encode_image(
    ..., normalize=True)`. Differs from OpenAI's PIL path only by its uint8 rounding (< 1/255 on smooth images)."""
    if getattr(images, "ndim", None) != 4 or images.shape[-1] != 3:
        raise InputError(f"images: expected NHWC RGB images (B, H, W, 3), got shape "
                         f"{tuple(getattr(images, 'shape', ()))}")
    (h, w), (top, left) = clip_crop_geometry(images.shape[1], images.shape[2], resolution)
    mh = pil_bicubic_matrix(images.shape[1], h)[top:top + resolution]
    mw = pil_bicubic_matrix(images.shape[2], w)[left:left + resolution]
    return image_ops.apply_separable(jnp.clip(images, -1.0, 1.0), mh, mw)


def clip_image_features(clip: Network, images):
    """L2-normalised CLIP image features with OpenAI's preprocessing: (B, H, W, 3) -> (B, embed_dim)."""
    module, _ = clip
    x = clip_preprocess(images, module.config.vision_config.image_size)
    return l2_normalize(encode_image(clip, x, normalize=True), eps=1e-12)


def clip_score(image_features, text_features):
    """100 * cos(image_i, text_i): (B, E) image features, (B, E) or (E,) text features (any norm) -> (B,)."""
    unit_image, unit_text = l2_normalize(image_features, eps=1e-12), l2_normalize(text_features, eps=1e-12)
    return CLIP_SCORE_SCALE * jnp.sum(unit_image * unit_text, axis=-1)


# ---------------------------------------------------------------------------------------------------------------
# identity, background, MoCo, latents


def arcface_features(arcface: Network, images):
    """ArcFace's L2-normalised 512-d features with the ID loss's preprocessing (`losses.arcface_input`)."""
    module, variables = arcface
    return module.apply(variables, losses.arcface_input(jnp.clip(images, -1.0, 1.0)))


def identity_similarity(arcface: Network, x, x_hat):
    """cos(ArcFace(x), ArcFace(x_hat)) per example: (B,), 1 for identical images."""
    return jnp.sum(arcface_features(arcface, x) * arcface_features(arcface, x_hat), axis=-1)


def masked_mse(x, y, mask):
    """Mean squared error over the pixels where mask == 1, images mapped from [-1, 1] to [0, 1]:
    x, y (B, H, W, 3), mask (B, H, W, 1) -> (B,); NaN where the mask is empty."""
    a = (jnp.clip(x, -1.0, 1.0) + 1.0) / 2.0
    b = (jnp.clip(y, -1.0, 1.0) + 1.0) / 2.0
    total = jnp.sum(jnp.square(a - b) * mask, axis=(1, 2, 3))
    count = jnp.sum(mask, axis=(1, 2, 3)) * x.shape[-1]
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), jnp.nan)


def psnr(mse):
    """10 log10(1 / mse) in dB for images in [0, 1], capped at PSNR_MAX (mse floored at 1e-10)."""
    return 10.0 * jnp.log10(1.0 / jnp.maximum(mse, MSE_FLOOR))


def background_preservation(x, x_hat, mask) -> Dict[str, jax.Array]:
    """{background_mse, background_psnr, background_fraction} (each (B,)) over the pixels where mask (B, H, W, 1)
    is 1; the fraction is the share of such pixels."""
    mse = masked_mse(x, x_hat, mask)
    return {"background_mse": mse, "background_psnr": psnr(mse),
            "background_fraction": jnp.mean(mask, axis=(1, 2, 3))}


def background_metrics(parsenet: Network, x, x_hat) -> Dict[str, jax.Array]:
    """Background preservation (faces) over the training background loss's region (`losses.background_mask`: not
    hair in x and not hair in x_hat); see `background_preservation`."""
    mask = losses.background_mask(parsenet, jnp.clip(x, -1.0, 1.0))
    mask = mask * losses.background_mask(parsenet, jnp.clip(x_hat, -1.0, 1.0))
    return background_preservation(x, x_hat, mask)


def moco_similarity(moco: Network, x, x_hat):
    """cos(MoCo(x), MoCo(x_hat)) per example (`losses.moco_features`): (B,)."""
    f = losses.moco_features(moco, jnp.clip(x, -1.0, 1.0))
    f_hat = losses.moco_features(moco, jnp.clip(x_hat, -1.0, 1.0))
    return jnp.sum(f * f_hat, axis=-1)


def latent_change(w, w_hat) -> Dict[str, jax.Array]:
    """{latent_mean_abs: mean |w_hat - w|, latent_l2: ||w_hat - w||_2} over each example's (n_latent, style_dim)."""
    if jnp.shape(w) != jnp.shape(w_hat) or jnp.ndim(w) != 3:
        raise InputError(f"w {tuple(jnp.shape(w))} and w_hat {tuple(jnp.shape(w_hat))}: expected the same shape "
                         f"(B, n_latent, style_dim)")
    d = (w_hat - w).reshape(w.shape[0], -1)
    return {"latent_mean_abs": jnp.mean(jnp.abs(d), axis=-1), "latent_l2": jnp.linalg.norm(d, axis=-1)}


# ---------------------------------------------------------------------------------------------------------------
# batched evaluation

FACE_METRICS = ("identity", "background_mse", "background_psnr", "background_fraction")
OTHER_METRICS = ("moco_similarity",)
COMMON_METRICS = ("clip_score", "clip_score_source", "clip_score_delta", "latent_mean_abs", "latent_l2")


def metric_names(face: bool) -> Tuple[str, ...]:
    return COMMON_METRICS + (FACE_METRICS if face else OTHER_METRICS)


@dataclasses.dataclass(frozen=True)
class MetricNetworks:
    """The Flax modules that score images; their variables travel separately ({name: variables}). Faces use
    arcface and parsenet, other domains moco."""
    clip: Any
    arcface: Any = None
    parsenet: Any = None
    moco: Any = None

    @property
    def face(self) -> bool:
        return self.arcface is not None


def image_features(variables: Mapping[str, Any], x, *, nets: MetricNetworks) -> Dict[str, jax.Array]:
    """What the metrics compare, for images x (B, H, W, 3): normalised CLIP features `clip`, and `arcface` features
    and (with a parser) the background `mask` (faces) or `moco` features. Computed alike for sources and edits."""
    out = {"clip": clip_image_features((nets.clip, variables["clip"]), x)}
    if nets.face:
        out["arcface"] = arcface_features((nets.arcface, variables["arcface"]), x)
        if nets.parsenet is not None:
            out["mask"] = losses.background_mask((nets.parsenet, variables["parsenet"]), jnp.clip(x, -1.0, 1.0))
    else:
        out["moco"] = losses.moco_features((nets.moco, variables["moco"]), jnp.clip(x, -1.0, 1.0))
    return out


def compare(source: Mapping[str, jax.Array], edited: Mapping[str, jax.Array], x, x_hat, w, w_hat,
            text_embedding) -> Dict[str, jax.Array]:
    """Every metric (B,) of edits from `image_features` of the sources and edits, the images, the latents and the
    prompt's text embedding (E,) or (B, E)."""
    out = {"clip_score": clip_score(edited["clip"], text_embedding),
           "clip_score_source": clip_score(source["clip"], text_embedding)}
    out["clip_score_delta"] = out["clip_score"] - out["clip_score_source"]
    out.update(latent_change(w, w_hat))
    if "arcface" in source:
        out["identity"] = jnp.sum(source["arcface"] * edited["arcface"], axis=-1)
    else:
        out["moco_similarity"] = jnp.sum(source["moco"] * edited["moco"], axis=-1)
    if "mask" in source:
        out.update(background_preservation(x, x_hat, source["mask"] * edited["mask"]))
    return out


_features_fn = jax.jit(image_features, static_argnames="nets")  # compiled once per (hashable) set of networks

_compare_fn = jax.jit(compare)

# the networks each domain's preservation metrics need: identity (+ background with a parser) or MoCo similarity
DOMAIN_NETWORKS = {"face": ("arcface", "parsenet"), "other": ("moco",)}


def choose_domain(weights: WeightsDir, domain: str = "auto", background: bool = True) -> str:
    """'face' or 'other': as asked, or from the networks the weights directory has (faces: arcface, and parsenet
    unless background=False)."""
    if domain == "auto":
        face = DOMAIN_NETWORKS["face"] if background else DOMAIN_NETWORKS["face"][:1]
        domain = "face" if all(weights.has(n) for n in face) else "other"
        if domain == "other" and not weights.has("moco"):
            raise CheckpointError(f"weights directory {weights.root} has neither {' + '.join(face)} (faces) nor moco "
                                  f"(other domains): needed for the preservation metrics")
    return domain


def metric_networks(weights: WeightsDir, clip, domain: str,
                    background: bool = True) -> Tuple[MetricNetworks, Dict[str, Any]]:
    """(MetricNetworks, {name: variables}) of a domain ('face' or 'other'): CLIP (a loaded (module, variables)) and
    the domain's networks from the weights directory (without the face parser when background=False)."""
    names = DOMAIN_NETWORKS[domain][:1] if domain == "face" and not background else DOMAIN_NETWORKS[domain]
    loaded = {n: pretrained.load(weights.path(n, f"the {domain}-domain metrics (--domain {domain})")) for n in names}
    nets = MetricNetworks(clip=clip[0], **{n: module for n, (module, _) in loaded.items()})
    return nets, {"clip": clip[1], **{n: variables for n, (_, variables) in loaded.items()}}


def evaluate(editor, nets: MetricNetworks, variables: Mapping[str, Any], latents: np.ndarray,
             text_embeddings: np.ndarray, *, strength: float = 1.0,
             part_embeddings: Optional[Sequence[np.ndarray]] = None, progress: bool = True) -> Dict[str, np.ndarray]:
    """Every metric of every (prompt, latent): {name: (P, N) float64}.

    editor: an `ffclip_jax.pipeline.Editor` (its `map_rows`, `render_rows`, and its devices for the scores: the
    variables are placed on them, every batch split over them); nets/variables: the scoring networks.
    latents (N, L, D); text_embeddings (P, E) unnormalised `encode_text`. part_embeddings[p] (K_p, E)
    (compositions) adds `clip_score_parts` (P, N, K), NaN padded: the edit's CLIP score with each part.
    Latents go in chunks of the editor's batch size (images never pile up), every piece in its fixed-size batches,
    so each compiles once: the mapper, the generator (sources and edits), the scoring networks and the comparison."""
    latents = np.asarray(latents, np.float32)
    n, p, batch = len(latents), len(text_embeddings), editor.batch_size
    features = functools.partial(_features_fn, editor.place(variables), nets=nets)
    names = metric_names(nets.face)
    results = {k: np.full((p, n), np.nan) for k in names}
    k_parts = max((len(e) for e in part_embeddings or []), default=0)
    if k_parts:
        results["clip_score_parts"] = np.full((p, n, k_parts), np.nan)
        units = [e / np.linalg.norm(e, axis=-1, keepdims=True) for e in part_embeddings]
    with tqdm(total=-(-n // batch) * p, desc="evaluating", unit="batch", disable=not progress) as bar:
        for start in range(0, n, batch):
            w = latents[start:start + batch]
            m = len(w)
            x = editor.render_rows(w)
            source = editor.run(features, [x])
            for i in range(p):
                e = np.broadcast_to(np.asarray(text_embeddings[i], np.float32), (m, text_embeddings.shape[-1]))
                w_hat = editor.map_rows(w, e, strength)
                x_hat = editor.render_rows(w_hat)
                edited = editor.run(features, [x_hat])
                out = editor.run(_compare_fn, [source, edited, x, x_hat, w, w_hat, e])
                for k in names:
                    results[k][i, start:start + m] = out[k]
                if k_parts and len(units[i]):
                    f_hat = np.asarray(edited["clip"], np.float64)
                    results["clip_score_parts"][i, start:start + m, :len(units[i])] = (
                        CLIP_SCORE_SCALE * f_hat @ units[i].T)
                bar.update()
    return results


# ---------------------------------------------------------------------------------------------------------------
# composed prompts


def composition_pairs(prompts: Sequence[str], num: int, seed: int) -> list:
    """`num` pairs (a, b) of distinct training prompts for `--compositions`, chosen by `seed` (numpy PCG64) from
    every unordered pair of the de-duplicated list, in list order. Pairs that share a word (case-insensitive) are
    skipped: they edit the same attribute and conflict ("Blue hair" / "Pink hair", "Man Aged 40" / "Man Aged 80").
    Returned in list order; fewer than `num` if fewer pairs exist."""
    unique = list(dict.fromkeys(prompts))
    words = [set(p.lower().split()) for p in unique]
    pairs = [(unique[i], unique[j]) for i in range(len(unique)) for j in range(i + 1, len(unique))
             if not words[i] & words[j]]
    if num < 1:
        raise InputError(f"--num-compositions must be at least 1, got {num}")
    if not pairs:
        raise InputError(f"no composable prompt pairs among {len(unique)} distinct prompts (pairs sharing a word are "
                         f"skipped); expected at least two prompts about different attributes")
    chosen = np.random.default_rng(seed).choice(len(pairs), size=min(num, len(pairs)), replace=False)
    return [pairs[i] for i in sorted(chosen)]


def compose(parts: Sequence[str]) -> str:
    """The composed prompt: the parts joined by ', ' ("Blue hair, wearing glasses")."""
    return ", ".join(parts)
