"""Every benchmark, sized for the device found, in at most `--budget` seconds (default 8 minutes); writes
<results-dir>/<device>.json (every number), .md (the table) and .log (each job's command and output tail), after
every job, and prints one markdown table (ratios vs PyTorch, targets).

    python bench/all.py [--quick | --tiny] [--budget 480] [--dry-run | --build-only] [--results-dir bench/results]

GPU/TPU: generator 1024 px batch 8 (forward, forward+backward; JAX input_scaling vs PyTorch), the FFCLIP training
step at the ffhq size (1024 px) with batch 8 per device in float32 and bfloat16 (vs PyTorch float32), and the device
peak bytes of that step (the "1024 batch 8 fits in 16 GB" target). CPU: 256 px, batch 2 for both. `--tiny`: 32 px,
batch 1, one iteration (a smoke run of every job). Each measurement runs in its own process (the `--one` mode of its
script) with its own timeout, so a slow or failed one costs only itself, and no process imports both PyTorch and JAX:
a PyTorch job writes the generator's random weights once (`generator/weights`), the JAX jobs read that file. A job
still running when the budget ends is stopped (SIGTERM, then SIGKILL), and what did not run is reported as not measured; on SIGTERM or
Ctrl-C the table of what was measured so far is printed and written. `--dry-run` prints the plan; `--build-only`
runs every job without timing (networks built, JAX functions traced, nothing compiled).

A later bench/*.py joins by adding an entry to BENCHMARKS. A whole-script entry runs `script ARGS --json FILE` and
keeps that JSON; a `row` dict in it (setting, ratio, and optionally jax/torch/peak; the name and target are this
file's) fills its line in the table. A `--one` job's JSON line may carry such a `row` too: the studio engine's batching
(`studio/jax/engine`, no web server, no gradio) joins that way.
"""
import argparse
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from ffclip_jax.fileio import atomic_write, write_json_atomic  # noqa: E402  (numpy-free, framework-free)

GIB = 2 ** 30
TARGETS = dict(generator_backward=1.3, train_step=3.0, memory_bytes=16 * GIB, studio_batching=3.0)


@dataclasses.dataclass
class Job:
    label: str     # key in the results
    script: str    # path relative to the repository root
    args: list
    timeout: float
    whole: bool = False  # True: run the whole script with --json FILE and keep that file; else `--one`, last line
    priority: int = 5    # lower runs first: the targets' measurements before the rest, in case the budget runs out
    needs: str = ""      # the label of a job whose success this one needs (its output file)


def sizes(dev, quick=False, tiny=False):
    """Sizes, iterations and per-job timeouts (seconds) for the device `dev`. On an accelerator a timeout bounds
    what a hung compile can cost the budget; on CPU the budget alone bounds the run (a shared CPU is slow)."""
    if tiny:
        return dict(size=32, gen_batch=1, train_batch=dev["count"], gen_iters=1, train_iters=1, gen_timeout=300,
                    train_timeout=900)
    if dev["platform"] != "cpu":
        return dict(size=1024, gen_batch=8, train_batch=8 * dev["count"], gen_iters=3 if quick else 10,
                    train_iters=2 if quick else 5, gen_timeout=180, train_timeout=300)
    return dict(size=256, gen_batch=2, train_batch=2, gen_iters=1 if quick else 2, train_iters=1,
                gen_timeout=600, train_timeout=900)


def generator_jobs(dev, s, work):
    weights = os.path.join(work, f"generator-{s['size']}.npz")
    base = ["--size", s["size"], "--batch", s["gen_batch"], "--iters", s["gen_iters"], "--torch-device", dev["torch"],
            "--weights", weights]
    write = Job("generator/weights", "bench/generator.py", ["--size", s["size"], "--write-weights", weights],
                s["gen_timeout"], priority=-1)
    return [write] + [Job(f"generator/{fw}/{mode}", "bench/generator.py", base + ["--one", f"{fw}:{form}:{mode}"],
                          s["gen_timeout"], priority=0 if mode == "backward" else 2, needs=write.label)
                      for mode in ("backward", "forward") for fw, form in (("torch", "grouped"),
                                                                            ("jax", "input_scaling"))]


