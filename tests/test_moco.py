"""MoCo v2 ResNet-50: converter (CLI, in-process and subprocess), feature parity against the PyTorch oracle."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from convert_weights.__main__ import main as convert_main
from ffclip_jax.weights import pretrained
from ffclip_jax.errors import ConversionError, run_cli
from parity import ROOT, assert_float32_parity, float64_copy
from torch_ref import moco as torch_moco
from torch_ref import parsenet as torch_parsenet

SMALL = dict(stage_sizes=(1, 1, 1, 1), width=8)


def converted_moco(model, directory):
    """Write a MoCo v2 checkpoint (module.encoder_q/k, queue), convert it with the CLI in-process, load the result."""
    path = os.path.join(directory, "moco_v2.pth.tar")
    torch_moco.save_moco_checkpoint(model, path)
    out = os.path.join(directory, "moco_jax")
    convert_main(["moco", "--input", path, "--output", out])
    return pretrained.load(out)


def check_features(model, net, x_nhwc):
    x = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)
    with torch.no_grad():
        want, truth = model(x).numpy(), float64_copy(model)(x.double()).numpy()
    module, variables = net
    got = jax.jit(module.apply)(variables, x_nhwc)
    assert got.shape == want.shape
    assert_float32_parity(got, want, truth, f"moco features {x_nhwc.shape}")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    model = torch_moco.build(**SMALL, seed=1)
    return model, converted_moco(model, str(tmp_path_factory.mktemp("moco")))


def test_config_inferred(small):
    module, variables = small[1]
    assert (tuple(module.stage_sizes), module.width) == ((1, 1, 1, 1), 8)
    assert "downsample_1" in variables["batch_stats"]["layer1_0"]


def test_features_parity(small):
    x = np.random.RandomState(0).uniform(-1, 1, (2, 64, 80, 3)).astype(np.float32)
    check_features(*small, x)


def test_cli_subprocess_and_wrong_kind(tmp_path, capsys):
    path = tmp_path / "moco.pth.tar"
    torch_moco.save_moco_checkpoint(torch_moco.build((1, 1, 1, 1), width=4), path)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "convert_weights", "moco", "--input", str(path), "--output", str(out)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert pretrained.read_meta(str(out))["config"] == {"stage_sizes": [1, 1, 1, 1], "width": 4}

    pn_path = tmp_path / "parsenet.pth"
    torch.save(torch_parsenet.build(feature_scale=16).state_dict(), pn_path)
    assert run_cli(convert_main, ["moco", "--input", str(pn_path), "--output", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "parsenet checkpoint, not moco" in err, err
    assert not (tmp_path / "bad").exists()


def test_missing_encoder_keys(tmp_path):
    path = tmp_path / "broken.pth.tar"
    sd = {f"module.encoder_q.{k}": v for k, v in torch_moco.build((1, 1, 1, 1), width=4).state_dict().items()
          if not k.startswith("layer4.0.bn3")}
    torch.save({"state_dict": sd}, path)
    with pytest.raises(ConversionError, match="missing from .*layer4_0/bn3"):
        convert_main(["moco", "--input", str(path), "--output", str(tmp_path / "bad")])


@pytest.mark.slow
def test_features_parity_full_resnet50(tmp_path):
    model = torch_moco.build(seed=3)
    net = converted_moco(model, str(tmp_path))
    assert (tuple(net[0].stage_sizes), net[0].width) == ((3, 4, 6, 3), 64)
    x = np.random.RandomState(1).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
    check_features(model, net, x)
