"""LPIPS v0.1 (`ffclip_jax.models.lpips`) against our PyTorch oracle of the released lpips 0.1.4 forward
(tests/torch_ref/lpips.py), both backbones, through `python -m convert_weights lpips` on files written by torch.save in
the layouts of torchvision's `alexnet-owt-7be5be79.pth` / `vgg16-397923af.pth` and the package's
`weights/v0.1/{alex,vgg}.pth` (random weights, the released key sets and feature shapes): distances, per-layer terms
and gradients w.r.t. both images in float32 and float64; the conversion round trip; `convert_weights all` pairing the
files of a folder by content; bad files and bad images as one-line errors; the tiny default's random LPIPS."""
import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from convert_weights.__main__ import main as convert_main
from ffclip_jax.errors import FFCLIPError, InputError, run_cli
from ffclip_jax.models.lpips import LPIPS
from ffclip_jax.weights import pretrained, resolve
from convert_weights.torch_io import load_checkpoint
from parity import nchw
from torch_ref import lpips as ref

BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
# float32 bounds: our error against PyTorch's float64 truth within MARGIN x PyTorch's own float32 error (max and mean,
# measured in the same test): two float32 implementations of the same sums differ only in summation order (XLA's
# conv vs oneDNN's, AVX2 vs AVX-512 blocking, thread count), so their errors are of one size; 4x covers the spread of
# a maximum over a few thousand entries. FLOOR_REL (float32 eps, relative to the largest entry) stands in for
# PyTorch's error where it happens to be smaller than one rounding.
MARGIN = 4.0
FLOOR_REL = float(np.finfo(np.float32).eps)
# float64: the same computation in float64 rounds eps64 / eps32 = 2^-29 times finer; ours and PyTorch's float64 results
# each carry their own error, so they may differ by EPS_RATIO x (our float32 bound + PyTorch's float32 error), again
# with MARGIN for the spread of a maximum (rounding patterns differ between precisions)
EPS_RATIO = float(np.finfo(np.float64).eps / np.finfo(np.float32).eps)


def write_files(directory, backbone, seed=0, classifier_shapes=None):
    """A random torch LPIPS and its two upstream files in `directory`: the torchvision file (zip format for AlexNet,
    the legacy format for VGG16, as both readers see them) and the heads file (legacy format, pickle protocol 2, as
    the package ships them)."""
    net = ref.build(backbone, seed)
    backbone_path = os.path.join(directory, BACKBONE_FILES[backbone])
    torch.save(net.backbone_state_dict(classifier_shapes or ref.small_classifier(backbone)), backbone_path,
               _use_new_zipfile_serialization=backbone == "alex")
    heads_path = os.path.join(directory, f"{backbone}.pth")
    torch.save(net.heads_state_dict(), heads_path, _use_new_zipfile_serialization=False, pickle_protocol=2)
    return net, backbone_path, heads_path


@pytest.fixture(scope="module", params=["alex", "vgg"])
def converted(request, tmp_path_factory):
    """(backbone, torch net, backbone file, heads file, converted directory)."""
    backbone = request.param
    d = tmp_path_factory.mktemp(f"lpips_{backbone}")
    net, backbone_path, heads_path = write_files(str(d), backbone)
    out = str(d / "converted")
    convert_main(["lpips", "--backbone-file", backbone_path, "--heads", heads_path, "--output", out])
    return backbone, net, backbone_path, heads_path, out


def images(size, seed=0):
    """Two pairs (N = 2): independent uniform images, and an image with a perturbed copy of it."""
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, (2, size, size, 3))
    x1 = np.stack([rng.uniform(-1, 1, (size, size, 3)), np.clip(x0[1] + 0.2 * rng.standard_normal(x0[1].shape), -1, 1)])
    return x0.astype(np.float32), x1.astype(np.float32)


def torch_lpips(net, x0, x1, dtype):
    """PyTorch (distances (N,), per-layer terms (N, 5), d sum / d x0, d sum / d x1 as NHWC) in `dtype`."""
    net = copy.deepcopy(net).to(dtype)
    t0, t1 = (nchw(x).to(dtype).requires_grad_(True) for x in (x0, x1))
    d, per = net(t0, t1, retPerLayer=True)
    d.sum().backward()
    return tuple(np.asarray(a, np.float64) for a in (
        d.detach().flatten(), torch.cat([p.detach().flatten(1) for p in per], 1),
        t0.grad.permute(0, 2, 3, 1), t1.grad.permute(0, 2, 3, 1)))