def train_jobs(dev, s, work):
    base = ["--size", s["size"], "--batch", s["train_batch"], "--iters", s["train_iters"],
            "--torch-device", dev["torch"]]
    jobs = [Job("train_step/jax/float32", "bench/train_step.py", base + ["--dtype", "float32", "--one", "jax"],
                s["train_timeout"], priority=1),
            Job("train_step/torch/float32", "bench/train_step.py", base + ["--dtype", "float32", "--one", "torch"],
                s["train_timeout"], priority=1),
            Job("train_step/jax/bfloat16", "bench/train_step.py", base + ["--dtype", "bfloat16", "--one", "jax"],
                s["train_timeout"], priority=3)]
    return jobs if dev["platform"] != "cpu" else jobs[:2]  # XLA:CPU has no fast bfloat16: nothing to learn there


def studio_jobs(dev, s, work):
    """The studio engine's batching and slider frame time without a web server (`--one engine`, every device image
    can run it): at the device's size on an accelerator, 32 px on CPU. The Gradio server under 1, 4 and 16 clients,
    batched and not, where gradio is installed: the 1024 model on an accelerator, 32 px on CPU (its 256 px run takes
    longer than the whole budget there: `bench/studio.py --sizes 256` on its own)."""
    accel = dev["platform"] != "cpu"
    engine = ["--one", "engine", "--size", s["size"] if accel else 32, "--iters", 1 if s["gen_iters"] == 1 else 3]
    jobs = [Job("studio/jax/engine", "bench/studio.py", engine + (["--device"] if accel else []),
                300 if accel else 900, priority=2)]
    if dev["gradio"]:
        args = ["--part", "gradio"] + (["--quick", "--device"] if accel else ["--quick", "--sizes", "32"])
        jobs.append(Job("studio/gradio", "bench/studio.py", args, 300, whole=True, priority=4))
    return jobs


def refine_jobs(dev, s, work):
    """W+ and PTI refinement steps/s against the PyTorch loops: 1024 px batch 8 on an accelerator (PTI with vmap and
    map), 256 px batch 2 on CPU (map; one timed step; longer than the budget leaves on a shared CPU: run
    `bench/refine.py` on its own there)."""
    args = ["--size", s["size"], "--batch", s["gen_batch"], "--iters", s["train_iters"], "--torch-device", dev["torch"]]
    if dev["platform"] == "cpu":
        args += ["--jax-batchings", "map"]
    return [Job("refine", "bench/refine.py", args, 480 if dev["platform"] != "cpu" else 420, whole=True, priority=4)]


def e4e_input_size(s):
    return 64 if s["size"] < 256 else 256


def invert_jobs(dev, s, work):
    """e4e inversion through the Editor on one device and on every local device (where there is more than one),
    the PyTorch e4e on one; the generator's size sets the styles, the input is e4e's 256 px (64 px with --tiny);
    the refinement stages (W+, PTI: 2 steps a call) likewise on one device and on every local device."""
    base = ["--size", s["size"], "--input-size", e4e_input_size(s), "--batch", s["gen_batch"],
            "--iters", s["gen_iters"], "--torch-device", dev["torch"], "--refine-steps", 2]
    every = dev["count"] > 1
    ones = ["torch", "jax:1"] + (["jax:all"] if every else []) + [
        f"jax:{n}:{stage}" for stage in ("w+", "pti") for n in ("1",) + (("all",) if every else ())]
    return [Job(f"invert/{one.replace(':', '/')}", "bench/invert.py", base + ["--one", one], s["gen_timeout"],
                priority=3) for one in ones]


