"""Editing tool end to end on tiny random upstream-format checkpoints: `ffclip convert all` on a folder with
misleading file names (a subprocess), the weights-directory resolver, the Editor API (shapes, strength 0 = the
reconstruction, several prompts in one call = separate calls, parity of the whole chain against the PyTorch
references), the CLI outputs and its output folder rule, a photo stored rotated through `ffclip edit --align`, and
one-line errors for bad input."""
import copy
import json
import os
import re
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
import torch
from PIL import Image

from convert_weights.__main__ import main as convert_main
from ffclip_jax.cli import edit as edit_cli
from ffclip_jax.weights import pretrained
from ffclip_jax.models.clip import tiny_config
from ffclip_jax.pipeline import Editor
from ffclip_jax.errors import FFCLIPError, run_cli
from ffclip_jax.text.tokenizer import tokenize
from ffclip_jax.weights.manifest import resolve
from torch_ref import clip as tclip
from torch_ref import irse, moco as tmoco, parsenet as tparsenet
from torch_ref.mapper import DynamicMapper as TorchMapper, randomize_layer_norms_, release_checkpoint
from torch_ref.stylegan2 import Generator as TorchGenerator, randomize_ as randomize_generator_
from parity import ROOT, assert_close, assert_float32_parity, float64_copy
from test_align import drawn_photos, predictor_path, save_rotated  # noqa: F401  (fixtures)

