"""ArcFace IR-SE50 identity network: a PyTorch InsightFace Backbone with random weights and BatchNorm statistics,
converted through `python -m convert_weights arcface`, against the Flax Backbone at 112x112; bad input."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from convert_weights.__main__ import main as convert_main
from ffclip_jax.weights import pretrained
from ffclip_jax.models.arcface import Backbone
from ffclip_jax.errors import FFCLIPError, run_cli
from torch_ref import irse as ref
from parity import ROOT, U32, assert_float32_parity, float64_copy, nhwc


def reference(num_layers, mode, seed):
    """A randomised torch Backbone(112, num_layers, mode), the batch, its features: (PyTorch's float32, the float64
    truth)."""
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.rand(3, 3, 112, 112) * 2 - 1
    net = ref.randomize_(ref.Backbone(112, num_layers, mode), calibration=x, seed=seed)
    with torch.no_grad():
        want = net(x).numpy(), float64_copy(net)(x.double()).numpy()
    torch.set_num_threads(threads)
    return net, x, want


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    net, x, want = reference(50, "ir_se", 0)
    d = tmp_path_factory.mktemp("arcface")
    torch.save(net.state_dict(), d / "model_ir_se50.pth")
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "convert_weights", "arcface", "--input", str(d / "model_ir_se50.pth"),
                        "--output", str(d / "out")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return d, x, want


def test_features_parity(converted):
    d, x, want = converted
    module, variables = pretrained.load(str(d / "out"))
    assert isinstance(module, Backbone) and (module.input_size, module.num_layers, module.mode) == (112, 50, "ir_se")
    got = jax.jit(module.apply)(variables, jnp.asarray(nhwc(x)))
    assert got.shape == (3, 512) and got.dtype == jnp.float32
    # L2-normalised: a 512-term float32 sum of squares, a square root and a division: |norm - 1| <= (512 + 4) u
    np.testing.assert_allclose(np.linalg.norm(np.asarray(got, np.float64), axis=1), 1.0, rtol=0, atol=516 * U32)
    assert_float32_parity(got, *want, "features")


def test_bad_input(converted, tmp_path, capsys):
    d = converted[0]
    module, variables = pretrained.load(str(d / "out"))
    for shape in [(1, 3, 112, 112), (1, 64, 64, 3), (112, 112, 3)]:
        with pytest.raises(FFCLIPError, match=r"expects images \(B, 112, 112, 3\)"):
            module.apply(variables, jnp.zeros(shape))
    # an e4e file and a StyleGAN2 file given to the ArcFace converter
    torch.save({"state_dict": {"encoder.body.0.res_layer.0.weight": torch.zeros(1)}}, tmp_path / "e4e.pt")
    assert run_cli(convert_main, ["arcface", "--input", str(tmp_path / "e4e.pt"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "e4e checkpoint, not arcface" in err
    torch.save({"g_ema": {"style.1.weight": torch.zeros(1)}}, tmp_path / "sg.pt")
    with pytest.raises(FFCLIPError, match="stylegan2 checkpoint, not arcface"):
        convert_main(["arcface", "--input", str(tmp_path / "sg.pt"), "--output", str(tmp_path / "o")])
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(FFCLIPError, match="not an ArcFace backbone"):
        convert_main(["arcface", "--input", str(tmp_path / "other.pt"), "--output", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_ir100_parity(tmp_path):
    """Depth 100 with plain IR units (no SE) through the converter, saved as from DataParallel ('module.' keys)."""
    net, x, want = reference(100, "ir", 1)
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "ir100.pth")
    convert_main(["arcface", "--input", str(tmp_path / "ir100.pth"), "--output", str(tmp_path / "out")])
    module, variables = pretrained.load(str(tmp_path / "out"))
    assert (module.num_layers, module.mode) == (100, "ir")
    assert_float32_parity(jax.jit(module.apply)(variables, jnp.asarray(nhwc(x))), *want, "IR-100 features")
