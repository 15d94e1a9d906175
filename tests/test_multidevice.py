"""Every tool on 8 simulated CPU devices against 1: the Editor's row runners (the studio's device calls among them),
inversion, the refine stage (W+, PTI), edits, text embeddings, the evaluation metrics, and the command lines
invert / edit / evaluate / data build with --devices 8 against --devices 1.

The claim tested is bit-equality: N devices at b rows each run, on every device, the program one device runs at
batch b (data parallel, networks replicated or FSDP-gathered: no reduction crosses devices), so the rows are the same
bits. Every comparison therefore uses the same rows per device on both sides. (At another batch size XLA picks other
kernels and the float32 rounding differs, on one device as on eight: not a question of devices.)"""
import json
import os

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from PIL import Image

from ffclip_jax import metrics, sharding
from ffclip_jax.cli import data as data_cli, edit as edit_cli, evaluate as evaluate_cli, invert as invert_cli
from ffclip_jax.data import open_split
from ffclip_jax.errors import InputError, run_cli
from ffclip_jax.pipeline import DEFAULT_BATCH, Editor
from test_evaluate import N_LATENTS, stub_arcface, tiny_weights  # noqa: F401  (fixtures)
from test_invert import SIZE, encoder_dir  # noqa: F401  (fixture)
from test_pipeline import BATCH, DIM, editor, photo_files, photos  # noqa: F401  (fixture)
from test_refine_pipeline import refine_weights  # noqa: F401  (fixture)

DEVICES = 8


def on(devices, base: Editor, batch=BATCH) -> Editor:
    """The networks of `base` on `devices` devices at `batch` rows per device."""
    return Editor(base.mapper, base.generator, clip=base.clip, encoder=base.encoder, clip_dir=base.clip_dir,
                  weights=base.weights, cache_dir=base.cache_dir, batch_size=batch * devices, devices=devices)


@pytest.fixture(scope="module")
def editor8(editor):
    return on(DEVICES, editor)


def test_devices_default_count_and_batch():
    assert jax.local_device_count() == DEVICES  # conftest
    assert sharding.tool_devices() == jax.local_devices()[:1]  # CPU: one device unless asked
    assert sharding.tool_devices("all") == jax.local_devices() and len(sharding.tool_devices(3)) == 3
    for bad in (0, 9, "many"):
        with pytest.raises(InputError, match=r"^--devices .*: expected 1\.\.8 or 'all'"):
            sharding.tool_devices(bad)
    assert Editor(devices=3).batch_size == 3 * DEFAULT_BATCH and Editor().batch_size == DEFAULT_BATCH
    assert Editor(devices=4, batch_size=5).batch_size == 8  # padded up, never dropped
    with pytest.raises(Exception, match="sharding.frozen must be 'replicate' or 'fsdp'"):
        Editor(devices=2, frozen="zero")


def test_rows_split_over_the_devices_networks_replicated(editor8):
    """The networks lie whole on each of the 8 devices; each batch is split, rows [2k, 2k+2) on device k."""
    leaves = jax.tree.leaves(editor8.generator[1])
    assert all(a.sharding == NamedSharding(editor8.mesh, P()) for a in leaves)
    seen = []

    def record(x):
        seen.append([(s.device, s.index[0]) for s in x.addressable_shards])
        return x * 1
    x = np.arange(21 * 3, dtype=np.float32).reshape(21, 3)
    np.testing.assert_array_equal(editor8.run(record, [x]), x)
    assert len(seen) == 2  # 16 rows per call: 21 rows, the second call padded
    assert seen[0] == [(d, slice(2 * k, 2 * k + 2)) for k, d in enumerate(editor8.devices)]


