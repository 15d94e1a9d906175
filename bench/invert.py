"""Benchmark: photos to w+ as `ffclip invert` and `ffclip data build --images` run them: e4e inversion through the
Editor's fixed batches (`Editor.invert_rows`: `--batch` rows per device, split over the devices) on one device and
on every local device, against the PyTorch e4e (torch_ref, upstream's modules) on one device, same sizes and random
weights (IR-SE50; the generator size sets the number of styles, 18 at 1024 px; the input is e4e's 256 x 256); and,
from the measured per-device rate, the wall time of inverting FFHQ (70,000 photos) and CelebA-HQ (30,000) on 8 and
64 chips (an estimate: it assumes the per-device rate holds at that scale and the photos are aligned already).

    python bench/invert.py --size 1024 --batch 8 [--iters 5] [--refine-steps 10] [--json bench/results/invert.json]

Each (framework, devices) runs in its own process (`--one jax:1`, `--one jax:all`, `--one torch`; no process imports
both frameworks); each fills its own random weights of the same shapes (timing does not depend on their values).
The refinement stages run as `ffclip invert --refine` runs them (`Editor.refine_rows`: W+ with LPIPS-VGG, PTI with
LPIPS-alex, upstream's settings but --refine-steps steps and no early stop), on one device and on every local device
(`--one jax:1:w+`, `jax:all:w+`, `jax:1:pti`, `jax:all:pti`): images/s of refining --batch photos per device by
--refine-steps steps, timed on a second call (the first compiles), and image-steps/s; the PyTorch refinement loops
are bench/refine.py's. Their estimate scales the per-device rate to upstream's step counts (W+ 1000, PTI 350). On
CPU, 'every local device' is one device: XLA already spreads it over the cores, and simulated CPU devices
(XLA_FLAGS) share those cores, so they prove the sharded code correct (tests/test_multidevice.py), not faster.
"""
import argparse
import json
import os
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


def run_refine(stage, size, batch, steps, iters, devices, build_only=False):
    """Editor.refine_rows (`stage` 'w+' or 'pti') over `devices` ('1' or 'all') at `batch` photos per device."""
    common.isolate("jax")
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np
    from ffclip_jax import tiny
    from ffclip_jax.models.lpips import HEAD_INIT_MAX, LPIPS
    from ffclip_jax.models.stylegan2 import Generator
    from ffclip_jax.pipeline import REFINE_STAGES, Editor, Refine

    rng = np.random.RandomState(0)
    gen = Generator(size=size, style_dim=512, n_mlp=8, channel_multiplier=2)
    gshapes = jax.eval_shape(gen.init, jax.random.PRNGKey(0), jnp.zeros((1, 512)))
    gvars = jax.tree_util.tree_map_with_path(lambda p, leaf: tiny._random_like(p, leaf, rng), gshapes)
    network = REFINE_STAGES[stage][0]
    lpips = LPIPS(network.split("_")[1])
    x = jnp.zeros((1, lpips.min_size, lpips.min_size, 3))
    lshapes = jax.eval_shape(lpips.init, jax.random.PRNGKey(0), x, x)
    lvars = jax.tree_util.tree_map_with_path(
        lambda p, leaf: (rng.uniform(0, HEAD_INIT_MAX, leaf.shape).astype(np.float32) if p[1].key.startswith("lin")
                         else tiny._random_like(p, leaf, rng)), lshapes)
    editor = Editor(generator=(gen, gvars), lpips={network: (lpips, lvars)}, devices=1 if devices == "1" else "all",
                    batch_size=batch * (1 if devices == "1" else jax.local_device_count()))
    spec = Refine.of(stage, steps)
    spec = dataclasses.replace(spec, settings=dataclasses.replace(spec.settings, lpips_threshold=None))
    rows = editor.batch_size
    w = np.asarray(gvars["buffers"]["latent_avg"])[None, None].repeat(gen.n_latent, 1).repeat(rows, 0)
    w = (w + 0.1 * rng.randn(*w.shape)).astype(np.float32)
    targets = rng.uniform(-1, 1, (rows, size, size, 3)).astype(np.float32)
    if build_only:
        return None, rows, len(editor.devices)
    last = {}
    run = lambda: last.update(editor.refine_rows(targets, w, np.arange(rows), spec))
    times = common.time_iters(run, iters, lambda out: out)  # numpy: already waited
    # every photo should run every step (no early stop): a failed (non-finite) photo stops early and inflates the rate
    times.update(mean_steps=float(np.mean(last["steps"])), failed=int(np.sum(last["failed"])))
    return (times, common.jax_peak_bytes()), rows, len(editor.devices)


