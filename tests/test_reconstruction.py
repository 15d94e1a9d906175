"""The reconstruction report (`ffclip_jax.reconstruction`, `ffclip evaluate --reconstruction`) on the tiny random
networks (`ffclip_jax.tiny`: 32 px generator, IR-SE50 e4e for 64 px photos, LPIPS alex / VGG, tiny CLIP) with a
random one-block mapper and, in the default suite, an L2-normalised channel-mean stand-in for ArcFace (IR-SE50 is
slow to compile on a small CPU; the real one runs in the slow test). Two photos: a generator image (in the generator's
range) and skimage's astronaut (outside it).

Checked: every score against an independent float64 computation, W+ and PTI lowering e4e's MSE, strength 0 edits
equal to the reconstructions, the files, one-line errors, the command line end to end."""
import dataclasses
import json
import math
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ffclip_jax import reconstruction as rec
from ffclip_jax import refine
from ffclip_jax.cli import evaluate as evaluate_cli
from ffclip_jax.errors import FFCLIPError, InputError
from ffclip_jax.models.mapper import DynamicMapper
from ffclip_jax.pipeline import Editor
from ffclip_jax.weights import pretrained, registry
from ffclip_jax.weights.manifest import resolve
from parity import ROOT, U32
from test_evaluate import ChannelMean  # the ArcFace stand-in (registered below by this module's name)
import tiny_shared

PROMPTS = ["Blue hair", "Bald"]
# small refinements that fit the pixels (W+ with an MSE term at PTI's projector rate, as tests/test_refine.py)
W_PLUS = refine.WPlusSettings(steps=20, lr=0.01, l2_weight=1.0)
PTI = refine.PTISettings(steps=20)


@pytest.fixture
def stub_arcface(monkeypatch):
    monkeypatch.setitem(registry.MODELS, "arcface",
                        dataclasses.replace(registry.MODELS["arcface"], target=f"{__name__}:ChannelMean"))


