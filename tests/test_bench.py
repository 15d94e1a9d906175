"""bench/all.py and bench/device.sh without timing anything: the plan, the table's logic, a run cut short by its
budget or by SIGTERM, every job built in its own process (none imports both PyTorch and JAX, none imports tests/),
the wheel list against setup.cfg and this environment, the carry size, and device.sh's install path on a wheel built
here (nothing downloaded)."""
import ast
import base64
import configparser
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_SH = os.path.join(ROOT, "bench", "device.sh")
ENV = dict(os.environ, PYTHON=sys.executable)
# the benchmarks' own processes see the machine's devices (one CPU), not the suite's 8 simulated ones
BENCH_ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


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
    """`device.sh run`: install from the carried folder, PYTHONPATH with it, bench/all.py with $OUT as its results
    folder (here --dry-run: nothing written)."""
    whl = tmp_path / "whl"
    whl.mkdir()
    build_wheel(str(whl))
    env = dict(ENV, WHL=str(whl), DEVDEPS=str(tmp_path / "devdeps"), OUT=str(tmp_path / "out"))
    os.makedirs(env["OUT"])
    out = device_sh("run", "--dry-run", env=env)
    assert (tmp_path / "devdeps" / "ffclip_bench_probe.py").exists()
    assert "generator/jax/backward" in out.stdout and "| benchmark |" in out.stdout
    assert "results -> " in out.stdout and str(tmp_path / "out") in os.path.normpath(
        os.path.join(ROOT, out.stdout.split("results -> ")[1].split(".json")[0]))
    assert not os.listdir(env["OUT"])


def test_carry_counts_wheel_files_not_their_folder(tmp_path):
    """`carry` (what `download` ends with): a folder named .whl holding one wheel is 1 wheel; over 64 MiB fails."""
    whl = tmp_path / ".whl"
    whl.mkdir()
    build_wheel(str(whl))
    out = device_sh("carry", whl)
    assert out.stdout.startswith("1 wheels, ") and "of 64 MiB" in out.stdout, out.stdout
    with open(whl / "big-1.0-py3-none-any.whl", "wb") as f:  # sparse: 65 MiB by its size, nothing written
        f.truncate(65 * 2 ** 20)
    over = device_sh("carry", whl, check=False)
    assert over.returncode == 1 and over.stdout.startswith("2 wheels, ") and "over the 64 MiB" in over.stderr


def test_all_dry_run(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "all.py"), "--dry-run", "--results-dir",
                          str(tmp_path / "r")], capture_output=True, text=True, timeout=300, cwd=ROOT, env=BENCH_ENV)
    assert out.returncode == 0, out.stderr
    assert "device: cpu" in out.stdout and "versions: Python " in out.stdout
    for label in ("generator/weights", "generator/torch/backward", "generator/jax/forward", "train_step/jax/float32",
                  "train_step/torch/float32"):
        assert label in out.stdout
    assert "bfloat16" not in out.stdout  # not on CPU
    assert "--size 256 --batch 2" in out.stdout
    assert load_all().HEADER in out.stdout
    assert not (tmp_path / "r").exists()


def test_plan_sizes_for_an_accelerator():
    mod = load_all()
    dev = dict(platform="gpu", kind="NVIDIA H200", count=2, torch="cuda", gradio=False)
    jobs = {j.label: j for j in mod.plan(dev, mod.sizes(dev), "/work")}
    gen = jobs["generator/jax/backward"].args
    assert gen[gen.index("--size") + 1] == 1024 and gen[gen.index("--batch") + 1] == 8
    assert gen[gen.index("--weights") + 1] == jobs["generator/weights"].args[-1] == "/work/generator-1024.npz"
    assert jobs["generator/jax/backward"].needs == "generator/weights"
    train = jobs["train_step/jax/bfloat16"].args
    assert train[train.index("--batch") + 1] == 16 and "bfloat16" in train  # 8 per device
    assert mod.device_name("NVIDIA H200") == "nvidia-h200"
    assert "studio/gradio" not in jobs  # no gradio on the device image
    engine = jobs["studio/jax/engine"].args  # the studio engine's batching, without a server: runs there
    assert engine[:4] == ["--one", "engine", "--size", 1024] and "--device" in engine
    order = [j.label for j in mod.plan(dev, mod.sizes(dev), "/work")]
    assert order[0] == "generator/weights" and order.index("train_step/jax/float32") < order.index(
        "generator/jax/forward")  # the targets' rows first


