"""FFHQ faces (upstream FFCLIP `train_configs.yaml`): 1024px StyleGAN2, e4e latents of CelebA-HQ/FFHQ, the 53-entry
FFHQ prompt list; Adam 5e-4 (eps 1e-8), 20 epochs, MultiStepLR x0.5 at 50/75/90/95 %, grad-norm clip 5, batch 8 per
device; loss = 0.9 ID + 1.0 CLIP + 1.6 latent-L1 + 2.0 background + 1.0 embedding.

    python train.py --config configs/ffhq.py --workdir runs/ffhq --config.data_dir=DATA \
        --config.weights.generator=weights/stylegan2-ffhq --config.weights.clip=weights/clip \
        --config.weights.arcface=weights/arcface --config.weights.parsenet=weights/parsenet
"""
from configs import default


def get_config():
    c = default.get_config()  # the upstream FFHQ setup is the base
    c.weights.generator = "weights/stylegan2-ffhq"
    c.weights.clip = "weights/clip"
    c.weights.arcface = "weights/arcface"
    c.weights.parsenet = "weights/parsenet"
    c.data_dir = "data"
    return c