def _manifest(directory, networks):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump({"format": pretrained.FORMAT, "networks": {n: os.path.relpath(p, directory)
                                                            for n, p in networks.items()}}, f)
    return str(directory)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny networks, a random mapper, the stand-in ArcFace; weights directories (full, without LPIPS-VGG,
    without ArcFace, with the real IR-SE50 ArcFace); a photo folder and an empty one."""
    root = tmp_path_factory.mktemp("recon")
    nets = tiny_shared.ensure_networks(str(root / "tiny"))
    gen, gvars = pretrained.load(nets["generator"])
    mapper_config = dict(n_latent=gen.n_latent, style_dim=gen.style_dim, num_blocks=1)
    mapper = DynamicMapper(**mapper_config)
    w = jnp.zeros((1, gen.n_latent, gen.style_dim))
    pretrained.save(str(root / "mapper"), "ffclip_mapper", mapper_config,
                    jax.device_get(jax.jit(mapper.init)(jax.random.PRNGKey(1), w, w[:, 0])))
    stand_in = ChannelMean()
    pretrained.save(str(root / "arcface"), "arcface", {"input_size": 112},
                    stand_in.init(jax.random.PRNGKey(0), jnp.zeros((1, 112, 112, 3))))
    full = {n: nets[n] for n in ("generator", "e4e", "clip", "lpips_alex", "lpips_vgg")}
    full.update(mapper=str(root / "mapper"), arcface=str(root / "arcface"))
    weights = _manifest(root / "weights", full)
    no_vgg = _manifest(root / "no_vgg", {k: v for k, v in full.items() if k != "lpips_vgg"})
    no_arcface = _manifest(root / "no_arcface", {k: v for k, v in full.items() if k != "arcface"})
    real_arcface = _manifest(root / "real_arcface", dict(full, arcface=nets["arcface"]))
    photos = root / "photos"
    photos.mkdir()
    rs = np.random.RandomState(0)
    z = jnp.asarray(rs.randn(1, gen.style_dim), jnp.float32)
    image = np.asarray(jax.jit(lambda v, z: gen.apply(v, z, truncation=0.7))(gvars, z))[0]
    Image.fromarray(np.uint8(np.clip((image + 1) * 127.5 + 0.5, 0, 255))).resize((64, 64), Image.BICUBIC).save(
        photos / "a_generated.png")
    import skimage.data
    Image.fromarray(skimage.data.astronaut()).resize((64, 64), Image.BOX).save(photos / "b_astronaut.png")
    (photos / "c_broken.png").write_bytes(b"not a PNG")
    (photos / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    return dict(root=root, weights=weights, no_vgg=no_vgg, no_arcface=no_arcface, real_arcface=real_arcface,
                photos=str(photos), empty=str(root / "empty"))


def _editor(weights, **kw):
    return Editor.from_pretrained(weights, batch_size=2, cache_dir=os.path.join(os.path.dirname(weights), "cache"),
                                  **kw)


@pytest.fixture(scope="module")
def run(setup):
    """One reconstruction of the two photos with edits at strength 0 (the edit is the reconstruction itself)."""
    registry_entry = registry.MODELS["arcface"]
    registry.MODELS["arcface"] = dataclasses.replace(registry_entry, target=f"{__name__}:ChannelMean")
    try:
        weights = resolve(setup["weights"])
        editor = _editor(setup["weights"])
        nets, variables = rec.load_networks(weights)
    finally:
        registry.MODELS["arcface"] = registry_entry
    files = sorted(os.path.join(setup["photos"], f) for f in os.listdir(setup["photos"]) if f.endswith(".png"))
    chunks = list(rec.photo_chunks(editor, files))  # the 2 photos (the batch), then the broken file's chunk
    photos = chunks[0]
    result = rec.reconstruct(editor, nets, variables, chunks, prompts=PROMPTS, strength=0.0, w_plus=W_PLUS, pti=PTI,
                             progress=False, keep_images=True)
    return dict(editor=editor, nets=nets, variables=variables, photos=photos, result=result)


# ---- independent float64 computations -----------------------------------------------------------------------

def pool_matrix(n_in, n_out):
    """PyTorch's adaptive average pooling along one axis, float64: window i is [floor(i n / m), ceil((i + 1) n / m))."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def channel_mean_identity(a, b):
    """cos of the stand-in ArcFace features of images a, b (N, S, S, 3), float64: clip, pool to 256, crop
    [35:223, 32:220], pool to 112, channel means, unit length."""
    def pool(x, size):  # rows, then columns
        x = np.einsum("ih,nhwc->niwc", pool_matrix(x.shape[1], size), x)
        return np.einsum("jw,niwc->nijc", pool_matrix(x.shape[2], size), x)

    def features(x):
        x = pool(np.clip(np.asarray(x, np.float64), -1, 1), 256)[:, 35:223, 32:220]
        f = pool(x, 112).mean(axis=(1, 2))
        return f / np.linalg.norm(f, axis=-1, keepdims=True)
    return np.sum(features(a) * features(b), axis=-1)


def test_reconstruction_scores_equal_float64(run):
    photos, result, nets, variables = run["photos"], run["result"], run["nets"], run["variables"]
    target = np.clip(np.asarray(photos.targets, np.float64), -1, 1)
    size = target.shape[1]
    assert size <= rec.EVAL_SIZE  # 32 px: no downsampling, the images are compared as rendered
    pixels = size * size * 3
    recons = {name: np.clip(np.asarray(result.images[name], np.float64), -1, 1) for name in rec.INVERSIONS}
    for name, recon in recons.items():
        scores = result.reconstruction[name]
        mse = np.mean(((recon - target) / 2) ** 2, axis=(1, 2, 3))
        # float32 MSE: each term ((x - y) / 2)^2 has relative error <= 3 u (subtract, halve exactly, square), and a
        # sum of M non-negative terms in any order <= (M - 1) u relative (Higham, recursive summation), M = 32*32*3
        np.testing.assert_allclose(scores["mse"], mse, rtol=(pixels + 3) * U32, atol=0)
        # PSNR = 10 log10(1 / mse): a relative error r of mse moves it by 10 r / ln 10 dB; log10 itself rounds by
        # ~u of a value <= 100 dB: 4 x 100 u more
        psnr = 10 * np.log10(1 / mse)
        np.testing.assert_allclose(scores["psnr"], psnr, rtol=0,
                                   atol=10 / math.log(10) * (pixels + 3) * U32 * 1.01 + 100 * 4 * U32)
        # the stand-in identity: float32 pooled means of up to 32 x 32 pixels (M u relative each, M = 1024 + the
        # 112 x 112 channel mean 12544), so each unit feature is off by <= 2 (1024 + 12544) u and the cosine of two
        # by twice that
        np.testing.assert_allclose(scores["identity"], channel_mean_identity(target, recon), rtol=0,
                                   atol=4 * (1024 + 12544) * U32)
        assert np.all(scores["seconds"] > 0)