# (name, script, jobs(dev, sizes, work folder)); an entry whose script does not exist (yet) is left out.
BENCHMARKS = [
    ("generator", "bench/generator.py", generator_jobs),
    ("train_step", "bench/train_step.py", train_jobs),
    ("studio", "bench/studio.py", studio_jobs),
    ("invert", "bench/invert.py", invert_jobs),
    ("refine", "bench/refine.py", refine_jobs),
]

# Each probe runs in its own process: one imports JAX, the other PyTorch, never both.
JAX_PROBE = r"""
import importlib.metadata as md, json, sys
sys.path.insert(0, sys.argv[1])
import common, jax
d = jax.devices()
versions = {}
for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "numpy", "transformers"):
    try:
        versions[name] = md.version(name)
    except md.PackageNotFoundError:
        versions[name] = None
print(json.dumps(dict(platform=d[0].platform, kind=str(d[0].device_kind), count=len(d), versions=versions,
                      python=sys.version.split()[0], hardware=common.hardware())))
"""
TORCH_PROBE = r"""
import json
try:
    import torch
except ImportError:
    print(json.dumps(dict(torch_cuda=None)))
else:
    cuda = torch.cuda.is_available()
    print(json.dumps(dict(torch_cuda=cuda, torch=torch.__version__, cuda=torch.version.cuda,
                          cudnn=torch.backends.cudnn.version() if cuda else None)))
"""


def device_name(kind: str) -> str:
    """'NVIDIA H200' -> 'nvidia-h200', 'cpu' -> 'cpu' (the results files' name)."""
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") or "unknown"


def _probe(code: str, what: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, HERE], capture_output=True, text=True, timeout=300)
    if out.returncode:
        sys.exit(f"error: could not start {what}: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def probe_device() -> dict:
    """The JAX device and PyTorch's CUDA, each in a child process (this one holds no accelerator memory while the
    jobs run, and imports neither framework)."""
    dev = _probe(JAX_PROBE, "JAX")
    t = _probe(TORCH_PROBE, "PyTorch")
    dev["torch_cuda"] = t.pop("torch_cuda")
    dev["versions"].update(t)
    dev["name"] = device_name(dev["kind"] if dev["platform"] != "cpu" else "cpu")
    dev["torch"] = "cuda" if dev["platform"] == "gpu" and dev["torch_cuda"] else "cpu"
    dev["gradio"] = all(importlib.util.find_spec(m) is not None for m in ("gradio", "gradio_client"))
    return dev


def plan(dev, s, work):
    jobs = []
    for _, script, make in BENCHMARKS:
        if os.path.exists(os.path.join(ROOT, script)):
            jobs += make(dev, s, work)
    return sorted(jobs, key=lambda j: j.priority)


def _group():
    """Popen arguments that put a job in its own process group (so stopping it stops what it started too), within
    this session (so whoever stops this session's processes stops it as well)."""
    return dict(process_group=0) if sys.version_info >= (3, 11) else dict(preexec_fn=os.setpgrp)


def _stop_group(proc):
    """SIGTERM the job's process group (a job may clean up: bench/studio.py removes its work folder), SIGKILL what
    is left of it after STOP_GRACE_S; its (stdout, stderr) so far."""
    out = None
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=STOP_GRACE_S)
    except (ProcessLookupError, subprocess.TimeoutExpired):  # already gone / still running
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # what ignored SIGTERM, or outlived the job's own process
    except ProcessLookupError:
        pass
    return out if out is not None else proc.communicate()


