"""Every benchmark, sized for the device found, in at most `--budget` seconds (default 8 minutes); writes
bench/results/<device>.json with every number and prints one markdown table (ratios vs PyTorch, targets).

    python bench/all.py [--quick] [--budget 480] [--dry-run]

GPU/TPU: generator 1024 px batch 8 (forward, forward+backward; JAX input_scaling vs PyTorch), the FFCLIP training
step at the ffhq size (1024 px) with batch 8 per device in float32 and bfloat16 (vs PyTorch float32), and the device
peak bytes of that step (the "1024 batch 8 fits in 16 GB" target). CPU: 256 px, batch 2 for both. Each measurement
runs in its own process (the `--one` mode of the script) with its own timeout, so a slow or failed one costs only
itself; what did not run within the budget is reported as not measured. A later bench/*.py joins by adding an entry
to BENCHMARKS (a whole-script entry runs `script ARGS --json FILE` and keeps that JSON).
"""
import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GIB = 2 ** 30
TARGETS = dict(generator_backward=1.3, train_step=3.0, memory_bytes=16 * GIB)


@dataclasses.dataclass
class Job:
    label: str     # key in the results
    script: str    # path relative to the repository root
    args: list
    timeout: float
    whole: bool = False  # True: run the whole script with --json FILE and keep that file; else `--one`, last line
    priority: int = 5    # lower runs first: the targets' measurements before the rest, in case the budget runs out


def _sizes(dev, quick):
    accel = dev["platform"] != "cpu"
    if accel:
        return dict(size=1024, gen_batch=8, train_batch=8 * dev["count"], gen_iters=3 if quick else 10,
                    train_iters=2 if quick else 5, gen_timeout=150, train_timeout=240)
    return dict(size=256, gen_batch=2, train_batch=2, gen_iters=1 if quick else 2, train_iters=1,
                gen_timeout=240, train_timeout=300)


def generator_jobs(dev, quick):
    s = _sizes(dev, quick)
    base = ["--size", s["size"], "--batch", s["gen_batch"], "--iters", s["gen_iters"], "--torch-device", dev["torch"]]
    return [Job(f"generator/{fw}/{mode}", "bench/generator.py", base + ["--one", f"{fw}:{form}:{mode}"],
                s["gen_timeout"], priority=0 if mode == "backward" else 2)
            for mode in ("backward", "forward") for fw, form in (("torch", "grouped"), ("jax", "input_scaling"))]


def train_jobs(dev, quick):
    s = _sizes(dev, quick)
    base = ["--size", s["size"], "--batch", s["train_batch"], "--iters", s["train_iters"],
            "--torch-device", dev["torch"]]
    jobs = [Job("train_step/jax/float32", "bench/train_step.py", base + ["--dtype", "float32", "--one", "jax"],
                s["train_timeout"], priority=1),
            Job("train_step/torch/float32", "bench/train_step.py", base + ["--dtype", "float32", "--one", "torch"],
                s["train_timeout"], priority=1),
            Job("train_step/jax/bfloat16", "bench/train_step.py", base + ["--dtype", "bfloat16", "--one", "jax"],
                s["train_timeout"], priority=3)]
    return jobs if dev["platform"] != "cpu" else jobs[:2]  # XLA:CPU has no fast bfloat16: nothing to learn there


def studio_jobs(dev, quick):
    """The studio under 1, 4 and 16 clients, batched and not: the 1024 model on an accelerator, 32 px on CPU (its
    256 px run takes longer than the whole budget there: `bench/studio.py --sizes 256` on its own)."""
    args = ["--quick", "--device"] if dev["platform"] != "cpu" else ["--quick", "--sizes", "32"]
    return [Job("studio", "bench/studio.py", args, 300, whole=True, priority=4)]


