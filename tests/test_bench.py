"""bench/all.py and bench/device.sh without running any benchmark: the plan, the table's logic, the wheel list
against setup.cfg and this environment, and device.sh's install path on a wheel built here (nothing downloaded)."""
import base64
import configparser
import hashlib
import importlib.metadata as md
import importlib.util
import os
import re
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_SH = os.path.join(ROOT, "bench", "device.sh")
ENV = dict(os.environ, PYTHON=sys.executable)


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def device_sh(*args, env=None, check=True):
    out = subprocess.run(["bash", DEVICE_SH, *map(str, args)], capture_output=True, text=True, timeout=120,
                         env=env or ENV, cwd=ROOT)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def load_all():
    spec = importlib.util.spec_from_file_location("bench_all", os.path.join(ROOT, "bench", "all.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def wheels():
    return dict(s.split("==") for s in device_sh("list").stdout.split())


def build_wheel(folder, name="ffclip_bench_probe", version="0.1.0", body="VALUE = 42\n"):
    """A minimal valid pure-Python wheel, written by hand (no build backend, no network)."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}.py": body,
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test_bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join(record + [f"{dist}/RECORD,,"]) + "\n"
    path = os.path.join(folder, f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as z:
        for p, text in files.items():
            z.writestr(p, text)
    return path


def test_wheel_list_syntax():
    assert "specs ok" in device_sh("check").stdout


def test_wheel_list_matches_setup_cfg_and_environment():
    """Every setup.cfg requirement is carried or provided by the device image; every carried wheel is a setup.cfg
    requirement or a dependency of one, pinned at the major.minor installed here."""
    from packaging.requirements import Requirement

    pins = {norm(k): v for k, v in wheels().items()}
    provided = {norm(n) for n in device_sh("provided").stdout.split()}
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    required = {norm(Requirement(r).name) for r in cfg["options"]["install_requires"].split("\n") if r.strip()}
    missing = required - set(pins) - provided
    assert not missing, f"setup.cfg requirements neither carried nor provided: {missing}"
    env = dict(python_version="3.12", python_full_version="3.12.3", sys_platform="linux", platform_system="Linux",
               platform_machine="x86_64", implementation_name="cpython", os_name="posix", extra="")
    needed = set(required)
    for name, version in pins.items():
        have = md.version(name)
        assert have.split(".")[:2] == version.split(".")[:2], f"{name}: pinned {version}, installed here {have}"
        for r in md.requires(name) or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate(env):
                dep = norm(req.name)
                needed.add(dep)
                assert dep in pins or dep in provided, f"{name} needs {dep}: neither carried nor provided"
    assert not set(pins) - needed, "carried wheels nothing needs"


def test_device_install_path(tmp_path):
    """device.sh's install step, end to end, on a wheel built here: into a fresh target; skipped when installed."""
    whl = tmp_path / "whl"
    whl.mkdir()
    build_wheel(str(whl))
    target = tmp_path / "site"
    out = device_sh("install", whl, target)
    assert "installed 1 wheel(s)" in out.stdout
    probe = subprocess.run([sys.executable, "-c", "import ffclip_bench_probe as m; print(m.VALUE)"],
                           capture_output=True, text=True, env=dict(ENV, PYTHONPATH=str(target)), timeout=60)
    assert probe.stdout.strip() == "42", probe.stderr
    # already installed at that version (visible to $PYTHON): nothing to do
    again = device_sh("install", whl, tmp_path / "other", env=dict(ENV, PYTHONPATH=str(target)))
    assert "nothing to install" in again.stdout


def test_device_check_wants_every_wheel(tmp_path):
    build_wheel(str(tmp_path))
    out = device_sh("check", tmp_path, check=False)
    assert out.returncode != 0 and "matching wheels" in out.stderr


def test_device_run_dry(tmp_path):
    """`device.sh run`: install from the carried folder, PYTHONPATH with it, bench/all.py (here --dry-run)."""
    whl = tmp_path / "whl"
    whl.mkdir()
    build_wheel(str(whl))
    env = dict(ENV, WHL=str(whl), DEVDEPS=str(tmp_path / "devdeps"), OUT=str(tmp_path / "out"))
    os.makedirs(env["OUT"])
    out = device_sh("run", "--dry-run", "--json", tmp_path / "r.json", env=env)
    assert (tmp_path / "devdeps" / "ffclip_bench_probe.py").exists()
    assert "generator/jax/backward" in out.stdout and "| benchmark |" in out.stdout
    assert not (tmp_path / "r.json").exists()


def test_all_dry_run(tmp_path):
    path = tmp_path / "r.json"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "all.py"), "--dry-run", "--json", str(path)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "device: cpu" in out.stdout
    for label in ("generator/torch/backward", "generator/jax/forward", "train_step/jax/float32",
                  "train_step/torch/float32"):
        assert label in out.stdout
    assert "bfloat16" not in out.stdout  # not on CPU
    assert "--size 256 --batch 2" in out.stdout
    assert load_all().HEADER in out.stdout
    assert not path.exists()


def test_plan_sizes_for_an_accelerator():
    mod = load_all()
    dev = dict(platform="gpu", kind="NVIDIA H200", count=2, torch="cuda")
    jobs = {j.label: j for j in mod.plan(dev, quick=False)}
    gen = jobs["generator/jax/backward"].args
    assert gen[gen.index("--size") + 1] == 1024 and gen[gen.index("--batch") + 1] == 8
    train = jobs["train_step/jax/bfloat16"].args
    assert train[train.index("--batch") + 1] == 16 and "bfloat16" in train  # 8 per device
    assert mod.device_name("NVIDIA H200") == "nvidia-h200"


@pytest.mark.parametrize("platform", ["gpu", "cpu"])
def test_table_statuses(platform):
    mod = load_all()
    dev = dict(platform=platform, kind="x", count=1, torch="cuda", hardware={})
    r = lambda ips, peak=2 ** 30: dict(images_per_s=ips, peak_bytes=peak)
    results = {"generator/torch/backward": r(1.0), "generator/jax/backward": r(1.5),
               "generator/torch/forward": r(1.0), "generator/jax/forward": dict(error="boom"),
               "train_step/torch/float32": r(1.0), "train_step/jax/float32": r(2.0, 20 * 2 ** 30),
               "train_step/jax/bfloat16": dict(error="time budget spent")}
    rows = {x["benchmark"]: x for x in mod.rows(results, dev, quick=False)}
    status = {k: v["status"] for k, v in rows.items()}
    assert rows["generator forward+backward"]["ratio"] == pytest.approx(1.5)
    if platform == "gpu":
        assert status["generator forward+backward"] == "met"
        assert status["training step float32"] == "not met"
        assert status["training step memory, float32"] == "not met"
    else:
        assert all(s.startswith("not measured") for k, s in status.items() if k != "generator forward")
    assert status["training step bfloat16"].startswith("not measured")
    assert status["generator forward"].startswith("not measured (boom")
    if platform == "gpu":
        assert status["training step memory, bfloat16"].startswith("not measured")
    table = mod.markdown(list(rows.values()))
    assert table.startswith(mod.HEADER) and table.count("\n") == len(rows) + 1