def run_job(job: Job, timeout: float, budget_cut: bool, build_only: bool = False, log=None) -> dict:
    """Run one job; its result dict, or dict(error=...). budget_cut: `timeout` is what is left of the budget."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, os.path.join(ROOT, job.script)] + [str(a) for a in job.args]
    if build_only and "--one" in job.args:
        cmd.append("--build-only")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.json")
        if job.whole:
            cmd += ["--json", path]
        if log:
            log.write(f"\n$ {' '.join(cmd)}\n")
            log.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                                **_group())
        stop = None
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop = "the budget ended" if budget_cut else "its timeout"
        except BaseException:  # this run interrupted (SIGTERM, Ctrl-C): stop the job's process group, pass it on
            _stop_group(proc)
            raise
        if stop:
            stdout, stderr = _stop_group(proc)
        if log:
            log.write("".join(stderr.splitlines(True)[-30:]))
            log.flush()
        if stop:
            return dict(error=f"stopped at {stop} after {timeout:.0f} s", wall_s=time.perf_counter() - t0)
        wall = time.perf_counter() - t0
        if proc.returncode:
            tail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {proc.returncode}"
            return dict(error=tail, wall_s=wall)
        try:
            if job.whole:
                with open(path) as f:
                    result = json.load(f)
            else:
                result = json.loads(stdout.strip().splitlines()[-1])
        except (OSError, ValueError, IndexError) as e:
            return dict(error=f"no result: {e}", wall_s=wall)
    result["wall_s"] = wall
    return result


# ---- the table -------------------------------------------------------------------------------------------------

HEADER = ("| benchmark | setting | JAX images/s | PyTorch images/s | JAX / PyTorch | JAX peak | target | status |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")


def _ok(r):
    return r is not None and "error" not in r and not r.get("build_only")


def _why(r, accel):
    if r is None:
        return "not measured (not run)"
    if "error" in r:
        return f"not measured ({r['error'][:80]})"
    if r.get("build_only"):
        return "not measured (build-only run)"
    return None if accel else "not measured (CPU run; the target is for a GPU/TPU)"


def rows(results, dev, s):
    """One dict per table row: every number and the target's status."""
    accel = dev["platform"] != "cpu"
    g = lambda k: results.get(k)
    out = []

    def ratio_row(name, setting, jax_r, torch_r, target):
        row = dict(benchmark=name, setting=setting, jax=jax_r["images_per_s"] if _ok(jax_r) else None,
                   torch=torch_r["images_per_s"] if _ok(torch_r) else None,
                   peak=jax_r["peak_bytes"] if _ok(jax_r) else None)
        row["ratio"] = row["jax"] / row["torch"] if row["jax"] and row["torch"] else None
        row["target"] = f">= {target}x" if target else "-"
        if target:
            why = _why(jax_r if not _ok(jax_r) else torch_r, accel)
            row["status"] = why or ("met" if row["ratio"] >= target else "not met")
        else:
            row["status"] = "-" if _ok(jax_r) and _ok(torch_r) else _why(jax_r if not _ok(jax_r) else torch_r, True)
        out.append(row)

    gset = f"{s['size']} px, batch {s['gen_batch']}, input_scaling"
    if any(k.startswith("generator/") for k in results):
        ratio_row("generator forward", gset, g("generator/jax/forward"), g("generator/torch/forward"), None)
        ratio_row("generator forward+backward", gset, g("generator/jax/backward"), g("generator/torch/backward"),
                  TARGETS["generator_backward"])
    if any(k.startswith("train_step/") for k in results):
        per = s["train_batch"] // dev["count"]
        tset = f"{s['size']} px, batch {per}/device x {dev['count']}"
        ratio_row("training step float32", tset, g("train_step/jax/float32"), g("train_step/torch/float32"),
                  TARGETS["train_step"])
        ratio_row("training step bfloat16", tset + " (PyTorch float32)", g("train_step/jax/bfloat16") or
                  (None if accel else dict(error="not run on CPU: XLA:CPU has no fast bfloat16")),
                  g("train_step/torch/float32"), TARGETS["train_step"])
        for dtype in ("float32", "bfloat16"):
            r = g(f"train_step/jax/{dtype}")
            if not accel and dtype == "bfloat16":
                continue
            row = dict(benchmark=f"training step memory, {dtype}", setting=tset, jax=None, torch=None, ratio=None,
                       peak=r["peak_bytes"] if _ok(r) else None, target=f"<= {TARGETS['memory_bytes'] / GIB:.0f} GiB")
            if not accel:
                row["status"] = (f"not measured (CPU run: process RSS at {s['size']} px, not a 1024 px batch 8 "
                                 "device peak)")
            else:
                row["status"] = _why(r, accel) or ("met" if row["peak"] <= TARGETS["memory_bytes"] else "not met")
            out.append(row)
    if any(k.startswith("invert/") for k in results):
        out += invert_table_rows(results, dev, s)
    if "refine" in results:
        out += refine_table_rows(results["refine"], s)
    out.append(whole_row(results.get("studio/jax/engine"), "studio engine batching",
                         "16 clients, batched vs one at a time", TARGETS["studio_batching"], accel))
    out.append(whole_row(results.get("studio/gradio"), "studio server (Gradio)", "1/4/16 clients, gradio_client",
                         None, accel, pending=None if dev["gradio"] else "gradio not installed"))
    return out


