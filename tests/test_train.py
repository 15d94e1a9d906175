"""train.py and ffclip_jax.train: config errors, sharded step == single-device step, the real trainer on the tiny
random networks and synthetic latents (loss goes down, preempt + resume == uninterrupted, restore on 1 device)."""
import dataclasses
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from absl import flags

from configs import default as default_config
from configs import tiny as tiny_configs
from ffclip_jax import logs, train as tl
from ffclip_jax.cli import train as train_cli  # defines the --config / --workdir flags
from ffclip_jax.errors import CheckpointError, ConfigError
from ffclip_jax.train.loop import train_and_evaluate
from ffclip_jax.weights.registry import WEIGHTS_NETWORKS
from parity import ROOT, assert_float32_parity, params_digest
import tiny_shared



@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_shared.ensure_assets(str(tmp_path_factory.mktemp("tiny_assets")))


def tiny_config(assets, cache, **overrides):
    """configs/tiny.py on the shared assets; the cheap losses only (ArcFace IR-SE50 has no small variant) and one
    mapper block (every code path of the 4-block default at a third less compile time)."""
    config = tiny_configs.get_config()
    with config.unlocked():
        config.tiny = False
        for name in WEIGHTS_NETWORKS:
            config.weights[name] = assets[name]
        config.data_dir = assets["data_dir"]
        config.prompt_cache_dir = str(cache / "prompts")
        config.jit_cache_dir = str(cache / "jit")
        config.loss.id = 0.0
        config.model.mapper_blocks = 1
        config.train.batch_size = 8
        config.train.num_steps = 6
        config.eval.every_steps = 3
        config.log.every_steps = 3
        config.log.checkpoint_every_steps = 100
    config.update_from_flattened_dict(overrides)
    return config


# ---------------------------------------------------------------------------------------------------------------
# errors before anything is compiled


def parse(capsys, *overrides, config="configs/tiny.py"):
    """train.py's flag parsing in-process: (config, workdir), or (None, the stderr lines) when it exits.
    (config_flags reads the --config.* overrides from sys.argv, as in a real run.)"""
    argv = ["train.py", "--config", os.path.join(ROOT, config), "--workdir", "w", *overrides]
    saved, sys.argv = sys.argv, argv
    try:
        train_cli.parse_flags(argv)
        return flags.FLAGS.config, flags.FLAGS.workdir
    except SystemExit as e:
        assert e.code == 2
        return None, capsys.readouterr().err.strip().splitlines()
    finally:  # one parse per process in real runs: forget the override flags config_flags registered
        sys.argv = saved
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:
            delattr(flags.FLAGS, name)
        flags.FLAGS.unparse_flags()


def test_unknown_config_key_is_one_line_error(capsys):
    _, err = parse(capsys, "--config.train.batchsize=4")
    assert len(err) == 1 and err[0].startswith("error: --config.train.batchsize: unknown config key 'batchsize'")
    assert "batch_size" in err[0]
    _, err = parse(capsys, "--config.train.batch_size=many")
    assert len(err) == 1 and err[0].startswith("error: --config.train.batch_size=many:") and "many" in err[0]
    _, err = parse(capsys, config="configs/nope.py")
    assert len(err) == 1 and "nope.py" in err[0]


def test_flag_errors_name_the_flag(capsys):
    """Each a single line naming the flag, exit status 2 (parse asserts it)."""
    cases = {("--config.trian.batch_size=4",): "error: --config.trian.batch_size: unknown config key 'trian' (did you "
                                               "mean --config.train.batch_size?); every field and its default: "
                                               "configs/default.py",
             ("--config.train.batch_size=abc",): "error: --config.train.batch_size=abc: expected int, got 'abc'",
             ("stray",): "error: unexpected argument 'stray': train.py takes only flags (--config FILE --workdir DIR "
                         "[--config.<field>=<value> ...]; python train.py --help)",
             ("--bogus=1",): "error: --bogus: unknown flag (python train.py --help lists them)"}
    for args, want in cases.items():
        assert parse(capsys, *args) == (None, [want])
    _, err = parse(capsys, config="configs/tny.py")
    assert err == [f"error: --config {os.path.join(ROOT, 'configs/tny.py')}: no such file (did you mean "
                   f"{os.path.join(ROOT, 'configs/tiny.py')}?)"]