def test_row_runners_on_8_devices_equal_1(editor, editor8):
    """invert_rows, map_rows, render_rows (also the studio slider's small batches), sample_rows and sample: the
    rows of 8 devices are the rows of 1, bit for bit, for row counts that fill, split and pad the batches."""
    w = editor.sample(21, seed=3, truncation=0.7)
    np.testing.assert_array_equal(editor8.sample(21, seed=3, truncation=0.7), w)
    e = np.random.default_rng(1).normal(size=(21, DIM)).astype(np.float32)
    x = np.random.default_rng(2).uniform(-1, 1, (21, SIZE, SIZE, 3)).astype(np.float32)
    for n in (1, 5, 21):
        np.testing.assert_array_equal(editor8.invert_rows(x[:n]), editor.invert_rows(x[:n]))
        np.testing.assert_array_equal(editor8.map_rows(w[:n], e[:n], 0.5), editor.map_rows(w[:n], e[:n], 0.5))
        np.testing.assert_array_equal(editor8.render_rows(w[:n]), editor.render_rows(w[:n]))
        np.testing.assert_array_equal(editor8.sample_rows(range(n), 0.8), editor.sample_rows(range(n), 0.8))
    # the slider's small batches: a power of two rounded up to a multiple of the devices (9 rows: 16, 2 each)
    np.testing.assert_array_equal(editor8.render_rows(w[:9], small=True), editor.render_rows(w[:9]))


U32 = float(np.finfo(np.float32).eps) / 2  # float32 unit roundoff 2^-24
FACTOR, FLOOR_ROUNDINGS = 4.0, 64  # the parity tests' rule (the suite branch's parity.assert_float32_parity)


def assert_as_accurate(ours, reference, truth, what):
    """float32 `ours` is as accurate as the float32 `reference` against the float64 `truth`: max and mean error
    within FACTOR x the reference's own, or within FLOOR_ROUNDINGS roundings of the truth's max (mean) magnitude
    (margin for another CPU's rounding)."""
    truth = np.asarray(truth, np.float64)
    err, ref_err = (np.abs(np.asarray(a, np.float64) - truth) for a in (ours, reference))
    max_tol = max(FACTOR * ref_err.max(), FLOOR_ROUNDINGS * U32 * np.abs(truth).max())
    mean_tol = max(FACTOR * ref_err.mean(), FLOOR_ROUNDINGS * U32 * np.abs(truth).mean())
    assert err.max() <= max_tol and err.mean() <= mean_tol, (
        f"{what}: max {err.max():.3g} mean {err.mean():.3g} vs one device's max {ref_err.max():.3g} "
        f"mean {ref_err.mean():.3g} (bounds {max_tol:.3g}, {mean_tol:.3g})")


def test_invert_and_files_on_8_devices(editor, editor8, tmp_path):
    """The chain photo -> e4e on 8 devices: `invert` (the studio's path too) and
    `encode_files` with an unreadable file among the photos."""
    images = photos(7, seed=5)
    np.testing.assert_array_equal(editor8.invert(images), editor.invert(images))
    np.testing.assert_array_equal(editor8.invert(images[:3], align=False), editor.invert(images[:3], align=False))
    files = photo_files(tmp_path, images, 3)
    enc8, enc1 = (e.encode_files(files, keep_inputs=2, progress=False) for e in (editor8, editor))
    assert enc8.sources == enc1.sources and enc8.skipped == enc1.skipped and len(enc8.sources) == 7
    np.testing.assert_array_equal(enc8.w, enc1.w)


@pytest.fixture(scope="module")
def weights_editors(tiny_weights):
    """Editors of test_evaluate's tiny weights directory (mapper, generator, CLIP, scoring networks) on 1 device at
    batch 2 and on 8 at 2 rows each; separate prompt caches, so that each computes its text embeddings."""
    return [Editor.from_pretrained(str(tiny_weights / "weights"), batch_size=2 * n, devices=n,
                                   cache_dir=str(tiny_weights / f"cache{n}")) for n in (1, DEVICES)]


def test_edit_and_text_embeddings_on_8_devices(weights_editors):
    one, eight = weights_editors
    prompts = ["Blue hair", "Sad", "wearing glasses"]
    np.testing.assert_array_equal(eight.text_embeddings(prompts), one.text_embeddings(prompts))
    w = one.sample(5, seed=7, truncation=0.7)
    r1, r8 = (e.edit(w, prompts, [0.5, 1.0]) for e in (one, eight))
    for name in ("images", "latents", "reconstructions"):
        np.testing.assert_array_equal(getattr(r8, name), getattr(r1, name), err_msg=name)