SIZE, DIM, N_LATENT, INPUT = 16, 64, 6, 32  # generator size, style_dim (= tiny CLIP embed_dim), w+ layers, e4e input
BATCH = 4


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """A folder of tiny upstream-format checkpoints of six kinds (ArcFace, an IR-SE50 at any size, is only detected:
    `test_detect_arcface`), each saved under another kind's file name, plus files that are no checkpoint of a known
    model; converted by an `ffclip convert all` subprocess (`python -m ffclip_jax convert all`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("edit")
    src = d / "pretrained_models"
    (src / "sub").mkdir(parents=True)
    gen = randomize_generator_(TorchGenerator(SIZE, DIM, n_mlp=2)).eval()
    latent_avg = torch.randn(DIM) * 0.1
    torch.save({"g_ema": gen.state_dict(), "latent_avg": latent_avg}, src / "ffclip_ffhq.pth")
    calib = torch.rand(2, 3, INPUT, INPUT) * 2 - 1
    enc = irse.randomize_(irse.Encoder4Editing(stylegan_size=SIZE, style_dim=DIM), calibration=calib)
    enc_sd = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    enc_sd.update({f"decoder.{k}": v for k, v in gen.state_dict().items()})
    torch.save({"state_dict": enc_sd, "latent_avg": latent_avg.repeat(N_LATENT, 1),
                "opts": {"encoder_type": "Encoder4Editing", "dataset_type": "ffhq_encode"}}, src / "stylegan2.pt")
    mapper = randomize_layer_norms_(TorchMapper(N_LATENT, DIM)).eval()
    torch.save(release_checkpoint(mapper, gen), src / "sub" / "ViT-B-32.pt")  # no latent_avg: from the generator
    clip = tclip.randomize_(tclip.CLIP(**{k: v for k, v in tiny_config().items() if k != "vision_heads"})).eval()
    torch.save(clip.state_dict(), src / "e4e_ffhq_encode.pt")
    torch.save(tparsenet.build(feature_scale=16).state_dict(), src / "model_ir_se50.pth")
    tmoco.save_moco_checkpoint(tmoco.build((1, 1, 1, 1), width=8), src / "stylegan2-car.pt")
    torch.save({"model": {"weight": torch.zeros(2)}}, src / "e4e_cars_encode.pt")
    (src / "notes.txt").write_text("not a checkpoint")
    torch.set_num_threads(threads)
    out = d / "weights"
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "ffclip_jax", "convert", "all", "--from", str(src), "--output", str(out),
                        "--e4e-input-size", str(INPUT), str(INPUT)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return dict(dir=d, src=src, out=out, stdout=r.stdout, gen=gen, enc=enc, mapper=mapper, clip=clip,
                latent_avg=latent_avg)


@pytest.fixture(scope="module")
def editor(upstream):
    return Editor.from_pretrained(str(upstream["out"]), batch_size=BATCH, cache_dir=str(upstream["dir"] / "cache"))


def faces(n, seed=0, size=40):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_convert_all_by_content(upstream):
    src, out = upstream["src"], upstream["out"]
    manifest = json.loads((out / "manifest.json").read_text())
    want = {"generator": ("ffclip_ffhq.pth", "stylegan2"), "e4e": ("stylegan2.pt", "e4e"),
            "mapper": ("sub/ViT-B-32.pt", "ffclip_mapper"), "clip": ("e4e_ffhq_encode.pt", "clip"),
            "parsenet": ("model_ir_se50.pth", "parsenet"),
            "moco": ("stylegan2-car.pt", "moco")}
    assert manifest["networks"] == {n: n for n in want}
    assert {n: (os.path.relpath(s["file"], src), s["model"]) for n, s in manifest["sources"].items()} == want
    assert sorted(os.path.basename(s["file"]) for s in manifest["skipped"]) == ["e4e_cars_encode.pt", "notes.txt"]
    assert "skipped" in upstream["stdout"] and "notes.txt" in upstream["stdout"]
    for network, (_, model) in want.items():
        assert pretrained.read_meta(str(out / network))["model"] == model
    # each network once: the generators inside the e4e and FFCLIP files equal the StyleGAN2 one, array by array
    # (the FFCLIP file has no latent_avg: it came from the StyleGAN2 file), so they are references to it
    assert manifest["generators"] == {"e4e": "generator", "mapper": "generator"}
    assert not (out / "e4e" / "generator").exists() and not (out / "mapper" / "generator").exists()
    _, gv = pretrained.load(str(out / "generator"))
    np.testing.assert_array_equal(gv["buffers"]["latent_avg"], upstream["latent_avg"].numpy())
    assert not [f for f in os.listdir(upstream["dir"]) if f.startswith(".weights")]


def test_generator_stored_once_unless_it_differs(tmp_path):
    """A decoder equal to generator/ is dropped, a different one stays beside its encoder and the manifest says so,
    and without a StyleGAN2 file the first decoder becomes generator/."""
    from convert_weights.all import _share_generator

    def model_dir(path, value):
        pretrained.save(str(path), "stylegan2", {"size": 8}, {"params": {"w": np.full(3, value, np.float32)}})

    model_dir(tmp_path / "e4e" / "generator", 1.0)
    assert _share_generator(str(tmp_path), "e4e") == "generator" and (tmp_path / "generator").is_dir()
    model_dir(tmp_path / "mapper" / "generator", 1.0)
    assert _share_generator(str(tmp_path), "mapper") == "generator"
    assert not (tmp_path / "mapper" / "generator").exists()
    model_dir(tmp_path / "other" / "generator", 2.0)
    assert _share_generator(str(tmp_path), "other") == "other/generator"
    assert (tmp_path / "other" / "generator").is_dir()


def test_moved_weights_directory_edits_and_fine_tunes(upstream, editor, tmp_path):
    """The manifest's paths are relative: a copied weights directory edits the same and serves as init_from."""
    import shutil

    from configs import default as default_config
    from ffclip_jax import train as tl

    moved = tmp_path / "elsewhere" / "weights"
    shutil.copytree(upstream["out"], moved)
    w = editor.sample(2, seed=3)
    want = editor.edit(w, ["Bald"], 0.5)
    got = Editor.from_pretrained(str(moved), batch_size=BATCH, cache_dir=str(upstream["dir"] / "cache")).edit(
        w, ["Bald"], 0.5)
    np.testing.assert_array_equal(got.images, want.images)
    config = default_config.get_config()
    with config.unlocked():
        config.init_from = str(moved / "mapper")
        config.loss.update(dict(id=0.0, background=0.0, embedding=0.0, clip=0.0))
        config.weights.generator = str(moved / "generator")
        config.weights.clip = str(moved / "clip")
    tl.check_weights(config)
    mapper, variables = pretrained.load(str(moved / "mapper"))
    params = tl.init_mapper_params(config, mapper, 0)
    chex.assert_trees_all_equal(jax.device_get(params), jax.device_get(variables["params"]))


