"""The refine stage in the pipeline: `Editor.invert/edit(..., refine='w+' | 'pti')` against the refine library's own
rows (the same compiled programs on the same batches: bit-equal), `ffclip invert --refine` (and `--save-tuned`:
a tuned generator reloaded renders its photo's reconstruction bit for bit), `ffclip edit --refine` end to end on
tiny weights, `--align` with a photo stored rotated under an EXIF tag, and one-line errors for bad settings.
(Refinement on 8 simulated devices against 1: test_multidevice.)"""
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from ffclip_jax import refine as refinement
from ffclip_jax.batching import jit_apply
from ffclip_jax.cli import data as data_cli, edit as edit_cli, invert as invert_cli
from ffclip_jax.errors import InputError, run_cli
from ffclip_jax.pipeline import Editor, Encoded, Refine, encoder_input
from ffclip_jax.weights import pretrained
from test_align import drawn_photos, predictor_path, save_rotated  # noqa: F401  (fixtures)
from test_evaluate import tiny_weights  # noqa: F401  (fixture)

BATCH = 2
STEPS = 3  # enough for Adam to move every image (W+'s first step has lr 0: upstream's warm-up)
TEXT = "Bald"


@pytest.fixture(scope="module")
def refine_weights(tiny_weights, tmp_path_factory):
    """test_evaluate's tiny weights (mapper, generator, CLIP) plus a random e4e and LPIPS (alex, vgg) for them, as
    one weights directory."""
    from ffclip_jax import tiny

    nets = tmp_path_factory.mktemp("refine") / "nets"
    nets.mkdir()
    for name in ("generator", "clip", "arcface", "parsenet", "moco"):  # reused, so only e4e and LPIPS are built
        os.symlink(tiny_weights / name, nets / name)
    paths = tiny.ensure_networks(str(nets))
    weights = nets.parent / "weights"
    weights.mkdir()
    names = ("generator", "clip", "e4e", "lpips_alex", "lpips_vgg")
    (weights / "manifest.json").write_text(json.dumps({"format": pretrained.FORMAT, "networks": dict(
        {n: os.path.relpath(paths[n], weights) for n in names}, mapper=os.path.relpath(tiny_weights / "mapper",
                                                                                        weights))}))
    return weights


@pytest.fixture(scope="module")
def editor(refine_weights):
    return Editor.from_pretrained(str(refine_weights), batch_size=BATCH, cache_dir=str(refine_weights / "cache"))


def photos(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 40, 36, 3), dtype=np.uint8)


def library_inputs(editor, images):
    """What the library is given: e4e codes of the encoder inputs, and the photos at the generator's size."""
    x = np.stack([encoder_input(im, editor.input_size) for im in images])
    size = editor.generator[0].size
    return editor.invert_rows(x), np.stack([encoder_input(im, (size, size)) for im in images])


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def pti_photos(editor):
    images = photos(BATCH, seed=3)
    return images, editor.invert(images, refine="pti", steps=STEPS)


def test_pti_in_the_editor_is_the_library(editor, pti_photos):
    """invert(refine='pti') and edit(Encoded) on one batch: the pivots are e4e's codes, the tuned generators the
    library's, and every reconstruction and edit is `render_tuned` of the mapped pivot on its photo's generator,
    bit for bit (the same programs at the same batch)."""
    images, enc = pti_photos
    assert isinstance(enc, Encoded) and enc.stage == "pti" and enc.sources == [0, 1]
    w, targets = library_inputs(editor, images)
    lib = refinement.refine_pti(editor.generator, editor.lpips("lpips_alex"), w, targets,
                                Refine.of("pti", STEPS).settings, progress=False)
    np.testing.assert_array_equal(enc.w, w)
    assert_trees_equal(enc.params, lib.params)
    for f in ("steps", "lpips_start", "lpips", "mse"):
        np.testing.assert_array_equal(enc.refinement[f], getattr(lib, f))
    assert (enc.refinement["steps"] == STEPS).all()
    r = editor.edit(enc, TEXT, [0.5, 1.0])
    edited = editor.map_rows(np.repeat(w, 2, axis=0), np.repeat(editor.text_embeddings([TEXT]), 4, axis=0),
                             np.array([0.5, 1.0] * 2, np.float32))
    rows = np.concatenate([w[:, None], edited.reshape(2, 2, *w.shape[1:])], axis=1)
    expected = np.asarray(refinement.render_tuned(editor.generator[0], lib.params, lib.buffers, rows))
    np.testing.assert_array_equal(r.reconstructions, expected[:, 0])
    np.testing.assert_array_equal(r.images[:, 0], expected[:, 1:])
    np.testing.assert_array_equal(r.latents[:, 0], edited.reshape(2, 2, *w.shape[1:]))
    # tuned generators differ from the original: the reconstruction is not the e4e one
    assert not np.array_equal(r.reconstructions, editor.render_rows(w))