def invert_table_rows(results, dev, s):
    """e4e inversion: JAX on one device against PyTorch; every local device against one (the scaling, ideal = the
    device count); the refinement stages' images/s likewise (bench/refine.py has them against PyTorch)."""
    one, torch_r, every = (results.get(f"invert/{k}") for k in ("jax/1", "torch", "jax/all"))
    setting = f"{s['size']} px generator (e4e input {e4e_input_size(s)}), batch {s['gen_batch']}/device"
    row = dict(benchmark="e4e inversion, 1 device", setting=setting, jax=one["images_per_s"] if _ok(one) else None,
               torch=torch_r["images_per_s"] if _ok(torch_r) else None, peak=one["peak_bytes"] if _ok(one) else None,
               target="-")
    row["ratio"] = row["jax"] / row["torch"] if row["jax"] and row["torch"] else None
    row["status"] = "-" if row["ratio"] else _why(one if not _ok(one) else torch_r, True)
    n = dev["count"]
    out = [row, all_devices_row("e4e inversion", setting, every, row, n)]
    for stage, name in (("w+", "W+"), ("pti", "PTI")):
        r1, rn = results.get(f"invert/jax/1/{stage}"), results.get(f"invert/jax/all/{stage}")
        steps = r1.get("refine_steps") if _ok(r1) else None
        rset = f"{s['size']} px, batch {s['gen_batch']}/device, {steps or 2} steps a call (images/s at those steps)"
        one_row = dict(benchmark=f"{name} refinement, 1 device", setting=rset,
                       jax=r1["images_per_s"] if _ok(r1) else None, torch=None, ratio=None,
                       peak=r1["peak_bytes"] if _ok(r1) else None, target="-",
                       status="-" if _ok(r1) else _why(r1, True))
        out += [one_row, all_devices_row(f"{name} refinement", rset, rn, one_row, n)]
    return out


def refine_table_rows(r, s):
    """W+ and PTI refinement against the PyTorch loops, from bench/refine.py's JSON: the fastest JAX batching of
    each stage, image-steps/s, and refine.py's own target (its CPU and accelerator values)."""
    out = []
    for stage, name in (("w_plus", "W+"), ("pti", "PTI")):
        row = dict(benchmark=f"{name} refinement vs PyTorch", setting=f"{s['size']} px, batch {s['gen_batch']}",
                   jax=None, torch=None, ratio=None, peak=None, target="-")
        if not _ok(r):
            out.append(dict(row, status=_why(r, True)))
            continue
        row["target"] = f">= {r['target']}x"
        mine = [x for x in r["results"] if x["stage"] == stage]
        torch_r = next((x for x in mine if x["framework"] == "torch"), None)
        jax_r = max((x for x in mine if x["framework"] == "jax"), key=lambda x: x["image_steps_per_s"], default=None)
        if jax_r:
            row.update(setting=f"{row['setting']}, {jax_r['batching']} (image-steps/s)",
                       jax=jax_r["image_steps_per_s"], peak=jax_r["peak_bytes"])
        if torch_r:
            row["torch"] = torch_r["image_steps_per_s"]
        row["ratio"] = row["jax"] / row["torch"] if row["jax"] and row["torch"] else None
        row["status"] = ("not measured (a framework's run failed: see the log)" if row["ratio"] is None else
                         "met" if row["ratio"] >= r["target"] else "not met")
        out.append(row)
    return out


