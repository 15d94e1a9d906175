"""LSUN churches: 256px StyleGAN2 (14 latents), e4e church latents, the church prompt list (ours: upstream has none).
MoCo similarity instead of ID/background, weight 0.5 as for cars.
"""
from ffclip_jax.train_lib import base_config


def get_config():
    c = base_config()
    c.domain = "church"
    c.prompts = "church"
    c.data_dir = "data"
    c.weights.generator = "weights/stylegan2-church"
    c.weights.clip = "weights/clip"
    c.weights.moco = "weights/moco"
    c.loss.id = 0.0
    c.loss.background = 0.0
    c.loss.moco = 0.5
    c.eval.grid_prompts = ("Gothic church", "Modern church", "Wooden church")
    return c