@pytest.mark.parametrize("backbone", ["alex", "vgg"])
def test_lpips_scores_equal_float64(run, backbone):
    """LPIPS: the float64 truth is the same network evaluated in float64 (its parity with the lpips package is
    tests/test_lpips.py); the report's float32 values (batched with other rows) within 4x a direct float32 call's
    error, measured here, plus float32 eps of the value as a floor."""
    photos, result, nets, variables = run["photos"], run["result"], run["nets"], run["variables"]
    photo = np.concatenate([np.clip(np.asarray(photos.targets, np.float64), -1, 1)] * len(rec.INVERSIONS))
    recon = np.concatenate([np.clip(np.asarray(result.images[name], np.float64), -1, 1) for name in rec.INVERSIONS])
    module, v = getattr(nets, f"lpips_{backbone}"), variables[f"lpips_{backbone}"]
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: np.asarray(a, np.float64), v)
        truth = np.asarray(jax.jit(module.apply)(v64, photo, recon))
    direct = np.asarray(jax.jit(module.apply)(v, photo.astype(np.float32), recon.astype(np.float32)))
    own = np.abs(direct - truth).max()
    ours = np.concatenate([result.reconstruction[name][f"lpips_{backbone}"] for name in rec.INVERSIONS])
    err = np.abs(ours - truth)
    assert np.all(err <= 4 * own + 2 * U32 * np.abs(truth)), (err, own)


def test_refinement_lowers_the_reconstruction_error(run):
    """Both refinements lower e4e's MSE on both photos (the in-range generator image and the astronaut)."""
    r = run["result"].reconstruction
    assert np.all(r["w_plus"]["mse"] < r["e4e"]["mse"]), (r["w_plus"]["mse"], r["e4e"]["mse"])
    assert np.all(r["pti"]["mse"] < r["e4e"]["mse"]), (r["pti"]["mse"], r["e4e"]["mse"])
    assert not any(run["result"].refinement[k]["failed"].any() for k in ("w_plus", "pti"))
    assert run["result"].refinement["pti"]["steps"].max() <= PTI.steps


def test_strength_zero_edits_are_the_reconstructions(run):
    """At strength 0 every edit renders the inversion's own code with its own generator: no CLIP change, identity
    with the reconstruction 1 and with the photo the reconstruction's."""
    result = run["result"]
    for name in rec.INVERSIONS:
        e = result.edits[name]
        assert e["clip_score"].shape == (len(PROMPTS), 2)
        # the same pixels scored in another batch row: CLIP features equal to float32 rounding (~1e-6 relative,
        # tests/test_clip.py), the score (100 x a cosine) to ~1e-4
        np.testing.assert_allclose(e["clip_score_delta"], 0.0, atol=1e-4)
        # cos(f, f) of 3-dim unit float32 features: ~10 roundings of 1
        np.testing.assert_allclose(e["identity_source"], 1.0, rtol=0, atol=16 * U32)
        # the same cosine as the reconstruction's identity, computed from features of the same pixels: 16 u
        np.testing.assert_allclose(e["identity_photo"], np.broadcast_to(result.reconstruction[name]["identity"],
                                                                        (len(PROMPTS), 2)), rtol=0, atol=16 * U32)


def test_photo_chunks(setup, run):
    """Photos read as needed in chunks of kept photos, the skipped ones carried by the chunk after them; targets at
    the generator's size (64 px photos PIL-bilinear to 32), e4e's inputs the same image at 64 px."""
    files = sorted(os.path.join(setup["photos"], f) for f in os.listdir(setup["photos"]) if f.endswith(".png"))
    chunks = list(rec.photo_chunks(run["editor"], files, size=1))
    assert [[os.path.basename(f) for f in c.sources] for c in chunks] == [["a_generated.png"], ["b_astronaut.png"], []]
    assert [[os.path.basename(f) for f, _ in c.skipped] for c in chunks] == [[], [], ["c_broken.png"]]
    assert chunks[0].targets.shape == (1, 32, 32, 3) and chunks[0].encoder_inputs.shape == (1, 64, 64, 3)
    with Image.open(files[1]) as im:
        expected = np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR), np.float32) / 127.5 - 1
    # (x / 255 - 0.5) / 0.5 against x / 127.5 - 1: 3 roundings of values <= 1 against 2
    np.testing.assert_allclose(chunks[1].targets[0], expected, rtol=0, atol=5 * U32)
    np.testing.assert_array_equal(np.concatenate([c.targets for c in chunks[:2]]), run["photos"].targets)
    with pytest.raises(InputError, match="none of the 1 files could be read as an image"):
        list(rec.photo_chunks(run["editor"], files[2:]))


