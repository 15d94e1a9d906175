"""Converted weights: the network registry, converted directories (load/save), weights directories with their
manifests, and safe reading of upstream PyTorch files.

    from ffclip_jax.weights import pretrained, resolve
    generator, variables = pretrained.load("weights/stylegan2")      # any converted directory -> (module, variables)
    networks = resolve("weights/ffhq")                               # a `convert_weights all` output or trainer export
"""
from ffclip_jax.weights import pretrained, registry
from ffclip_jax.weights.manifest import WeightsDir, resolve, write_manifest
from ffclip_jax.weights.pretrained import load, save

__all__ = ["pretrained", "registry", "WeightsDir", "resolve", "write_manifest", "load", "save"]