def test_w_plus_edit_is_the_library(editor):
    """edit(photos, refine='w+'): the mapper edits the library's refined codes, rendered on the generator."""
    images = photos(BATCH, seed=4)
    r = editor.edit(images, TEXT, 1.0, refine="w+", steps=STEPS)
    w, targets = library_inputs(editor, images)
    lib = refinement.refine_w_plus(editor.generator, editor.lpips("lpips_vgg"), w, targets,
                                   Refine.of("w+", STEPS).settings, progress=False)
    np.testing.assert_array_equal(r.source_latents, lib.codes)
    assert not np.array_equal(lib.codes, w)
    np.testing.assert_array_equal(r.reconstructions, editor.render_rows(lib.codes))
    edited = editor.map_rows(lib.codes, np.repeat(editor.text_embeddings([TEXT]), 2, axis=0), 1.0)
    np.testing.assert_array_equal(r.images[:, 0, 0], editor.render_rows(edited))


def test_bad_refine_settings_are_one_line(editor):
    for kwargs, message in ((dict(refine="pit"), r"^refine must be one of w\+, pti \(or None\), got 'pit'$"),
                            (dict(refine="pti", steps=0), r"^PTISettings\.steps must be an integer >= 1, got 0$"),
                            (dict(steps=5), r"^refinement steps \(5\) given without a refine stage"),
                            (dict(refine=Refine("w+", refinement.PTISettings())),
                             r"^refine 'w\+' takes WPlusSettings, got PTISettings$")):
        with pytest.raises(InputError, match=message):
            editor.invert(photos(1), **kwargs)
    with pytest.raises(InputError, match="refine needs photos"):
        editor.edit(editor.sample(1), TEXT, refine="pti")
    with pytest.raises(InputError, match=r"^3 images do not split evenly over 2 devices"):
        w = np.zeros((3,) + editor.latent_shape, np.float32)
        refinement.refine_w_plus(editor.generator, editor.lpips("lpips_vgg"), w, np.zeros((3, 32, 32, 3)),
                                 mesh=Editor(devices=2).mesh, progress=False)


# ---------------------------------------------------------------------------------------------------------------
# the command lines


def _photo_folder(path, n=3):
    path.mkdir()
    for i, im in enumerate(photos(n, seed=9)):
        Image.fromarray(im).save(path / f"p{i}.png")
    (path / "zz_broken.png").write_bytes(b"not a png")
    return path


def _last_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


def test_cli_invert_refine_pti_save_tuned(refine_weights, editor, tmp_path, capsys):
    """invert --refine pti --save-tuned: latents.npy holds the pivots (e4e's codes), latents.refine.json each photo's
    numbers, and each tuned directory reloads with pretrained.load to the tuned parameters themselves (bit for bit),
    so it renders its row of latents.npy exactly as the tuned generator does; the broken photo is skipped."""
    folder = _photo_folder(tmp_path / "photos")
    out = tmp_path / "inv" / "latents.npy"
    argv = ["--encoder", str(refine_weights), "--images", str(folder), "--output", str(out), "--batch-size",
            str(BATCH), "--refine", "pti", "--refine-steps", str(STEPS), "--save-tuned", str(tmp_path / "tuned"),
            "--part-size", "2", "--grid", str(tmp_path / "grid.png")]
    assert run_cli(invert_cli.main, argv) == 0, capsys.readouterr().err
    w = np.load(out)
    files = sorted(str(folder / f"p{i}.png") for i in range(3))
    assert json.loads((tmp_path / "inv" / "latents.json").read_text()) == files
    report = json.loads((tmp_path / "inv" / "latents.refine.json").read_text())
    assert report["stage"] == "pti" and report["settings"]["steps"] == STEPS and len(report["photos"]) == 3
    # the same batches as the parts (2 photos, then 1 padded to 2) and the same random keys (photo k's: k)
    enc = editor.encode_files(files, refine="pti", steps=STEPS, progress=False)
    np.testing.assert_array_equal(w, enc.w)
    for row in range(3):
        G, variables = pretrained.load(str(tmp_path / "tuned" / f"p{row}"))
        tuned = editor.tuned_variables(enc.params, row)
        assert_trees_equal(variables, tuned)
        np.testing.assert_array_equal(jit_apply(G, input_is_latent=True)(variables, w[row:row + 1]),
                                      jit_apply(G, input_is_latent=True)(tuned, w[row:row + 1]))
        meta = pretrained.read_meta(str(tmp_path / "tuned" / f"p{row}"))
        assert meta["extra"]["photo"] == os.path.abspath(files[row])
    assert (tmp_path / "grid.png").is_file() and not (tmp_path / "inv" / "latents.parts").exists()