def test_align_at_the_generator_size(setup, run, monkeypatch):
    """With a predictor: the largest face aligned once at the generator's size with FFHQ's 4x QUAD transform (the
    aligner stubbed: no face in the first photo, a face in the second), photos without a face skipped."""
    calls = []

    def fake_align(images, predictor, size, transform_size):
        calls.append((size, transform_size))
        return ([np.ascontiguousarray(images[0][:size, :size])], []) if len(calls) == 2 else ([], [0])
    monkeypatch.setattr(rec, "align_images", fake_align)
    editor = run["editor"]
    aligning = types.SimpleNamespace(generator=editor.generator, input_size=editor.input_size, predictor=object(),
                                     batch_size=2)
    files = [os.path.join(setup["photos"], f) for f in ("a_generated.png", "b_astronaut.png")]
    (chunk,) = rec.photo_chunks(aligning, files)
    assert calls == [(32, 128)] * 2
    assert chunk.sources == files[1:] and chunk.skipped == [(files[0], f"{files[0]}: no face found")]
    with Image.open(files[1]) as im:
        expected = np.asarray(im.convert("RGB"), np.float32)[:32, :32] / 127.5 - 1
    np.testing.assert_allclose(chunk.targets[0], expected, rtol=0, atol=5 * U32)  # as test_photo_chunks
    assert chunk.encoder_inputs.shape == (1, 64, 64, 3)


def test_report_files(run, tmp_path):
    result = run["result"]
    report = rec.build_report(result, {"strength": 0.0, "image_size": 32})
    files = rec.write_report(str(tmp_path / "r"), report)
    assert sorted(os.listdir(tmp_path / "r")) == sorted(files) == ["edits.png", "reconstruction.png", "report.json",
                                                                   "report.md"]
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert {"meta", "inversions", "labels", "photos", "skipped", "prompts", "reconstruction", "edits", "refinement",
            "reference"} <= set(data)
    assert data["inversions"] == ["e4e", "w_plus", "pti"] and data["prompts"] == PROMPTS
    assert [os.path.basename(p) for p in data["photos"]] == ["a_generated.png", "b_astronaut.png"]
    assert [os.path.basename(f) for f, _ in data["skipped"]] == ["c_broken.png"]
    for name in rec.INVERSIONS:
        assert set(data["reconstruction"][name]["stats"]) == set(rec.RECON_METRICS)
        assert data["reconstruction"][name]["per_image"]["mse"] == result.reconstruction[name]["mse"].tolist()
        assert np.asarray(data["edits"][name]["per_example"]["clip_score"]).shape == (2, 2)
    assert data["refinement"]["pti"]["settings"]["steps"] == PTI.steps
    assert [r["method"] for r in data["reference"]["rows"]][0] == "e4e"
    md = (tmp_path / "r" / "report.md").read_text()
    for label in ("| e4e |", "| e4e + W+ |", "| e4e + PTI |", "| Blue hair | e4e + PTI |", "| Bald | e4e |",
                  "| e4e | 16.6616 | 0.0472 | 0.1974 | 0.50 | 28.4952 |",
                  "| PTI (W-pivot, no regularisation) | 24.6004 | 0.0082 | 0.0820 | – | – |"):
        assert label in md, label
    mse = result.reconstruction["pti"]["mse"]
    assert f"| e4e + PTI | {mse.mean():.4f} ± {mse.std():.4f} |" in md
    for png in ("reconstruction.png", "edits.png"):
        with Image.open(tmp_path / "r" / png) as im:
            assert im.format == "PNG" and im.size[0] > 100
    with pytest.raises(FFCLIPError, match="already exists"):
        rec.write_report(str(tmp_path / "r"), report)


# ---- bad input, the command line --------------------------------------------------------------------------------

def _cli(setup, out, *extra, weights="weights"):
    return evaluate_cli.main(["--reconstruction", setup["photos"], "--weights", setup[weights], "--output", str(out),
                              "--cache-dir", str(setup["root"] / "cache"), "--batch-size", "2", *extra])


