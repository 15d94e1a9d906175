"""Face-parsing UNet: converter (CLI in-process and subprocess), logits parity against the PyTorch oracle, bad input."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from convert_weights.__main__ import main as convert_main
from ffclip_jax.weights import pretrained
from ffclip_jax.errors import CheckpointError, InputError
from torch_ref import moco as torch_moco
from torch_ref import parsenet as torch_parsenet
from parity import ROOT, assert_float32_parity, float64_copy


def converted_parsenet(model, directory):
    """torch.save the upstream state dict, convert it with the CLI in-process, load the result."""
    path = os.path.join(directory, "parsenet.pth")
    torch.save(model.state_dict(), path)
    out = os.path.join(directory, "parsenet_jax")
    convert_main(["parsenet", "--input", path, "--output", out])
    return pretrained.load(out)


def check_logits(model, net, x_nhwc):
    x = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)
    with torch.no_grad():
        want = model(x).permute(0, 2, 3, 1).numpy()
        truth = float64_copy(model)(x.double()).permute(0, 2, 3, 1).numpy()
    module, variables = net
    got = jax.jit(module.apply)(variables, x_nhwc)
    assert_float32_parity(got, want, truth, f"parsenet logits {x_nhwc.shape}")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    model = torch_parsenet.build(feature_scale=16, seed=1)
    return model, converted_parsenet(model, str(tmp_path_factory.mktemp("parsenet")))


def test_config_inferred(small):
    module, variables = small[1]
    assert (module.feature_scale, module.n_classes, module.is_batchnorm) == (16, 19, True)
    assert "running_mean" in variables["batch_stats"]["conv1"]["conv1_1"]


def test_logits_parity(small):
    x = np.random.RandomState(0).uniform(-1, 1, (2, 64, 48, 3)).astype(np.float32)
    check_logits(*small, x)


def test_size_not_divisible_by_16(small):
    module, variables = small[1]
    with pytest.raises(InputError, match="divisible by 16"):
        module.apply(variables, np.zeros((1, 40, 64, 3), np.float32))


def test_cli_subprocess_and_wrong_kind(tmp_path):
    model = torch_parsenet.build(feature_scale=16, seed=2)
    path = tmp_path / "parsenet.pth"
    torch.save(model.state_dict(), path)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "convert_weights", "parsenet", "--input", str(path), "--output",
                        str(out)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert pretrained.read_meta(str(out))["model"] == "parsenet"

    moco_path = tmp_path / "moco.pth.tar"
    torch_moco.save_moco_checkpoint(torch_moco.build((1, 1, 1, 1), width=4), moco_path)
    with pytest.raises(CheckpointError, match="moco checkpoint, not parsenet.*convert_weights moco"):
        convert_main(["parsenet", "--input", str(moco_path), "--output", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_logits_parity_full_size(tmp_path):
    model = torch_parsenet.build(feature_scale=4, seed=3)
    net = converted_parsenet(model, str(tmp_path))
    x = np.random.RandomState(1).uniform(-1, 1, (1, 512, 512, 3)).astype(np.float32)
    check_logits(model, net, x)