def test_verbosity(capsys):
    """Logs at WARNING unless --verbosity asks: 0 shows absl/orbax/JAX INFO lines."""
    import logging

    try:
        parse(capsys)
        assert logging.getLogger().level == logging.WARNING
        parse(capsys, "--verbosity=0")
        assert logging.getLogger().level == logging.INFO
    finally:
        from ffclip_jax import logs
        logs.set_verbosity(-1)


def test_help_reads_well():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    lines = out.stdout.splitlines()
    assert "        --config.weights.generator=weights/stylegan2-ffhq --config.data_dir=data" in lines  # not joined
    assert any("configs/default.py, which defines every" in line for line in lines)
    assert any(line.startswith("  --config: ") for line in lines) and any(line.startswith("  --workdir: ")
                                                                            for line in lines)


def test_overrides_typed(capsys):
    config, workdir = parse(capsys, "--config.train.batch_size=64", "--config.model.remat=true",
                            "--config.eval.grid_prompts=('Bald','Sad')", "--config.loss.id=0.5", config="configs/ffhq.py")
    assert (config.train.batch_size, config.model.remat, tuple(config.eval.grid_prompts), config.loss.id) == \
        (64, True, ("Bald", "Sad"), 0.5)
    assert config.train.learning_rate == 5e-4 and config.train.lr_milestones == (0.5, 0.75, 0.9, 0.95)
    assert workdir == "w"


def test_missing_weights_reported_before_compiling(tmp_path):
    """CLI: one line `error: ...` naming the config field, exit status 2, nothing compiled or written."""
    workdir = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs/ffhq.py"),
           "--workdir", str(workdir), f"--config.weights.generator={tmp_path / 'nope'}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config.weights.generator=") and "nope" in lines[0], lines
    assert not workdir.exists()


def test_empty_and_wrong_weights(assets, tmp_path):
    config = tiny_config(assets, tmp_path)
    with config.unlocked():
        config.weights.parsenet = ""
    with pytest.raises(ConfigError, match=r"config.weights.parsenet is empty but loss.background=2.0 needs it"):
        tl.check_weights(config)
    with config.unlocked():
        config.weights.parsenet = assets["moco"]
    with pytest.raises(ConfigError, match=r"config.weights.parsenet=.*holds a 'moco' model, expected 'parsenet'"):
        tl.check_weights(config)


# ---------------------------------------------------------------------------------------------------------------
# the sharded step


@pytest.fixture(scope="module")
def step_inputs(assets, tmp_path_factory):
    """(config, networks, frozen variables with the prompt table, fresh mapper params, a host batch of 16)."""
    from ffclip_jax.text.embeddings import prompt_embeddings
    from ffclip_jax.text.prompts import load_prompts

    config = tiny_config(assets, tmp_path_factory.mktemp("step"), **{"loss.background": 0.0})  # gen + CLIP + latent
    nets, frozen = tl.load_networks(config)
    frozen["prompts"] = prompt_embeddings(config.weights.clip, load_prompts(config.prompts),
                                          config.prompt_cache_dir, clip=(nets.clip, frozen["clip"]))
    rng = np.random.RandomState(0)
    batch = {"w": rng.randn(16, nets.mapper.n_latent, nets.mapper.style_dim).astype(np.float32) * 0.5,
             "prompt": rng.randint(0, len(frozen["prompts"]), 16).astype(np.int32)}
    return config, nets, frozen, tl.init_mapper_params(config, nets.mapper, 0), batch


