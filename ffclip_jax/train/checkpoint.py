"""Checkpoints (orbax CheckpointManager: the TrainState and the input pipeline's position; the latest K and the best
by validation loss) and the export of a trained mapper as a weights directory for the editor."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import ml_collections
import numpy as np

from ffclip_jax.errors import CheckpointError, ConfigError
from ffclip_jax.models.mapper import DynamicMapper
from ffclip_jax.models.stylegan2 import n_latent
from ffclip_jax.sharding import make_mesh, state_sharding
from ffclip_jax.train.state import TrainState, abstract_state, make_optimizer
from ffclip_jax.weights import pretrained
from ffclip_jax.weights.manifest import TRAIN_CONFIG as CONFIG_FILE, TRAIN_EXPORT as WEIGHTS_DIR
from ffclip_jax.weights.manifest import write_manifest
from ffclip_jax.weights.registry import WEIGHTS_NETWORKS

CHECKPOINT_DIR = "checkpoints"
GRIDS_DIR = "grids"
BEST_FILE = "best.json"


def checkpoint_manager(workdir: str, keep: int, *, read_only: bool = False):
    """orbax CheckpointManager over WORKDIR/checkpoints with items `state` (TrainState) and `data` (the input
    pipeline position, JSON); keeps the latest `keep` and the best by `val_loss`."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

    policy = pp.AnyPreservationPolicy([
        pp.LatestN(n=keep),
        pp.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1, keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=not read_only, read_only=read_only,
                                           save_interval_steps=1)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
                                 item_names=("state", "data"), options=options)


def save_checkpoint(manager, state: TrainState, data_state: Mapping[str, Any], metrics=None) -> None:
    import orbax.checkpoint as ocp

    manager.save(int(state.step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                          data=ocp.args.JsonSave(dict(data_state))),
                 metrics=metrics, force=True)


def restore_checkpoint(manager, step: int, target: TrainState, shardings) -> Tuple[TrainState, Dict[str, Any]]:
    """Restore `step` onto `shardings` (any device count: the state is resharded on load)."""
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=s), target, shardings)
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                        data=ocp.args.JsonRestore()))
    return out["state"], dict(out["data"])


def read_best(workdir: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(workdir, BEST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"{workdir}: not a training workdir (no {CONFIG_FILE})")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def restore_params(workdir: str, which: str = "best"):
    """(config, mapper module, params, step) of a training workdir's best (or 'latest') checkpoint, on one device."""
    config = load_run_config(workdir)
    gen_config = pretrained.read_meta(config.weights.generator)["config"]
    mapper = DynamicMapper(n_latent=n_latent(gen_config["size"]), style_dim=gen_config["style_dim"],
                           num_blocks=config.model.mapper_blocks)
    manager = checkpoint_manager(workdir, config.log.keep_checkpoints, read_only=True)
    best = read_best(workdir)
    step = best["step"] if which == "best" and best and best["step"] in manager.all_steps() else manager.latest_step()
    if step is None:
        raise CheckpointError(f"{workdir}/{CHECKPOINT_DIR}: no checkpoint to export")
    target = abstract_state(mapper, make_optimizer(config, 1)[0])
    mesh = make_mesh(jax.devices()[:1])
    state, _ = restore_checkpoint(manager, step, target, state_sharding(mesh, target))
    manager.close()
    return config, mapper, jax.tree.map(np.asarray, state.params), step


def export_weights(workdir: str, out_dir: Optional[str] = None, which: str = "best") -> str:
    """Write a trained mapper as a weights directory (default WORKDIR/weights): DIR holds the mapper (model
    'ffclip_mapper') and DIR/manifest.json names every network directory (the generator, CLIP, ...) relative to DIR,
    so a workdir moved with its networks keeps working; nothing is copied (each network is stored once)."""
    config, mapper, params, step = restore_params(workdir, which)
    out_dir = os.path.abspath(out_dir or os.path.join(workdir, WEIGHTS_DIR))
    mapper_config = dict(n_latent=mapper.n_latent, style_dim=mapper.style_dim, num_blocks=mapper.num_blocks)
    networks = {name: os.path.abspath(config.weights[name])
                for name in WEIGHTS_NETWORKS if config.weights.get(name)}
    with pretrained.atomic_output_dir(out_dir, overwrite=True) as tmp:
        pretrained.write_model_dir(tmp, "ffclip_mapper", mapper_config, {"params": params},
                                   extra={"step": int(step)})
        # relative to the final directory, which `tmp` becomes
        write_manifest(tmp, {**{n: os.path.relpath(p, out_dir) for n, p in networks.items()}, "mapper": "."},
                       step=int(step), checkpoint=which, prompts=config.prompts, domain=config.domain)
    return out_dir