def test_fsdp_placement_is_as_accurate(weights_editors):
    """frozen='fsdp': arrays of >= fsdp_min_size elements split over the devices. XLA then computes partial sums
    on each device and adds them across devices (another summation order than one device's), so the rows are not
    bit-equal: they must be as accurate as one device's float32 against the float64 truth (the tiny weights'
    fan-in scaled generator: well-conditioned, unlike test_pipeline's random e4e whose codes reach 1e7)."""
    one = weights_editors[0]
    fsdp = Editor(generator=one.generator, batch_size=2 * DEVICES, devices=DEVICES, frozen="fsdp", fsdp_min_size=512)
    split = [a for a in jax.tree.leaves(fsdp.generator[1]) if not a.sharding.is_fully_replicated]
    assert split and all(len({str(s.index) for s in a.addressable_shards}) == DEVICES for a in split)
    w = one.sample(5, seed=2, truncation=0.7)
    module, variables = one.generator
    with jax.enable_x64(True):
        truth = jax.jit(lambda v, w: module.apply(v, w, input_is_latent=True))(
            jax.tree.map(lambda a: np.asarray(a, np.float64), variables), w.astype(np.float64))
    assert_as_accurate(fsdp.render_rows(w), one.render_rows(w), truth, "images, fsdp on 8 devices")


def test_evaluate_on_8_devices(weights_editors, tiny_weights, stub_arcface):
    """metrics.evaluate: the scoring networks placed on the Editor's devices, every batch split."""
    one, eight = weights_editors
    weights = one.weights
    results = []
    for e in (one, eight):
        nets, variables = metrics.metric_networks(weights, e.clip, "face")
        w = np.load(tiny_weights / "latents.npy")
        results.append(metrics.evaluate(e, nets, variables, w, e.text_embeddings(["Blue hair", "Sad"]),
                                        progress=False))
    assert results[0].keys() == results[1].keys()
    for k in results[0]:
        np.testing.assert_array_equal(results[1][k], results[0][k], err_msg=k)
    assert results[0]["identity"].shape == (2, N_LATENTS)


# ---------------------------------------------------------------------------------------------------------------
# the command lines: --devices 8 against --devices 1, the same rows per device


def _photo_folder(path, n=6):
    path.mkdir()
    rng = np.random.default_rng(9)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(path / f"{i:02d}.png")
    (path / "zz_broken.png").write_bytes(b"not a png")
    return path


def test_cli_invert_and_data_build_on_8_devices(encoder_dir, tmp_path, capsys):
    photo_dir = _photo_folder(tmp_path / "photos")
    for n in (1, DEVICES):
        rc = run_cli(invert_cli.main, ["--encoder", encoder_dir, "--images", str(photo_dir), "--output",
                                       str(tmp_path / f"inv{n}" / "latents.npy"), "--devices", str(n),
                                       "--batch-size", str(BATCH * n), "--part-size", "4"])
        assert rc == 0, capsys.readouterr().err
        rc = run_cli(data_cli.main, ["build", "--domain", "custom", "--images", str(photo_dir), "--encoder",
                                     encoder_dir, "--data-dir", str(tmp_path / f"data{n}"), "--devices", str(n),
                                     "--batch-size", str(BATCH * n), "--part-size", "4", "--test-fraction", "0.4"])
        assert rc == 0, capsys.readouterr().err
    np.testing.assert_array_equal(np.load(tmp_path / "inv8" / "latents.npy"), np.load(tmp_path / "inv1" / "latents.npy"))
    assert (json.loads((tmp_path / "inv8" / "latents.json").read_text())
            == json.loads((tmp_path / "inv1" / "latents.json").read_text()))
    assert not (tmp_path / "inv8" / "latents.parts").exists()
    for split in ("train", "test"):
        a, b = (open_split(str(tmp_path / f"data{n}"), "custom", split) for n in (1, DEVICES))
        assert len(a) == len(b) > 0
        for i in range(len(a)):
            for k in ("w", "index", "source"):
                np.testing.assert_array_equal(b[i][k], a[i][k], err_msg=f"{split} {i} {k}")


