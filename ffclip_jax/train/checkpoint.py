"""Checkpoints (orbax CheckpointManager: the TrainState and the input pipeline's position; the latest K and the best
by validation loss), resuming from the newest one that restores (damaged ones are moved aside), and the export of a
trained mapper as a weights directory for the editor."""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import jax
import ml_collections
import numpy as np

from ffclip_jax import logs
from ffclip_jax.errors import CheckpointError, ConfigError
from ffclip_jax.fileio import atomic_output_dir
from ffclip_jax.models.mapper import DynamicMapper
from ffclip_jax.models.stylegan2 import n_latent
from ffclip_jax.sharding import make_mesh, state_sharding
from ffclip_jax.train.state import TrainState, abstract_state, make_optimizer
from ffclip_jax.weights import pretrained
from ffclip_jax.weights.manifest import TRAIN_CONFIG as CONFIG_FILE, TRAIN_EXPORT as WEIGHTS_DIR
from ffclip_jax.weights.manifest import write_manifest
from ffclip_jax.weights.registry import WEIGHTS_NETWORKS

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged_checkpoints"  # WORKDIR/damaged_checkpoints/N: checkpoint N, which did not restore
GRIDS_DIR = "grids"
BEST_FILE = "best.json"
ITEMS = ("state", "data")
STEP_METADATA = "_CHECKPOINT_METADATA"  # orbax's per-step file (written when the step is finalised)