def jax_lpips(module, variables, x0, x1):
    """Ours: (distances, per-layer terms, distances through normalized_features + distance, d sum / d x0, d / d x1),
    one jit program (weights and images as arguments: closed-over arrays would be constant-folded by XLA)."""
    def f(v, a, b):
        d = module.apply(v, a, b)
        per = module.apply(v, a, b, per_layer=True)
        f0, f1 = (module.apply(v, x, method=LPIPS.normalized_features) for x in (a, b))
        return d.sum(), (d, per, module.apply(v, f0, f1, method=LPIPS.distance))

    (_, (d, per, via_features)), (g0, g1) = jax.jit(jax.value_and_grad(f, argnums=(1, 2), has_aux=True))(
        variables, x0, x1)
    return tuple(np.asarray(a) for a in (d, per, via_features, g0, g1))


def check_parity(module, variables, net, x0, x1):
    """Every quantity: ours in float32 within MARGIN x PyTorch's float32 error of the float64 truth (max and mean,
    relative to the truth's largest entry), ours in float64 within MARGIN x EPS_RATIO x (that bound + PyTorch's
    float32 error). Returns the numbers."""
    t32 = torch_lpips(net, x0, x1, torch.float32)
    truth = torch_lpips(net, x0, x1, torch.float64)
    j32 = jax_lpips(module, variables, x0, x1)
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
        j64 = jax_lpips(module, v64, x0.astype(np.float64), x1.astype(np.float64))
    assert j32[0].dtype == np.float32 and j64[0].dtype == np.float64 and j32[0].shape == (len(x0),)
    assert truth[0].min() > 0.01  # distances well away from 0: relative errors mean something
    # name, our index, the truth's index
    quantities = [("distance", 0, 0), ("per-layer", 1, 1), ("distance via features", 2, 0), ("grad x0", 3, 2),
                  ("grad x1", 4, 3)]
    report = {}
    for name, j, t in quantities:
        scale = np.abs(truth[t]).max()
        torch_err = np.abs(t32[t] - truth[t]) / scale
        err32 = np.abs(j32[j] - truth[t]) / scale
        err64 = np.abs(j64[j] - truth[t]) / scale
        max_tol = MARGIN * max(torch_err.max(), FLOOR_REL)
        mean_tol = MARGIN * max(torch_err.mean(), FLOOR_REL)
        report[name] = (err32.max(), err32.mean(), torch_err.max(), torch_err.mean(), err64.max(), err64.mean())
        assert err32.max() <= max_tol and err32.mean() <= mean_tol, (name, report[name])
        max_tol64 = MARGIN * EPS_RATIO * (max_tol + torch_err.max())
        mean_tol64 = MARGIN * EPS_RATIO * (mean_tol + torch_err.mean())
        assert err64.max() <= max_tol64 and err64.mean() <= mean_tol64, (name, report[name])
    for name, r in report.items():
        print(f"{name}: float32 max {r[0]:.2g} mean {r[1]:.2g} (torch float32 max {r[2]:.2g} mean {r[3]:.2g}); "
              f"float64 max {r[4]:.2g} mean {r[5]:.2g}  (relative to the largest entry)")
    return report


def test_parity_64(converted):
    backbone, net, _, _, out = converted
    module, variables = pretrained.load(out)
    assert isinstance(module, LPIPS) and module.backbone == backbone
    check_parity(module, variables, net, *images(64))


@pytest.mark.slow
def test_parity_256(converted):
    _, net, _, _, out = converted
    check_parity(*pretrained.load(out), net, *images(256, seed=1))


def test_identical_images_and_min_size(converted):
    """d(x, x) = 0 up to rounding; the smallest accepted side (alex 31, vgg 16) runs, one less is refused.

    XLA may compile the two backbone passes (or the halves of a batch) into different instruction paths, so the two
    unit-normalised features can differ by a few roundings per component, |delta_c| <= MARGIN * eps32 * |n_c|: then each
    layer's term sum_c w_c delta_c^2 <= max(w) * (MARGIN * eps32)^2 (sum_c n_c^2 = 1), at most 5x that in all."""
    backbone, _, _, _, out = converted
    module, variables = pretrained.load(out)
    s = module.min_size
    assert s == {"alex": 31, "vgg": 16}[backbone]
    x0, x1 = images(s)
    same, other = jax.jit(lambda v, a, b: (module.apply(v, a, a), module.apply(v, a, b)))(variables, x0, x1)
    max_head = max(float(np.max(variables["params"][f"lin{k}"]["weight"])) for k in range(5))
    assert np.all(np.asarray(same) <= 5 * max_head * (MARGIN * FLOOR_REL) ** 2)
    assert other.shape == (2,) and np.all(np.asarray(other) > 0)
    x0, _ = images(64)
    with pytest.raises(InputError, match=f"H, W >= {s}"):
        module.apply(variables, x0[:, :s - 1], x0[:, :s - 1])


