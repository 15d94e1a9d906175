"""Batch inversion: `ffclip invert` over a folder (mixed sizes and modes, an unreadable file, a grid), the Editor's
array API, e4e's preprocessing, and bad input. Uses a small randomly initialised encoder and generator (parity is
test_e4e's)."""
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from ffclip_jax.cli.invert import main
from ffclip_jax.errors import FFCLIPError, run_cli
from ffclip_jax.fileio import atomic_output_dir
from ffclip_jax.grid import LABEL_HEIGHT, PAD, make_grid
from ffclip_jax.models.e4e import Encoder4Editing
from ffclip_jax.models.stylegan2 import Generator
from ffclip_jax.pipeline import Editor, encoder_input
from ffclip_jax.weights import pretrained

SIZE = 32  # encoder input 32x32 (c3 is 2x2); stylegan_size 32 (8 styles); style_dim 16


def random_variables(module, x, seed):
    """Random parameters without running the model: normal weights, zero-mean unit-variance BatchNorm stats."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *x))
    rs = np.random.RandomState(seed)

    def fill(path, s):
        name = path[-1].key
        if name == "running_var":
            return np.ones(s.shape, np.float32)
        if name == "running_mean":
            return np.zeros(s.shape, np.float32)
        return (rs.randn(*s.shape) * (0.05 if len(s.shape) == 4 and path[0].key == "params" else 1)).astype(np.float32)
    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    enc = Encoder4Editing(stylegan_size=32, style_dim=16, input_size=(SIZE, SIZE))
    gen = Generator(size=32, style_dim=16, n_mlp=1)
    d = str(tmp_path_factory.mktemp("inv") / "e4e")
    with atomic_output_dir(d) as tmp:
        pretrained.write_model_dir(tmp, "e4e", dict(stylegan_size=32, style_dim=16, input_size=[SIZE, SIZE]),
                                   random_variables(enc, [np.zeros((1, SIZE, SIZE, 3), np.float32)], 0))
        os.makedirs(os.path.join(tmp, "generator"))
        pretrained.write_model_dir(os.path.join(tmp, "generator"), "stylegan2",
                                   dict(size=32, style_dim=16, n_mlp=1),
                                   random_variables(gen, [np.zeros((1, 16), np.float32)], 1))
    return d


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    rs = np.random.RandomState(0)
    Image.fromarray(rs.randint(0, 256, (40, 30, 3), np.uint8)).save(d / "a.png")
    Image.fromarray(rs.randint(0, 256, (32, 32), np.uint8), mode="L").save(d / "b.png")
    Image.fromarray(rs.randint(0, 256, (50, 50, 4), np.uint8), mode="RGBA").save(d / "c.png")
    (d / "broken.jpg").write_bytes(b"not an image")
    (d / "notes.txt").write_text("ignored")
    return d


def test_cli_folder_grid_and_array_api(encoder_dir, photos, tmp_path, capsys):
    out = tmp_path / "out" / "latents.npy"
    rc = run_cli(main, ["--encoder", encoder_dir, "--images", str(photos), "--output", str(out), "--batch-size", "2",
                        "--grid", str(tmp_path / "recon.png")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"skipped {photos / 'broken.jpg'}: not a readable image" in err
    codes = np.load(out)
    assert codes.shape == (3, 8, 16) and codes.dtype == np.float32 and np.isfinite(codes).all()
    files = json.loads((tmp_path / "out" / "latents.json").read_text())
    assert [os.path.basename(f) for f in files] == ["a.png", "b.png", "c.png"]
    assert sorted(os.listdir(tmp_path / "out")) == ["latents.json", "latents.npy"]  # no temporaries left
    grid = np.asarray(Image.open(tmp_path / "recon.png"))
    a = encoder_input(Image.open(photos / "a.png"), (SIZE, SIZE))
    want = np.asarray(make_grid(np.stack([a[None], a[None]], axis=1), ["input", "reconstruction"]))
    assert grid.shape == (want.shape[0] + 2 * (want.shape[0] - LABEL_HEIGHT - PAD), want.shape[1], 3)  # 3 rows
    np.testing.assert_array_equal(grid[:want.shape[0], :want.shape[1] // 2], want[:, :want.shape[1] // 2])

    editor = Editor.from_pretrained(encoder_dir, batch_size=2)
    images = [np.asarray(Image.open(photos / n)) for n in ("a.png", "b.png", "c.png")]
    # the same images through the same jitted program in the same padded batches: the same bits
    np.testing.assert_array_equal(editor.invert(images), codes)


def test_preprocess():
    gray = np.full((20, 10), 128, np.uint8)
    x = encoder_input(gray, (8, 4))
    assert x.shape == (8, 4, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x, (128 / 255 - 0.5) / 0.5, atol=4 * 2 ** -24)  # 3 float32 roundings of values <= 1
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    np.testing.assert_array_equal(encoder_input(rgba, (4, 4), resize=False)[..., 0], 1.0)
    with pytest.raises(FFCLIPError, match=r"is 20x10 \(HxW\), expected 8x4 by the encoder \(resizing is off\)"):
        encoder_input(gray, (8, 4), resize=False)
    with pytest.raises(FFCLIPError, match="expected a uint8"):
        encoder_input(np.zeros((4, 4, 3), np.float32), (4, 4))


def test_bad_input(encoder_dir, photos, tmp_path, capsys):
    def run(*args):
        rc = run_cli(main, ["--encoder", encoder_dir, "--output", str(tmp_path / "l.npy"), *args])
        last = capsys.readouterr().err.rstrip("\n").split("\n")[-1]  # after any progress bar
        assert rc == 2 and last.startswith("error: "), last
        return last

    assert "expected 32x32 by the encoder (resizing is off)" in run("--images", str(photos / "a.png"), "--no-resize")
    (tmp_path / "empty").mkdir()
    assert "folder has no images" in run("--images", str(tmp_path / "empty"))
    assert "none of the 1 files could be read" in run("--images", str(photos / "broken.jpg"))
    assert "no such file or folder" in run("--images", str(tmp_path / "missing.png"))
    err = run("--images", str(photos), "--encoder", os.path.join(encoder_dir, "generator"))
    assert "has no e4e encoder: needed for --encoder" in err
    assert not (tmp_path / "l.npy").exists()