@pytest.mark.parametrize("platform", ["gpu", "cpu"])
def test_table_statuses(platform):
    mod = load_all()
    dev = dict(platform=platform, kind="x", count=1, torch="cuda", hardware={}, gradio=False)
    r = lambda ips, peak=2 ** 30: dict(images_per_s=ips, peak_bytes=peak)
    results = {"generator/weights": dict(weights="w.npz"),
               "generator/torch/backward": r(1.0), "generator/jax/backward": r(1.5),
               "generator/torch/forward": r(1.0), "generator/jax/forward": dict(error="boom"),
               "train_step/torch/float32": r(1.0), "train_step/jax/float32": r(2.0, 20 * 2 ** 30),
               "train_step/jax/bfloat16": dict(error="not run: the budget was spent")}
    rows = {x["benchmark"]: x for x in mod.rows(results, dev, mod.sizes(dev))}
    status = {k: v["status"] for k, v in rows.items()}
    assert rows["generator forward+backward"]["ratio"] == pytest.approx(1.5)
    if platform == "gpu":
        assert status["generator forward+backward"] == "met"
        assert status["training step float32"] == "not met"
        assert status["training step memory, float32"] == "not met"
    else:
        assert all(s.startswith("not measured") for k, s in status.items() if k != "generator forward")
    assert status["training step bfloat16"].startswith("not measured (not run: the budget")
    assert status["generator forward"].startswith("not measured (boom")
    if platform == "gpu":
        assert status["training step memory, bfloat16"].startswith("not measured")
    assert status["studio engine batching"] == "not measured (not run)"
    assert status["studio server (Gradio)"] == "not measured (gradio not installed)"
    table = mod.markdown(list(rows.values()))
    assert table.startswith(mod.HEADER) and table.count("\n") == len(rows) + 1


def test_whole_script_rows():
    """A whole-script job's JSON `row` is its table line (how bench/studio.py's engine benchmark joins)."""
    mod = load_all()
    engine = dict(row=dict(setting="16 clients", ratio=3.5, jax=12.0, target="ignored"))
    row = mod.whole_row(engine, "studio engine batching", "-", 3.0, accel=True)
    assert (row["setting"], row["ratio"], row["jax"], row["target"], row["status"]) == (
        "16 clients", 3.5, 12.0, ">= 3.0x", "met")
    assert mod.whole_row(engine, "e", "-", 3.0, accel=False)["status"].startswith("not measured (CPU run")
    assert mod.whole_row(dict(error="x"), "e", "-", 3.0, accel=True)["status"] == "not measured (x)"
    assert mod.whole_row(dict(results=[]), "g", "-", None, accel=True)["status"] == "ran (numbers in the JSON)"


def test_refine_rows_from_its_json():
    """bench/refine.py's JSON gives the W+ and PTI rows: the fastest JAX batching against PyTorch, at refine.py's
    target; a failed job or a stage with one framework missing is 'not measured'."""
    mod = load_all()
    s = mod.sizes(dict(platform="cpu", count=1), tiny=True)
    x = lambda fw, stage, ips, batching="-": dict(framework=fw, stage=stage, image_steps_per_s=ips,  # noqa: E731
                                                    batching=batching, peak_bytes=2 ** 30)
    r = dict(target=1.5, results=[x("torch", "w_plus", 2.0), x("jax", "w_plus", 4.0, "vmap"),
                                  x("jax", "w_plus", 3.0, "map"), x("jax", "pti", 1.0, "map")])
    w, pti = mod.refine_table_rows(r, s)
    assert (w["benchmark"], w["ratio"], w["target"], w["status"]) == ("W+ refinement vs PyTorch", 2.0, ">= 1.5x", "met")
    assert "vmap" in w["setting"] and pti["ratio"] is None and pti["status"].startswith("not measured")
    assert all(row["status"] == "not measured (boom)" for row in mod.refine_table_rows(dict(error="boom"), s))
    table = mod.markdown(mod.rows({"refine": r}, dict(platform="cpu", count=1, gradio=False), s))
    assert "| W+ refinement vs PyTorch |" in table and "| PTI refinement vs PyTorch |" in table