def _cast(tree, dtype):
    return jax.tree.map(
        lambda a: np.asarray(a, dtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else np.asarray(a), tree)


def _one_step(step_inputs, opts, devices, rule="replicate", dtype=None):
    """One jitted train step on a mesh over `devices` (inputs cast to `dtype` if given); (new params, metrics)."""
    config, nets, frozen, params, batch = step_inputs
    if dtype is not None:
        params, frozen, batch = _cast((params, frozen, batch), dtype)
    optimizer, schedule = tl.make_optimizer(config, 10)
    mesh = tl.make_mesh(devices)
    state = tl.create_state(params, optimizer, 0)
    ss = tl.state_sharding(mesh, state)
    fs = tl.frozen_sharding(mesh, frozen, rule, min_size=1024)
    step = tl.make_train_step(nets, opts, optimizer, schedule, mesh, ss, fs)
    state, metrics = step(tl.put(state, ss), tl.put(frozen, fs),
                          tl.put(batch, jax.tree.map(lambda _: tl.batch_sharding(mesh), batch)))
    return jax.device_get((state.params, metrics))


@pytest.fixture(scope="module")
def float64_step(step_inputs):
    """The reference: one full-batch step on 1 device in float64."""
    opts = dataclasses.replace(tl.step_options(step_inputs[0]), compute_dtype="float64")
    with jax.enable_x64(True):
        return _one_step(step_inputs, opts, jax.devices()[:1], dtype=np.float64)


def test_sharded_accumulated_step_equals_single_device(step_inputs, float64_step):
    """One step on 8 devices (batch sharded, frozen weights sharded) with 2-way gradient accumulation equals one
    full-batch step on 1 device. Run in float64: the upstream mapper at random init normalises a near-constant
    channel-attention output (LayerNorm of variance ~1e-9 against eps 1e-5), so float32 rounding that differs with
    the per-device batch is amplified to percent-level gradient differences (an amplification of ~1e5); in float64
    both programs compute the same function and the same amplification of float64's 1e-16 leaves ~1e-11 (measured
    5e-9 on the parameters after Adam's normalisation): 1e-6 holds on any CPU."""
    assert jax.device_count() == 8
    opts = dataclasses.replace(tl.step_options(step_inputs[0]), compute_dtype="float64", accum_steps=2)
    with jax.enable_x64(True):
        p8, m8 = _one_step(step_inputs, opts, jax.devices(), "fsdp", dtype=np.float64)
    p1, m1 = float64_step
    for k in m1:  # float64 both (see above): 1e-6 is ~1e5 times the amplified float64 rounding
        np.testing.assert_allclose(m8[k], m1[k], rtol=1e-6, atol=1e-6, err_msg=k)
    chex.assert_trees_all_close(p8, p1, rtol=0, atol=1e-6)
    assert m1["grad_norm"] > 0 and m1["lr"] == pytest.approx(1e-3)  # 1e-3 rounded to float32: 6e-8 relative


def test_bfloat16_compute(step_inputs, float64_step):
    """model.compute_dtype=bfloat16: the frozen networks run in bf16; the mapper, parameters and Adam moments stay
    float32, and the losses are the float64 step's to bf16 precision."""
    _, m64 = float64_step
    opts = dataclasses.replace(tl.step_options(step_inputs[0]), compute_dtype="bfloat16")
    params, metrics = _one_step(step_inputs, opts, jax.devices()[:1])
    chex.assert_trees_all_equal_dtypes(params, step_inputs[3])
    for k in m64:
        assert np.isfinite(metrics[k]) and np.asarray(metrics[k]).dtype == np.float32, k
        if k.startswith("loss"):  # bf16 rounds by 2^-9 = 2e-3 relative per op: 3e-2 is ~16 roundings' worth
            np.testing.assert_allclose(metrics[k], m64[k], rtol=3e-2, atol=1e-3, err_msg=k)
    moved = [np.abs(a - p).max() for a, p in zip(jax.tree.leaves(params), jax.tree.leaves(step_inputs[3]))]
    assert max(moved) > 0


@pytest.fixture(scope="module")
def eval_reference(step_inputs):
    """(first two examples, the jitted float32 eval losses, the float64 truth) of the step inputs."""
    config, nets, frozen, params, batch = step_inputs
    two = jax.tree.map(lambda v: v[:2], batch)
    opts = tl.step_options(config)
    fn = jax.jit(lambda p, f, b, opts: tl.eval_losses(p, f, b, nets=nets, opts=opts), static_argnums=3)
    want = jax.device_get(fn(params, frozen, two, opts))
    with jax.enable_x64(True):
        truth = jax.device_get(fn(*_cast((params, frozen, two), np.float64),
                                  dataclasses.replace(opts, compute_dtype="float64")))
    return two, want, truth


@pytest.mark.parametrize("jitted", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["jit", "eager"])
def test_eval_losses(step_inputs, eval_reference, jitted):
    """The per-example evaluation losses of the step, jitted and run eagerly (eager, half a minute: slow): each as
    accurate as the jitted float32 program against the float64 truth (the random-init mapper amplifies float32
    rounding, and an eager run rounds in another order, so equality to a fixed tolerance would depend on the CPU)."""
    config, nets, frozen, params, _ = step_inputs
    two, want, truth = eval_reference
    opts = tl.step_options(config)
    fn = lambda p, f, b: tl.eval_losses(p, f, b, nets=nets, opts=opts)  # noqa: E731
    out = (jax.jit(fn) if jitted else fn)(params, frozen, two)
    chex.assert_tree_shape_prefix(out, (2,))
    chex.assert_tree_all_finite(out)
    for k in want:
        assert_float32_parity(out[k], want[k], truth[k], k, reference="jit")


def test_lr_schedule_multistep():
    config = default_config.get_config()
    _, schedule = tl.make_optimizer(config, 100)
    # float32 learning rates: 5e-4 x a power of 2, each rounded once (6e-8 relative) within approx's 1e-6
    assert [float(schedule(s)) for s in (0, 49, 50, 75, 90, 95, 99)] == pytest.approx(
        [5e-4, 5e-4, 2.5e-4, 1.25e-4, 6.25e-5, 3.125e-5, 3.125e-5])


# ---------------------------------------------------------------------------------------------------------------
# the real trainer


@pytest.fixture(scope="module")
def runs(assets, tmp_path_factory):
    """An uninterrupted 6-step run, and one preempted (SIGTERM) after step 3 then resumed."""
    cache = tmp_path_factory.mktemp("cache")
    base = tmp_path_factory.mktemp("runs")
    full = train_and_evaluate(tiny_config(assets, cache), str(base / "full"))

    def preempt(step):
        if step == 3:
            signal.raise_signal(signal.SIGTERM)

    first = train_and_evaluate(tiny_config(assets, cache), str(base / "resumed"), on_step=preempt)
    second = train_and_evaluate(tiny_config(assets, cache), str(base / "resumed"))
    return full, first, second


def test_tiny_training_reduces_loss(runs):
    full, _, _ = runs
    losses = [h["val_loss"] for h in full["val_history"]]  # steps 0 (untrained), 3 and 6
    # six steps of lr 1e-3 lower it by far more than the ~1e-6 relative that float32 rounding moves it on another CPU
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    assert os.path.isfile(os.path.join(full["grids"], "step_000006.png"))
    assert full["best"]["step"] == 6 and os.path.isdir(os.path.join(full["workdir"], "checkpoints", "6"))


def test_preempt_and_resume_equals_uninterrupted(runs):
    full, first, second = runs
    assert first["preempted"] and first["step"] == 3
    assert not second["preempted"] and second["step"] == 6
    _, _, p_full, _ = tl.restore_params(full["workdir"], "latest")
    _, _, p_resumed, _ = tl.restore_params(second["workdir"], "latest")
    chex.assert_trees_all_equal(p_resumed, p_full)  # the same programs on the same inputs: the same bits


def test_exported_weights_load(runs, assets):
    """The export holds the mapper of the best checkpoint and a manifest naming every network by a path relative to
    it (nothing copied), which `resolve` follows."""
    import json

    from ffclip_jax.weights import pretrained, resolve

    full, _, _ = runs
    mapper, variables = pretrained.load(full["weights"])
    with open(os.path.join(full["weights"], "manifest.json")) as f:
        paths = json.load(f)["networks"]
    assert paths["mapper"] == "." and not any(os.path.isabs(p) for p in paths.values())
    networks = resolve(full["weights"]).networks
    assert networks["generator"] == os.path.abspath(assets["generator"])
    assert not os.path.exists(os.path.join(full["weights"], "generator"))
    w = jnp.zeros((1, mapper.n_latent, mapper.style_dim))
    assert mapper.apply(variables, w, jnp.ones((1, mapper.style_dim))).shape == w.shape
    _, _, params, _ = tl.restore_params(full["workdir"], "best")
    chex.assert_trees_all_equal(params, jax.device_get(variables["params"]))


def test_restore_8_devices_onto_1(runs):
    """A checkpoint written on 8 devices restores in a 1-device process to the same parameters (bit for bit)."""
    full, _, _ = runs
    _, _, params, _ = tl.restore_params(full["workdir"], "latest")
    code = ("import jax, numpy as np\nfrom ffclip_jax import train as tl\nassert jax.device_count() == 1\n"
            "from parity import params_digest\n"
            f"_, _, p, step = tl.restore_params({full['workdir']!r}, 'latest')\n"
            "print(step, params_digest(p))")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    step, digest = out.stdout.split()
    assert int(step) == 6 and digest == params_digest(params)


@pytest.mark.slow
def test_two_processes_equal_one(runs, assets, tmp_path):
    """train.py as 2 processes x 4 CPU devices (jax.distributed with gloo collectives, each process reading its half
    of every batch) trains the same mapper as the 1-process 8-device run. They differ by float32 all-reduce order
    only, which the random-init mapper amplifies (see the sharded step test) and Adam normalises, so elements whose
    gradient is at rounding level may move either way: parameters are held to Adam's bound on how far two runs can
    drift (`adam_divergence_bound`, measured max 2e-5..4e-4 against a bound of 1.2e-2); validation losses agree to
    1e-4 relative (not derived: measured ~1e-6; the loss's sensitivity to such parameter changes is not bounded
    here)."""
    import json
    import socket

    full, _, _ = runs
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    workdir = tmp_path / "two"

    def child(process_id):
        overrides = {"distributed.enabled": True, "distributed.coordinator_address": f"localhost:{port}",
                     "distributed.num_processes": 2, "distributed.process_id": process_id}
        code = ("import json, pathlib, sys\nimport jax\n"
                "jax.config.update('jax_default_matmul_precision', 'highest')\nimport test_train as t\n"
                f"config = t.tiny_config({assets!r}, pathlib.Path({str(tmp_path / 'cache')!r}), **{overrides!r})\n"
                f"summary = t.train_and_evaluate(config, {str(workdir)!r})\n"
                "print(json.dumps(summary['val_history']))\n")
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
                   PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
        return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, cwd=ROOT)

    procs = [child(i) for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    histories = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert histories[0] == histories[1]
    for ours, theirs in zip(histories[0], full["val_history"]):
        assert ours["step"] == theirs["step"]
        np.testing.assert_allclose(ours["val_loss"], theirs["val_loss"], rtol=1e-4)
    _, _, p_two, step = tl.restore_params(str(workdir), "latest")
    _, _, p_one, _ = tl.restore_params(full["workdir"], "latest")
    assert step == 6
    diff = np.concatenate([np.abs(a - b).ravel() for a, b in zip(jax.tree.leaves(p_two), jax.tree.leaves(p_one))])
    assert diff.max() <= adam_divergence_bound(tiny_config(assets, tmp_path), 6), diff.max()


def adam_divergence_bound(config, steps: int) -> float:
    """The most two Adam runs from the same parameters can differ in any element after `steps` steps, whatever
    their gradients: each step moves an element by lr_t |m_t / sqrt(v_t)| (bias-corrected), which Cauchy-Schwarz
    bounds by lr_t c_t with c_t = (1 - b1) / sqrt(1 - b2) * sqrt(sum_k<t (b1^2 / b2)^k) * sqrt(1 - b2^t) / (1 - b1^t)
    (1.0 at t = 1, ~1.02 by t = 6 for upstream's betas); two runs, each moving that far, differ by twice the sum."""
    _, schedule = tl.make_optimizer(config, steps)
    b1, b2 = 0.9, 0.999  # optax.adam's defaults, which make_optimizer keeps
    total = 0.0
    for t in range(1, steps + 1):
        c = (1 - b1) / np.sqrt(1 - b2) * np.sqrt(sum((b1 ** 2 / b2) ** k for k in range(t))) * \
            np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        total += float(schedule(t - 1)) * c
    return 2 * total


# ---------------------------------------------------------------------------------------------------------------
# damaged checkpoints: the run resumes from the newest one that restores


def truncate_largest_array_file(step_dir):
    """Truncate the largest data file of a checkpoint's state to 100 bytes (a bad copy, a full disk)."""
    files = [os.path.join(root, f) for root, _, names in os.walk(os.path.join(step_dir, "state", "ocdbt.process_0",
                                                                             "d")) for f in names]
    path = max(files, key=os.path.getsize)
    with open(path, "r+b") as f:
        f.truncate(100)
    return path


def delete_step_metadata(step_dir):
    os.remove(os.path.join(step_dir, "_CHECKPOINT_METADATA"))
    return os.path.join(step_dir, "_CHECKPOINT_METADATA")


def garble_step_metadata(step_dir):
    with open(os.path.join(step_dir, "_CHECKPOINT_METADATA"), "w") as f:
        f.write("{garbage")
    return os.path.join(step_dir, "_CHECKPOINT_METADATA")


def remove_state_item(step_dir):
    shutil.rmtree(os.path.join(step_dir, "state"))
    return os.path.join(step_dir, "state")


# how a checkpoint gets damaged: damage(step_dir) -> the file the message must name
DAMAGES = {"truncated array file": truncate_largest_array_file, "deleted step metadata": delete_step_metadata,
           "garbled step metadata": garble_step_metadata, "missing state item": remove_state_item}


def _abstract_state(workdir):
    config = tl.load_run_config(workdir)
    nets, _ = tl.load_networks(config)
    target = tl.abstract_state(nets.mapper, tl.make_optimizer(config, 1)[0])
    return target, tl.state_sharding(tl.make_mesh(jax.devices()[:1]), target)


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_latest_checkpoint_falls_back(runs, tmp_path, damage):
    """The newest checkpoint (6) damaged: one line names the step, the file and why, the directory is moved to
    WORKDIR/damaged_checkpoints/6 (not deleted) and checkpoint 3 is restored."""
    full, _, _ = runs
    workdir = str(tmp_path / "run")
    shutil.copytree(full["workdir"], workdir)
    culprit = DAMAGES[damage](os.path.join(workdir, "checkpoints", "6"))
    lines = []
    step, state, data_state = tl.restore_newest(workdir, *_abstract_state(workdir), log=lines.append)
    assert step == 3 and int(state.step) == 3 and data_state
    assert len(lines) == 1 and lines[0].startswith("checkpoint 6 cannot be restored (") and culprit in lines[0], lines
    assert lines[0].endswith(f"moved to {os.path.join(workdir, 'damaged_checkpoints', '6')}")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]
    assert os.path.isdir(os.path.join(workdir, "damaged_checkpoints", "6"))
    assert "\n" not in lines[0]


