"""Helpers shared by the tests: NHWC/NCHW conversion, max/mean absolute-difference assertions, importing the
top-level scripts."""
import importlib.util
import os

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assert_close(a, b, max_tol, mean_tol):
    """max |a - b| <= max_tol and mean |a - b| <= mean_tol (in float64); returns (max, mean)."""
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    assert d.max() <= max_tol and d.mean() <= mean_tol, f"max {d.max():.3g} mean {d.mean():.3g}"
    return d.max(), d.mean()


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
