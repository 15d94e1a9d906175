"""Stanford Cars: 512px StyleGAN2 (16 latents), e4e car latents, the car prompt list. Faces-only losses (ArcFace
identity, hair-parsing background) do not apply: MoCo v2 feature similarity keeps the car, as e4e does for cars.
Weights: moco 0.5 (e4e's car setting for its MoCo loss; upstream FFCLIP publishes no car config), the others as FFHQ.
"""
from configs import default


def get_config():
    c = default.moco_domain("car")
    c.eval.grid_prompts = ("Red car", "Blue car", "Jeep", "Sports car", "From Sixties")
    return c