def write_script(path, body):
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_budget_end_stops_the_running_job_and_keeps_what_was_measured(tmp_path, monkeypatch):
    """run_plan under a budget: a finished job keeps its numbers, the one running when the budget ends is stopped
    with everything it started (SIGTERM first: it cleans up; SIGKILL for what ignores it), the rest are not run."""
    mod = load_all()
    monkeypatch.setattr(mod, "MIN_START_S", 3)
    monkeypatch.setattr(mod, "STOP_GRACE_S", 2)
    quick = write_script(tmp_path / "quick.py", """
        import json
        print(json.dumps(dict(images_per_s=2.0, peak_bytes=1)))
    """)
    pidfile, work = tmp_path / "grandchild.pid", tmp_path / "work"
    work.mkdir()
    ignores_sigterm = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    slow = write_script(tmp_path / "slow.py", f"""
        import shutil, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        p = subprocess.Popen([sys.executable, "-c", {ignores_sigterm!r}])
        open({str(pidfile)!r}, "w").write(str(p.pid))
        try:
            time.sleep(600)
        finally:
            shutil.rmtree({str(work)!r})
    """)
    jobs = [mod.Job("a", quick, [], 600), mod.Job("b", slow, [], 600), mod.Job("c", quick, [], 600),
            mod.Job("d", quick, [], 600, needs="b")]
    seen = []
    # 8 s: job a (a Python start) has 5 s to finish before b must start with MIN_START_S left
    results, cut = mod.run_plan(jobs, time.perf_counter() + 8, after=lambda r: seen.append(sorted(r)))
    assert cut == "the budget"
    assert results["a"]["images_per_s"] == 2.0
    assert results["b"]["error"].startswith("stopped at the budget ended after ")
    assert results["c"]["error"] == "not run: the budget was spent"
    assert results["d"]["error"] == "not run: b failed"
    assert seen[0] == ["a"] and len(seen) == 4  # the files are rewritten after every job
    assert not work.exists()  # the job's own clean-up ran
    grandchild = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):  # stopped with the job's process group
        for _ in range(50):
            os.kill(grandchild, 0)
            time.sleep(0.1)


def run_all(tmp_path, *args, timeout=600):
    return subprocess.run([sys.executable, os.path.join(ROOT, "bench", "all.py"), "--tiny", "--results-dir",
                           str(tmp_path), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=BENCH_ENV)


def test_spent_budget_still_prints_and_writes_the_table(tmp_path):
    out = run_all(tmp_path, "--budget", "1")
    assert out.returncode == 1, out.stderr
    assert "jobs done" in out.stdout and "cut short by the budget" in out.stdout
    assert "| generator forward+backward | 32 px, batch 1, input_scaling |" in out.stdout
    assert "not measured (not run: the budget was spent)" in out.stdout
    saved = json.loads((tmp_path / "cpu.json").read_text())
    assert saved["complete"] is False and saved["cut"] == "the budget"
    assert (tmp_path / "cpu.md").read_text().split("\n\n")[1] == saved["markdown"] + "\n"


def test_sigterm_prints_what_was_measured(tmp_path):
    """SIGTERM (the device tool's limit) after the first job: its result and the table are printed and written."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "all.py"), "--tiny", "--results-dir",
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=BENCH_ENV)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if re.match(r"\s+generator/weights\s.*\[\d+ s\]$", line):  # its result line, not its plan line
                proc.send_signal(signal.SIGTERM)
                break
        rest, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    out = "".join(lines) + rest
    assert proc.returncode == 1, err
    assert "cut short by SIGTERM" in out and "| generator forward+backward |" in out
    assert "not measured (SIGTERM ended the run)" in out
    saved = json.loads((tmp_path / "cpu.json").read_text())
    assert saved["cut"] == "SIGTERM" and saved["results"]["generator/weights"]["parameters"] > 0
    assert saved["results"]["generator/torch/backward"]["error"] == "SIGTERM ended the run"


def test_isolate_hides_the_other_framework():
    code = textwrap.dedent(f"""
        import importlib.util, sys
        sys.path.insert(0, {os.path.join(ROOT, "bench")!r})
        import common
        common.isolate("jax")
        assert importlib.util.find_spec("torch") is None
        try:
            import torch.nn
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("torch imported")
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
    late = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {os.path.join(ROOT, 'bench')!r}); "
                           "import common, numpy; sys.modules['jax'] = numpy; common.isolate('torch')"],
                          capture_output=True, text=True, timeout=120)
    assert "RuntimeError: torch benchmark process: jax already imported" in late.stderr


SITECUSTOMIZE = """
import atexit, json, os, sys

def _report():
    tests, oracles = (os.path.join({root!r}, *p) + os.sep for p in (("tests",), ("tests", "torch_ref")))
    from_tests = sorted(n for n, m in list(sys.modules.items())
                        if m is not None and (getattr(m, "__file__", None) or "").startswith(tests)
                        and not m.__file__.startswith(oracles))
    from_tests += [n for n in ("pytest", "_pytest") if sys.modules.get(n) is not None]
    frameworks = sorted(n for n in ("torch", "jax") if sys.modules.get(n) is not None)
    with open(os.path.join({log!r}, f"{{os.getpid()}}.json"), "w") as f:
        json.dump(dict(argv=sys.argv, frameworks=frameworks, tests=from_tests), f)

atexit.register(_report)
"""


