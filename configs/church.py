"""LSUN churches: 256px StyleGAN2 (14 latents), e4e church latents, the church prompt list (ours: upstream has none).
MoCo similarity instead of ID/background, weight 0.5 as for cars.
"""
from configs import default


def get_config():
    c = default.moco_domain("church")
    c.eval.grid_prompts = ("Gothic church", "Modern church", "Wooden church")
    return c