def checkpoint_manager(workdir: str, keep: int, *, read_only: bool = False):
    """orbax CheckpointManager over WORKDIR/checkpoints with items `state` (TrainState) and `data` (the input
    pipeline position, JSON); keeps the latest `keep` and the best by `val_loss`."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

    policy = pp.AnyPreservationPolicy([
        pp.LatestN(n=keep),
        pp.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1, keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=not read_only, read_only=read_only,
                                           save_interval_steps=0 if read_only else 1)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
                                 item_names=("state", "data"), options=options)


def save_checkpoint(manager, state: TrainState, data_state: Mapping[str, Any], metrics=None) -> None:
    import orbax.checkpoint as ocp

    manager.save(int(state.step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                          data=ocp.args.JsonSave(dict(data_state))),
                 metrics=metrics, force=True)


def restore_checkpoint(manager, step: int, target: TrainState, shardings) -> Tuple[TrainState, Dict[str, Any]]:
    """Restore `step` onto `shardings` (any device count: the state is resharded on load)."""
    out = manager.restore(step, args=_composite_restore(target, shardings))
    return out["state"], dict(out["data"])


def _composite_restore(target: TrainState, shardings):
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=s), target, shardings)
    return ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore())


def step_dirs(workdir: str) -> Dict[int, str]:
    """{step: directory} of the checkpoints in WORKDIR/checkpoints (orbax names each step's directory by its number)."""
    root = os.path.join(workdir, CHECKPOINT_DIR)
    names = os.listdir(root) if os.path.isdir(root) else []
    return {int(n): os.path.join(root, n) for n in names if n.isdigit() and os.path.isdir(os.path.join(root, n))}


def restore_newest(workdir: str, target: TrainState, shardings,
                   log: Callable[[str], None] = print) -> Optional[Tuple[int, TrainState, Dict[str, Any]]]:
    """(step, state, input-pipeline state) of the newest checkpoint in WORKDIR/checkpoints that restores, or None
    when there is none. Each newer one that does not (a truncated or missing array file, a missing or garbled
    metadata file, a missing item) is named in one line (step, file, why) and moved to WORKDIR/damaged_checkpoints/,
    never deleted: the manager then neither reads it nor garbage-collects it, and when the resumed run reaches that
    step again it saves a fresh checkpoint there. When none restores, nothing is moved and a CheckpointError names
    the directory. Run on every process (multi-host: the chief moves, the others wait)."""
    import orbax.checkpoint as ocp

    steps = step_dirs(workdir)
    damaged: Dict[int, str] = {}
    found = None
    logs.drop_failed_restore_echoes()  # before a read fails: its echoes come while orbax's restore unwinds, and later
    for step in sorted(steps, reverse=True):
        problem = _structure_problem(steps[step])
        if problem is None:
            try:
                with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
                    out = checkpointer.restore(os.path.abspath(steps[step]), args=_composite_restore(target, shardings))
                found = step, out["state"], dict(out["data"])
                break
            except Exception as e:  # tensorstore, orbax and json raise many kinds for damaged files
                problem = describe_restore_error(steps[step], e)
        damaged[step] = problem
    if damaged and found is None:
        raise CheckpointError(f"{os.path.join(workdir, CHECKPOINT_DIR)}: no checkpoint restores ("
                              + "; ".join(f"step {s}: {p}" for s, p in sorted(damaged.items(), reverse=True))
                              + "); move them out of the way to start afresh")
    damaged.update({s: p for s in steps if s not in damaged and (found is None or s < found[0])
                    for p in [_structure_problem(steps[s])] if p})  # older ones orbax would choke on later
    best = read_best(workdir)
    for step in sorted(damaged, reverse=True):
        where = _move_aside(workdir, steps[step])
        log(f"checkpoint {step} cannot be restored ({damaged[step]}): moved to {where}")
        if best and best["step"] == step and jax.process_index() == 0 and os.path.isfile(
                os.path.join(workdir, BEST_FILE)):
            os.remove(os.path.join(workdir, BEST_FILE))  # the next evaluation writes it again
    if damaged and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("ffclip_jax: damaged checkpoints moved")
    return found


def _structure_problem(step_dir: str) -> Optional[str]:
    """What is missing or garbled in a step directory before any array is read: orbax's step metadata (JSON) and
    the two items; None if it looks whole."""
    path = os.path.join(step_dir, STEP_METADATA)
    if not os.path.isfile(path):
        return f"{path}: missing"
    try:
        with open(path) as f:
            json.load(f)
    except (OSError, ValueError) as e:
        return f"{path}: not readable JSON ({e})"
    for item in ITEMS:
        if not os.path.isdir(os.path.join(step_dir, item)):
            return f"{os.path.join(step_dir, item)}: missing"
    return None


def describe_restore_error(step_dir: str, e: BaseException) -> str:
    """'FILE: why' for a failed restore: the innermost error's first line (tensorstore names the array and the
    database; a value of size N names the truncated file, found by its size), or the JSON file that does not parse."""
    chain, cause = [], e
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    why = next((str(c).strip().splitlines()[0] for c in reversed(chain) if str(c).strip()), type(e).__name__)
    files = [f for f in glob.glob(os.path.join(step_dir, "**"), recursive=True) if os.path.isfile(f)]
    size = re.search(r"value of size (\d+)", why)
    culprit = [f for f in files if size and os.path.getsize(f) == int(size.group(1))]
    if isinstance(e, ValueError) and not culprit:  # json.JSONDecodeError is a ValueError: which JSON file?
        culprit = [f for f in files if os.path.basename(f) in ("_METADATA", "metadata") and not _parses(f)]
    where = culprit[0] if len(culprit) == 1 else step_dir
    return f"{where}: {why[:300]}"


def _parses(path: str) -> bool:
    try:
        with open(path) as f:
            json.load(f)
        return True
    except (OSError, ValueError):
        return False


def _move_aside(workdir: str, step_dir: str) -> str:
    """Move a checkpoint directory to WORKDIR/damaged_checkpoints/<step>[-k] (a new name each time); the chief
    process moves, every process returns the destination."""
    root = os.path.join(workdir, DAMAGED_DIR)
    name, k = os.path.basename(step_dir), 1
    dest = os.path.join(root, name)
    while os.path.exists(dest):
        k += 1
        dest = os.path.join(root, f"{name}-{k}")
    if jax.process_index() == 0:
        os.makedirs(root, exist_ok=True)
        shutil.move(step_dir, dest)
    return dest


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
    with atomic_output_dir(out_dir, overwrite=True) as tmp:
        pretrained.write_model_dir(tmp, "ffclip_mapper", mapper_config, {"params": params},
                                   extra={"step": int(step)})
        # relative to the final directory, which `tmp` becomes
        write_manifest(tmp, {**{n: os.path.relpath(p, out_dir) for n, p in networks.items()}, "mapper": "."},
                       step=int(step), checkpoint=which, prompts=config.prompts, domain=config.domain)
    return out_dir