def refine_jobs(dev, quick):
    """W+ and PTI refinement steps/s against the PyTorch loops: 1024 px batch 8 on an accelerator (PTI with vmap and
    map), 256 px batch 2 on CPU (map; one timed step; longer than the budget leaves on a shared CPU: run
    `bench/refine.py` on its own there)."""
    if dev["platform"] != "cpu":
        args = ["--size", "1024", "--batch", "8", "--iters", "2" if quick else "5", "--torch-device", dev["torch"]]
        return [Job("refine", "bench/refine.py", args, 480, whole=True, priority=4)]
    args = ["--size", "256", "--batch", "2", "--iters", "1", "--jax-batchings", "map", "--torch-device", dev["torch"]]
    return [Job("refine", "bench/refine.py", args, 420, whole=True, priority=4)]


# (name, script, jobs(dev, quick)); an entry whose script does not exist (yet) is left out.
BENCHMARKS = [
    ("generator", "bench/generator.py", generator_jobs),
    ("train_step", "bench/train_step.py", train_jobs),
    ("studio", "bench/studio.py", studio_jobs),
    ("refine", "bench/refine.py", refine_jobs),
]

PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import common, jax
d = jax.devices()
try:
    import torch
    cuda = torch.cuda.is_available()
except ImportError:
    cuda = None
print(json.dumps(dict(platform=d[0].platform, kind=str(d[0].device_kind), count=len(d), torch_cuda=cuda,
                      hardware=common.hardware())))
"""


def device_name(kind: str) -> str:
    """'NVIDIA H200' -> 'nvidia-h200', 'cpu' -> 'cpu' (the results file's name)."""
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") or "unknown"


def probe_device() -> dict:
    """The JAX device, in a child process so that this one holds no accelerator memory while the others run."""
    out = subprocess.run([sys.executable, "-c", PROBE, HERE], capture_output=True, text=True, timeout=300)
    if out.returncode:
        sys.exit(f"error: could not start JAX: {out.stderr.strip()[-2000:]}")
    dev = json.loads(out.stdout.strip().splitlines()[-1])
    dev["name"] = device_name(dev["kind"] if dev["platform"] != "cpu" else "cpu")
    dev["torch"] = "cuda" if dev["platform"] == "gpu" and dev["torch_cuda"] else "cpu"
    return dev


def plan(dev, quick):
    jobs = []
    for _, script, make in BENCHMARKS:
        if os.path.exists(os.path.join(ROOT, script)):
            jobs += make(dev, quick)
    return sorted(jobs, key=lambda j: j.priority)


def run_job(job: Job, timeout: float) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, os.path.join(ROOT, job.script)] + [str(a) for a in job.args]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.json")
        if job.whole:
            cmd += ["--json", path]
        t0 = time.perf_counter()
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return dict(error=f"timed out after {timeout:.0f} s", wall_s=time.perf_counter() - t0)
        wall = time.perf_counter() - t0
        if out.returncode:
            tail = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit status {out.returncode}"
            return dict(error=tail, wall_s=wall)
        try:
            if job.whole:
                with open(path) as f:
                    result = json.load(f)
            else:
                result = json.loads(out.stdout.strip().splitlines()[-1])
        except (OSError, ValueError, IndexError) as e:
            return dict(error=f"no result: {e}", wall_s=wall)
    result["wall_s"] = wall
    return result


# ---- the table -------------------------------------------------------------------------------------------------

HEADER = ("| benchmark | setting | JAX images/s | PyTorch images/s | JAX / PyTorch | JAX peak | target | status |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")


def _ok(r):
    return r is not None and "error" not in r


def _why(r, accel):
    if r is None:
        return "not measured (not run)"
    if "error" in r:
        return f"not measured ({r['error'][:80]})"
    return None if accel else "not measured (CPU run; the target is for a GPU/TPU)"


