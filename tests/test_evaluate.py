"""Evaluation metrics (ffclip_jax.metrics), the report (ffclip_jax.report), `ffclip evaluate` and `ffclip report` on
tiny random weights. Metrics are checked on known pairs with stand-in networks whose outputs are computable by hand; the CLI
runs on a tiny weights directory (32px generator, tiny CLIP, UNet, MoCo; an L2-normalised channel-mean stand-in for
ArcFace, whose IR-SE50 is too slow to compile in the default suite; the real one runs in the slow test)."""
import dataclasses
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffclip_jax import metrics, report
from ffclip_jax.cli import evaluate as evaluate_cli
from ffclip_jax.cli import report as report_cli
from ffclip_jax.errors import FFCLIPError, run_cli
from ffclip_jax.models import clip
from ffclip_jax.weights import pretrained, registry
from ffclip_jax.weights.clip_dir import save_clip
from parity import ROOT, U32


class ChannelMean(nn.Module):
    """Stand-in for ArcFace / MoCo: the L2-normalised per-channel means of the image, (B, H, W, 3) -> (B, 3)."""
    input_size: int = 112

    @nn.compact
    def __call__(self, x):
        f = jnp.mean(x, axis=(1, 2)) * self.param("scale", nn.initializers.ones, (3,))
        return f / jnp.linalg.norm(f, axis=-1, keepdims=True)


class RedIsHair(nn.Module):
    """Stand-in face parser: class 13 (hair) where the red channel is > 0, else class 0, (B, H, W, 19) logits."""

    @nn.compact
    def __call__(self, x):
        hair = (x[..., 0] > 0).astype(x.dtype)
        return jax.nn.one_hot(jnp.where(hair > 0, 13, 0), 19) * self.param("scale", nn.initializers.ones, ())


def _net(module, example):
    return module, module.init(jax.random.PRNGKey(0), example)


def _jit(fn, net):
    """jit of fn(net, *arrays) with the network's variables as an argument."""
    module, variables = net
    return lambda *args: jax.jit(lambda v, *a: fn((module, v), *a))(variables, *args)


def _const(color, size=32):
    return jnp.broadcast_to(jnp.asarray(color, jnp.float32), (1, size, size, 3))


# ---------------------------------------------------------------------------------------------------------------
# metrics on known pairs


