"""The training loop, top to bottom: setup and checks, mesh, input, networks and prompt table, restore or init,
compile, evaluation, the loop (log / eval / checkpoint when `itstime`), export. `train.py` calls
`train_and_evaluate(config, workdir)`; rerunning it resumes, SIGTERM saves and stops.

WORKDIR receives checkpoints/ (orbax), grids/step_N.png, TensorBoard events in tb/, config.json, best.json and, at
the end, weights/ (the best mapper and a manifest of the other networks, for `ffclip edit`).
"""
from __future__ import annotations

import json
import os
import signal
import time
from typing import Callable, Dict, Optional

import jax
import numpy as np

from ffclip_jax.errors import ConfigError
from ffclip_jax.fileio import write_json_atomic
from ffclip_jax.train import checkpoint as ckpt
from ffclip_jax import sharding
from ffclip_jax.train.config import check_weights, resolve_batch
from ffclip_jax.train.networks import init_mapper_params, load_networks
from ffclip_jax.train.state import abstract_state, create_state, make_optimizer
from ffclip_jax.train.step import make_eval_step, make_train_step, render_edits, step_options
from ffclip_jax.weights.manifest import EXPORT_HINT
from ffclip_jax.weights.registry import WEIGHTS_NETWORKS


def itstime(step: int, every: int, total: int) -> bool:
    """Whether a periodic action (log, eval, checkpoint) runs after `step`: every `every` steps and at the end."""
    return step == total or (every > 0 and step % every == 0)


class MetricWriter:
    """TensorBoard scalars and images of the chief process (a no-op elsewhere), the one writer of the loop."""

    def __init__(self, logdir: str, enabled: bool):
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(logdir)

    def scalars(self, step: int, prefix: str, values: Dict[str, float]) -> None:
        if self._writer:
            for k, v in values.items():
                self._writer.add_scalar(f"{prefix}/{k}", v, step)

    def grid(self, step: int, images: np.ndarray) -> None:
        """images (R, C, H, W, 3) in [-1, 1]."""
        if self._writer:
            flat = (np.clip(images.reshape((-1,) + images.shape[2:]), -1, 1) + 1) / 2
            self._writer.add_images("eval/grid", flat, step, dataformats="NHWC")
            self._writer.flush()

    def close(self) -> None:
        if self._writer:
            self._writer.close()


