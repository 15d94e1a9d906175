"""Train an FFCLIP mapper (one model for every prompt) on CPU, GPU or TPU.

    python train.py --config configs/tiny.py --workdir runs/tiny                 # built-in tiny default, no download
    python train.py --config configs/ffhq.py --workdir runs/ffhq --config.train.batch_size=64 \
        --config.weights.generator=weights/stylegan2-ffhq --config.data_dir=data

Every config field can be overridden with --config.<path>=<value>. Rerunning the same command resumes from the last
checkpoint in WORKDIR (parameters, Adam, step, data position, RNG); SIGTERM saves a checkpoint and exits. WORKDIR
receives: checkpoints/ (orbax), grids/step_N.png, TensorBoard events in tb/, config.json, best.json and, at the end,
weights/ (the best mapper as a converted FFCLIP directory, for `python -m ffclip_jax.edit --weights WORKDIR/weights`).
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import signal
import sys
import time

import numpy as np

from ffclip_jax.errors import ConfigError, run_cli


# ---------------------------------------------------------------------------------------------------------------
# config and flags


def load_config(path: str):
    """`get_config()` of a config file."""
    if not os.path.isfile(path):
        raise ConfigError(f"--config {path}: no such config file (e.g. configs/tiny.py)")
    spec = importlib.util.spec_from_file_location(f"ffclip_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--config {path}: defines no get_config()")
    return module.get_config()


def _parse_value(key: str, text: str, current):
    """The override `text` as the type of the field's current value."""
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, (tuple, list)):
            value = ast.literal_eval(text) if text.strip()[:1] in "([" else [v.strip() for v in text.split(",")]
            if isinstance(value, (int, float, str)):
                value = [value]
            return type(current)(value)
        return text
    except (ValueError, SyntaxError):
        raise ConfigError(f"--config.{key}={text}: expected a {type(current).__name__} "
                          f"(current value {current!r})") from None


def apply_override(config, key: str, text: str) -> None:
    """Set config.<key> (dotted) from a command-line string; unknown keys are one-line errors."""
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):
        if not hasattr(node, "keys") or part not in node:
            where = ".".join(parts[:i]) or "the config"
            known = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a group)"
            raise ConfigError(f"unknown config key {key!r}: {where} has no field {part!r} (fields: {known})")
        if i < len(parts) - 1:
            node = node[part]
    if hasattr(node[parts[-1]], "keys"):
        raise ConfigError(f"--config.{key} is a group; set one of its fields ({', '.join(sorted(node[parts[-1]]))})")
    with node.unlocked():
        node[parts[-1]] = _parse_value(key, text, node[parts[-1]])


def parse_args(argv):
    """(config, workdir) from `--config FILE --workdir DIR [--config.a.b=value ...]`."""
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__.splitlines()[0],
                                     epilog="override any field: --config.train.batch_size=64")
    parser.add_argument("--config", default="configs/tiny.py", help="config file with get_config()")
    parser.add_argument("--workdir", required=True, help="checkpoints, logs, grids and exported weights")
    args, rest = parser.parse_known_args(argv)
    config = load_config(args.config)
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--config."):
            raise ConfigError(f"unrecognised argument {arg!r}; expected --config.<field>=<value>")
        key, eq, value = arg[len("--config."):].partition("=")
        if not eq:
            if i + 1 >= len(rest):
                raise ConfigError(f"{arg}: missing value")
            value, i = rest[i + 1], i + 1
        apply_override(config, key, value)
        i += 1
    return config, args.workdir


# ---------------------------------------------------------------------------------------------------------------
# training


