"""Training data: the `ffclip_latents` TFDS dataset (inverted or synthetic w+ latents) and the input pipeline.

    ffclip data build --domain ffhq --train train_latents.npy --test test_latents.npy --data-dir DIR

    from ffclip_jax.data import open_split, TrainBatches
    batches = TrainBatches(open_split(DIR, "ffhq", "train"), global_batch_size=64, num_prompts=53, seed=0)
"""
from ffclip_jax.data.builder import FfclipLatents, build, dataset_dir, describe, open_split
from ffclip_jax.data.latents import DOMAINS, expected_shape, load_generator, synthetic_latents
from ffclip_jax.data.pipeline import TrainBatches, eval_batches, eval_prompts, train_prompts

__all__ = ["FfclipLatents", "build", "dataset_dir", "describe", "open_split", "DOMAINS", "expected_shape",
           "load_generator", "synthetic_latents", "TrainBatches", "eval_batches", "eval_prompts",
           "train_prompts"]