def test_conversion_round_trip(converted):
    """Every array of the converted directory equals the files' tensors (conv weights OIHW -> HWIO); the inert reader
    (no torch: `make demo`'s install) reads both files as torch does; model.json names the model and both sources."""
    backbone, net, backbone_path, heads_path, out = converted
    module, variables = pretrained.load(out)
    sd = {**torch.load(backbone_path, weights_only=True), **torch.load(heads_path, weights_only=True)}
    params = variables["params"]
    for key, value in sd.items():
        if key.startswith("classifier."):
            continue
        if key.startswith("features."):
            _, index, kind = key.split(".")
            got = params["features"][index][kind]
        else:
            got = params[key.split(".")[0]]["weight"]
        want = value.numpy().transpose(2, 3, 1, 0) if value.ndim == 4 else value.numpy()
        assert got.dtype == np.float32 and np.array_equal(got, want), key
    assert sorted(params) == ["features", "lin0", "lin1", "lin2", "lin3", "lin4"]
    assert len(params["features"]) == {"alex": 5, "vgg": 13}[backbone]  # every conv of the file, nothing else
    for path in (backbone_path, heads_path):
        inert, torch_loaded = load_checkpoint(path, use_torch=False), load_checkpoint(path)
        assert inert.keys() == torch_loaded.keys()
        assert all(np.array_equal(inert[k], torch_loaded[k]) for k in inert)
    meta = pretrained.read_meta(out)
    assert meta["model"] == f"lpips_{backbone}" and meta["config"] == {"backbone": backbone}
    assert meta["extra"]["source"] == backbone_path and meta["extra"]["heads"] == heads_path
    assert resolve(out).networks == {f"lpips_{backbone}": os.path.abspath(out)}


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """{backbone: (torchvision file, heads file)} for both backbones."""
    d = tmp_path_factory.mktemp("lpips_both")
    return {b: write_files(str(d), b, seed=3)[1:] for b in ("alex", "vgg")}


