"""What the bench scripts share: one measurement per subprocess (so each peak memory is its own), the timing loop,
peak memory, the hardware description and the JSON results file."""
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]  # ffclip_jax, convert_weights and the torch_ref oracle

from ffclip_jax.fileio import write_json_atomic  # noqa: E402


def default_torch_device() -> str:
    return "cuda" if os.environ.get("CUDA_VISIBLE_DEVICES", "") else "cpu"


def time_iters(step, iters: int, wait) -> float:
    """Seconds for `iters` calls of step() after one warm-up call (compilation, autotuning); wait(out) blocks until
    the asynchronous work of a call is done."""
    wait(step())
    t0 = time.perf_counter()
    for _ in range(iters):
        out = step()
    wait(out)
    return time.perf_counter() - t0


def peak_bytes(device_bytes=None) -> int:
    """The device's peak bytes in use where the framework reports one (GPU/TPU), else the process's peak RSS."""
    if device_bytes is not None:
        return int(device_bytes)
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def jax_peak_bytes() -> int:
    import jax

    return peak_bytes((jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use"))


def torch_peak_bytes(device) -> int:
    import torch

    return peak_bytes(torch.cuda.max_memory_allocated() if device.type == "cuda" else None)


def run_child(script: str, args) -> dict:
    """Run `script --one ...` in a fresh interpreter and return the JSON dict on its last stdout line."""
    out = subprocess.run([sys.executable, os.path.abspath(script)] + [str(a) for a in args], capture_output=True,
                         text=True)
    if out.returncode:
        tail = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit status {out.returncode}"
        raise RuntimeError(f"{' '.join(map(str, args))}: {tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def hardware() -> dict:
    import jax

    return dict(jax_device=str(jax.devices()[0].device_kind), jax_devices=jax.device_count(),
                machine=platform.processor() or platform.machine(), platform=platform.platform(),
                cpus=os.cpu_count())


def write_results(path: str, obj) -> None:
    write_json_atomic(path, obj)
    print(f"wrote {path}")
