"""Test set-up: 8 simulated CPU devices (set before jax is imported), float32 'highest' matmuls for parity."""
import os
import shutil
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="module", autouse=True)
def module_folders_removed(request, tmp_path_factory):
    """The folders a module's fixtures made under the session's basetemp, removed when the module ends with no
    failure: several hold a copy of the tiny networks (370 MB), and the suite would otherwise need several GB of disk
    at once. A failing module keeps its folders for a look; a passing test's own `tmp_path` goes by pytest's
    `tmp_path_retention_policy = failed` (setup.cfg)."""
    base = tmp_path_factory.getbasetemp()
    before, failed = set(os.listdir(base)), request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for name in sorted(set(os.listdir(base)) - before):
            shutil.rmtree(base / name, ignore_errors=True)