def _one_line_error(setup, tmp_path, *args, **kw):
    with pytest.raises(FFCLIPError) as e:
        _cli(setup, tmp_path / "out", *args, **kw)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
    return str(e.value)


def test_bad_input(setup, stub_arcface, tmp_path):
    msg = _one_line_error(setup, tmp_path, weights="no_vgg")
    assert "LPIPS (VGG16) network (lpips_vgg)" in msg and "ffclip convert lpips --input vgg16-397923af.pth --heads " \
        "vgg.pth --output DIR" in msg and "manifest.json" in msg
    msg = _one_line_error(setup, tmp_path, weights="no_arcface")
    assert "ArcFace network (arcface)" in msg and "ffclip convert arcface --input model_ir_se50.pth" in msg
    msg = _one_line_error(setup, tmp_path, "--refine-steps", "0")
    assert "--refine-steps must be at least 1, got 0" in msg
    msg = _one_line_error(setup, tmp_path, "--compositions")
    assert "--compositions: not with --reconstruction" in msg
    with pytest.raises(FFCLIPError, match="--refine-steps: only with --reconstruction"):
        evaluate_cli.main(["--weights", setup["weights"], "--latents", "x.npy", "--prompts", "ffhq", "--output",
                           str(tmp_path / "out"), "--refine-steps", "3"])
    with pytest.raises(FFCLIPError, match="--latents is required"):
        evaluate_cli.main(["--weights", setup["weights"], "--output", str(tmp_path / "out")])
    with pytest.raises(InputError, match="WPlusSettings.steps must be an integer >= 1, got 0"):
        rec.refinement_settings(steps=0)


def test_empty_folder_subprocess(setup, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ffclip_jax", "evaluate", "--reconstruction", setup["empty"],
                           "--weights", setup["weights"], "--output", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "empty: folder has no images" in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_end_to_end(setup, stub_arcface, tmp_path, capsys):
    out = tmp_path / "recon"
    _cli(setup, out, "--refine-steps", "2", *[a for p in PROMPTS for a in ("--text", p)])  # the run's shapes
    assert sorted(os.listdir(out)) == ["edits.png", "reconstruction.png", "report.json", "report.md"]
    data = json.loads((out / "report.json").read_text())
    assert data["meta"]["refine_steps"] == 2 and data["prompts"] == PROMPTS
    assert data["refinement"]["w_plus"]["settings"]["steps"] == 2
    assert max(data["refinement"]["pti"]["steps"]) <= 2
    # the broken PNG is skipped and listed; notes.txt is no image file: not read at all
    assert [os.path.basename(f) for f, _ in data["skipped"]] == ["c_broken.png"] and len(data["photos"]) == 2
    assert "not a readable image" in data["skipped"][0][1]
    for name in rec.INVERSIONS:
        for metric in rec.RECON_METRICS:
            assert all(np.isfinite(data["reconstruction"][name]["per_image"][metric])), (name, metric)
    assert "wrote report.json, report.md, reconstruction.png, edits.png" in capsys.readouterr().out
    # without prompts: the reconstruction only (no mapper or CLIP needed), no edits plot
    _cli(setup, tmp_path / "plain", "--refine-steps", "1")
    assert sorted(os.listdir(tmp_path / "plain")) == ["reconstruction.png", "report.json", "report.md"]
    assert json.loads((tmp_path / "plain" / "report.json").read_text())["edits"] == {}


@pytest.mark.slow
def test_cli_real_arcface(setup, tmp_path):
    """The tiny default's real IR-SE50 ArcFace: identities are cosines (|x| <= 1 up to rounding)."""
    out = tmp_path / "recon"
    _cli(setup, out, "--refine-steps", "3", "--text", "Bald", weights="real_arcface")
    data = json.loads((out / "report.json").read_text())
    for name in rec.INVERSIONS:
        ids = np.asarray(data["reconstruction"][name]["per_image"]["identity"])
        # a cosine of 512-dim unit float32 features: a sum of 512 products, <= 512 roundings of at most 1 each
        assert np.all(np.abs(ids) <= 1 + 2 * 512 * U32)
        assert np.all(np.abs(np.asarray(data["edits"][name]["per_example"]["identity_photo"])) <= 1 + 2 * 512 * U32)
