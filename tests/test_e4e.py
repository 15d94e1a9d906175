"""e4e / pSp encoders: a PyTorch reference with random weights and BatchNorm statistics saved in the pSp checkpoint
layout, converted through the CLI, against the Flax encoders (codes, progressive stage, pSp), the generator written
beside it, unit parity of the bilinear align_corners upsample, strided shortcut and PReLU, and bad input."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convert_weights.__main__ import main as convert_main
from convert_weights.common import read_latent_avg
from convert_weights.e4e import encoder_config, latent_avg_for
from ffclip_jax.weights import pretrained
from ffclip_jax.models.e4e import Encoder4Editing, GradualStyleBlock, GradualStyleEncoder
from ffclip_jax.errors import FFCLIPError, run_cli
from ffclip_jax.nn.image_ops import resize_bilinear_align_corners
from ffclip_jax.models.irse import IRBottleneck, unit_specs
from ffclip_jax.nn.layers import PReLU
from torch_ref import irse as ref
from torch_ref.stylegan2 import Generator as TorchGenerator, randomize_ as randomize_generator_
from parity import ROOT, U32, assert_float32_parity, float64_copy, nhwc


def psp_checkpoint(encoder, decoder, latent_avg, opts):
    """The pSp/e4e file layout: {'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg', 'opts'}."""
    sd = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    sd.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    ckpt = {"state_dict": sd, "opts": opts}
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg
    return ckpt


def run_convert(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "convert_weights", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A stylegan_size-32 e4e (8 styles: every tap, both FPN levels) with 64-wide style blocks, 48x64 input (c3 is
    3x4: non-square upsampling), converted by a `python -m convert_weights e4e` subprocess."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.rand(2, 3, 48, 64) * 2 - 1
    enc = ref.randomize_(ref.Encoder4Editing(stylegan_size=32, style_dim=64), calibration=x)
    dec = randomize_generator_(TorchGenerator(32, 64, n_mlp=2)).eval()
    latent_avg = torch.randn(8, 64)
    d = tmp_path_factory.mktemp("e4e")
    torch.save(psp_checkpoint(enc, dec, latent_avg, {"encoder_type": "Encoder4Editing", "stylegan_size": 32,
                                                     "dataset_type": "ffhq_encode"}), d / "e4e.pt")
    r = run_convert("e4e", "--input", str(d / "e4e.pt"), "--output", str(d / "out"), "--input-size", "48", "64")
    assert r.returncode == 0, r.stderr
    psp = ref.GradualStyleEncoder(stylegan_size=32, style_dim=64)
    psp.load_state_dict(enc.state_dict())
    psp.eval()
    refs = {}  # name: (PyTorch's float32 codes, the float64 truth)
    with torch.no_grad():
        for name, net, stage in (("e4e", enc, None), ("psp", psp, None), ("stage4", enc, 4)):
            net64 = float64_copy(net)
            if stage is not None:
                net.progressive_stage = net64.progressive_stage = stage
            refs[name] = ((net(x) + latent_avg).numpy(), (net64(x.double()) + latent_avg.double()).numpy())
    torch.set_num_threads(threads)
    return d, x, refs, dec


def test_config_and_codes(small):
    d, x, refs, _ = small
    module, variables = pretrained.load(str(d / "out"))
    assert isinstance(module, Encoder4Editing)
    assert (module.stylegan_size, module.style_dim, module.input_size, module.n_latent) == (32, 64, (48, 64), 8)
    assert (module.num_layers, module.mode) == (50, "ir_se")
    cfg = {k: getattr(module, k) for k in ("num_layers", "mode", "stylegan_size", "style_dim", "input_size")}
    stage4 = module.clone(progressive_stage=4)
    psp = GradualStyleEncoder(**cfg)  # same parameter tree as e4e

    @jax.jit
    def encode(v, img):
        return module.apply(v, img), stage4.apply(v, img), psp.apply(v, img)

    ours = encode(variables, jnp.asarray(nhwc(x)))
    for name, out in zip(("e4e", "stage4", "psp"), ours):
        assert out.shape == (2, 8, 64) and out.dtype == jnp.float32
        assert_float32_parity(out, *refs[name], f"{name} codes")
    # stage 4: codes 5.. are w0 + latent_avg only: equal to code 0 up to the rounding of adding latent_avg to w0
    # and subtracting it again (2 roundings of the largest magnitude involved)
    latent_avg = np.asarray(variables["buffers"]["latent_avg"])
    w = np.asarray(ours[1]) - latent_avg
    bound = 2 * U32 * max(np.abs(ours[1]).max(), np.abs(latent_avg).max()) * 2
    np.testing.assert_allclose(w[:, 5:], np.repeat(w[:, :1], 3, axis=1), rtol=0, atol=bound)


def test_generator_written_beside(small):
    d, _, _, dec = small
    gen, gv = pretrained.load(str(d / "out" / "generator"))
    assert (gen.size, gen.style_dim, gen.n_mlp) == (32, 64, 2)
    np.testing.assert_array_equal(gv["params"]["style_1"]["weight"], dec.state_dict()["style.1.weight"].numpy().T)
    _, ev = pretrained.load(str(d / "out"))
    np.testing.assert_array_equal(gv["buffers"]["latent_avg"], ev["buffers"]["latent_avg"][0])  # copies


def fake_e4e_state_dict(n_latent=8, style_dim=64):
    """Only the keys the converter reads before converting (24 IR-SE body units, n style blocks, a decoder key)."""
    sd = {f"encoder.body.{i}.res_layer.5.fc1.weight": torch.zeros(1, 1, 1, 1) for i in range(24)}
    sd.update({f"encoder.styles.{i}.linear.weight": torch.zeros(style_dim, style_dim) for i in range(n_latent)})
    sd["decoder.style.1.weight"] = torch.zeros(style_dim, style_dim)
    return sd


def test_missing_latent_avg(small, tmp_path):
    d = small[0]
    torch.save({"state_dict": fake_e4e_state_dict(), "opts": {"encoder_type": "Encoder4Editing"}},
               tmp_path / "nolat.pt")
    with pytest.raises(FFCLIPError, match=r"no 'latent_avg'.*--latent-avg-from GENERATOR_DIR"):
        convert_main(["e4e", "--input", str(tmp_path / "nolat.pt"), "--output", str(tmp_path / "o")])
    with pytest.raises(FFCLIPError, match="holds model 'e4e', expected a converted stylegan2"):
        convert_main(["e4e", "--input", str(tmp_path / "nolat.pt"), "--output", str(tmp_path / "o"),
                      "--latent-avg-from", str(d / "out")])
    assert not (tmp_path / "o").exists()
    _, gv = pretrained.load(str(d / "out" / "generator"))
    np.testing.assert_array_equal(read_latent_avg(str(d / "out" / "generator")), gv["buffers"]["latent_avg"])


def test_wrong_checkpoint_kind(tmp_path, capsys):
    torch.save({"g_ema": {"style.1.weight": torch.zeros(4, 4)}, "latent_avg": torch.zeros(4)}, tmp_path / "sg.pt")
    assert run_cli(convert_main, ["e4e", "--input", str(tmp_path / "sg.pt"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stylegan2 checkpoint, not e4e" in err and "convert_weights stylegan2" in err
    torch.save({"model": {"a": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(FFCLIPError, match="no 'state_dict' entry"):
        convert_main(["e4e", "--input", str(tmp_path / "other.pt"), "--output", str(tmp_path / "o")])
    torch.save({"state_dict": {"encoder.x": torch.zeros(1), "decoder.y": torch.zeros(1)},
                "opts": {"encoder_type": "BackboneEncoderUsingLastLayerIntoW"}}, tmp_path / "bad.pt")
    with pytest.raises(FFCLIPError, match="encoder_type 'BackboneEncoderUsingLastLayerIntoW' is not supported"):
        convert_main(["e4e", "--input", str(tmp_path / "bad.pt"), "--output", str(tmp_path / "o")])


@pytest.mark.parametrize("n_latent,dataset,size,input_size", [(18, "ffhq_encode", 1024, [256, 256]),
                                                              (16, "cars_encode", 512, [192, 256]),
                                                              (14, "church_encode", 256, [256, 256])])
def test_config_inference(n_latent, dataset, size, input_size):
    enc = {k[len("encoder."):]: v.numpy() for k, v in fake_e4e_state_dict(n_latent, 512).items()
           if k.startswith("encoder.")}
    cfg = encoder_config(enc, {"dataset_type": dataset}, "f")
    assert cfg == dict(num_layers=50, mode="ir_se", stylegan_size=size, style_dim=512, input_size=input_size,
                       start_from_latent_avg=True)
    with pytest.raises(FFCLIPError, match=f"opts.stylegan_size is 64 but the encoder has {n_latent} style blocks"):
        encoder_config(enc, {"stylegan_size": 64}, "f")


def test_latent_avg_shapes():
    a = np.arange(6, dtype=np.float32).reshape(1, 6)
    assert latent_avg_for(a[0], 4, 6, "f").shape == (4, 6)
    assert latent_avg_for(np.repeat(a, 4, 0), 4, 6, "f").shape == (4, 6)
    with pytest.raises(FFCLIPError, match=r"latent_avg has shape \(3, 6\)"):
        latent_avg_for(np.zeros((3, 6)), 4, 6, "f")


def test_input_checks():
    with pytest.raises(FFCLIPError, match=r"\(B, H, W, 3\)"):
        Encoder4Editing(stylegan_size=32, style_dim=8).init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 64, 64)))
    with pytest.raises(FFCLIPError, match="instead of 1x1"):  # a 512x512 input gives a 32x32 c3: too big for 16
        jax.eval_shape(lambda: GradualStyleBlock(8, 16).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 4))))


def test_block_tables():
    assert [len(unit_specs(n)) for n in (50, 100, 152)] == [24, 49, 50]
    specs = unit_specs(50)
    assert [s for _, _, s in specs].count(2) == 4 and specs[6][1] == 128 and specs[20][1] == 256
    assert specs[23] == (512, 512, 1)


@pytest.mark.parametrize("size_in,size_out", [((3, 4), (6, 8)), ((5, 7), (9, 16)), ((16, 16), (32, 32)),
                                              ((4, 4), (4, 9)), ((1, 3), (2, 5))])
def test_bilinear_align_corners(size_in, size_out):
    x = np.random.RandomState(0).randn(2, 3, *size_in).astype(np.float32)
    want, truth = (F.interpolate(torch.from_numpy(x).to(dtype), size=size_out, mode="bilinear", align_corners=True)
                   for dtype in (torch.float32, torch.float64))
    got = resize_bilinear_align_corners(jnp.asarray(x.transpose(0, 2, 3, 1)), size_out)
    assert_float32_parity(got, nhwc(want), nhwc(truth), "bilinear")


@pytest.mark.parametrize("in_ch,depth,stride,mode,hw", [(16, 16, 2, "ir_se", (7, 9)), (16, 32, 2, "ir", (8, 5))])
def test_bottleneck_and_strided_shortcut(in_ch, depth, stride, mode, hw):
    torch.manual_seed(1)
    x = torch.randn(2, in_ch, *hw)
    unit = ref.randomize_(ref.Bottleneck(in_ch, depth, stride, se=mode == "ir_se"), calibration=x)
    module = IRBottleneck(in_ch, depth, stride, mode)
    expected = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, *hw, in_ch))))
    from convert_weights.irse import BACKBONE_IGNORE, BACKBONE_RULES
    from convert_weights.mapping import apply_rules
    sd = {k: v.numpy() for k, v in unit.state_dict().items()}
    variables = apply_rules(sd, BACKBONE_RULES, expected, ignore=BACKBONE_IGNORE)
    with torch.no_grad():
        want, truth = unit(x), float64_copy(unit)(x.double())
        want_short = unit.shortcut_layer(x)
    assert_float32_parity(module.apply(variables, jnp.asarray(nhwc(x))), nhwc(want), nhwc(truth), "bottleneck")
    if in_ch == depth:  # MaxPool2d(1, stride) is a strided subsample
        from ffclip_jax.models.irse import strided_subsample
        np.testing.assert_array_equal(strided_subsample(jnp.asarray(nhwc(x)), stride), nhwc(want_short))


def test_prelu_per_channel():
    torch.manual_seed(2)
    p = torch.nn.PReLU(5)
    with torch.no_grad():
        p.weight.copy_(torch.randn(5))
    x = torch.randn(2, 5, 3, 3)
    got = PReLU().apply({"params": {"weight": jnp.asarray(p.weight.detach().numpy())}}, jnp.asarray(nhwc(x)))
    # one multiplication per negative element, correctly rounded in both: equal
    np.testing.assert_array_equal(got, nhwc(p(x)))


@pytest.mark.slow
def test_full_ffhq_encoder(tmp_path):
    """Full-width FFHQ e4e (IR-SE50, 18 styles of 512, 1024 decoder) at 256x256."""
    torch.manual_seed(3)
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    enc = ref.randomize_(ref.Encoder4Editing(stylegan_size=1024), calibration=x)
    latent_avg = torch.randn(18, 512)
    with torch.no_grad():
        want = (enc(x) + latent_avg).numpy()
        truth = (float64_copy(enc)(x.double()) + latent_avg.double()).numpy()
    dec = TorchGenerator(1024, 512, n_mlp=8)
    torch.save(psp_checkpoint(enc, dec, latent_avg, {"encoder_type": "Encoder4Editing", "stylegan_size": 1024}),
               tmp_path / "e4e_ffhq_encode.pt")
    del enc, dec
    convert_main(["e4e", "--input", str(tmp_path / "e4e_ffhq_encode.pt"), "--output", str(tmp_path / "out")])
    os.remove(tmp_path / "e4e_ffhq_encode.pt")
    module, variables = pretrained.load(str(tmp_path / "out"))
    assert module.input_size == (256, 256) and module.n_latent == 18
    got = jax.jit(module.apply)(variables, jnp.asarray(nhwc(x)))
    assert_float32_parity(got, want, truth, "full e4e codes")