def test_cli_edit_and_evaluate_on_8_devices(tiny_weights, stub_arcface, tmp_path, capsys):
    common = ["--weights", str(tiny_weights / "weights"), "--latents", str(tiny_weights / "latents.npy")]
    for n in (1, DEVICES):
        dev = ["--devices", str(n), "--batch-size", str(2 * n), "--cache-dir", str(tiny_weights / "cache")]
        rc = run_cli(edit_cli.main, common + dev + ["--text", "Bald", "--strength", "0.5,1", "--save-latents",
                                                    "--output", str(tmp_path / f"edit{n}")])
        assert rc == 0, capsys.readouterr().err
        rc = run_cli(evaluate_cli.main, common + dev + ["--prompts", str(tiny_weights / "prompts.txt"),
                                                        "--output", str(tmp_path / f"eval{n}"), "--part-size", "2"])
        assert rc == 0, capsys.readouterr().err
    one, eight = tmp_path / "edit1", tmp_path / f"edit{DEVICES}"
    assert sorted(os.listdir(one)) == sorted(os.listdir(eight))
    np.testing.assert_array_equal(np.load(eight / "latents.npy"), np.load(one / "latents.npy"))
    for f in os.listdir(one):
        if f.endswith(".png"):
            np.testing.assert_array_equal(np.asarray(Image.open(eight / f)), np.asarray(Image.open(one / f)), f)
    r1, r8 = (json.loads((tmp_path / f"eval{n}" / "report.json").read_text()) for n in (1, DEVICES))
    assert r8["per_example"] == r1["per_example"] and r8["overall"] == r1["overall"]
    assert r8["meta"] == r1["meta"]  # rows per device, not the device count


# ---------------------------------------------------------------------------------------------------------------
# the refine stage: each device refines its share of the photos with the one-device program (refine.py), so the
# rows are bit-equal at the same photos per device; 3 photos pad the last batch on every device count


@pytest.mark.parametrize("devices, stages", [(2, ("w+",)), pytest.param(2, ("pti",), marks=pytest.mark.slow),
                                             pytest.param(DEVICES, ("w+", "pti"), marks=pytest.mark.slow)])
def test_refinement_on_n_devices_equals_1(refine_weights, devices, stages):
    """(Default suite: W+ on 2 devices; PTI's per-device compiles, about a minute here, and 8 devices are slow.)"""
    from test_refine_pipeline import photos as refine_photos

    one, many = (Editor.from_pretrained(str(refine_weights), batch_size=n, devices=n,
                                        cache_dir=str(refine_weights / "cache")) for n in (1, devices))
    images = refine_photos(3, seed=11)
    for stage in stages:
        enc1, encn = (e.invert(images, refine=stage, steps=3) for e in (one, many))
        np.testing.assert_array_equal(encn.w, enc1.w, err_msg=stage)
        for f in enc1.refinement:
            np.testing.assert_array_equal(encn.refinement[f], enc1.refinement[f], err_msg=f"{stage} {f}")
        if stage == "pti":
            for a, b in zip(jax.tree.leaves(encn.params), jax.tree.leaves(enc1.params), strict=True):
                np.testing.assert_array_equal(a, b)
        r1, rn = (e.edit(enc, "Bald", [0.5, 1.0]) for e, enc in ((one, enc1), (many, encn)))
        np.testing.assert_array_equal(rn.images, r1.images, err_msg=stage)
        np.testing.assert_array_equal(rn.reconstructions, r1.reconstructions, err_msg=stage)


@pytest.mark.slow
def test_pti_parameters_live_on_the_device_of_their_image(refine_weights):
    """refine_pti on a 2-device mesh: image i's tuned parameters (and its result rows) on device i // 2 (slow: PTI's
    per-device compiles, half a minute here)."""
    from ffclip_jax import refine
    from test_refine_pipeline import library_inputs, photos as refine_photos

    editor = Editor.from_pretrained(str(refine_weights), batch_size=4, devices=2)
    w, targets = library_inputs(editor, refine_photos(4, seed=12))
    r = refine.refine_pti(editor.generator, editor.lpips("lpips_alex"), w, targets, refine.PTISettings(steps=1),
                          mesh=editor.mesh, progress=False)
    for leaf in jax.tree.leaves(r.params):
        assert [(s.device, s.index[0]) for s in leaf.addressable_shards] == [
            (d, slice(2 * k, 2 * k + 2)) for k, d in enumerate(editor.devices)]
