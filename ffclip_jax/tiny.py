"""Tiny random networks and synthetic latents, so the whole training pipeline runs on a laptop CPU with no download:

    paths = ensure_assets("runs/tiny/tiny_assets")   # {"generator": DIR, "clip": DIR, ..., "data_dir": DIR}

Written once (each directory atomically) and reused: a 32px StyleGAN2 with style_dim 64, a 2-layer CLIP embedding
text in 64 dims, ArcFace IR-SE50 (it has no smaller variant), an e4e encoder on IR-SE50 for 64x64 photos, a narrow
face-parsing UNet, a one-block-per-stage ResNet-50 for MoCo, LPIPS with the full AlexNet and VGG16 backbones (they
have no smaller variant; random heads), `ffclip_latents/custom` with synthetic w+ (8 x 64) and
`photos/sample.png`, a 64x64 "photo" (a generator image) for the photo path. Random weights: the losses are real
computations on meaningless networks, good for exercising the code, not for pretty edits.
"""
from __future__ import annotations

import os
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from ffclip_jax.data import build, dataset_dir, open_split, synthetic_latents
from ffclip_jax.fileio import atomic_write
from ffclip_jax.grid import to_uint8
from ffclip_jax.models import clip
from ffclip_jax.models.arcface import Backbone
from ffclip_jax.models.e4e import Encoder4Editing
from ffclip_jax.models.lpips import HEAD_INIT_MAX, LPIPS
from ffclip_jax.models.moco import ResNet50
from ffclip_jax.models.parsenet import UNet
from ffclip_jax.models.stylegan2 import Generator
from ffclip_jax.weights import pretrained
from ffclip_jax.weights.clip_dir import save_clip

GENERATOR = dict(size=32, style_dim=64, n_mlp=2, channel_multiplier=1, channel_max=32)
ARCFACE = dict(input_size=112, num_layers=50, mode="ir_se")
E4E = dict(num_layers=50, mode="ir_se", stylegan_size=GENERATOR["size"], style_dim=GENERATOR["style_dim"],
           input_size=(64, 64))
PARSENET = dict(feature_scale=16, n_classes=19, is_batchnorm=True)
MOCO = dict(stage_sizes=(1, 1, 1, 1), width=8)
DOMAIN = "custom"
NUM_TRAIN, NUM_TEST = 64, 16