def train_and_evaluate(config, workdir: str, *, on_step: Optional[Callable[[int], None]] = None) -> dict:
    """Train (or resume) in `workdir`; returns a summary dict. `on_step(step)` is called after each step."""
    from tqdm.auto import tqdm

    from ffclip_jax.data import TrainBatches, eval_batches, open_split
    from ffclip_jax.grid import save_grid
    from ffclip_jax.text.embeddings import prompt_embeddings
    from ffclip_jax.text.prompts import load_prompts

    # --- setup: distributed runtime, compilation cache, and every check that can fail before compiling ----------
    workdir = os.path.abspath(workdir)
    sharding.initialize_distributed(config)
    if config.jit_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(config.jit_cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    chief = jax.process_index() == 0
    if config.tiny:  # random tiny networks and synthetic latents, built once in the workdir
        from ffclip_jax import tiny

        assets = tiny.ensure_assets(os.path.join(workdir, "tiny_assets"), seed=config.seed)
        with config.unlocked():
            for name in WEIGHTS_NETWORKS:
                config.weights[name] = config.weights[name] or assets[name]
            config.data_dir = config.data_dir or assets["data_dir"]
    check_weights(config)
    opts = step_options(config)
    prompts = load_prompts(config.prompts)
    train_source = open_split(config.data_dir, config.domain, "train")
    test_source = open_split(config.data_dir, config.domain, "test")

    # --- mesh: one `data` axis over every device of every host ---------------------------------------------------
    mesh = sharding.make_mesh()
    batch_size, eval_batch_size = resolve_batch(config, mesh.shape[sharding.DATA_AXIS])
    steps_per_epoch = len(train_source) // batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"train split has {len(train_source)} examples, fewer than one batch ({batch_size})")
    total_steps = config.train.num_steps or config.train.num_epochs * steps_per_epoch
    os.makedirs(workdir, exist_ok=True)
    if chief:
        write_json_atomic(os.path.join(workdir, ckpt.CONFIG_FILE), json.loads(config.to_json()))

    # --- networks, the prompt table (cached on disk) and the frozen variables on the mesh -------------------------
    nets, frozen = load_networks(config)
    latent_shape = (nets.mapper.n_latent, nets.mapper.style_dim)
    if tuple(train_source[0]["w"].shape) != latent_shape:
        raise ConfigError(f"{config.data_dir} ({config.domain}): latents {tuple(train_source[0]['w'].shape)} do not "
                          f"fit generator {config.weights.generator} (expects {latent_shape})")
    cache_dir = config.prompt_cache_dir or os.path.join(workdir, "prompt_cache")
    clip_net = (nets.clip, frozen["clip"])
    frozen["prompts"] = prompt_embeddings(config.weights.clip, prompts, cache_dir, clip=clip_net)
    grid_prompts = list(config.eval.grid_prompts)
    grid_table = prompt_embeddings(config.weights.clip, grid_prompts, cache_dir, clip=clip_net)
    frozen_shardings = sharding.frozen_sharding(mesh, frozen, config.sharding.frozen, config.sharding.fsdp_min_size)
    frozen = sharding.put(frozen, frozen_shardings)

    # --- input and trainable state: restored, or initialised by shape straight onto its shardings ----------------
    optimizer, schedule = make_optimizer(config, total_steps)
    abstract = abstract_state(nets.mapper, optimizer)
    state_shardings = sharding.state_sharding(mesh, abstract)
    say = (lambda line: print(line, flush=True)) if chief else (lambda line: None)
    restored = ckpt.restore_newest(workdir, abstract, state_shardings, log=say)  # damaged ones: named, moved aside
    manager = ckpt.checkpoint_manager(workdir, config.log.keep_checkpoints)
    batches = TrainBatches(train_source, global_batch_size=batch_size, num_prompts=len(prompts), seed=config.seed,
                           sharding=sharding.batch_sharding(mesh), prefetch=config.train.prefetch)
    start = None
    if restored is not None:
        start, state, data_state = restored
        batches.restore(data_state)
        say(f"resumed from {manager.directory}/{start} (step {start} of {total_steps})")
    else:
        params = jax.device_get(init_mapper_params(config, nets.mapper, config.seed))  # same on every host
        state = jax.jit(lambda p: create_state(p, optimizer, config.seed), out_shardings=state_shardings)(
            sharding.put(params, state_shardings.params))
        if config.init_from:
            print(f"fine-tuning from {config.init_from}", flush=True)
    start = int(start or 0)

    # --- compile: the sharded train and eval steps, the grid renderer ---------------------------------------------
    train_step = make_train_step(nets, opts, optimizer, schedule, mesh, state_shardings, frozen_shardings)
    eval_step = make_eval_step(nets, opts, mesh, state_shardings.params, frozen_shardings)
    grid_w = np.stack([np.asarray(test_source[i]["w"], np.float32)
                       for i in range(min(config.eval.grid_rows, len(test_source)))])
    grid_w, grid_table = sharding.put((grid_w, grid_table), (sharding.replicated(mesh),) * 2)
    render = jax.jit(lambda p, g, w, e: render_edits(p, g, w, e, nets=nets), out_shardings=sharding.replicated(mesh))
    grids_dir = os.path.join(workdir, ckpt.GRIDS_DIR)

    # --- evaluation: validation loss on fixed (latent, prompt) pairs, and the PNG grid -----------------------------
    def evaluate(step):
        sums, count = {}, 0
        remaining = min(config.eval.num_examples, len(test_source))
        for batch in eval_batches(test_source, batch_size=eval_batch_size, num_prompts=len(prompts),
                                  seed=config.seed, num_examples=remaining, sharding=sharding.batch_sharding(mesh)):
            del batch["valid"]  # global rows are in order: the first `remaining` of each batch are real
            valid = np.arange(eval_batch_size) < remaining
            remaining -= eval_batch_size
            out = jax.device_get(eval_step(state.params, frozen, batch))
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(np.sum(np.asarray(v)[valid]))
            count += int(valid.sum())
        metrics = {f"val_{k}": v / count for k, v in sums.items()}
        images = np.asarray(jax.device_get(render(state.params, frozen["generator"], grid_w, grid_table)))
        path = os.path.join(grids_dir, f"step_{step:06d}.png")
        if chief:
            save_grid(path, images, ["source"] + grid_prompts, [f"test #{i}" for i in range(len(grid_w))])
        writer.scalars(step, "eval", metrics)
        writer.grid(step, images)
        history.append({"step": step, **metrics})
        return metrics, path

    # --- the loop: step, then log / eval / checkpoint when it is time; SIGTERM saves and stops --------------------
    writer = MetricWriter(os.path.join(workdir, "tb"), enabled=chief)
    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
    best, last_grid, history = ckpt.read_best(workdir), None, []
    step = start
    bar = tqdm(total=total_steps, initial=start, desc="train", unit="step", disable=not chief, dynamic_ncols=True)
    window_start, window_steps, sums = time.time(), 0, {}
    try:
        if start == 0:  # the untrained mapper's validation loss: the baseline of every curve
            evaluate(0)
        while step < total_steps:
            if sharding.any_process(stop["signal"] is not None) or manager.reached_preemption(step):
                if manager.latest_step() != step:
                    ckpt.save_checkpoint(manager, state, batches.state())
                manager.wait_until_finished()
                bar.close()
                print(f"preempted at step {step}: checkpoint saved in {manager.directory}; rerun the same command "
                      f"to resume", flush=True)
                return {"preempted": True, "step": step, "workdir": workdir}
            batch = next(batches)
            batch.pop("index", None)
            state, metrics = train_step(state, frozen, batch)
            step += 1
            window_steps += 1
            bar.update(1)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            if itstime(step, config.log.every_steps, total_steps):
                means = {k: float(v) / window_steps for k, v in jax.device_get(sums).items()}
                means["images_per_second"] = window_steps * batch_size / (time.time() - window_start)
                bar.set_postfix(loss=f"{means['loss']:.4f}", img_s=f"{means['images_per_second']:.1f}")
                writer.scalars(step, "train", means)
                window_start, window_steps, sums = time.time(), 0, {}
            if itstime(step, config.eval.every_steps, total_steps):
                val, last_grid = evaluate(step)
                bar.write(f"step {step}: val_loss {val['val_loss']:.4f}  grid {last_grid}")
                ckpt.save_checkpoint(manager, state, batches.state(), {"val_loss": val["val_loss"]})
                if best is None or val["val_loss"] < best["val_loss"]:
                    best = {"step": step, "val_loss": val["val_loss"], "grid": last_grid}
                    manager.wait_until_finished()  # (on every process: orbax finalises with a barrier)
                    if chief:
                        write_json_atomic(os.path.join(workdir, ckpt.BEST_FILE), best)
            elif itstime(step, config.log.checkpoint_every_steps, total_steps):
                ckpt.save_checkpoint(manager, state, batches.state())
            if on_step is not None:
                on_step(step)
        bar.close()
        manager.wait_until_finished()
    finally:
        signal.signal(signal.SIGTERM, previous)
        batches.close()
        writer.close()
        manager.close()

    # --- export: the best mapper and a manifest of the other networks, for the editor -----------------------------
    weights = ckpt.export_weights(workdir) if jax.process_count() == 1 else None  # export reads on one process
    if chief:
        where = f"best checkpoint: {manager.directory}/{best['step']} (val_loss {best['val_loss']:.4f})" if best else \
            f"latest checkpoint: {manager.directory}/{step}"
        export = (f"weights for `ffclip edit --weights {weights}`" if weights else
                  f"export with `{EXPORT_HINT.format(workdir=workdir)}`")
        print(f"done: {step} steps. {where}; grids: {grids_dir}/ (last {last_grid}); {export}; "
              f"TensorBoard: tensorboard --logdir {workdir}/tb", flush=True)
    return {"preempted": False, "step": step, "workdir": workdir, "best": best, "weights": weights,
            "grids": grids_dir, "val_history": history}
