"""ffclip-jax: FFCLIP (free-form text-driven StyleGAN2 editing) in JAX/Flax."""
__version__ = "0.1.0"