def test_convert_all(both, tmp_path, capsys):
    """Both backbones' files under arbitrary names in one folder (with an unrelated file) -> lpips_alex and
    lpips_vgg, each equal to its single conversion; the manifest names both files of each."""
    src = tmp_path / "pretrained_models"
    (src / "sub").mkdir(parents=True)
    names = {("alex", 0): "b.pt", ("alex", 1): "sub/x.bin", ("vgg", 0): "sub/a.ckpt", ("vgg", 1): "c.pth"}
    for (backbone, i), name in names.items():
        os.symlink(both[backbone][i], src / name)
    (src / "notes.pt").write_bytes(b"not a checkpoint")
    out = tmp_path / "weights"
    assert run_cli(convert_main, ["all", "--from", str(src), "--output", str(out)]) == 0
    assert "skipped" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["networks"] == {"lpips_alex": "lpips_alex", "lpips_vgg": "lpips_vgg"}
    for backbone in ("alex", "vgg"):
        network = f"lpips_{backbone}"
        assert manifest["sources"][network] == {"file": str(src / names[backbone, 0]),
                                                "heads": str(src / names[backbone, 1]), "model": network}
        single = tmp_path / f"single_{backbone}"
        convert_main(["lpips", "--input", both[backbone][0], "--heads", both[backbone][1], "--output", str(single)])
        assert pretrained.same_model(str(single), str(out / network))
        assert resolve(str(out)).path(network) == str(out / network)
    assert [s["file"] for s in manifest["skipped"]] == [str(src / "notes.pt")]

    # unpaired: the AlexNet file beside the VGG heads -> both skipped, saying which file is missing
    (tmp_path / "unpaired").mkdir()
    os.symlink(both["alex"][0], tmp_path / "unpaired" / "one.pth")
    os.symlink(both["vgg"][1], tmp_path / "unpaired" / "two.pth")
    assert run_cli(convert_main, ["all", "--from", str(tmp_path / "unpaired"), "--output", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert "torchvision AlexNet file (alexnet-owt-7be5be79.pth), but no LPIPS alex heads file" in captured.out
    assert "LPIPS vgg heads file (lpips/weights/v0.1/vgg.pth), but no torchvision VGG16 file" in captured.out
    assert captured.err.splitlines()[-1].startswith("error: --from ")  # (above it: tqdm's progress bar)
    assert "no recognised checkpoint among 2 file(s)" in captured.err
    # two heads files of one backbone
    os.symlink(both["vgg"][1], tmp_path / "unpaired" / "three.pth")
    with pytest.raises(FFCLIPError, match="are both the LPIPS vgg heads file"):
        convert_main(["all", "--from", str(tmp_path / "unpaired"), "--output", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def _cli_error(capsys, args):
    """Run the converter CLI expecting a one-line error; returns it."""
    assert run_cli(convert_main, args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_bad_files(both, tmp_path, capsys):
    alex, alex_heads = both["alex"]
    vgg, vgg_heads = both["vgg"]
    out = str(tmp_path / "out")

    def lpips(backbone_file, heads):
        return _cli_error(capsys, ["lpips", "--backbone-file", str(backbone_file), "--heads", str(heads),
                                   "--output", out])

    assert "LPIPS heads of the vgg backbone, but" in lpips(alex, vgg_heads)
    assert "use lpips/weights/v0.1/alex.pth" in lpips(alex, vgg_heads)
    assert "LPIPS heads of the alex backbone" in lpips(vgg, alex_heads)
    assert "an lpips heads file, not a torchvision backbone" in lpips(alex_heads, alex)
    assert "a torchvision AlexNet backbone, not an lpips heads file" in lpips(alex, alex)

    sd = torch.load(alex, weights_only=True)
    heads = torch.load(alex_heads, weights_only=True)

    def save(name, obj):
        torch.save(obj, tmp_path / name)
        return tmp_path / name

    err = lpips(save("no_bias.pth", {k: v for k, v in sd.items() if k != "features.10.bias"}), alex_heads)
    assert "missing from" in err and "no_bias.pth: parameters params/features/10/bias" in err
    conv_less = save("no_conv.pth", {k: v for k, v in sd.items() if k != "features.8.weight"})
    assert "missing features.8.weight of torchvision's AlexNet" in lpips(conv_less, alex_heads)
    wrong_shape = save("shape.pth", dict(sd, **{"features.3.weight": torch.zeros(192, 64, 3, 3)}))
    err = lpips(wrong_shape, alex_heads)
    assert "shape mismatch: features.3.weight (192, 64, 3, 3)" in err and "expected (5, 5, 64, 192)" in err
    err = lpips(save("extra.pth", dict(sd, **{"features.1.running_mean": torch.zeros(3)})), alex_heads)
    assert "unexpected keys in" in err and "extra.pth: features.1.running_mean" in err
    head_less = save("head_less.pth", {k: v for k, v in heads.items() if not k.startswith("lin3.")})
    assert "missing lin3.model.1.weight (1, 256, 1, 1) of the alex heads" in lpips(alex, head_less)
    err = lpips(alex, save("odd_heads.pth", dict(heads, **{"lin2.model.1.weight": torch.zeros(1, 100, 1, 1)})))
    assert "lin2 (1, 100, 1, 1)" in err and "fit no supported backbone" in err
    generator = save("sg.pt", {"g_ema": {"style.1.weight": torch.zeros(1)}})
    assert "stylegan2 checkpoint, not lpips" in lpips(alex, generator)
    assert "stylegan2 checkpoint, not lpips" in lpips(generator, alex_heads)
    assert "no such file" in lpips(tmp_path / "missing.pth", alex_heads)
    assert not os.path.exists(out)


def test_bad_images(converted):
    backbone, _, _, _, out = converted
    module, variables = pretrained.load(out)
    good = jnp.zeros((1, 64, 64, 3))
    for bad in (jnp.zeros((64, 64, 3)), jnp.zeros((1, 3, 64, 64)), jnp.zeros((1, 64, 64, 4)),
                jnp.zeros((1, 64, 64, 3), jnp.uint8)):
        with pytest.raises(InputError, match=rf"LPIPS\({backbone}\) expects float images \(N, H, W, 3\)") as e:
            module.apply(variables, bad, bad)
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match=r"compares images of one shape, got \(1, 64, 64, 3\) and \(2, 64, 64, 3\)"):
        module.apply(variables, good, jnp.zeros((2, 64, 64, 3)))


def test_tiny_lpips(tmp_path):
    """The tiny default's random LPIPS directories load through the registry and give positive distances."""
    from ffclip_jax import tiny

    assert {"lpips_alex", "lpips_vgg"} <= set(tiny.NETWORKS)
    tiny._save_lpips(str(tmp_path / "alex"), "alex", seed=0)
    module, variables = pretrained.load(str(tmp_path / "alex"))
    assert module.backbone == "alex" and np.min(variables["params"]["lin0"]["weight"]) >= 0
    d = jax.jit(module.apply)(variables, *images(32))
    assert d.shape == (2,) and np.all(np.asarray(d) > 0)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["alex", "vgg"])
def test_released_file_sizes(backbone, tmp_path):
    """A torchvision file with the released classifier shapes too (alex 233 MB, vgg16 528 MB: ignored, never
    converted) converts to the same directory as the small-classifier file of the same weights."""
    full = tmp_path / "full"
    small = tmp_path / "small"
    for d, shapes in ((full, ref.CLASSIFIER[backbone]), (small, None)):
        d.mkdir()
        _, backbone_path, heads_path = write_files(str(d), backbone, seed=5, classifier_shapes=shapes)
        convert_main(["lpips", "--input", backbone_path, "--heads", heads_path, "--output", str(d / "out")])
    assert os.path.getsize(full / BACKBONE_FILES[backbone]) > 200e6
    assert pretrained.same_model(str(full / "out"), str(small / "out"))
