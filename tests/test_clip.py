"""CLIP: converter (state dict, TorchScript, fp16, transformers dir), features/logits parity with a PyTorch OpenAI-CLIP
oracle, FFCLIP's CLIP and embedding losses with gradients, the prompt-embedding cache, bad inputs."""
import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from convert_weights.__main__ import main as convert_main
from ffclip_jax import losses
from ffclip_jax.models import clip as fclip
from ffclip_jax.text import embeddings
from ffclip_jax.text.embeddings import encode_text, prompt_embeddings
from ffclip_jax.weights import pretrained
from ffclip_jax.errors import CheckpointError, ConversionError, InputError
from ffclip_jax.text.tokenizer import tokenize
from torch_ref import clip as tref
from parity import ROOT, U32, assert_float32_parity, float64_copy, nhwc

PROMPTS = ["Bald", "Blue eyes", "Taylor Swift", "a face with curly hair and a beard, smiling!"]


def openai_kwargs(config):
    return {k: v for k, v in config.items() if k != "vision_heads"}  # OpenAI derives heads as width // 64


@functools.lru_cache(maxsize=None)
def features_and_logits(module):
    """jit of (encode_text(ids), encode_image(images), logits_per_image) for one model."""
    def f(variables, images, ids):
        text = module.apply(variables, ids, method=fclip.CLIP.encode_text)
        return text, fclip.encode_image((module, variables), images), module.apply(variables, images, ids)[0]
    return jax.jit(f)


def convert(*args):
    convert_main(["clip", *map(str, args)])


def openai_features(model, images, ids):
    """(encode_text, encode_image, logits_per_image) of the torch OpenAI-CLIP oracle in its parameters' dtype."""
    dtype = model.logit_scale.dtype
    with torch.no_grad():
        text = torch.from_numpy(ids).long()
        return (model.encode_text(text).numpy(), model.encode_image(images.to(dtype)).numpy(),
                model(images.to(dtype), text)[0].numpy())


@pytest.fixture(scope="module")
def torch_model():
    torch.manual_seed(0)
    return tref.randomize_(tref.CLIP(**openai_kwargs(fclip.tiny_config()))).eval()