def test_detect_arcface(tmp_path):
    from convert_weights.all import detect_file

    keys = ["input_layer.0.weight", "body.0.res_layer.0.weight", "output_layer.3.weight"]
    torch.save({k: torch.zeros(1) for k in keys}, tmp_path / "ffclip.pth")
    assert detect_file(str(tmp_path / "ffclip.pth")) == ("arcface", "", False)


def test_convert_all_errors(upstream, tmp_path, capsys):
    src, out = upstream["src"], upstream["out"]
    assert run_cli(convert_main, ["all", "--from", str(src), "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.pt").write_bytes(b"\x00garbage")
    with pytest.raises(FFCLIPError, match="no recognised checkpoint among 1 file"):
        convert_main(["all", "--from", str(tmp_path / "junk"), "--output", str(tmp_path / "o")])
    (tmp_path / "two").mkdir()
    for name in ("x.pt", "y.pt"):
        torch.save(tparsenet.build(feature_scale=16).state_dict(), tmp_path / "two" / name)
    with pytest.raises(FFCLIPError, match="two parsenet checkpoints"):
        convert_main(["all", "--from", str(tmp_path / "two"), "--output", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_resolve_weights_directories(upstream, tmp_path):
    out = upstream["out"]
    assert resolve(str(out)).networks["e4e"] == str(out / "e4e")
    only_mapper = resolve(str(out / "mapper"))  # a mapper directory (in `all` output its generator is generator/)
    assert only_mapper.networks == {"mapper": str(out / "mapper")}
    with pytest.raises(FFCLIPError, match=r"has no e4e encoder: needed for --images$"):
        only_mapper.path("e4e", "--images")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text("{}")
    with pytest.raises(FFCLIPError, match="training workdir .* has no exported weights"):
        resolve(str(workdir))
    (workdir / "weights").mkdir()  # the trainer's export: absolute paths to the networks it was trained with
    (workdir / "weights" / "manifest.json").write_text(json.dumps(
        {"format": "ffclip-jax", "networks": {"mapper": str(out / "mapper"), "generator": "../../missing"}}))
    with pytest.raises(FFCLIPError, match="network 'generator' is at .*missing, which does not exist"):
        resolve(str(workdir))
    (workdir / "weights" / "manifest.json").write_text(json.dumps(
        {"format": "ffclip-jax", "networks": {"mapper": str(out / "mapper"), "generator": str(out / "e4e")}}))
    with pytest.raises(FFCLIPError, match="generator at .* holds a 'e4e' model, expected 'stylegan2'"):
        resolve(str(workdir)).path("generator")
    with pytest.raises(FFCLIPError, match="no manifest.json"):
        resolve(str(tmp_path))


def test_edit_api(upstream, editor):
    """Shapes, strength 0 = the reconstruction exactly, codes = invert(images), and the whole chain (e4e -> CLIP text
    -> mapper -> generator) against the PyTorch references."""
    n, images = 3, faces(3)
    prompts, strengths = ["blue hair", "Man aged 10"], [0.0, 1.5]
    r = editor.edit(images, prompts, strengths)
    assert r.images.shape == (n, 2, 2, SIZE, SIZE, 3) and r.latents.shape == (n, 2, 2, N_LATENT, DIM)
    assert r.source_latents.shape == (n, N_LATENT, DIM) and r.reconstructions.shape == (n, SIZE, SIZE, 3)
    np.testing.assert_array_equal(r.source_latents, editor.invert(images))
    np.testing.assert_array_equal(r.latents[:, :, 0], np.broadcast_to(r.source_latents[:, None], (n, 2, N_LATENT, DIM)))
    np.testing.assert_array_equal(r.images[:, :, 0], np.broadcast_to(r.reconstructions[:, None], (n, 2, SIZE, SIZE, 3)))
    assert np.abs(r.images[:, :, 1] - r.reconstructions[:, None]).mean() > 1e-3  # edits change the image

    with torch.no_grad():
        x = torch.from_numpy(np.stack([np.asarray(Image.fromarray(a).resize((INPUT, INPUT), Image.BILINEAR),
                                                  np.float32) for a in images]))
        x = (x.permute(0, 3, 1, 2) / 255 - 0.5) / 0.5
        # each stage from our previous stage's output, so differences do not compound; each stage's oracle runs in
        # float32 and in float64 (the truth), and ours is as accurate as PyTorch's float32 (parity.py). The random
        # mapper is ill-conditioned on these codes (its float32 result is ~1e-2 off float64 in PyTorch as in ours):
        # only the float64 truth makes that a bound that holds on every CPU
        enc, mapper, gen = upstream["enc"], upstream["mapper"], upstream["gen"]
        w = enc(x) + upstream["latent_avg"]
        w64 = float64_copy(enc)(x.double()) + upstream["latent_avg"].double()
        ids = torch.from_numpy(tokenize(prompts)).long()
        e, e64 = upstream["clip"].encode_text(ids), float64_copy(upstream["clip"]).encode_text(ids)
        ours_w, ours_e = torch.from_numpy(r.source_latents), torch.from_numpy(editor.text_embeddings(prompts))

        def edited(net, dtype):  # (n, prompts, strengths, L, D) from our codes and text features
            codes = ours_w.to(dtype)
            delta = torch.stack([net(codes, ours_e[j:j + 1, None].to(dtype).expand(n, 1, DIM)) for j in range(2)], 1)
            return (codes[:, None, None] + torch.tensor(strengths, dtype=dtype)[None, None, :, None, None] *
                    delta[:, :, None]).numpy()
        w_hat, w_hat64 = edited(mapper, torch.float32), edited(float64_copy(mapper), torch.float64)
        ours_edited = torch.from_numpy(r.latents[:, :, 1].reshape(-1, N_LATENT, DIM))  # strength 0 checked above
        img = gen([ours_edited], input_is_latent=True, randomize_noise=False)[0]
        img64 = float64_copy(gen)([ours_edited.double()], input_is_latent=True, randomize_noise=False)[0]
    assert_float32_parity(r.source_latents, w.numpy(), w64.numpy(), "e4e codes")
    assert_float32_parity(ours_e, e.numpy(), e64.numpy(), "text features")
    assert_float32_parity(r.latents, w_hat, w_hat64, "edited latents")
    shape = r.images[:, :, 1].shape
    assert_float32_parity(r.images[:, :, 1], img.permute(0, 2, 3, 1).reshape(shape).numpy(),
                          img64.permute(0, 2, 3, 1).reshape(shape).numpy(), "edited images")


def test_prompts_in_one_call_equal_separate_calls(editor):
    w = editor.sample(2, seed=1, truncation=0.7)
    assert w.shape == (2, N_LATENT, DIM)
    together = editor.edit(w, ["Bald", "Blue eyes", "Sad"], 1.0)
    for j, p in enumerate(["Bald", "Blue eyes", "Sad"]):
        alone = editor.edit(w, p, 1.0)
        np.testing.assert_array_equal(together.latents[:, j], alone.latents[:, 0])
        np.testing.assert_array_equal(together.images[:, j], alone.images[:, 0])
    assert len(os.listdir(editor.cache_dir)) >= 3  # the on-disk text cache has one entry per prompt


def test_cli(upstream, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, a in enumerate(faces(2, seed=2, size=48)):
        Image.fromarray(a).save(photos / f"face {i}.png")
    (photos / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    base = ["--weights", str(upstream["out"]), "--cache-dir", str(upstream["dir"] / "cache"), "--batch-size",
            str(BATCH)]
    assert run_cli(edit_cli.main, base + ["--text", "blue hair", "--text", "Man aged 10", "--strength", "0.5,1",
                                          "--images", str(photos), "--output", str(out), "--save-latents"]) == 0
    err = capsys.readouterr().err
    assert f"skipped {photos / 'broken.png'}: not a readable image" in err
    files = set(os.listdir(out))
    for name in ("face_0", "face_1"):
        assert f"{name}__reconstruction.png" in files
        for p in ("blue_hair", "Man_aged_10"):
            for s in ("0.5", "1"):
                assert f"{name}__{p}__{s}.png" in files
    grid = Image.open(out / "grid.png")
    assert grid.size[0] > 6 * 128 and grid.size[1] > 2 * 128  # 2 rows: source, reconstruction, 4 edits
    latents = np.load(out / "latents.npy")
    assert latents.shape == (2, 2, 2, N_LATENT, DIM)
    meta = json.loads((out / "latents.json").read_text())
    assert meta["prompts"] == ["blue hair", "Man aged 10"] and meta["strengths"] == [0.5, 1.0]

    np.save(tmp_path / "w.npy", latents[:, 0, 0])
    assert run_cli(edit_cli.main, base + ["--text", "Bald", "--latents", str(tmp_path / "w.npy"),
                                          "--output", str(tmp_path / "out2")]) == 0
    assert {"latent0000__Bald__1.png", "latent0001__Bald__1.png", "grid.png"} <= set(os.listdir(tmp_path / "out2"))
    assert run_cli(edit_cli.main, base + ["--text", "Bald", "--random", "3", "--seed", "1", "--truncation", "0.7",
                                          "--output", str(tmp_path / "out3"), "--save-latents"]) == 0
    assert np.load(tmp_path / "out3" / "latents.npy").shape == (3, 1, 1, N_LATENT, DIM)


def test_bad_inputs(upstream, tmp_path, capsys):
    base = ["--weights", str(upstream["out"]), "--output", str(tmp_path / "o")]
    np.save(tmp_path / "wrong.npy", np.zeros((2, N_LATENT + 1, DIM), np.float32))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    cases = [
        (base + ["--random", "2"], "no prompt given"),
        (base + ["--text", "Bald", "--images", str(tmp_path / "bad.jpg")], "none of the 1 files could be read"),
        (base + ["--text", "Bald", "--latents", str(tmp_path / "wrong.npy")],
         rf"expected float w\+ latents of shape \(N, {N_LATENT}, {DIM}\) or \({N_LATENT}, {DIM}\) \(expected by the "
         rf"mapper in .*\), got float32 \(2, {N_LATENT + 1}, {DIM}\)"),
        (["--weights", str(upstream["out"] / "mapper"), "--output", str(tmp_path / "o"), "--text", "Bald",
          "--images", str(tmp_path / "bad.jpg")], "has no e4e encoder: needed for --images"),
        (["--weights", str(upstream["out"] / "mapper"), "--output", str(tmp_path / "o"), "--text", "Bald",
          "--random", "1"], "has no CLIP model: needed for --text prompts"),
        (base + ["--text", "Bald", "--random", "1", "--strength", "1,x"], "expected comma-separated numbers"),
        (["--weights", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o"), "--text", "Bald", "--random", "1"],
         "no such directory"),
    ]
    for argv, message in cases:
        assert run_cli(edit_cli.main, argv) == 2, argv
        err = capsys.readouterr().err  # progress bars (\r-separated) may precede the error line
        last = err.rstrip("\n").split("\n")[-1]
        assert err.endswith("\n") and last.startswith("error: ") and re.search(message, last), err
    assert not (tmp_path / "o").exists()


def _last_error(capsys):
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("error: ") and "Traceback" not in err, err
    return last


def test_output_folder_rule(upstream, tmp_path, capsys):
    """--output: an existing file is one line; a previous run is replaced only with --overwrite, and then exactly the
    files its manifest lists go (a re-run with fewer sources leaves none of the old ones); a folder of other files
    is refused, and with --overwrite written beside them; the manifest, the grid and the files agree."""
    base = ["--weights", str(upstream["out"]), "--cache-dir", str(upstream["dir"] / "cache"), "--batch-size",
            str(BATCH), "--text", "Bald", "--seed", "1"]
    a_file = tmp_path / "passwd"
    a_file.write_text("root:x:0:0\n")
    assert run_cli(edit_cli.main, base + ["--random", "1", "--output", str(a_file)]) == 2
    assert "is a file, expected a folder" in _last_error(capsys) and a_file.read_text() == "root:x:0:0\n"

    out = tmp_path / "out"
    assert run_cli(edit_cli.main, base + ["--random", "4", "--output", str(out)]) == 0
    first = json.loads((out / "ffclip-run.json").read_text())
    assert first["tool"] == "edit" and set(first["files"]) | {"ffclip-run.json"} == set(os.listdir(out))
    assert {"random0003__Bald__1.png", "grid.png"} <= set(first["files"])
    assert run_cli(edit_cli.main, base + ["--random", "1", "--output", str(out)]) == 2
    msg = _last_error(capsys)
    assert "holds a previous run" in msg and "--overwrite" in msg
    assert set(os.listdir(out)) == set(first["files"]) | {"ffclip-run.json"}  # refused: nothing touched
    (out / "mine.txt").write_text("keep me")
    assert run_cli(edit_cli.main, base + ["--random", "1", "--output", str(out), "--overwrite"]) == 0
    second = json.loads((out / "ffclip-run.json").read_text())
    assert sorted(second["files"]) == ["grid.png", "random0000__Bald__1.png", "random0000__reconstruction.png"]
    assert set(os.listdir(out)) == set(second["files"]) | {"ffclip-run.json", "mine.txt"}
    assert Image.open(out / "grid.png").size[1] < 2 * 128  # one row of 128 px cells (16 px images enlarged)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert run_cli(edit_cli.main, base + ["--random", "1", "--output", str(foreign)]) == 2
    assert "file(s) of no ffclip run" in _last_error(capsys) and os.listdir(foreign) == ["notes.txt"]
    assert run_cli(edit_cli.main, base + ["--random", "1", "--output", str(foreign), "--overwrite"]) == 0
    assert (foreign / "notes.txt").read_text() == "mine" and (foreign / "grid.png").is_file()


def test_edit_align_reads_a_photo_stored_rotated(upstream, predictor_path, drawn_photos, tmp_path, capsys):
    """`ffclip edit --align` on a photo whose pixels are stored rotated with an EXIF orientation tag edits the photo
    as displayed: the same files as for the upright photo (without the tag the face is not found)."""
    photos, _, _ = drawn_photos
    upright = np.asarray(Image.open(photos / "one.png"))
    rotated = tmp_path / "rotated"
    rotated.mkdir()
    save_rotated(rotated / "one.png", upright, orientation=6)
    base = ["--weights", str(upstream["out"]), "--cache-dir", str(upstream["dir"] / "cache"), "--batch-size",
            str(BATCH), "--text", "Bald", "--align", predictor_path, "--save-latents"]
    assert run_cli(edit_cli.main, base + ["--images", str(photos / "one.png"), "--output", str(tmp_path / "a")]) == 0
    assert run_cli(edit_cli.main, base + ["--images", str(rotated / "one.png"), "--output", str(tmp_path / "b")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "b" / "latents.npy"), np.load(tmp_path / "a" / "latents.npy"))
    for name in ("one__Bald__1.png", "one__reconstruction.png"):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b" / name)),
                                      np.asarray(Image.open(tmp_path / "a" / name)))
    Image.fromarray(np.rot90(upright)).save(rotated / "untagged.png")  # the same pixels, no tag: no face upright
    capsys.readouterr()
    assert run_cli(edit_cli.main, base + ["--images", str(rotated / "untagged.png"), "--output",
                                          str(tmp_path / "c")]) == 2
    assert "no face found" in _last_error(capsys)
