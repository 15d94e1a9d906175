"""What the bench scripts share: one framework per process (`isolate`), the timing loop, peak memory, the hardware
description and the JSON results file. Benchmarks import no test module and never pytest: the one thing they take
from tests/ is the PyTorch oracle package `tests/torch_ref` (reference models, torch only), which a torch process
gets on its path from `isolate("torch")`."""
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORACLES = os.path.join(ROOT, "tests")  # holds the torch_ref package (and the test modules, which bench never imports)
sys.path.insert(0, ROOT)  # ffclip_jax, convert_weights and configs, from the source tree

from ffclip_jax.fileio import write_json_atomic  # noqa: E402

OTHER = {"jax": ("torch",), "torch": ("jax", "jaxlib", "flax")}  # what a process of each framework never imports


def isolate(framework: str) -> None:
    """Declare this process a `framework` ('jax' or 'torch') benchmark: from here on the other framework is not
    importable (a None entry in sys.modules: `import` raises ModuleNotFoundError and importlib.util.find_spec
    answers None, so libraries that use it optionally, such as transformers with torch, go without it). Call it
    before importing either framework: on a GPU the two would bring two CUDA/cuDNN stacks into one process."""
    names = OTHER[framework]
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in names and sys.modules[m] is not None)
    if loaded:
        raise RuntimeError(f"{framework} benchmark process: {', '.join(loaded[:3])} already imported")
    for name in names:
        sys.modules[name] = None
    if framework == "torch" and ORACLES not in sys.path:
        sys.path.append(ORACLES)  # `import torch_ref`


def default_torch_device() -> str:
    return "cuda" if os.environ.get("CUDA_VISIBLE_DEVICES", "") else "cpu"


def time_iters(step, iters: int, wait) -> dict:
    """Seconds of one warm-up call of step() (compilation, autotuning, the first run: `warmup_s`) and of the next
    `iters` calls (`timed_s`); wait(out) blocks until the asynchronous work of a call is done."""
    t0 = time.perf_counter()
    wait(step())
    t1 = time.perf_counter()
    for _ in range(iters):
        out = step()
    wait(out)
    return dict(warmup_s=t1 - t0, timed_s=time.perf_counter() - t1)


def peak_bytes(device_bytes=None) -> int:
    """The device's peak bytes in use where the framework reports one (GPU/TPU), else the process's peak RSS."""
    if device_bytes is not None:
        return int(device_bytes)
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def jax_peak_bytes() -> int:
    import jax

    return peak_bytes((jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use"))


def time_torch(step, iters: int, device):
    """(time_iters' dict, peak bytes) of a PyTorch step on `device` (a torch.device)."""
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = time_iters(step, iters, lambda _: torch.cuda.synchronize() if cuda else None)
    return times, peak_bytes(torch.cuda.max_memory_allocated() if cuda else None)


def measurement(out, t0: float, batch: int, iters: int, **fields) -> dict:
    """A job's JSON line. out: (time_iters' dict, peak bytes) from a timed run, None from a build-only one; t0: the
    job's start (perf_counter), so build_s is what came before the warm-up call (imports, weights, networks)."""
    elapsed = time.perf_counter() - t0
    if out is None:
        return dict(fields, build_only=True, build_s=elapsed)
    times, peak = out
    return dict(fields, batch=batch, iters=iters, images_per_s=batch * iters / times["timed_s"], peak_bytes=peak,
                build_s=elapsed - times["warmup_s"] - times["timed_s"], **times)


def run_child(script: str, args) -> dict:
    """Run `script ...` in a fresh interpreter and return the JSON dict on its last stdout line."""
    out = subprocess.run([sys.executable, os.path.abspath(script)] + [str(a) for a in args], capture_output=True,
                         text=True)
    if out.returncode:
        tail = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit status {out.returncode}"
        raise RuntimeError(f"{' '.join(map(str, args))}: {tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_children(script: str, runs, describe=None) -> list:
    """`run_child` for each (name, args) of `runs`: the results of those that ran, in order. A failed one is one
    line `NAME failed: why` on stderr; `describe(name, result)`, if given, is the line printed for each result."""
    results = []
    for name, args in runs:
        try:
            r = run_child(script, args)
        except RuntimeError as e:
            print(f"{name} failed: {e}", file=sys.stderr)
            continue
        results.append(r)
        if describe is not None:
            print(describe(name, r), flush=True)
    return results


def hardware() -> dict:
    import jax

    return dict(jax_device=str(jax.devices()[0].device_kind), jax_devices=jax.device_count(),
                machine=platform.processor() or platform.machine(), platform=platform.platform(),
                cpus=os.cpu_count())


def write_results(path: str, obj) -> None:
    write_json_atomic(path, obj)
    print(f"wrote {path}")
