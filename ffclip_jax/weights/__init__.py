"""Converted weights: the network registry, converted directories (load/save; CLIP's in `clip_dir`), and weights
directories with their manifests. (Reading upstream PyTorch files is the converters' `convert_weights.torch_io`.)

    from ffclip_jax.weights import pretrained, resolve
    generator, variables = pretrained.load("weights/stylegan2")      # any converted directory -> (module, variables)
    networks = resolve("weights/ffhq")                               # a `ffclip convert all` output or trainer export
"""
from ffclip_jax.weights import pretrained, registry
from ffclip_jax.weights.manifest import WeightsDir, resolve, write_manifest
from ffclip_jax.weights.pretrained import load, save

__all__ = ["pretrained", "registry", "WeightsDir", "resolve", "write_manifest", "load", "save"]
