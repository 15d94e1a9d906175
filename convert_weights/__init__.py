"""Converters from upstream PyTorch checkpoints to ffclip-jax directories (`ffclip convert --help`)."""
