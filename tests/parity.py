"""Helpers shared by the tests: NHWC/NCHW conversion, the float32 parity assertions, importing the top-level
scripts.

How a float32 result is held (RULES: a tolerance is derived, never fitted). Two float32 programs of the same function
(ours and PyTorch's) each differ from the exact result by their own rounding, which depends on the order of every
sum: the CPU's vector width (AVX2 vs AVX-512), the number of threads a reduction is split over, XLA's fusion. So a
bound fitted to one machine's |ours - torch| is not a bound. Instead every parity check runs PyTorch's reference once
more in float64 on the same (float32) weights and inputs -- the truth -- and asserts that ours is as accurate as
PyTorch's own float32 result, measured in the same test: `assert_float32_parity`."""
import importlib.util
import os

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
U32 = float(np.finfo(np.float32).eps) / 2  # float32 unit roundoff 2^-24 = 6.0e-8: one correctly rounded operation
# Two float32 evaluations of the same sums in different orders have rounding errors of the same distribution, so
# ours within 4x PyTorch's own error (max and mean over the elements) holds whichever order a CPU picks, with room
# for the maximum to land in that distribution's tail. The floor, 64 roundings (3.8e-6) of the truth's largest
# (mean) magnitude, is float32 accuracy for any formulation: another algebraic form of the same function (our
# input-scaling modulated conv, a resize as a matrix product) has its own error constant (up to 5x PyTorch's
# measured on single layers, all within ~16 roundings), and PyTorch is sometimes nearly exact (a short sum, a copy).
PARITY_FACTOR, PARITY_FLOOR_ROUNDINGS = 4.0, 64


def assert_close(a, b, max_tol, mean_tol):
    """max |a - b| <= max_tol and mean |a - b| <= mean_tol (in float64); returns (max, mean). For bounds with their
    own derivation (a float64 comparison, a documented rounding bound); float32 parity uses assert_float32_parity."""
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    assert d.max() <= max_tol and d.mean() <= mean_tol, f"max {d.max():.3g} mean {d.mean():.3g}"
    return d.max(), d.mean()


def assert_float32_parity(ours, theirs, truth, what="result", factor=PARITY_FACTOR, reference="PyTorch"):
    """Our float32 `ours` is as accurate as PyTorch's float32 `theirs`, both against the float64 `truth` (PyTorch's
    reference in float64 on the same inputs): max and mean |ours - truth| within `factor` x PyTorch's own, or within
    PARITY_FLOOR_ROUNDINGS float32 roundings of the truth's max (mean) magnitude. Returns (our max, mean) error.
    `reference` names what `theirs` is in the message (another float32 program of ours, where there is no torch twin).
    """
    truth = np.asarray(truth, np.float64)
    ours_err = np.abs(np.asarray(ours, np.float64) - truth)
    torch_err = np.abs(np.asarray(theirs, np.float64) - truth)
    assert ours_err.shape == truth.shape == torch_err.shape, (ours_err.shape, torch_err.shape, truth.shape)
    floor = PARITY_FLOOR_ROUNDINGS * U32
    max_tol = max(factor * torch_err.max(), floor * np.abs(truth).max())
    mean_tol = max(factor * torch_err.mean(), floor * np.abs(truth).mean())
    report = (f"{what}: float32 error vs the float64 truth: ours max {ours_err.max():.3g} mean {ours_err.mean():.3g}, "
              f"{reference}'s max {torch_err.max():.3g} mean {torch_err.mean():.3g}")
    print(report)
    assert ours_err.max() <= max_tol and ours_err.mean() <= mean_tol, \
        f"{report} (bounds: max {max_tol:.3g}, mean {mean_tol:.3g})"
    return ours_err.max(), ours_err.mean()


def float64_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of a torch module (the float32 one is left as it is): the truth for assert_float32_parity.
    Float tensors held as plain attributes (CLIP's attention masks) are converted too."""
    import copy

    net = copy.deepcopy(module).double()
    for m in net.modules():
        for name, value in list(vars(m).items()):
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                setattr(m, name, value.double())
    return net


def params_digest(params) -> str:
    """sha256 of every array's bytes in tree order: equal digests, equal parameters bit for bit."""
    import hashlib

    import jax

    h = hashlib.sha256()
    for a in jax.tree.leaves(params):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def load_script(filename: str, module_name: str):
    """A top-level script of the repository (train.py) imported as a module."""
    spec = importlib.util.spec_from_file_location(module_name, os.path.join(ROOT, filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nhwc(t):
    """A torch NCHW tensor -> numpy NHWC."""
    return t.detach().numpy().transpose(0, 2, 3, 1)


def nchw(x):
    """A numpy/JAX NHWC array -> torch NCHW tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))