def _random_like(path, leaf, rng: np.random.RandomState) -> np.ndarray:
    """Random values for one variable of a torch.nn-style network, filled in numpy (no init compile): kernels
    N(0, 1/fan_in), 1-D weights (BatchNorm scale, PReLU slope) about 1, biases and running means about 0,
    running variances about 1."""
    name = getattr(path[-1], "key", str(path[-1]))
    shape = tuple(leaf.shape)
    if len(shape) >= 2:
        return (rng.randn(*shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
    if name in ("weight", "running_var"):
        return np.asarray(1 + 0.1 * rng.rand(*shape), np.float32)
    return np.asarray(0.1 * rng.randn(*shape), np.float32)  # np.asarray: a 0-d leaf (CLIP's logit_scale) too


def _save_flax(directory: str, model: str, module, config, example, seed: int, numpy_fill: bool = False,
               buffers=None) -> None:
    """Random variables of `module` saved as a converted directory: `module.init`, or a numpy fill of its shapes
    (`numpy_fill`, for the deep torch.nn-style networks whose init would take long to compile); `buffers` replace
    those of the same name."""
    if numpy_fill:
        rng = np.random.RandomState(seed)
        shapes = jax.eval_shape(module.init, jax.random.PRNGKey(seed), example)
        variables = jax.tree_util.tree_map_with_path(lambda p, leaf: _random_like(p, leaf, rng), shapes)
    else:
        variables = jax.device_get(jax.jit(module.init)(jax.random.PRNGKey(seed), example))
    if buffers:
        variables = dict(variables, buffers=dict(variables["buffers"], **buffers))
    pretrained.save(directory, model, dict(config), variables, overwrite=True)


def _save_photo(path: str, generator, variables, w) -> None:
    """The generator's image of w+ (1, L, D), enlarged to the tiny e4e's input size, as a PNG."""
    image = to_uint8(generator.apply(variables, w, input_is_latent=True))[0]
    photo = Image.fromarray(image).resize(E4E["input_size"][::-1], Image.BICUBIC)
    atomic_write(path, lambda tmp: photo.save(tmp, format="PNG"))


def _save_clip(directory: str, seed: int) -> None:
    config = clip.tiny_config()
    _, variables = clip.init_random(config, seed)
    save_clip(directory, config, variables, extra={"source": "ffclip_jax.tiny (random)"}, overwrite=True)


NETWORKS = ("generator", "e4e", "clip", "arcface", "parsenet", "moco", "lpips_alex", "lpips_vgg")


def _save_lpips(directory: str, backbone: str, seed: int) -> None:
    """A random LPIPS(backbone) (numpy fill; heads U(0, 0.2), non-negative like the released ones)."""
    module = LPIPS(backbone)
    x = jnp.zeros((1, module.min_size, module.min_size, 3))
    rng = np.random.RandomState(seed)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(seed), x, x)
    variables = jax.tree_util.tree_map_with_path(
        lambda p, leaf: (rng.uniform(0, HEAD_INIT_MAX, leaf.shape).astype(np.float32)
                         if p[1].key.startswith("lin") else _random_like(p, leaf, rng)), shapes)
    pretrained.save(directory, f"lpips_{backbone}", {"backbone": backbone}, variables, overwrite=True)


def ensure_networks(directory: str, seed: int = 0) -> Dict[str, str]:
    """Create the random networks missing under `directory`; returns {network: converted directory}."""
    directory = os.path.abspath(directory)
    paths = {name: os.path.join(directory, name) for name in NETWORKS}

    def missing(name):
        return not os.path.isfile(os.path.join(paths[name], pretrained.META_FILE))

    gen = Generator(**GENERATOR)
    if missing("generator"):
        _save_flax(paths["generator"], "stylegan2", gen, GENERATOR, jnp.zeros((1, gen.style_dim)), seed)
    if missing("clip"):
        _save_clip(paths["clip"], seed + 1)
    if missing("arcface"):
        _save_flax(paths["arcface"], "arcface", Backbone(**ARCFACE), ARCFACE, jnp.zeros((1, 112, 112, 3)), seed + 2,
                   numpy_fill=True)
    if missing("parsenet"):
        _save_flax(paths["parsenet"], "parsenet", UNet(**PARSENET), PARSENET, jnp.zeros((1, 32, 32, 3)), seed + 3,
                   numpy_fill=True)
    if missing("moco"):
        _save_flax(paths["moco"], "moco", ResNet50(**MOCO), MOCO, jnp.zeros((1, 64, 64, 3)), seed + 4,
                   numpy_fill=True)
    for backbone in ("alex", "vgg"):
        if missing(f"lpips_{backbone}"):
            _save_lpips(paths[f"lpips_{backbone}"], backbone, seed + 6)
    if missing("e4e"):  # e4e adds the generator's latent_avg to every code
        _, gen_vars = pretrained.load(paths["generator"])
        latent_avg = np.broadcast_to(np.asarray(gen_vars["buffers"]["latent_avg"]), (gen.n_latent, gen.style_dim))
        _save_flax(paths["e4e"], "e4e", Encoder4Editing(**E4E), E4E, jnp.zeros((1, *E4E["input_size"], 3)), seed + 5,
                   numpy_fill=True, buffers={"latent_avg": np.ascontiguousarray(latent_avg, np.float32)})
    return paths


def ensure_assets(directory: str, seed: int = 0) -> Dict[str, str]:
    """`ensure_networks`, the synthetic latents data set and the sample photo: {network: directory, "data_dir": DIR,
    "photos": DIR}, creating what is missing."""
    directory = os.path.abspath(directory)
    paths = dict(ensure_networks(directory, seed), data_dir=os.path.join(directory, "data"),
                 photos=os.path.join(directory, "photos"))
    if not os.path.isfile(os.path.join(dataset_dir(paths["data_dir"], DOMAIN), "dataset_info.json")):
        module, variables = pretrained.load(paths["generator"])
        splits = {name: synthetic_latents(module, variables, num, seed=seed, stream=stream, truncation=0.7)
                  for stream, (name, num) in enumerate((("train", NUM_TRAIN), ("test", NUM_TEST)))}
        build(paths["data_dir"], DOMAIN, splits, {"source": "synthetic", "generator": paths["generator"],
                                                  "seed": seed, "truncation": 0.7}, overwrite=True)
    photo = os.path.join(paths["photos"], "sample.png")
    if not os.path.isfile(photo):
        module, variables = pretrained.load(paths["generator"])
        test = open_split(paths["data_dir"], DOMAIN, "test")
        _save_photo(photo, module, variables, np.asarray(test[0]["w"], np.float32)[None])
    return paths