def test_clip_preprocess_matches_openai_pil_path():
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w, res = 80, 96, 40
    base = rng.random((h // 8, w // 8, 3))
    img = np.asarray(Image.fromarray((base * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR))
    # OpenAI's preprocess: Resize(res, BICUBIC) of the shorter side on a PIL image, CenterCrop(res)
    (rh, rw), (top, left) = metrics.clip_crop_geometry(h, w, res)
    assert (rh, rw) == (40, 48) and (top, left) == (0, 4)
    ref = np.asarray(Image.fromarray(img).resize((rw, rh), Image.BICUBIC))[top:top + res, left:left + res]
    ours = metrics.clip_preprocess(jnp.asarray(img[None] / 127.5 - 1.0, jnp.float32), res)[0]
    diff = np.abs((np.asarray(ours) + 1) * 127.5 - ref)
    assert ours.shape == (res, res, 3)
    assert diff.max() <= 1.0 and diff.mean() < 0.35, (diff.max(), diff.mean())  # PIL rounds to uint8


def test_clip_score_known_values():
    f = jnp.asarray([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    t = jnp.asarray([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    # 100 x a cosine of 2-vectors: ~10 float32 roundings of values <= 100 (6e-5); 1e-4 is 16 of them
    np.testing.assert_allclose(metrics.clip_score(f, t), [100.0, 100 / math.sqrt(2), 0.0], atol=16 * 100 * U32)


def test_masked_mse_and_psnr_of_a_constant_offset():
    x = np.zeros((1, 8, 8, 3), np.float32)
    y = x + 0.2  # 0.1 in [0, 1] units on every channel
    full = np.ones((1, 8, 8, 1), np.float32)
    half = full.copy()
    half[:, 4:] = 0.0
    y_outside = x.copy()
    y_outside[:, 4:] += 0.6  # changes only where the mask is 0
    mse = jax.jit(jax.vmap(metrics.masked_mse))(np.stack([x, x, x, x]), np.stack([y, y_outside, x, y]),
                                                np.stack([full, half, full, 0 * full]))[:, 0]
    # a masked mean of 192 float32 squares: at most (192 + 4) roundings of the result (Higham); PSNR = 10 log10(1 /
    # mse) moves by 10 / ln 10 times mse's relative error, plus its own few roundings
    mse_rtol = 196 * U32
    np.testing.assert_allclose(mse[:3], [0.01, 0.0, 0.0], rtol=mse_rtol)
    assert np.isnan(mse[3])
    np.testing.assert_allclose(metrics.psnr(mse[:3]), [20.0, metrics.PSNR_MAX, metrics.PSNR_MAX], rtol=0,
                               atol=10 / math.log(10) * mse_rtol + 8 * 100 * U32)


def test_latent_change_known_values():
    w = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 8)), jnp.float32)
    out = metrics.latent_change(w, w + jnp.asarray([0.5, -2.0])[:, None, None])
    # w + c and its difference with w: 2 roundings of |w| + |c| (<= 6) per element, then a mean (or a root sum of
    # squares) of 32 terms: <= 32 + 4 roundings of the result
    np.testing.assert_allclose(out["latent_mean_abs"], [0.5, 2.0], rtol=36 * U32, atol=2 * 6 * U32)
    np.testing.assert_allclose(out["latent_l2"], [0.5 * math.sqrt(32), 2.0 * math.sqrt(32)], rtol=36 * U32,
                               atol=2 * 6 * U32 * math.sqrt(32))
    with pytest.raises(FFCLIPError):
        metrics.latent_change(w, w[:, :3])


def test_identity_and_moco_similarity_known_pairs():
    arcface = _net(ChannelMean(), jnp.zeros((1, 112, 112, 3)))
    x, x_hat = _const([0.5, 0.5, 0.5]), _const([0.5, -0.5, 0.5])
    a, b = jnp.concatenate([x, x]), jnp.concatenate([x, x_hat])
    # constant images stay constant through the crops, pools and resizes: cos((1,1,1), (1,-1,1)) = 1/3
    # averages of constant images are exact up to a few roundings; the cosine of 3-vectors ~10 more: 1e-5 is 160
    np.testing.assert_allclose(_jit(metrics.identity_similarity, arcface)(a, b), [1, 1 / 3], rtol=160 * U32)
    np.testing.assert_allclose(_jit(metrics.moco_similarity, arcface)(a, b), [1, 1 / 3], rtol=160 * U32)


def test_background_metrics_known_pair():
    parsenet = _net(RedIsHair(), jnp.zeros((1, 32, 32, 3)))
    x = _const([-0.5, 0.0, 0.0]).at[:, :16, :, 0].set(0.5)  # hair (red > 0) in the top half
    x_hat = x.at[:, :16].add(0.4).at[:, 16:, :, 1:].add(0.2)  # hair changed; background green/blue +0.1 in [0, 1]
    out = _jit(metrics.background_metrics, parsenet)(jnp.concatenate([x, x]), jnp.concatenate([x, x_hat]))
    np.testing.assert_allclose(out["background_fraction"], [0.5, 0.5])  # a count of half the pixels: exact
    # a masked mean of 32 x 32 x 3 float32 squares: <= 3072 + 4 roundings (Higham's bound for sums of positive terms)
    mse_rtol = 3076 * U32
    np.testing.assert_allclose(out["background_mse"], [0.0, 0.02 / 3], rtol=mse_rtol)
    np.testing.assert_allclose(out["background_psnr"], [metrics.PSNR_MAX, 10 * math.log10(3 / 0.02)], rtol=0,
                               atol=10 / math.log(10) * mse_rtol + 8 * 100 * U32)


def test_composition_pairs_are_deterministic_and_skip_conflicts():
    prompts = ["Blue hair", "Pink hair", "wearing glasses", "Bald", "Man Aged 10", "Man Aged 80", "Bald", "Sad"]
    a = metrics.composition_pairs(prompts, 4, seed=3)
    assert a == metrics.composition_pairs(prompts, 4, seed=3) and len(a) == 4
    assert a != metrics.composition_pairs(prompts, 4, seed=4)
    every = metrics.composition_pairs(prompts, 100, seed=0)
    assert ("Blue hair", "Pink hair") not in every and ("Man Aged 10", "Man Aged 80") not in every
    assert len(every) == len(set(every)) == 19 and all(p != q for p, q in every)  # 21 pairs of 7, 2 share a word
    assert metrics.compose(("Blue hair", "wearing glasses")) == "Blue hair, wearing glasses"
    with pytest.raises(FFCLIPError, match="no composable"):
        metrics.composition_pairs(["Blue hair", "Pink hair"], 3, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# report


def test_report_files(tmp_path):
    entries = [{"prompt": "Bald", "kind": "single", "parts": ["Bald"]},
               {"prompt": "Bald, Sad", "kind": "composition", "parts": ["Bald", "Sad"]}]
    rng = np.random.default_rng(0)
    results = {k: rng.random((2, 3)) for k in metrics.metric_names(face=True)}
    results["background_mse"][0, 1] = np.nan  # no background pixels: reported as null, skipped in means
    results["clip_score_parts"] = rng.random((2, 3, 2))
    rep = report.build_report(entries, results, [0, 1, 2], {"domain": "face", "seed": 0})
    out = tmp_path / "report"
    files = report.write_report(str(out), rep, results)
    assert sorted(os.listdir(out)) == sorted(files) == sorted(
        ["report.json", "report.md", "per_prompt.png", "clip_vs_identity.png"])
    data = json.loads((out / "report.json").read_text())
    assert data["per_example"]["background_mse"][0][1] is None
    assert data["prompts"][0]["stats"]["background_mse"]["count"] == 2
    # means of the same float64 numbers, through JSON (repr round-trips): float64 rounding only, far below 1e-7
    np.testing.assert_allclose(data["prompts"][0]["stats"]["background_mse"]["mean"],
                               np.mean(results["background_mse"][0, [0, 2]]))
    np.testing.assert_allclose(data["overall"]["composition"]["clip_score_parts_min"]["mean"],
                               results["clip_score_parts"][1].min(axis=-1).mean())
    md = (out / "report.md").read_text()
    assert "| Bald |" in md and "| Bald, Sad |" in md and md.count("**overall**") == 2
    for png in ("per_prompt.png", "clip_vs_identity.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FFCLIPError, match="already exists"):
        report.write_report(str(out), rep, results)
    assert sorted(os.listdir(tmp_path)) == ["report"]  # no temporary left behind


# ---------------------------------------------------------------------------------------------------------------
# the CLI on tiny weights

N_LATENTS = 3


def random_variables(module, seed, *example):
    """Random variables of the shapes `module.init` gives, filled in numpy (a jitted init of these networks takes
    minutes to compile on a small CPU): (fan-in scaled) normal weights, unit scales and variances, CLIP's
    logit_scale log(100)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *example)

    def fill(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "logit_scale":
            return np.full(s.shape, np.log(100.0), s.dtype)
        if name in ("scale", "running_var") or (name == "weight" and len(s.shape) == 1):
            return np.ones(s.shape, s.dtype)
        if len(s.shape) < 2:
            return (0.1 * rng.standard_normal(s.shape)).astype(s.dtype)
        return (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(s.dtype)
    return jax.tree_util.tree_map_with_path(fill, shapes)


def _save(directory, model, module, config, seed, *example):
    pretrained.save(str(directory), model, config, random_variables(module, seed, *example))


def _save_clip(directory, seed):
    config = clip.tiny_config()
    variables = random_variables(clip.build(config), seed, jnp.zeros((1, 224, 224, 3)), jnp.zeros((1, 77), jnp.int32))
    save_clip(str(directory), config, variables)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A weights directory (manifest.json) with every network, plus matching and mismatched latents."""
    from ffclip_jax import tiny
    from ffclip_jax.models.mapper import DynamicMapper
    from ffclip_jax.models.moco import ResNet50
    from ffclip_jax.models.parsenet import UNet
    from ffclip_jax.models.stylegan2 import Generator

    root = tmp_path_factory.mktemp("eval")
    gen = Generator(**tiny.GENERATOR)
    w = jnp.zeros((1, gen.n_latent, gen.style_dim))
    _save(root / "generator", "stylegan2", gen, tiny.GENERATOR, 0, w[:, 0])
    mapper_config = dict(n_latent=gen.n_latent, style_dim=gen.style_dim, num_blocks=1)
    _save(root / "mapper", "ffclip_mapper", DynamicMapper(**mapper_config), mapper_config, 1, w, w[:, 0])
    _save(root / "parsenet", "parsenet", UNet(**tiny.PARSENET), tiny.PARSENET, 2, jnp.zeros((1, 32, 32, 3)))
    _save(root / "moco", "moco", ResNet50(**tiny.MOCO), tiny.MOCO, 3, jnp.zeros((1, 64, 64, 3)))
    _save(root / "arcface", "arcface", ChannelMean(), {"input_size": 112}, 4, jnp.zeros((1, 112, 112, 3)))
    _save_clip(root / "clip", 5)
    names = ("mapper", "generator", "clip", "arcface", "parsenet", "moco")
    weights = root / "weights"
    weights.mkdir()
    (weights / "manifest.json").write_text(json.dumps(
        {"format": pretrained.FORMAT, "networks": {n: f"../{n}" for n in names}}))
    only_mapper = root / "weights_no_metrics"
    only_mapper.mkdir()
    (only_mapper / "manifest.json").write_text(json.dumps(
        {"format": pretrained.FORMAT, "networks": {n: f"../{n}" for n in names[:3]}}))
    rng = np.random.default_rng(0)
    np.save(root / "latents.npy", rng.normal(size=(N_LATENTS, gen.n_latent, gen.style_dim)).astype(np.float32))
    np.save(root / "bad_latents.npy", np.zeros((2, gen.n_latent + 1, gen.style_dim), np.float32))
    (root / "prompts.txt").write_text("# test prompts\nBlue hair\nwearing glasses\nBlue hair\nSad\n")
    (root / "empty.txt").write_text("# only a comment\n\n")
    return root


@pytest.fixture
def stub_arcface(monkeypatch):
    monkeypatch.setitem(registry.MODELS, "arcface",
                        dataclasses.replace(registry.MODELS["arcface"], target=f"{__name__}:ChannelMean"))


def _run(root, out, *extra):
    evaluate_cli.main(["--weights", str(root / "weights"), "--latents", str(root / "latents.npy"),
                       "--prompts", str(root / "prompts.txt"), "--output", str(out),
                       "--cache-dir", str(root / "cache"), "--batch-size", "2", *extra])
    return json.loads((out / "report.json").read_text())


def test_cli_face_report_with_compositions(tiny_weights, stub_arcface, tmp_path):
    out = tmp_path / "report"
    data = _run(tiny_weights, out, "--compositions", "--num-compositions", "2", "--seed", "1", "--limit", "2")
    assert sorted(os.listdir(out)) == ["clip_vs_identity.png", "per_prompt.png", "report.json", "report.md"]
    prompts = [p["prompt"] for p in data["prompts"]]
    assert prompts[:3] == ["Blue hair", "wearing glasses", "Sad"]  # duplicates evaluated once
    pairs = [tuple(p["parts"]) for p in data["prompts"] if p["kind"] == "composition"]
    assert pairs == metrics.composition_pairs(["Blue hair", "wearing glasses", "Sad"], 2, seed=1)
    assert data["latent_indices"] == [0, 1] and data["meta"]["domain"] == "face"
    for name in metrics.metric_names(face=True):
        values = np.asarray(data["per_example"][name], float)
        assert values.shape == (5, 2) and np.isfinite(values).all(), name
    ex = data["per_example"]
    # CLIP scores are 100 x a cosine (<= 100): their float32 difference rounds by <= 100 u = 6e-6
    np.testing.assert_allclose(np.asarray(ex["clip_score"]) - ex["clip_score_source"], ex["clip_score_delta"],
                               rtol=0, atol=2 * 100 * U32)
    assert np.all(np.asarray(ex["latent_mean_abs"]) > 0)
    parts = np.asarray(ex["clip_score_parts"], float)
    assert parts.shape == (5, 2, 2) and np.isnan(parts[:3, :, 1]).all() and np.isfinite(parts[3:]).all()
    # a single prompt is its own part, scored in another batch: the same features up to float32 rounding (~1e-6
    # relative, test_clip) move a score of <= 100 by ~1e-4; 1e-3 leaves 10x
    np.testing.assert_allclose(parts[:3, :, 0], ex["clip_score"][:3], rtol=0, atol=1e-3)
    # deterministic: the same run gives the same numbers
    again = _run(tiny_weights, out, "--compositions", "--num-compositions", "2", "--seed", "1", "--limit", "2",
                 "--force")
    assert again["per_example"] == data["per_example"]


def test_cli_zero_strength_is_a_perfect_preservation(tiny_weights, stub_arcface, tmp_path):
    """Strength 0: the edit is the source image: identity 1, no background error, no CLIP change, no latent change."""
    ex = _run(tiny_weights, tmp_path / "r", "--strength", "0", "--limit", "2")["per_example"]
    # cos(f, f) of 3-dim stand-in features: ~10 roundings of 1; identical pixels: exactly no error, no change
    np.testing.assert_allclose(ex["identity"], 1.0, rtol=0, atol=16 * U32)
    np.testing.assert_allclose(ex["background_mse"], 0.0, atol=0)
    np.testing.assert_allclose(ex["background_psnr"], metrics.PSNR_MAX)
    # the same pixels in another batch row: CLIP features equal to float32 rounding (~1e-6 relative, test_clip),
    # so the score (100 x cosine) to ~1e-4
    np.testing.assert_allclose(ex["clip_score_delta"], 0.0, atol=1e-4)
    np.testing.assert_allclose(ex["latent_l2"], 0.0, atol=0)


def test_cli_other_domain_uses_moco(tiny_weights, tmp_path):
    out = tmp_path / "r"
    data = _run(tiny_weights, out, "--domain", "other", "--limit", "1")
    assert "moco_similarity" in data["metrics"] and "identity" not in data["metrics"]
    assert (out / "clip_vs_moco.png").is_file()
    assert np.isfinite(np.asarray(data["per_example"]["moco_similarity"], float)).all()


def _one_line_error(root, tmp_path, *args):
    with pytest.raises(FFCLIPError) as e:
        evaluate_cli.main(["--cache-dir", str(root / "cache"), "--output", str(tmp_path / "out"), *args])
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
    return str(e.value)


def test_cli_bad_inputs(tiny_weights, tmp_path):
    root = tiny_weights
    base = ["--weights", str(root / "weights"), "--prompts", str(root / "prompts.txt")]
    msg = _one_line_error(root, tmp_path, *base, "--latents", str(root / "bad_latents.npy"))
    assert "bad_latents.npy" in msg and "shape (N, 8, 64) or (8, 64)" in msg and "got float32 (2, 9, 64)" in msg
    msg = _one_line_error(root, tmp_path, "--weights", str(root / "weights_no_metrics"), "--prompts",
                          str(root / "prompts.txt"), "--latents", str(root / "latents.npy"))
    assert "neither arcface + parsenet" in msg
    msg = _one_line_error(root, tmp_path, "--weights", str(root / "weights_no_metrics"), "--prompts",
                          str(root / "prompts.txt"), "--latents", str(root / "latents.npy"), "--domain", "face")
    assert "no ArcFace network" in msg
    msg = _one_line_error(root, tmp_path, *base, "--latents", str(root / "latents.npy"), "--limit", "0")
    assert "--limit" in msg
    (tmp_path / "exists").mkdir()
    with pytest.raises(FFCLIPError, match="already exists"):
        evaluate_cli.main([*base, "--latents", str(root / "latents.npy"), "--output", str(tmp_path / "exists")])


def test_cli_empty_prompt_file_subprocess(tiny_weights, tmp_path):
    root = tiny_weights
    proc = subprocess.run([sys.executable, "-m", "ffclip_jax", "evaluate", "--weights", str(root / "weights"),
                           "--latents", str(root / "latents.npy"), "--prompts", str(root / "empty.txt"),
                           "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "empty.txt: no prompts" in lines[0]
    assert not (tmp_path / "out").exists()


def test_report_cli_compares_reports(tiny_weights, stub_arcface, tmp_path, capsys):
    """`ffclip report` on two evaluations: one row per report of the overall means; strength 0 has no CLIP change."""
    for name, strength in (("s0", "0"), ("s1", "1")):
        _run(tiny_weights, tmp_path / name, "--strength", strength, "--limit", "1")
    capsys.readouterr()
    out = tmp_path / "cmp.md"
    assert run_cli(report_cli.main, [str(tmp_path / "s0"), str(tmp_path / "s1"), "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.read_text() == text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| s")}
    assert set(rows) == {"s0", "s1"} and "Δ CLIP" in text and "identity" in text
    header = next(line for line in text.splitlines() if line.startswith("| report"))
    delta = [c.strip() for c in header.split("|")].index("Δ CLIP")
    assert [c.strip() for c in rows["s0"].split("|")][delta] == "0.000 ± 0.000"
    assert run_cli(report_cli.main, [str(tmp_path / "s0"), str(tmp_path / "nothing")]) == 2
    assert "nothing: no readable report.json" in capsys.readouterr().err


@pytest.mark.slow
def test_real_arcface_identity_of_identical_and_different_images():
    from ffclip_jax.models.arcface import Backbone

    module = Backbone(112, 50, "ir_se")
    arcface = module, random_variables(module, 0, jnp.zeros((1, 112, 112, 3)))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (2, 64, 64, 3)), jnp.float32)
    sim = _jit(metrics.identity_similarity, arcface)(jnp.concatenate([x, x]), jnp.concatenate([x, x[::-1]]))
    np.testing.assert_allclose(sim[:2], 1.0, rtol=0, atol=(512 + 4) * U32)  # cos(f, f) of 512-dim float32 features
    assert np.all(np.abs(sim[2:]) < 1 - 1e-3)  # different images: far from identical (random features: ~0)