def test_cli_edit_refine_end_to_end(refine_weights, tmp_path, capsys):
    """edit --images --refine pti: every edit and reconstruction written, the grid, the run manifest's refine record;
    edit --refine w+ likewise."""
    folder = _photo_folder(tmp_path / "photos", n=2)
    for stage in ("pti", "w+"):
        out = tmp_path / f"edit-{stage}"
        argv = ["--weights", str(refine_weights), "--cache-dir", str(refine_weights / "cache"), "--images",
                str(folder), "--text", TEXT, "--strength", "0.5,1", "--output", str(out), "--batch-size", str(BATCH),
                "--refine", stage, "--refine-steps", str(STEPS), "--save-latents"]
        assert run_cli(edit_cli.main, argv) == 0, capsys.readouterr().err
        files = set(os.listdir(out))
        assert {"grid.png", "p0__reconstruction.png", "p1__Bald__0.5.png", "p1__Bald__1.png"} <= files
        run = json.loads((out / "ffclip-run.json").read_text())
        assert run["refine"]["stage"] == stage and len(run["refine"]["lpips"]) == 2
        assert np.load(out / "latents.npy").shape[:3] == (2, 1, 2)


def test_cli_edit_refine_align_reads_a_photo_stored_rotated(refine_weights, predictor_path, drawn_photos, tmp_path,
                                                            capsys):
    """--align with --refine w+: a photo stored rotated with an EXIF tag is refined as displayed (the same files as
    the upright photo)."""
    photos_dir, _, _ = drawn_photos
    upright = np.asarray(Image.open(photos_dir / "one.png"))
    rotated = tmp_path / "rotated"
    rotated.mkdir()
    save_rotated(rotated / "one.png", upright, orientation=6)
    base = ["--weights", str(refine_weights), "--cache-dir", str(refine_weights / "cache"), "--batch-size",
            str(BATCH), "--text", TEXT, "--align", predictor_path, "--save-latents", "--refine", "w+",
            "--refine-steps", str(STEPS)]
    assert run_cli(edit_cli.main, base + ["--images", str(photos_dir / "one.png"), "--output",
                                          str(tmp_path / "a")]) == 0, capsys.readouterr().err
    assert run_cli(edit_cli.main, base + ["--images", str(rotated / "one.png"), "--output",
                                          str(tmp_path / "b")]) == 0, capsys.readouterr().err
    np.testing.assert_array_equal(np.load(tmp_path / "b" / "latents.npy"), np.load(tmp_path / "a" / "latents.npy"))
    for name in ("one__Bald__1.png", "one__reconstruction.png"):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b" / name)),
                                      np.asarray(Image.open(tmp_path / "a" / name)))


@pytest.mark.parametrize("tool, extra, message", [
    (invert_cli, ["--refine", "pit"], "--refine must be one of w+, pti, got 'pit'"),
    (invert_cli, ["--refine", "pti", "--refine-steps", "0"], "--refine-steps must be at least 1, got 0"),
    (invert_cli, ["--refine-steps", "5"], "--refine-steps: only with --refine w+|pti"),
    (invert_cli, ["--refine", "w+", "--save-tuned", "t"], "--save-tuned: only with --refine pti"),
    (invert_cli, ["--refine", "pti", "--grid", "g.png"], "--grid with --refine pti renders the tuned generators"),
    (edit_cli, ["--refine", "w+", "--random", "2"], "--refine needs --images"),
    (data_cli, ["--refine", "pti"], "data build --refine pti: the dataset holds codes"),
])
def test_bad_refine_flags_are_one_line(refine_weights, tmp_path, capsys, tool, extra, message):
    folder = _photo_folder(tmp_path / "photos", n=1)
    if tool is invert_cli:
        argv = ["--encoder", str(refine_weights), "--images", str(folder), "--output", str(tmp_path / "l.npy")]
    elif tool is edit_cli:
        argv = ["--weights", str(refine_weights), "--text", TEXT, "--output", str(tmp_path / "out")]
        extra = extra if "--random" in extra else extra + ["--images", str(folder)]
    else:
        argv = ["build", "--domain", "custom", "--images", str(folder), "--encoder", str(refine_weights),
                "--data-dir", str(tmp_path / "data")]
    capsys.readouterr()
    assert run_cli(tool.main, argv + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "l.npy").exists() and not (tmp_path / "out").exists()