# a checkpoint of 40 arrays restored three times after its data file was truncated, in a process whose reports all
# go to stderr (asyncio's records, unraisable and uncaught errors); each restore's error is printed on stdout
DAMAGED_RESTORES = """
import gc, os, sys
import jax, numpy as np, orbax.checkpoint as ocp
from ffclip_jax import logs
root = os.path.abspath(sys.argv[1])
tree = {f"p{i}": np.random.RandomState(i).randn(64, 256).astype(np.float32) for i in range(40)}
with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as c:
    c.save(root, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), data=ocp.args.JsonSave({"step": 1})))
data = os.path.join(root, "state", "ocdbt.process_0", "d")
with open(max((os.path.join(data, f) for f in os.listdir(data)), key=os.path.getsize), "r+b") as f:
    f.truncate(100)
logs.drop_failed_restore_echoes()
device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), tree)
restore = ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
for _ in range(3):
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as c:
            c.restore(root, args=restore)
    except Exception as e:
        print("restore failed:", type(e).__name__)
    gc.collect()
"""


def test_failed_restore_echoes_dropped(tmp_path):
    """A damaged checkpoint's concurrent reads all fail; the caller gets one error, and the others (asyncio's never
    retrieved futures, orbax's coroutines closed unfinished, tensorstore's callbacks on orbax's closed loop: some
    dozens per restore, in an order and of kinds that vary from run to run) print nothing, up to the process's end."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", DAMAGED_RESTORES, str(tmp_path / "1")], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.splitlines() == ["restore failed: Exception"] * 3, out.stderr[-3000:]
    assert out.stderr == ""


def test_only_failed_read_echoes_dropped(monkeypatch, caplog):
    """Echoes are told apart by where they come from, not by their wording: an error raised in orbax's code, or one
    tensorstore set on a future (no frame, an absl status code), an orbax coroutine closed unfinished, never awaited
    or destroyed pending, a closed loop's error where no Python code scheduled the callback. The same words from
    anywhere else, and every other report, are shown as before."""
    import asyncio
    import gc
    import warnings

    import orbax.checkpoint

    shown = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: shown.append(str(u.exc_value)))
    monkeypatch.setattr(sys, "excepthook", lambda kind, value, tb: shown.append(str(value)))
    monkeypatch.setattr(warnings, "_showwarnmsg", lambda m: shown.append(str(m.message)))
    monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [])
    logs.drop_failed_restore_echoes()
    logs.drop_failed_restore_echoes()  # once only: the hooks are not wrapped twice

    def code_in(directory, read):  # a function and a coroutine function `read` whose code lives in `directory`
        namespace = {}
        exec(compile(f"def raise_(e):\n    raise e\nasync def {read}(wait=None):\n    await wait\n",
                     os.path.join(directory, "reads.py"), "exec"), namespace)
        return dict(raise_=namespace["raise_"], read=namespace[read])

    def destroyed_pending(where):  # a task left waiting on a loop that is closed, then collected: asyncio logs it
        loop = asyncio.new_event_loop()
        task = loop.create_task(where["read"](loop.create_future()))
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        del task
        gc.collect()

    def raised(error, where):
        try:
            where["raise_"](error)
        except BaseException as e:
            return e

    def unraisable(error, obj=None):
        return types.SimpleNamespace(exc_type=type(error), exc_value=error, exc_traceback=error.__traceback__,
                                     err_msg=None, object=obj)

    def never_retrieved(error):
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Future exception was never retrieved\n"
                                 "future: %r", (error,), (type(error), error, error.__traceback__))

    def never_awaited(where):
        where["read"]()  # a coroutine object dropped at once
        gc.collect()

    orbax_code = code_in(os.path.dirname(orbax.checkpoint.__file__), "read")
    other_code = code_in(os.path.dirname(__file__), "other_read")  # another name: warnings show a text once a place
    loop = asyncio.new_event_loop()
    loop.close()
    python_called = None
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as e:
        python_called = e
    assert str(python_called) == "Event loop is closed"
    asyncio_log = logging.getLogger("asyncio")
    for echo in (raised(ValueError("Encountered error while reading array index"), orbax_code),
                 ValueError('OUT_OF_RANGE: Error reading "p21/0.0" in OCDBT database')):
        assert not asyncio_log.filter(never_retrieved(echo))
        sys.unraisablehook(unraisable(echo))
    sys.unraisablehook(unraisable(RuntimeError("coroutine ignored GeneratorExit"), orbax_code["read"]()))
    never_awaited(orbax_code)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        destroyed_pending(orbax_code)
        assert shown == [] and caplog.records == []
        destroyed_pending(other_code)
        assert [r.getMessage().splitlines()[0] for r in caplog.records] == ["Task was destroyed but it is pending!"]
    for error in (raised(ValueError("Encountered error while reading array index"), other_code),
                  raised(RuntimeError("Event loop is closed"), other_code), python_called,
                  ValueError("no status code")):
        assert asyncio_log.filter(never_retrieved(error))
        sys.unraisablehook(unraisable(error))
        sys.excepthook(type(error), error, error.__traceback__)
    assert len(shown) == 8
    never_awaited(other_code)
    assert shown[8:] == ["coroutine 'other_read' was never awaited"]
    other = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Task was destroyed but it is pending!", (),
                              None)
    assert asyncio_log.filter(other)


def test_every_checkpoint_damaged_is_one_error(runs, tmp_path):
    full, _, _ = runs
    workdir = str(tmp_path / "run")
    shutil.copytree(full["workdir"], workdir)
    for step in ("3", "6"):
        truncate_largest_array_file(os.path.join(workdir, "checkpoints", step))
    with pytest.raises(CheckpointError) as info:
        tl.restore_newest(workdir, *_abstract_state(workdir), log=pytest.fail)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{os.path.join(workdir, 'checkpoints')}: no checkpoint "
                                                       "restores (step 6: ") and "step 3: " in message
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]  # nothing moved
    assert not os.path.exists(os.path.join(workdir, "damaged_checkpoints"))


NOISE = re.compile(r"^[IWEF]\d{4} |INFO|absl|orbax|Unable to initialize backend|Downloading and preparing|"
                   r"downloaded and prepared|TensorFlow and JAX classes are deprecated|share=True|Warning|warn",
                   re.IGNORECASE | re.MULTILINE)


def train_flags(config):
    """train.py's --config.<field>=<value> flags that turn configs/tiny.py into `config`."""
    def flat(c, prefix=""):
        for k, v in c.items():
            if hasattr(v, "items"):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v
    base = dict(flat(tiny_configs.get_config()))
    return [f"--config.{k}={v}" for k, v in flat(config) if base.get(k) != v]