def train_and_evaluate(config, workdir: str, *, on_step=None) -> dict:
    """Train (or resume) in `workdir`; returns a summary dict. `on_step(step)` is called after each step."""
    import jax

    from ffclip_jax import clip as clip_lib
    from ffclip_jax import train_lib as tl
    from ffclip_jax.data import TrainBatches, eval_batches, open_split
    from ffclip_jax.prompts import load_prompts

    workdir = os.path.abspath(workdir)
    tl.initialize_distributed(config)
    if config.jit_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(config.jit_cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    chief = jax.process_index() == 0

    # --- resolve paths and check everything that can be wrong before compiling anything ---------------------------
    if config.tiny:
        from ffclip_jax import tiny

        assets = tiny.ensure_assets(os.path.join(workdir, "tiny_assets"), seed=config.seed)
        with config.unlocked():
            for name in tl.NETWORK_MODEL:
                config.weights[name] = config.weights[name] or assets[name]
            config.data_dir = config.data_dir or assets["data_dir"]
    tl.check_weights(config)
    opts = tl.step_options(config)
    prompts = load_prompts(config.prompts)
    train_source = open_split(config.data_dir, config.domain, "train")
    test_source = open_split(config.data_dir, config.domain, "test")
    mesh = tl.make_mesh()
    num_devices = mesh.shape[tl.DATA_AXIS]
    batch_size, eval_batch_size = tl.resolve_batch(config, num_devices)
    steps_per_epoch = len(train_source) // batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"train split has {len(train_source)} examples, fewer than one batch ({batch_size})")
    total_steps = config.train.num_steps or config.train.num_epochs * steps_per_epoch
    os.makedirs(workdir, exist_ok=True)
    if chief:
        tl.write_json_atomic(os.path.join(workdir, tl.CONFIG_FILE), json.loads(config.to_json()))

    # --- networks, prompt table (cached) and frozen variables placed on the mesh ----------------------------------
    nets, frozen = tl.load_networks(config)
    latent_shape = (nets.mapper.n_latent, nets.mapper.style_dim)
    if tuple(train_source[0]["w"].shape) != latent_shape:
        raise ConfigError(f"{config.data_dir} ({config.domain}): latents {tuple(train_source[0]['w'].shape)} do not "
                          f"fit generator {config.weights.generator} (expects {latent_shape})")
    cache_dir = config.prompt_cache_dir or os.path.join(workdir, "prompt_cache")
    clip_net = (nets.clip, frozen["clip"])
    frozen["prompts"] = clip_lib.prompt_embeddings(config.weights.clip, prompts, cache_dir, clip=clip_net)
    grid_prompts = list(config.eval.grid_prompts)
    grid_table = clip_lib.prompt_embeddings(config.weights.clip, grid_prompts, cache_dir, clip=clip_net)
    frozen_shardings = tl.frozen_sharding(mesh, frozen, config.sharding.frozen, config.sharding.fsdp_min_size)
    frozen = tl.put(frozen, frozen_shardings)

    # --- trainable state: initialised by shape, then restored or created directly onto its shardings --------------
    optimizer, schedule = tl.make_optimizer(config, total_steps)
    abstract = tl.abstract_state(nets.mapper, optimizer)
    state_shardings = tl.state_sharding(mesh, abstract)
    manager = tl.checkpoint_manager(workdir, config.log.keep_checkpoints)
    batches = TrainBatches(train_source, global_batch_size=batch_size, num_prompts=len(prompts), seed=config.seed,
                           sharding=tl.batch_sharding(mesh), prefetch=config.train.prefetch)
    start = manager.latest_step()
    if start is not None:
        state, data_state = tl.restore_checkpoint(manager, start, abstract, state_shardings)
        batches.restore(data_state)
        print(f"resumed from {manager.directory}/{start} (step {start} of {total_steps})", flush=True)
    else:
        params = jax.device_get(tl.init_mapper_params(config, nets.mapper, config.seed))  # same on every host
        state = jax.jit(lambda p: tl.create_state(p, optimizer, config.seed), out_shardings=state_shardings)(
            tl.put(params, state_shardings.params))
        if config.init_from:
            print(f"fine-tuning from {config.init_from}", flush=True)
    start = int(start or 0)

    train_step = tl.make_train_step(nets, opts, optimizer, schedule, mesh, state_shardings, frozen_shardings)
    eval_step = tl.make_eval_step(nets, opts, mesh, state_shardings.params, frozen_shardings)

    # --- evaluation: validation loss on fixed (latent, prompt) pairs and the PNG grid -----------------------------
    grid_w = np.stack([np.asarray(test_source[i]["w"], np.float32)
                       for i in range(min(config.eval.grid_rows, len(test_source)))])
    grid_w, grid_table = tl.put((grid_w, grid_table), (tl.replicated(mesh),) * 2)
    render = jax.jit(lambda p, g, w, e: tl.render_edits(p, g, w, e, nets=nets), out_shardings=tl.replicated(mesh))
    grids_dir = os.path.join(workdir, tl.GRIDS_DIR)

    def evaluate(state, step):
        sums, count = {}, 0
        remaining = min(config.eval.num_examples, len(test_source))
        for batch in eval_batches(test_source, batch_size=eval_batch_size, num_prompts=len(prompts),
                                  seed=config.seed, num_examples=remaining, sharding=tl.batch_sharding(mesh)):
            del batch["valid"]  # global rows are in order: the first `remaining` of each batch are real
            valid = np.arange(eval_batch_size) < remaining
            remaining -= eval_batch_size
            out = jax.device_get(eval_step(state.params, frozen, batch))
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(np.sum(np.asarray(v)[valid]))
            count += int(valid.sum())
        metrics = {f"val_{k}": v / count for k, v in sums.items()}
        images = np.asarray(jax.device_get(render(state.params, frozen["generator"], grid_w, grid_table)))
        path = None
        if chief:
            from ffclip_jax.grid import save_grid

            path = save_grid(os.path.join(grids_dir, f"step_{step:06d}.png"), images,
                             ["source"] + grid_prompts, [f"test #{i}" for i in range(len(grid_w))])
        return metrics, images, path

    # --- logging, preemption ----------------------------------------------------------------------------------------
    writer = None
    if chief:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(os.path.join(workdir, "tb"))
    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))

    def checkpoint(state, metrics=None):
        tl.save_checkpoint(manager, state, batches.state(), metrics)

    from tqdm.auto import tqdm

    best = tl.read_best(workdir)
    last_grid, history = None, []
    step = start
    bar = tqdm(total=total_steps, initial=start, desc="train", unit="step", disable=not chief, dynamic_ncols=True)
    window_start, window_steps, sums = time.time(), 0, {}
    try:
        if start == 0:  # the untrained mapper's validation loss: the baseline of every curve
            val, _, _ = evaluate(state, 0)
            history.append({"step": 0, **val})
            if writer:
                for k, v in val.items():
                    writer.add_scalar(f"eval/{k}", v, 0)
        while step < total_steps:
            if tl.any_process(stop["signal"] is not None) or manager.reached_preemption(step):
                if manager.latest_step() != step:
                    checkpoint(state)
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
            if step % config.log.every_steps == 0 or step == total_steps:
                means = {k: float(v) / window_steps for k, v in jax.device_get(sums).items()}
                rate = window_steps * batch_size / (time.time() - window_start)
                bar.set_postfix(loss=f"{means['loss']:.4f}", img_s=f"{rate:.1f}")
                if writer:
                    for k, v in means.items():
                        writer.add_scalar(f"train/{k}", v, step)
                    writer.add_scalar("train/images_per_second", rate, step)
                window_start, window_steps, sums = time.time(), 0, {}
            if step % config.eval.every_steps == 0 or step == total_steps:
                val, images, last_grid = evaluate(state, step)
                history.append({"step": step, **val})
                if writer:
                    for k, v in val.items():
                        writer.add_scalar(f"eval/{k}", v, step)
                    writer.add_images("eval/grid", (np.clip(images.reshape((-1,) + images.shape[2:]), -1, 1) + 1) / 2,
                                      step, dataformats="NHWC")
                    writer.flush()
                bar.write(f"step {step}: val_loss {val['val_loss']:.4f}  grid {last_grid}")
                checkpoint(state, {"val_loss": val["val_loss"]})
                if best is None or val["val_loss"] < best["val_loss"]:
                    best = {"step": step, "val_loss": val["val_loss"], "grid": last_grid}
                    manager.wait_until_finished()  # (on every process: orbax finalises with a barrier)
                    if chief:
                        tl.write_json_atomic(os.path.join(workdir, tl.BEST_FILE), best)
            elif step % config.log.checkpoint_every_steps == 0:
                checkpoint(state)
            if on_step is not None:
                on_step(step)
        bar.close()
        manager.wait_until_finished()
    finally:
        signal.signal(signal.SIGTERM, previous)
        batches.close()
        if writer:
            writer.close()
        manager.close()

    weights = tl.export_weights(workdir) if jax.process_count() == 1 else None  # export reads on one process
    summary = {"preempted": False, "step": step, "workdir": workdir, "best": best, "weights": weights,
               "grids": grids_dir, "val_history": history}
    if chief:
        where = f"best checkpoint: {manager.directory}/{best['step']} (val_loss {best['val_loss']:.4f})" if best else \
            f"latest checkpoint: {manager.directory}/{step}"
        export = (f"weights for `python -m ffclip_jax.edit --weights {weights}`" if weights else
                  f"export with `python -c \"from ffclip_jax.train_lib import export_weights; "
                  f"export_weights('{workdir}')\"`")
        print(f"done: {step} steps. {where}; grids: {grids_dir}/ (last {last_grid}); {export}; "
              f"TensorBoard: tensorboard --logdir {workdir}/tb", flush=True)
    return summary


def main(argv=None) -> int:
    config, workdir = parse_args(sys.argv[1:] if argv is None else argv)
    train_and_evaluate(config, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
