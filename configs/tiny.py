"""The built-in default: tiny random networks and synthetic latents built in WORKDIR/tiny_assets (ffclip_jax.tiny),
all FFHQ losses on, 24 steps of batch 4, so the whole pipeline (training, eval grids, checkpoints, export) runs on
2 CPU cores in a few minutes with no download.

    python train.py --config configs/tiny.py --workdir runs/tiny
"""
from configs import default


def get_config():
    c = default.get_config()
    c.tiny = True          # fills weights.* and data_dir with WORKDIR/tiny_assets
    c.domain = "custom"
    c.train.batch_size = 4
    c.train.num_steps = 24
    c.train.learning_rate = 1e-3
    c.log.every_steps = 4
    c.log.checkpoint_every_steps = 12
    c.log.keep_checkpoints = 2
    c.eval.every_steps = 12
    c.eval.num_examples = 8
    c.eval.grid_rows = 3
    c.eval.grid_prompts = ("Bald", "Blue eyes", "Purple hair")
    return c
