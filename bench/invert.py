"""Benchmark: photos to w+ as `ffclip invert` and `ffclip data build --images` run them: e4e inversion through the
Editor's fixed batches (`Editor.invert_rows`: `--batch` rows per device, split over the devices) on one device and
on every local device, against the PyTorch e4e (torch_ref, upstream's modules) on one device, same sizes and random
weights (IR-SE50; the generator size sets the number of styles, 18 at 1024 px; the input is e4e's 256 x 256); and,
from the measured per-device rate, the wall time of inverting FFHQ (70,000 photos) and CelebA-HQ (30,000) on 8 and
64 chips (an estimate: it assumes the per-device rate holds at that scale and the photos are aligned already).

    python bench/invert.py --size 1024 --batch 8 [--iters 5] [--json bench/results/invert.json]

Each (framework, devices) runs in its own process (`--one jax:1`, `--one jax:all`, `--one torch`; no process imports
both frameworks); each fills its own random weights of the same shapes (timing does not depend on their values).
The refinement stages (W+ optimisation, pivotal tuning) join here when they are on main. On CPU, 'every local
device' is one device: XLA already spreads it over the cores, and simulated CPU devices (XLA_FLAGS) share those
cores, so they prove the sharded code correct (tests/test_multidevice.py), not faster.
"""
import argparse
import json
import os
import sys
import time

import common

DATASETS = {"FFHQ": 70_000, "CelebA-HQ": 30_000}
CHIPS = (8, 64)


def run_torch(size, input_size, batch, iters, device, build_only=False):
    common.isolate("torch")
    import torch
    from torch_ref import irse

    dev = torch.device(device)
    torch.manual_seed(0)
    enc = irse.Encoder4Editing(50, "ir_se", stylegan_size=size).to(dev).eval().requires_grad_(False)
    x = torch.rand(batch, 3, input_size, input_size, device=dev) * 2 - 1

    def step():
        with torch.no_grad():
            return enc(x)

    return None if build_only else common.time_torch(step, iters, dev)


def run_jax(size, input_size, batch, iters, devices, build_only=False):
    """Editor.invert_rows over `devices` ('1' or 'all') at `batch` rows per device; the rate is of all devices."""
    common.isolate("jax")
    import jax
    import numpy as np
    from ffclip_jax import tiny
    from ffclip_jax.models.e4e import Encoder4Editing
    from ffclip_jax.pipeline import Editor

    enc = Encoder4Editing(num_layers=50, mode="ir_se", stylegan_size=size, input_size=(input_size, input_size))
    x1 = np.zeros((1, input_size, input_size, 3), np.float32)
    rng = np.random.RandomState(0)
    shapes = jax.eval_shape(enc.init, jax.random.PRNGKey(0), x1)
    variables = jax.tree_util.tree_map_with_path(lambda p, leaf: tiny._random_like(p, leaf, rng), shapes)
    editor = Editor(encoder=(enc, variables), devices=1 if devices == "1" else "all",
                    batch_size=batch * (1 if devices == "1" else jax.local_device_count()))
    rows = editor.batch_size
    x = rng.uniform(-1, 1, (rows, input_size, input_size, 3)).astype(np.float32)
    if build_only:
        jax.jit(enc.apply).lower(variables, x)  # traces every Python path; compiles and runs nothing
        return None, rows, len(editor.devices)
    times = common.time_iters(lambda: editor.invert_rows(x), iters, lambda out: out)  # numpy: already waited
    return (times, common.jax_peak_bytes()), rows, len(editor.devices)


def estimate(per_device_images_per_s):
    """{dataset: {chips: hours}} of inverting each dataset at the per-device rate on that many chips."""
    return {name: {str(c): n / (per_device_images_per_s * c) / 3600 for c in CHIPS} for name, n in DATASETS.items()}


def run_one(one, size, input_size, batch, iters, device, build_only=False):
    t0 = time.perf_counter()
    if one == "torch":
        out, rows, count = run_torch(size, input_size, batch, iters, device, build_only), batch, 1
    else:
        out, rows, count = run_jax(size, input_size, batch, iters, one.split(":")[1], build_only)
    r = common.measurement(out, t0, rows, iters, framework=one.split(":")[0], devices=count, size=size,
                           input_size=input_size, batch_per_device=batch)
    if "images_per_s" in r:
        r["images_per_s_per_device"] = r["images_per_s"] / count
        if one != "torch":
            r["estimate_hours"] = estimate(r["images_per_s_per_device"])
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="generator size (sets the number of styles)")
    ap.add_argument("--input-size", type=int, default=256, help="e4e input (default 256, e4e's faces)")
    ap.add_argument("--batch", type=int, default=2, help="rows per device")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--torch-device", default=common.default_torch_device())
    ap.add_argument("--json", default=os.path.join(common.ROOT, "bench", "results", "invert.json"))
    ap.add_argument("--build-only", action="store_true", help="build and trace every configuration, time nothing")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: jax:1 | jax:all | torch, printed as JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.size, args.input_size, args.batch, args.iters, args.torch_device,
                                 args.build_only)))
        return
    results = []
    for one in ("torch", "jax:1", "jax:all"):
        try:
            r = common.run_child(__file__, ["--size", args.size, "--input-size", args.input_size, "--batch",
                                            args.batch, "--iters", args.iters, "--torch-device", args.torch_device,
                                            "--one", one] + (["--build-only"] if args.build_only else []))
        except RuntimeError as e:
            print(f"{one} failed: {e}", file=sys.stderr)
            continue
        results.append(r)
        if not args.build_only:
            print(f"  {one:8s} {r['devices']} device(s) {r['images_per_s']:8.3f} img/s "
                  f"({r['images_per_s_per_device']:.3f} per device), peak {r['peak_bytes'] / 2**20:.0f} MiB",
                  flush=True)
    if args.build_only:
        print(f"built {len(results)} of 3 configurations")
        return
    one = next((r for r in results if r["framework"] == "jax" and r["devices"] == 1), None)
    if one:
        print("estimate from the one-device rate (photos aligned already; the rate assumed to hold at scale):")
        for name, hours in one["estimate_hours"].items():
            print(f"  {name} ({DATASETS[name]} photos): " + ", ".join(f"{c} chips {h:.2f} h" for c, h in hours.items()))
    common.write_results(args.json, dict(size=args.size, batch=args.batch, hardware=common.hardware(),
                                         results=results))


if __name__ == "__main__":
    main()
