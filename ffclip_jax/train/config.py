"""Checks of a training config (the fields `configs/default.py` defines) that run before anything is compiled: the
batch against the mesh, the active loss terms, and the weights directories they need. Each failure is a one-line
ConfigError."""
from __future__ import annotations

from typing import Dict, Tuple

from ffclip_jax.errors import CheckpointError, ConfigError
from ffclip_jax.sharding import DATA_AXIS
from ffclip_jax.weights import pretrained
from ffclip_jax.weights.registry import NETWORKS, TRAINED_NETWORK, TRAINING_NETWORKS, WEIGHTS_NETWORKS, network_entry

LOSS_TERMS = ("clip", "embedding", "latent", "id", "background", "moco", "image_l1")
# loss term -> the frozen network it needs (besides the generator)
TERM_NETWORK = {"clip": "clip", "embedding": "clip", "id": "arcface", "background": "parsenet", "moco": "moco"}


def resolve_batch(config, num_devices: int) -> Tuple[int, int]:
    """(global train batch, eval batch), checked against the data axis and accumulation."""
    t = config.train
    batch = t.batch_size or t.per_device_batch_size * num_devices
    accum = t.accum_steps
    if accum < 1 or batch % accum:
        raise ConfigError(f"train.accum_steps={accum} must be >= 1 and divide the global batch {batch}")
    if (batch // accum) % num_devices:
        raise ConfigError(f"micro-batch {batch // accum} (train.batch_size {batch} / accum_steps {accum}) does not "
                          f"split over the {num_devices} devices of the '{DATA_AXIS}' axis")
    eval_batch = config.eval.batch_size or batch // accum
    if eval_batch % num_devices:
        raise ConfigError(f"eval.batch_size={eval_batch} does not split over the {num_devices} devices")
    return batch, eval_batch


def active_terms(config) -> Dict[str, float]:
    """The loss terms with a non-zero weight."""
    unknown = set(config.loss.keys()) - set(LOSS_TERMS)
    if unknown:
        raise ConfigError(f"unknown loss terms {sorted(unknown)}; known: {', '.join(LOSS_TERMS)}")
    terms = {k: float(v) for k, v in config.loss.items() if float(v) != 0.0}
    if not terms:
        raise ConfigError("every loss weight is 0: nothing to train")
    return terms


def needed_networks(config) -> Tuple[str, ...]:
    """Networks the configured losses need: always the generator and CLIP (for the prompt table)."""
    need = {"generator", "clip"} | {TERM_NETWORK[t] for t in active_terms(config) if t in TERM_NETWORK}
    return tuple(n for n in TRAINING_NETWORKS if n in need)


def check_weights(config) -> None:
    """Every needed `weights.*` directory exists and holds the right model (any other one that is set too), and
    `init_from` is an FFCLIP directory: a one-line ConfigError otherwise. Reads only model.json files (runs before
    anything is compiled)."""
    terms = active_terms(config)
    needed = needed_networks(config)
    for name in needed:
        path = config.weights[name]
        users = [f"loss.{t}={terms[t]}" for t in terms if TERM_NETWORK.get(t) == name] or ["rendering"]
        if not path:
            raise ConfigError(f"config.weights.{name} is empty but {', '.join(users)} needs it; convert one with "
                              f"`{network_entry(name).convert_hint}` and pass --config.weights.{name}=DIR")
    for name in WEIGHTS_NETWORKS:
        if config.weights[name]:
            _check_model_dir(f"config.weights.{name}", config.weights[name], name)
    if config.init_from:
        _check_model_dir("config.init_from", config.init_from, TRAINED_NETWORK)


def _check_model_dir(field: str, path: str, network: str) -> None:
    try:
        meta = pretrained.read_meta(path)
    except CheckpointError as e:
        raise ConfigError(f"{field}={path}: {e}") from None
    models = NETWORKS[network]
    if meta["model"] not in models:
        raise ConfigError(f"{field}={path}: holds a {meta['model']!r} model, expected "
                          f"{' or '.join(repr(m) for m in models)} (`{network_entry(network).convert_hint}`)")