@pytest.mark.slow  # a minute: every job built; test_every_framework_import_follows_isolate reads the same rule
def test_no_benchmark_process_imports_both_frameworks_or_tests(tmp_path):
    """Every process of a `bench/all.py --tiny --build-only` run (probes, the weights writer, every job built and
    traced) reports its modules at exit: PyTorch or JAX, never both, nothing from tests/ but the tests/torch_ref
    oracles, no pytest."""
    hook, log = tmp_path / "hook", tmp_path / "log"
    hook.mkdir()
    log.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE.format(root=ROOT, log=str(log)))
    env = dict(BENCH_ENV, PYTHONPATH=os.pathsep.join([str(hook)] + ([BENCH_ENV["PYTHONPATH"]]
                                                                    if BENCH_ENV.get("PYTHONPATH") else [])))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "all.py"), "--tiny", "--build-only",
                          "--results-dir", str(tmp_path / "r")], capture_output=True, text=True, timeout=900,
                         cwd=ROOT, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    saved = json.loads((tmp_path / "r" / "cpu.json").read_text())
    assert all("error" not in r for r in saved["results"].values()), saved["results"]
    reports = [json.loads(p.read_text()) for p in log.iterdir()]
    for r in reports:
        assert len(r["frameworks"]) <= 1 and not r["tests"], r
    jobs = {" ".join(map(str, j["args"])): j["label"] for j in saved["plan"] if not j["whole"]}
    ran = {" ".join(r["argv"][1:]).replace(" --build-only", ""): r["frameworks"] for r in reports}
    for args, label in jobs.items():
        want = ["jax"] if "jax" in label.split("/")[1:] else ["torch"]
        assert ran.get(args) == want, (label, ran.get(args))
    assert sum(r["frameworks"] == ["jax"] for r in reports) >= 3 and sum(r["frameworks"] == ["torch"]
                                                                          for r in reports) >= 3


def test_bench_never_imports_tests():
    """No bench/ script imports a test module, pytest or the tests package; the one package of tests/ a benchmark
    imports is the torch_ref oracles (bench/common.py puts tests/ on a torch process's path for it)."""
    test_modules = {os.path.splitext(n)[0] for n in os.listdir(os.path.join(ROOT, "tests"))} - {"torch_ref"}
    test_modules |= {"pytest", "_pytest", "conftest"}
    for name in sorted(os.listdir(os.path.join(ROOT, "bench"))):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(ROOT, "bench", name)).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value != "tests" or name == "common.py", f"bench/{name}: 'tests' (a path to the suite?)"
                continue
            else:
                continue
            for n in names:
                assert n.split(".")[0] not in test_modules | {"tests"}, f"bench/{name} imports {n}"


FRAMEWORK_OF = {"torch": "torch", "torch_ref": "torch", "jax": "jax", "jaxlib": "jax", "flax": "jax"}


def _isolate_call(stmt):
    """The framework of a `common.isolate("<framework>")` statement, else None."""
    if (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
            and ast.unparse(stmt.value.func) == "common.isolate"):
        return stmt.value.args[0].value
    return None


def test_every_framework_import_follows_isolate():
    """Read from the source (the whole-script jobs, such as bench/refine.py, are not run by the build-only check
    above): every bench/ function that imports PyTorch, the oracles or JAX calls `common.isolate(<that framework>)`
    before its first such import, or the script's main() isolates its whole process for that framework, so no
    benchmark process can hold both."""
    for name in sorted(os.listdir(os.path.join(ROOT, "bench"))):
        if not name.endswith(".py") or name in ("common.py", "all.py"):
            continue
        tree = ast.parse(open(os.path.join(ROOT, "bench", name)).read())
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
        whole = {_isolate_call(stmt) for fn in functions if fn.name == "main" for stmt in fn.body} - {None}
        for fn in functions:
            isolated = None
            for stmt in fn.body:
                isolated = _isolate_call(stmt) or isolated
                mods = ([a.name for a in stmt.names] if isinstance(stmt, ast.Import) else
                        [stmt.module or ""] if isinstance(stmt, ast.ImportFrom) else [])
                for m in mods:
                    framework = FRAMEWORK_OF.get(m.split(".")[0])
                    if framework:
                        assert framework in whole or isolated == framework, \
                            f"bench/{name}:{stmt.lineno} {fn.name} imports {m} without common.isolate({framework!r})"