def all_devices_row(name, setting, r, one_row, n):
    """The row of a job on all `n` local devices; its ratio is against `one_row` (one device), ideal n."""
    row = dict(benchmark=f"{name}, all {n} local devices", setting=setting + " (ratio: vs 1 device)",
               jax=r["images_per_s"] if _ok(r) else None, torch=None, peak=r["peak_bytes"] if _ok(r) else None,
               target=f"ideal {n}x")
    row["ratio"] = row["jax"] / one_row["jax"] if row["jax"] and one_row["jax"] else None
    if n == 1:
        row["status"] = "not measured (one device: simulated CPU devices share its cores, README)"
    else:
        row["status"] = _why(r, True) if row["ratio"] is None else f"{row['ratio'] / n:.0%} of ideal"
    return row


def whole_row(r, name, setting, target, accel, pending=None):
    """The row of a whole-script job: the `row` dict of its JSON where it has one, else 'ran'; `pending`: why it
    was not planned."""
    row = dict(benchmark=name, setting=setting, jax=None, torch=None, ratio=None, peak=None,
               target=f">= {target}x" if target else "-")
    if r is None and pending:
        return dict(row, status=f"not measured ({pending})")
    if not _ok(r):
        return dict(row, status=_why(r, accel))
    row.update({k: v for k, v in r.get("row", {}).items() if k in ("setting", "jax", "torch", "ratio", "peak")})
    if row["ratio"] is None or not target:
        return dict(row, status="ran (numbers in the JSON)" if row["ratio"] is None else "-")
    return dict(row, status=(_why(r, accel) or ("met" if row["ratio"] >= target else "not met")))


def markdown(table_rows):
    f = lambda v, fmt: "-" if v is None else fmt.format(v)
    lines = [HEADER]
    for r in table_rows:
        lines.append(f"| {r['benchmark']} | {r['setting']} | {f(r['jax'], '{:.3f}')} | {f(r['torch'], '{:.3f}')} | "
                     f"{f(r['ratio'], '{:.2f}x')} | {f(r['peak'] and r['peak'] / GIB, '{:.2f} GiB')} | "
                     f"{r['target']} | {r['status']} |")
    return "\n".join(lines)


# ---- the run ---------------------------------------------------------------------------------------------------

