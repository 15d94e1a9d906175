"""Benchmark: refinement steps per second and peak memory, W+ optimisation and pivotal tuning (PTI), JAX
(`ffclip_jax.refine`: one compiled step in a compiled loop; PTI's per-image generators with lax.map and with vmap)
against the PyTorch reference loops (tests/torch_ref/refine.py: our torch generator + torch LPIPS + torch.optim.Adam,
upstream's procedures: W+ batched as rosinality's projector, PTI one image at a time as danielroich/PTI), on the same
weights in the same run.

    python bench/refine.py --size 256 --batch 2 [--iters 2] [--stages w_plus,pti] [--jax-batchings map,vmap]

The weights (a config-f generator at --size, full width; LPIPS-VGG for W+, LPIPS-alex for PTI, as upstream) are drawn
once by a PyTorch process and written as numpy state dicts; every measurement then runs in a process of its own,
PyTorch loading them into the torch modules, JAX converting them with convert_weights (numpy): no process imports
both frameworks, and each peak memory is its own (device peak bytes on GPU/TPU, process RSS on CPU). The rate is
image-steps per second (refinement steps x images): JAX times one compiled chunk of --iters steps after a first chunk
(compilation, warm-up), PyTorch --iters steps after one warm-up step. The LPIPS early stop is off (every image runs
every step). Target: JAX at least 1.5x PyTorch's rate on CPU, 2x on a GPU.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import common

TARGETS = dict(cpu=1.5, gpu=2.0)
STAGES = ("w_plus", "pti")
LPIPS_OF_STAGE = dict(w_plus="vgg", pti="alex")  # rosinality projector.py (net='vgg'), PTI lpips_type 'alex'
Z_DIM = 512


def torch_reference():
    """Our PyTorch reference modules (tests/torch_ref, on the path after common.isolate('torch'))."""
    common.isolate("torch")
    from torch_ref import lpips, refine, stylegan2

    return stylegan2, lpips, refine


def make_weights(path, size, seed=0):
    """PyTorch: the generator (randomised biases/noise weights, as the parity tests) and both random LPIPS networks
    -> one .npz of state dicts ('g.<key>', 'alex.<key>', 'vgg.<key>', 'latent_avg')."""
    common.isolate("torch")
    import numpy as np
    import torch

    stylegan2, lpips, _ = torch_reference()
    torch.manual_seed(seed)
    g = stylegan2.randomize_(stylegan2.Generator(size, Z_DIM, 8, channel_multiplier=2), seed=seed)
    arrays = {f"g.{k}": v.numpy() for k, v in g.state_dict().items()}
    with torch.no_grad():
        arrays["latent_avg"] = g.style(torch.randn(4096, Z_DIM)).mean(0).numpy()
    for backbone in ("alex", "vgg"):
        net = lpips.build(backbone, seed)
        sd = {**net.backbone_state_dict(lpips.small_classifier(backbone)), **net.heads_state_dict()}
        arrays.update({f"{backbone}.{k}": v.numpy() for k, v in sd.items()})
    np.savez(path, **arrays)


def load_weights(path):
    import numpy as np

    with np.load(path) as f:
        arrays = dict(f)
    part = lambda prefix: {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + ".")}
    return part("g"), arrays["latent_avg"], {b: part(b) for b in ("alex", "vgg")}


def inputs(size, batch, seed=1):
    """Start codes (N, L, 512) near the mean latent and targets (N, size, size, 3) in [-1, 1] (numpy)."""
    import math

    import numpy as np

    rs = np.random.RandomState(seed)
    n_latent = 2 * int(math.log2(size)) - 2  # stylegan2.n_latent, without importing flax into a PyTorch process
    codes = (0.5 * rs.randn(batch, n_latent, Z_DIM)).astype(np.float32)
    targets = rs.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    return codes, targets


def run_torch(stage, size, batch, iters, device, weights):
    common.isolate("torch")
    import torch

    stylegan2, lpips, refine = torch_reference()
    dev = torch.device(device)
    g_sd, latent_avg, lpips_sd = load_weights(weights)
    g = stylegan2.Generator(size, Z_DIM, 8, channel_multiplier=2)
    g.load_state_dict({k: torch.from_numpy(v) for k, v in g_sd.items()})
    g = g.to(dev).eval().requires_grad_(False)
    backbone = LPIPS_OF_STAGE[stage]
    tl = lpips.LPIPS(backbone)
    missing, unexpected = tl.load_state_dict({k: torch.from_numpy(v) for k, v in lpips_sd[backbone].items()
                                              if not k.startswith("classifier")}, strict=False)
    assert sorted(missing) == ["scale", "shift"] and not unexpected, (missing, unexpected)  # the ScalingLayer's own
    tl = tl.to(dev).eval().requires_grad_(False)
    codes, targets = inputs(size, batch)
    codes = torch.from_numpy(codes).to(dev)
    targets = torch.from_numpy(targets.transpose(0, 3, 1, 2).copy()).to(dev)
    if stage == "w_plus":
        loop = refine.WPlusLoop(g, tl, codes, targets, steps=1000, lr=0.1, lr_rampup=0.05, lr_rampdown=0.25,
                                lpips_weight=1.0, l2_weight=0.0, loss_size=256)
        step = lambda i: loop.step(i, torch.randn_like(codes) * 0.01)
    else:
        avg = torch.from_numpy(latent_avg).to(dev)
        loops = [refine.PTILoop(g, tl, codes[i:i + 1], targets[i:i + 1], lr=3e-4, l2_weight=1.0, lpips_weight=1.0,
                                alpha=30.0, reg_l2=0.1, reg_lpips=0.1, truncation=0.5, latent_avg=avg)
                 for i in range(batch)]
        step = lambda i: [loop.step(torch.randn(1, Z_DIM, device=dev)) for loop in loops]
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step(0)
    sync()
    t0 = time.perf_counter()
    for i in range(1, iters + 1):
        step(i)
    sync()
    elapsed = time.perf_counter() - t0
    return elapsed, common.peak_bytes(torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None)


def run_jax(stage, batching, loop, size, batch, iters, weights):
    common.isolate("jax")
    import jax
    import numpy as np

    from convert_weights.lpips import convert_state_dicts
    from convert_weights.stylegan2 import convert_state_dict
    from ffclip_jax import refine
    from ffclip_jax.models.lpips import LPIPS
    from ffclip_jax.models.stylegan2 import Generator

    g_sd, latent_avg, lpips_sd = load_weights(weights)
    config, gvars = convert_state_dict(g_sd, latent_avg)
    G = Generator(**dict(config, blur_kernel=tuple(config["blur_kernel"])))
    backbone = LPIPS_OF_STAGE[stage]
    heads = {k: v for k, v in lpips_sd[backbone].items() if k.startswith("lin")}
    _, lvars = convert_state_dicts({k: v for k, v in lpips_sd[backbone].items() if k not in heads}, heads, backbone)
    codes, targets = inputs(size, batch)
    marks = []
    progress = lambda done, total: marks.append(time.perf_counter())
    networks = (G, jax.device_put(gvars)), (LPIPS(backbone), jax.device_put(lvars))
    if stage == "w_plus":
        result = refine.refine_w_plus(*networks, codes, targets, refine.WPlusSettings(steps=2 * iters),
                                      progress=progress, chunk_steps=iters, loop=loop)
    else:
        result = refine.refine_pti(*networks, codes, targets, refine.PTISettings(steps=2 * iters, lpips_threshold=None),
                                   progress=progress, chunk_steps=iters, batching=batching, loop=loop)
    assert len(marks) == 2 and np.all(result.steps == 2 * iters), (marks, result.steps, result.messages)
    return marks[1] - marks[0], common.jax_peak_bytes()


def run_one(spec, args):
    framework, stage, batching, loop = spec.split(":")
    if framework == "torch":
        dt, peak = run_torch(stage, args.size, args.batch, args.iters, args.torch_device, args.weights)
    else:
        dt, peak = run_jax(stage, batching, loop, args.size, args.batch, args.iters, args.weights)
    return dict(framework=framework, stage=stage, batching=batching, loop=loop, size=args.size, batch=args.batch,
                iters=args.iters, steps_per_s=args.iters / dt, image_steps_per_s=args.batch * args.iters / dt,
                peak_bytes=peak)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=2, help="timed steps (after a warm-up chunk / step)")
    ap.add_argument("--stages", default="w_plus,pti")
    ap.add_argument("--jax-batchings", default="map,vmap",
                    help="PTI's per-image generators: map (one image at a time), vmap (grouped convolutions: slow on "
                         "XLA:CPU)")
    ap.add_argument("--jax-loops", default="auto",
                    help="compiled (a while loop per chunk), python (a call per step), auto (python on CPU)")
    ap.add_argument("--torch-device", default=common.default_torch_device())
    ap.add_argument("--json", default=os.path.join(common.ROOT, "bench", "results", "refine.json"))
    ap.add_argument("--weights", help=argparse.SUPPRESS)  # internal: the .npz the measurements share
    ap.add_argument("--one", help=argparse.SUPPRESS)      # internal: framework:stage:batching:loop, print its JSON
    ap.add_argument("--make-weights", help=argparse.SUPPRESS)  # internal: write the .npz (a PyTorch process)
    args = ap.parse_args()
    if args.make_weights:
        make_weights(args.make_weights, args.size)
        print(json.dumps(dict(weights=args.make_weights)))
        return
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    stages = [s for s in args.stages.split(",") if s]
    if not stages or any(s not in STAGES for s in stages):
        sys.exit(f"error: --stages must be a comma-separated subset of {','.join(STAGES)}, got {args.stages!r}")
    configs = []
    for stage in stages:
        configs.append(("torch", stage, "-", "-"))
        configs += [("jax", stage, b, loop) for b in (args.jax_batchings.split(",") if stage == "pti" else ["vmap"])
                    for loop in args.jax_loops.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "weights.npz")
        common.run_child(__file__, ["--size", args.size, "--make-weights", weights])
        runs = [("/".join(c), ["--size", args.size, "--batch", args.batch, "--iters", args.iters, "--torch-device",
                               args.torch_device, "--weights", weights, "--one", ":".join(c)]) for c in configs]

        def describe(name, r):
            return (f"  {r['framework']:5s} {r['stage']:6s} {r['batching']:4s} {r['loop']:8s} "
                    f"{r['image_steps_per_s']:8.4f} image-steps/s  peak {r['peak_bytes'] / 2**20:8.0f} MiB")
        results = common.run_children(__file__, runs, describe)
    hardware = common.hardware()
    accel = hardware["jax_device"].lower() != "cpu"
    target = TARGETS["gpu" if accel else "cpu"]
    base = {r["stage"]: r for r in results if r["framework"] == "torch"}
    print(f"\nrefinement at {args.size} px, batch {args.batch}, {hardware['jax_device']} ({hardware['machine']}, "
          f"{hardware['cpus']} CPUs); target JAX >= {target}x PyTorch")
    print(f"{'framework':9s} {'stage':6s} {'batching':8s} {'loop':8s} {'image-steps/s':>13s} {'vs torch':>8s} "
          f"{'peak MiB':>9s}  status")
    for r in results:
        t = base.get(r["stage"])
        r["ratio_vs_torch"] = r["image_steps_per_s"] / t["image_steps_per_s"] if t and r is not t else None
        ratio = f"{r['ratio_vs_torch']:7.2f}x" if r["ratio_vs_torch"] else f"{'-':>8s}"
        status = "" if r["ratio_vs_torch"] is None else ("met" if r["ratio_vs_torch"] >= target else "not met")
        print(f"{r['framework']:9s} {r['stage']:6s} {r['batching']:8s} {r['loop']:8s} {r['image_steps_per_s']:13.4f} "
              f"{ratio} {r['peak_bytes'] / 2**20:9.0f}  {status}")
    common.write_results(args.json, dict(size=args.size, batch=args.batch, iters=args.iters, target=target,
                                         hardware=hardware, results=results))


if __name__ == "__main__":
    main()