@pytest.fixture(scope="module")
def converted(torch_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    torch.save(torch_model.state_dict(), d / "sd.pt")
    convert("--input", d / "sd.pt", "--output", d / "out")
    return d, pretrained.load(d / "out")


def test_features_and_logits_match_torch(torch_model, converted):
    _, clip = converted
    module, variables = clip
    assert module.config.projection_dim == 64
    ids = tokenize(PROMPTS)
    torch.manual_seed(1)
    images = torch.rand(3, 3, 224, 224) * 2 - 1
    want, truth = openai_features(torch_model, images, ids), openai_features(float64_copy(torch_model), images, ids)
    got = features_and_logits(module)(variables, nhwc(images), ids)
    for name, ours, theirs, exact in zip(("text", "image", "logits"), got, want, truth):
        assert_float32_parity(ours, theirs, exact, name)
    assert_float32_parity(encode_text(clip, PROMPTS[:3]), want[0][:3], truth[0][:3], "text, padded batch")
    assert_float32_parity(encode_text(clip, PROMPTS, batch_size=2), want[0], truth[0], "text, two batches")


def test_output_loads_in_transformers_flax_clip(converted):
    from transformers import FlaxCLIPModel

    d, clip = converted
    hf, params = FlaxCLIPModel.from_pretrained(d / "out", _do_init=False)
    jax.tree.map(np.testing.assert_array_equal, params, clip[1]["params"])
    meta = json.loads((d / "out" / "model.json").read_text())
    assert meta["model"] == "clip" and meta["config"] == fclip.tiny_config()
    assert meta["extra"]["weights_sha256"] == pretrained.sha256_file(str(d / "out" / pretrained.CLIP_WEIGHTS))


def test_torchscript_archive_via_cli_and_fp16_state_dict(torch_model, converted, tmp_path):
    d, clip = converted
    torch.jit.script(torch_model).save(str(tmp_path / "ViT-tiny.pt"))
    cmd = [sys.executable, "-m", "convert_weights", "clip", "--input", str(tmp_path / "ViT-tiny.pt"),
           "--output", str(tmp_path / "ts")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "wrote clip" in done.stdout
    _, from_script = pretrained.load(tmp_path / "ts")
    jax.tree.map(np.testing.assert_array_equal, from_script, clip[1])

    half = {k: v.half() if v.is_floating_point() else v for k, v in torch_model.state_dict().items()}
    torch.save(half, tmp_path / "half.pt")
    convert("--input", tmp_path / "half.pt", "--output", tmp_path / "fp16")
    _, from_half = pretrained.load(tmp_path / "fp16")
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(from_half))
    q = from_half["params"]["text_model"]["encoder"]["layers"]["1"]["self_attn"]["q_proj"]["kernel"]
    width = q.shape[0]
    want = half["transformer.resblocks.1.attn.in_proj_weight"][:width].float().numpy().T
    np.testing.assert_array_equal(q, want)


def test_transformers_torch_directory(tmp_path):
    from transformers import CLIPModel, FlaxCLIPModel

    cfg = fclip.tiny_config()
    torch.manual_seed(2)
    hf = CLIPModel(fclip.hf_config(cfg)).eval()
    hf.save_pretrained(tmp_path / "hf")
    convert("--input", tmp_path / "hf", "--output", tmp_path / "out")
    clip = pretrained.load(tmp_path / "out")
    ids = tokenize(PROMPTS)
    images = torch.rand(3, 3, 224, 224)

    def hf_features(model, dtype):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # transformers builds its causal mask in the default dtype
        try:
            with torch.no_grad():
                text, pixels = torch.from_numpy(ids).long(), images.to(dtype)
                return (model.get_text_features(input_ids=text).numpy(),
                        model.get_image_features(pixel_values=pixels).numpy(),
                        model(input_ids=text, pixel_values=pixels).logits_per_image.numpy())
        finally:
            torch.set_default_dtype(previous)
    got = features_and_logits(clip[0])(clip[1], nhwc(images), ids)
    for name, ours, theirs, exact in zip(("text", "image", "logits"), got, hf_features(hf, torch.float32),
                                         hf_features(float64_copy(hf), torch.float64)):
        assert_float32_parity(ours, theirs, exact, f"transformers {name}")
    hf_flax, params = FlaxCLIPModel.from_pretrained(tmp_path / "out", _do_init=False)
    assert hf_flax.config.projection_dim == cfg["embed_dim"]


def _torch_loss_and_grad(loss_fn, image, dtype):
    """(per-sample loss, d sum(loss) / d image NHWC) of a torch loss of an NCHW image, in `dtype`."""
    image = image.to(dtype).requires_grad_(True)
    loss = loss_fn(image)
    (grad,) = torch.autograd.grad(loss.sum(), image)
    return loss.detach().numpy(), nhwc(grad)


def _loss_vs_torch(torch_model, clip, size, scale, kernel, batch=2):
    torch.manual_seed(3)
    ids = tokenize(PROMPTS[:batch])
    image = torch.rand(batch, 3, size, size) * 2 - 1
    text = torch.from_numpy(ids).long()
    model64 = float64_copy(torch_model)
    (want, want_grad), (exact, exact_grad) = (
        _torch_loss_and_grad(lambda im: tref.clip_loss(model, im, text, scale, kernel), image, dtype)
        for model, dtype in ((torch_model, torch.float32), (model64, torch.float64)))
    module, variables = clip
    x = jnp.asarray(nhwc(image))
    loss_fn = jax.jit(lambda v, im, text: losses.clip_loss((module, v), im, text))
    value_and_grad = jax.jit(jax.value_and_grad(lambda v, im, text: loss_fn(v, im, text).sum(), argnums=1))
    total, grad = value_and_grad(variables, x, ids)
    assert_float32_parity(total, want.sum(), exact.sum(), "clip loss")
    assert_float32_parity(grad, want_grad, exact_grad, "clip loss gradient")
    features = encode_text(clip, PROMPTS)[:batch, None]  # (B, 1, E), as upstream's datasets store them
    assert_float32_parity(loss_fn(variables, x, features), want, exact, "clip loss from stored text features")


def test_clip_loss_and_gradient_match_torch(torch_model, converted):
    # 64 px: nearest x7 -> 448 -> AvgPool2d(2) -> 224, the same separable path as upstream's 1024 -> 7168 -> pool 32
    _loss_vs_torch(torch_model, converted[1], size=64, scale=7, kernel=2)


def test_embedding_loss_and_gradient_match_torch(torch_model, converted):
    clip = converted[1]
    torch.manual_seed(4)
    x = torch.rand(2, 3, 48, 48) * 2 - 1
    x_hat = torch.rand(2, 3, 48, 48) * 2 - 1
    model64 = float64_copy(torch_model)
    (want, want_grad), (exact, exact_grad) = (
        _torch_loss_and_grad(lambda im: tref.embedding_loss(model, x.to(dtype), im), x_hat, dtype)
        for model, dtype in ((torch_model, torch.float32), (model64, torch.float64)))
    module, variables = clip
    fn = jax.jit(jax.value_and_grad(lambda v, a, b: losses.embedding_loss((module, v), a, b), argnums=2))
    got, grad = fn(variables, jnp.asarray(nhwc(x)), jnp.asarray(nhwc(x_hat)))
    assert_float32_parity(got, want, exact, "embedding loss")
    assert_float32_parity(grad, want_grad, exact_grad, "embedding loss gradient")


def test_normalize_option_applies_clip_mean_std():
    images = np.array([[[[-1.0, 0.0, 1.0]]]], np.float32)
    want = ((images.astype(np.float64) + 1) / 2 - np.array(fclip.MEAN)) / np.array(fclip.STD)
    # float32: 4 roundings of magnitudes <= 1 before the division by std (>= 0.26), one after it
    np.testing.assert_allclose(fclip.standardize(jnp.asarray(images)), want, rtol=0,
                               atol=5 * U32 / min(fclip.STD) + U32 * np.abs(want).max())


def test_prompt_embeddings_cached_on_disk(converted, tmp_path, monkeypatch):
    d, clip = converted
    table = prompt_embeddings(str(d / "out"), PROMPTS, cache_dir=str(tmp_path), clip=clip)
    np.testing.assert_array_equal(table, encode_text(clip, PROMPTS))
    assert len(list(tmp_path.glob("clip_text_*.npz"))) == 1
    monkeypatch.setattr(embeddings, "encode_text", lambda *a, **k: pytest.fail("recomputed a cached table"))
    np.testing.assert_array_equal(prompt_embeddings(str(d / "out"), PROMPTS, cache_dir=str(tmp_path)), table)
    monkeypatch.undo()
    other = prompt_embeddings(str(d / "out"), PROMPTS[:3], cache_dir=str(tmp_path), clip=clip)
    assert other.shape == (3, 64) and len(list(tmp_path.glob("clip_text_*.npz"))) == 2
    assert not list(tmp_path.glob(".clip_text_*"))


# ---------------------------------------------------------------------------------------------------------------
# bad input


def _one_line_error(cls, *args):
    with pytest.raises(cls) as e:
        convert(*args)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_files_are_one_line_errors(torch_model, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    msg = _one_line_error(CheckpointError, "--input", garbage, "--output", tmp_path / "o1")
    assert "TorchScript" in msg and "garbage.pt" in msg

    torch.save({"g_ema": {"style.1.weight": torch.zeros(4, 4)}, "latent_avg": torch.zeros(4)}, tmp_path / "sg.pt")
    msg = _one_line_error(CheckpointError, "--input", tmp_path / "sg.pt", "--output", tmp_path / "o2")
    assert "stylegan2 checkpoint" in msg and "convert_weights stylegan2" in msg

    torch.jit.script(torch.nn.Linear(3, 4)).save(str(tmp_path / "linear.pt"))
    msg = _one_line_error(ConversionError, "--input", tmp_path / "linear.pt", "--output", tmp_path / "o3")
    assert "not a CLIP ViT state dict" in msg

    sd = {k: v for k, v in torch_model.state_dict().items() if k != "ln_final.bias"}
    torch.save(sd, tmp_path / "partial.pt")
    msg = _one_line_error(ConversionError, "--input", tmp_path / "partial.pt", "--output", tmp_path / "o4")
    assert "final_layer_norm/bias" in msg
    assert not any(p.name.startswith(("o1", "o2", "o3", "o4")) for p in tmp_path.iterdir()), "partial output left"


def test_bad_text_and_images_are_one_line_errors(converted):
    clip = converted[1]
    images = jnp.zeros((2, 64, 64, 3))
    for text, match in [(jnp.zeros((2, 512)), r"\(B, 64\)"), (jnp.zeros((3, 64)), "3 prompts for 2 images"),
                        (np.zeros((2, 10), np.int32), r"\(B, 77\)")]:
        with pytest.raises(InputError, match=match) as e:
            losses.clip_loss(clip, images, text)
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="multiple of 32"):
        losses.clip_loss(clip, jnp.zeros((2, 100, 100, 3)), jnp.zeros((2, 64)))
    with pytest.raises(InputError, match="NHWC"):
        losses.embedding_loss(clip, jnp.zeros((2, 3, 64, 64)), jnp.zeros((2, 3, 64, 64)))
    with pytest.raises(InputError, match="empty"):
        encode_text(clip, ["Bald", " "])
    with pytest.raises(InputError, match="no prompts"):
        prompt_embeddings("unused", [])


# ---------------------------------------------------------------------------------------------------------------
# full size


@pytest.mark.slow
def test_vit_b_32_full_size_parity_and_upstream_loss(tmp_path):
    torch.manual_seed(0)
    model = tref.randomize_(tref.CLIP(**tref.VIT_B_32)).eval()
    torch.jit.script(model).save(str(tmp_path / "ViT-B-32.pt"))
    convert("--input", tmp_path / "ViT-B-32.pt", "--output", tmp_path / "out")
    clip = pretrained.load(tmp_path / "out")
    assert clip[0].config.projection_dim == 512
    assert json.loads((tmp_path / "out" / "model.json").read_text())["config"] == fclip.vit_b_32_config()
    ids = tokenize(PROMPTS)
    images = torch.rand(2, 3, 224, 224) * 2 - 1
    got = features_and_logits(clip[0])(clip[1], nhwc(images), ids)
    for name, ours, theirs, exact in zip(("text", "image", "logits"), got, openai_features(model, images, ids),
                                         openai_features(float64_copy(model), images, ids)):
        assert_float32_parity(ours, theirs, exact, f"ViT-B/32 {name}")
    _loss_vs_torch(model, clip, size=1024, scale=7, kernel=32, batch=1)  # literal Upsample(7) + AvgPool2d(32)