def rows(results, dev, quick):
    """One dict per table row: every number and the target's status."""
    accel = dev["platform"] != "cpu"
    s = _sizes(dev, quick)
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
        ratio_row("training step bfloat16", tset + " (PyTorch float32)", g("train_step/jax/bfloat16"),
                  g("train_step/torch/float32"), TARGETS["train_step"])
        for dtype in ("float32", "bfloat16"):
            r = g(f"train_step/jax/{dtype}")
            if not accel and dtype == "bfloat16":
                continue
            row = dict(benchmark=f"training step memory, {dtype}", setting=tset, jax=None, torch=None, ratio=None,
                       peak=r["peak_bytes"] if _ok(r) else None, target=f"<= {TARGETS['memory_bytes'] / GIB:.0f} GiB")
            if not accel:
                row["status"] = "not measured (CPU run: process RSS at 256 px, not a 1024 px batch 8 device peak)"
            else:
                row["status"] = _why(r, accel) or ("met" if row["peak"] <= TARGETS["memory_bytes"] else "not met")
            out.append(row)
    for name, script, make in BENCHMARKS[2:]:
        if name in results:
            r = results[name]
            out.append(dict(benchmark=name, setting=" ".join(make(dev, quick)[0].args), jax=None, torch=None,
                            ratio=None, peak=None, target="-",
                            status="ran (numbers in the JSON)" if _ok(r) else _why(r, accel)))
    return out


def markdown(table_rows):
    f = lambda v, fmt: "-" if v is None else fmt.format(v)
    lines = [HEADER]
    for r in table_rows:
        lines.append(f"| {r['benchmark']} | {r['setting']} | {f(r['jax'], '{:.3f}')} | {f(r['torch'], '{:.3f}')} | "
                     f"{f(r['ratio'], '{:.2f}x')} | {f(r['peak'] and r['peak'] / GIB, '{:.2f} GiB')} | "
                     f"{r['target']} | {r['status']} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=480, help="seconds for everything (default 8 minutes)")
    ap.add_argument("--quick", action="store_true", help="fewer timed iterations")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the table header, run nothing")
    ap.add_argument("--json", help="results file (default bench/results/<device>.json)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    dev = probe_device()
    jobs = plan(dev, args.quick)
    path = args.json or os.path.join(HERE, "results", f"{dev['name']}.json")
    print(f"device: {dev['kind']} ({dev['platform']}, {dev['count']} device(s)), PyTorch on {dev['torch']}; "
          f"budget {args.budget:.0f} s; results -> {os.path.relpath(path, ROOT)}")
    for j in jobs:
        print(f"  {j.label:28s} {j.script} {' '.join(map(str, j.args))}  (timeout {j.timeout:.0f} s)")
    if args.dry_run:
        print(HEADER)
        return
    deadline = t0 + args.budget
    results = {}
    for j in jobs:
        left = deadline - time.perf_counter()
        if left < 20:
            results[j.label] = dict(error="time budget spent")
            print(f"  {j.label:28s} skipped: time budget spent", flush=True)
            continue
        r = results[j.label] = run_job(j, min(j.timeout, left))
        msg = r["error"] if "error" in r else (f"{r['images_per_s']:.3f} img/s, peak {r['peak_bytes'] / 2**20:.0f} MiB"
                                               if "images_per_s" in r else "done")
        print(f"  {j.label:28s} {msg}  [{r['wall_s']:.0f} s]", flush=True)
    table_rows = rows(results, dev, args.quick)
    table = markdown(table_rows)
    print(f"\n{dev['kind']}, {dev['hardware'].get('cpus')} CPUs; total {time.perf_counter() - t0:.0f} s\n")
    print(table)
    sys.path.insert(0, HERE)
    import common

    common.write_results(path, dict(device=dev, quick=args.quick, budget_s=args.budget, targets=TARGETS,
                                    plan=[dataclasses.asdict(j) for j in jobs], results=results, rows=table_rows,
                                    markdown=table, wall_s=time.perf_counter() - t0))


if __name__ == "__main__":
    main()