def write_text_atomic(path, text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


class Interrupted(Exception):
    """SIGTERM (e.g. the device tool's time limit) or Ctrl-C during the run."""


def _interrupt(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def _summary(r):
    if "error" in r:
        return r["error"]
    if "images_per_s" in r:
        phases = ", ".join(f"{name} {r[k]:.0f} s" for name, k in (("build", "build_s"), ("warm-up/compile", "warmup_s"),
                                                                  ("timed", "timed_s")) if k in r)
        return f"{r['images_per_s']:.3f} img/s, peak {r['peak_bytes'] / 2**20:.0f} MiB" + (f" ({phases})" if phases
                                                                                           else "")
    return "built" if r.get("build_only") else "done"


MIN_START_S = 20  # a job is not started with less of the budget left
STOP_GRACE_S = 5  # a stopped job's time to exit after SIGTERM, before SIGKILL


def run_plan(jobs, deadline, build_only=False, log=None, after=lambda results: None):
    """Run `jobs` in order until `deadline` (a time.perf_counter() value); returns (results, cut): cut is None, 'the
    budget' or the signal's name. A job whose `needs` failed, or that would start with under MIN_START_S seconds
    left, is not run; one still running at the deadline is stopped; SIGTERM/Ctrl-C (Interrupted) stops the job in
    flight and the rest. after(results) runs after every job (the files are rewritten there)."""
    results, cut = {}, None
    try:
        for j in jobs:
            left = deadline - time.perf_counter()
            need = results.get(j.needs) if j.needs else None
            if j.needs and not (need and "error" not in need):
                r = dict(error=f"not run: {j.needs} failed")
            elif left < MIN_START_S:
                r, cut = dict(error="not run: the budget was spent"), "the budget"
            elif build_only and j.whole:
                r = dict(build_only=True)
            else:
                timeout = min(j.timeout, left)
                r = run_job(j, timeout, timeout < j.timeout, build_only, log)
                if r.get("error", "").startswith("stopped at the budget"):
                    cut = "the budget"
            results[j.label] = r
            wall = f"  [{r['wall_s']:.0f} s]" if "wall_s" in r else ""
            print(f"  {j.label:28s} {_summary(r)}{wall}", flush=True)
            after(results)
    except Interrupted as e:
        cut = str(e)
        for j in jobs:
            results.setdefault(j.label, dict(error=f"{e} ended the run"))
    return results, cut


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=480, help="seconds for everything (default 8 minutes)")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer timed iterations")
    size.add_argument("--tiny", action="store_true", help="32 px, batch 1, one iteration: a smoke run of every job")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the plan and the table header, run nothing")
    mode.add_argument("--build-only", action="store_true",
                      help="run every job without timing: networks built, JAX functions traced, nothing compiled")
    ap.add_argument("--results-dir", default=os.path.join(HERE, "results"),
                    help="where <device>.json/.md/.log go (default bench/results; device.sh: $OUT)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    dev = probe_device()
    s = sizes(dev, args.quick, args.tiny)
    work = tempfile.mkdtemp(prefix="ffclip-bench-")
    jobs = plan(dev, s, work)
    stem = os.path.join(args.results_dir, dev["name"])
    v = dev["versions"]
    print(f"device: {dev['kind']} ({dev['platform']}, {dev['count']} device(s)), PyTorch on {dev['torch']}; "
          f"budget {args.budget:.0f} s; results -> {os.path.relpath(stem, ROOT)}.json/.md/.log")
    print(f"versions: Python {dev['python']}, " + ", ".join(f"{k} {v[k]}" for k in v if v[k]) +
          f"; gradio {'installed' if dev['gradio'] else 'not installed'}")
    for j in jobs:
        print(f"  {j.label:28s} {j.script} {' '.join(map(str, j.args))}  (timeout {j.timeout:.0f} s)")
    if args.dry_run:
        print(HEADER)
        shutil.rmtree(work, ignore_errors=True)
        return 0
    os.makedirs(args.results_dir, exist_ok=True)

    def save(results, cut=None, final=False):
        table_rows = rows(results, dev, s)
        table = markdown(table_rows)
        done = sum(1 for r in results.values() if _ok(r) or r.get("build_only"))
        head = (f"{dev['kind']}, {dev['hardware'].get('cpus')} CPUs; {done} of {len(jobs)} jobs done in "
                f"{time.perf_counter() - t0:.0f} s" + (f"; cut short by {cut}" if cut else "")
                + ("" if final else "; still running"))
        write_json_atomic(stem + ".json", dict(device=dev, quick=args.quick, tiny=args.tiny, budget_s=args.budget,
                                               build_only=args.build_only, complete=final and not cut, cut=cut,
                                               targets=TARGETS, sizes=s, plan=[dataclasses.asdict(j) for j in jobs],
                                               results=results, rows=table_rows, markdown=table,
                                               wall_s=time.perf_counter() - t0))
        write_text_atomic(stem + ".md", f"{head}\n\n{table}\n")
        return head, table

    old = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with open(stem + ".log", "w") as log:
            results, cut = run_plan(jobs, t0 + args.budget, args.build_only, log, save)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        shutil.rmtree(work, ignore_errors=True)
    head, table = save(results, cut, final=True)
    print(f"\n{head}\n\n{table}\n\nwrote {os.path.relpath(stem, ROOT)}.json/.md/.log")
    return 0 if cut is None else 1


if __name__ == "__main__":
    sys.exit(main())
