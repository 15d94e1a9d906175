"""Converters from upstream PyTorch checkpoints to ffclip-jax directories (see `python -m convert_weights -h`)."""