def run_tool(args, cwd, umask=0o022):
    """A tool as a subprocess under `umask`, on the test's 8 CPU devices and matmul precision (so that it compiles
    the programs the in-process runs compiled, found in the persistent jit cache): (stdout lines, stderr lines
    without progress-bar updates)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DEFAULT_MATMUL_PRECISION="highest", PYTHONPATH=ROOT)
    # the umask set by a shell (a preexec_fn would run Python in a forked copy of this multithreaded process)
    out = subprocess.run(["sh", "-c", f'umask {umask:03o} && exec "$0" "$@"', sys.executable, *args],
                         capture_output=True, text=True, env=env, cwd=cwd, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    bars = re.compile(r"^\s*(train|mapping z|recognising|editing|inverting|rendering)?[^|]*\|.*\|")
    err = [line for line in out.stderr.replace("\r", "\n").splitlines() if line.strip() and not bars.match(line)]
    return out.stdout.splitlines(), err


def test_train_py_after_a_damaged_checkpoint_quiet_and_umask(runs, assets, tmp_path):
    """`python train.py ...` rerun in a workdir whose newest checkpoint (6) has a data file truncated to 100 bytes:
    one line names it and where it went, the run resumes from checkpoint 3, saves step 6 afresh beside the moved
    damaged one (orbax's manager saves and garbage-collects without reading it) and ends with the parameters of the
    run resumed from 3 without any damage, bit for bit. Nothing else is printed but our own lines and progress bars
    (no absl/XLA/orbax/TFDS line), and every file it writes follows the umask (022: 0644 / 0755)."""
    from test_fileio import modes_not_following

    full, _, second = runs
    workdir = tmp_path / "run"
    shutil.copytree(full["workdir"], workdir)
    damaged = truncate_largest_array_file(str(workdir / "checkpoints" / "6"))
    config = tiny_config(assets, full_cache(full))
    out, err = run_tool([os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs/tiny.py"),
                         "--workdir", str(workdir), *train_flags(config)], cwd=str(tmp_path))
    assert out[0] == (f"checkpoint 6 cannot be restored ({damaged}: OUT_OF_RANGE: " + out[0].split(": OUT_OF_RANGE: ")[1])
    assert out[0].endswith(f"moved to {workdir / 'damaged_checkpoints' / '6'}")
    assert out[1] == f"resumed from {workdir / 'checkpoints'}/3 (step 3 of 6)"
    assert out[2].startswith("step 6: val_loss") and out[3].startswith("done: 6 steps.") and len(out) == 4, out
    assert not err and not NOISE.search("\n".join(out[1:])), err
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
    assert os.listdir(workdir / "damaged_checkpoints") == ["6"]
    _, _, p_after, _ = tl.restore_params(str(workdir), "latest")
    _, _, p_resumed, _ = tl.restore_params(second["workdir"], "latest")
    chex.assert_trees_all_equal(p_after, p_resumed)
    for name in ("checkpoints/6", "grids", "weights", "tb", "best.json", "config.json"):  # what this run wrote
        assert not modes_not_following(str(workdir / name), 0o022), name


@pytest.mark.slow
def test_edit_tool_quiet_and_umask(runs, tmp_path):
    """`ffclip edit` on the trainer's export: our own line and progress bars only, files 0644 / 0755
    under umask 022 (every tool goes through errors.run_cli, which calls logs.quiet)."""
    from test_fileio import modes_not_following

    full, _, _ = runs
    edits = tmp_path / "edits"
    out, err = run_tool(["-m", "ffclip_jax", "edit", "--weights", full["weights"], "--text", "Bald", "--random", "2",
                         "--seed", "0", "--output", str(edits), "--cache-dir", str(tmp_path / "text_cache")],
                        cwd=str(tmp_path))
    assert len(out) == 1 and out[0].startswith("wrote 2 edits, grid.png to"), out
    assert not err and not NOISE.search("\n".join(out)), err
    assert not modes_not_following(str(edits), 0o022)


def full_cache(full):
    """The cache folder the `runs` fixture's config used (its jit cache holds the compiled steps)."""
    import pathlib

    return pathlib.Path(tl.load_run_config(full["workdir"]).jit_cache_dir).parent