def estimate(per_device_images_per_s):
    """{dataset: {chips: hours}} of inverting each dataset at the per-device rate on that many chips."""
    return {name: {str(c): n / (per_device_images_per_s * c) / 3600 for c in CHIPS} for name, n in DATASETS.items()}


REFINE_STEPS = {"w+": 1000, "pti": 350}  # upstream's step counts (ffclip_jax.refine's defaults)


def run_one(one, size, input_size, batch, iters, device, build_only=False, refine_steps=2):
    t0 = time.perf_counter()
    parts = one.split(":")  # torch | jax:DEVICES | jax:DEVICES:STAGE
    stage = parts[2] if len(parts) > 2 else "e4e"
    if one == "torch":
        out, rows, count = run_torch(size, input_size, batch, iters, device, build_only), batch, 1
    elif stage in REFINE_STEPS:
        out, rows, count = run_refine(stage, size, batch, refine_steps, iters, parts[1], build_only)
    else:
        out, rows, count = run_jax(size, input_size, batch, iters, parts[1], build_only)
    fields = dict(stage=stage, refine_steps=refine_steps) if stage in REFINE_STEPS else dict(stage="e4e",
                                                                                              input_size=input_size)
    r = common.measurement(out, t0, rows, iters, framework="torch" if one == "torch" else "jax", devices=count,
                           size=size, batch_per_device=batch, **fields)
    if "images_per_s" in r:
        r["images_per_s_per_device"] = r["images_per_s"] / count
        if stage in REFINE_STEPS:  # at upstream's step count
            r["image_steps_per_s"] = r["images_per_s"] * refine_steps
            r["estimate_hours"] = estimate(r["images_per_s_per_device"] * refine_steps / REFINE_STEPS[stage])
        elif one != "torch":
            r["estimate_hours"] = estimate(r["images_per_s_per_device"])
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="generator size (sets the number of styles)")
    ap.add_argument("--input-size", type=int, default=256, help="e4e input (default 256, e4e's faces)")
    ap.add_argument("--batch", type=int, default=2, help="rows per device")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--refine-steps", type=int, default=2, help="refinement steps per timed call (default 2)")
    ap.add_argument("--stages", default="e4e,w+,pti", help="what to measure: e4e, w+, pti (comma-separated)")
    ap.add_argument("--torch-device", default=common.default_torch_device())
    ap.add_argument("--json", default=os.path.join(common.ROOT, "bench", "results", "invert.json"))
    ap.add_argument("--build-only", action="store_true", help="build and trace every configuration, time nothing")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: torch | jax:1 | jax:all | jax:1:w+ ..., as JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.size, args.input_size, args.batch, args.iters, args.torch_device,
                                 args.build_only, args.refine_steps)))
        return
    stages = args.stages.split(",")
    ones = (["torch", "jax:1", "jax:all"] if "e4e" in stages else []) + [
        f"jax:{n}:{stage}" for stage in REFINE_STEPS if stage in stages for n in ("1", "all")]
    runs = [(one, ["--size", args.size, "--input-size", args.input_size, "--batch", args.batch, "--iters",
                   args.iters, "--torch-device", args.torch_device, "--refine-steps", args.refine_steps, "--one", one]
             + (["--build-only"] if args.build_only else [])) for one in ones]

    def describe(one, r):
        return (f"  {one:11s} {r['devices']} device(s) {r['images_per_s']:8.3f} img/s "
                f"({r['images_per_s_per_device']:.3f} per device), peak {r['peak_bytes'] / 2**20:.0f} MiB")
    results = common.run_children(__file__, runs, None if args.build_only else describe)
    if args.build_only:
        print(f"built {len(results)} of {len(ones)} configurations")
        return
    for stage in ("e4e",) + tuple(REFINE_STEPS):
        one = next((r for r in results if r["framework"] == "jax" and r["devices"] == 1
                    and r.get("stage", "e4e") == stage), None)
        if one:
            steps = f" at {REFINE_STEPS[stage]} steps" if stage in REFINE_STEPS else ""
            print(f"estimate, {stage}{steps}, from the one-device rate (photos aligned already; the rate assumed to "
                  f"hold at scale):")
            for name, hours in one["estimate_hours"].items():
                print(f"  {name} ({DATASETS[name]} photos): "
                      + ", ".join(f"{c} chips {h:.2f} h" for c, h in hours.items()))
    common.write_results(args.json, dict(size=args.size, batch=args.batch, hardware=common.hardware(),
                                         results=results))


if __name__ == "__main__":
    main()
