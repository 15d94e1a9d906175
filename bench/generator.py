"""Benchmark: StyleGAN2 generator forward and forward+backward (gradient w.r.t. w+), JAX (both modconv forms)
against the PyTorch reference (torch_ref, rosinality's ops), measured in the same run on the same weights.

    python bench/generator.py --size 256 --batch 2 [--iters 5] [--json bench/results/generator.json]

A PyTorch process writes the reference's random weights once (`--write-weights FILE`: its state dict as .npz); then
each (framework, form, mode) runs in its own process on that file (`--one FW:FORM:MODE --weights FILE`), so no process
imports both PyTorch and JAX and each peak memory is its own: on GPU/TPU the device's peak bytes (JAX memory_stats /
torch.cuda.max_memory_allocated), on CPU the process's peak RSS. Prints a table with images/s and the ratio
JAX / PyTorch; writes JSON. `--build-only` (with --one or --write-weights' jobs) builds the networks and inputs and
traces the JAX function, timing nothing.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import common


def write_weights(path, size, seed=0):
    """The PyTorch reference's random weights (torch_ref.stylegan2.randomize_) as an .npz of its state dict."""
    common.isolate("torch")
    import numpy as np
    import torch
    from ffclip_jax.fileio import atomic_write
    from torch_ref.stylegan2 import Generator, randomize_

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = randomize_(Generator(size, 512, 8, channel_multiplier=2), seed=seed)
    arrays = {k: v.numpy() for k, v in gen.state_dict().items()}
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays))
    return dict(weights=path, size=size, parameters=int(sum(a.size for a in arrays.values())),
                bytes=os.path.getsize(path), build_s=time.perf_counter() - t0)


def read_weights(path):
    """{state-dict key: array} from `write_weights`' file (numpy only)."""
    import numpy as np

    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def run_torch(form, mode, size, batch, iters, device, weights, build_only=False):
    common.isolate("torch")
    import numpy as np
    import torch
    from torch_ref.stylegan2 import Generator

    dev = torch.device(device)
    gen = Generator(size, 512, 8, channel_multiplier=2)
    gen.load_state_dict({k: torch.from_numpy(v) for k, v in read_weights(weights).items()})
    if form != "grouped":  # rosinality's non-fused path: input scaling + shared conv + demodulation
        for m in gen.modules():
            if hasattr(m, "fused"):
                m.fused = False
    gen = gen.eval().to(dev).requires_grad_(False)
    w = torch.from_numpy(np.random.RandomState(0).randn(batch, gen.n_latent, 512).astype(np.float32)).to(dev)

    def step():
        if mode == "forward":
            with torch.no_grad():
                return gen([w], input_is_latent=True, randomize_noise=False)[0]
        wg = w.clone().requires_grad_(True)
        img, _ = gen([wg], input_is_latent=True, randomize_noise=False)
        img.square().mean().backward()
        return wg.grad

    return None if build_only else common.time_torch(step, iters, dev)


def run_jax(form, mode, size, batch, iters, weights, build_only=False):
    common.isolate("jax")
    import jax
    import jax.numpy as jnp
    import numpy as np
    from convert_weights.stylegan2 import convert_state_dict
    from ffclip_jax.models.stylegan2 import Generator, n_latent

    config, variables = convert_state_dict(read_weights(weights), np.zeros(512, np.float32))
    config["blur_kernel"] = tuple(config["blur_kernel"])
    gen = Generator(**config, modconv=form)
    variables = jax.device_put(variables)
    w = jnp.asarray(np.random.RandomState(0).randn(batch, n_latent(size), 512).astype(np.float32))
    render = lambda v, w: gen.apply(v, w, input_is_latent=True)
    fn = jax.jit(render if mode == "forward" else jax.grad(lambda v, w: jnp.mean(jnp.square(render(v, w))),
                                                           argnums=1))
    if build_only:
        fn.lower(variables, w)  # traces every Python path; compiles and runs nothing
        return None
    times = common.time_iters(lambda: fn(variables, w), iters, jax.block_until_ready)
    return times, common.jax_peak_bytes()


def run_one(framework, form, mode, size, batch, iters, device, weights, build_only=False):
    """Time one configuration in this process; returns its JSON dict."""
    t0 = time.perf_counter()
    if framework == "torch":
        out = run_torch(form, mode, size, batch, iters, device, weights, build_only)
    else:
        out = run_jax(form, mode, size, batch, iters, weights, build_only)
    return common.measurement(out, t0, batch, iters, framework=framework, form=form, mode=mode, size=size)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--modes", default="forward,backward")
    ap.add_argument("--jax-forms", default="input_scaling,grouped",
                    help="JAX modconv forms to time (grouped convolutions are very slow on XLA:CPU)")
    ap.add_argument("--torch-device", default=common.default_torch_device())
    ap.add_argument("--json", default=os.path.join(common.ROOT, "bench", "results", "generator.json"))
    ap.add_argument("--build-only", action="store_true", help="build and trace every configuration, time nothing")
    ap.add_argument("--weights", help="the reference's weights (.npz from --write-weights; default: written here)")
    ap.add_argument("--write-weights", metavar="FILE", help="write the reference's random weights to FILE and exit")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration and print its JSON
    args = ap.parse_args()
    if args.write_weights:
        print(json.dumps(write_weights(args.write_weights, args.size)))
        return
    if args.one:
        fw, form, mode = args.one.split(":")
        print(json.dumps(run_one(fw, form, mode, args.size, args.batch, args.iters, args.torch_device,
                                 args.weights, args.build_only)))
        return
    configs = [(fw, form, mode) for mode in args.modes.split(",")
               for fw, form in [("torch", "grouped")] + [("jax", f) for f in args.jax_forms.split(",")]]
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or os.path.join(tmp, f"generator-{args.size}.npz")
        try:
            if not args.weights:
                common.run_child(__file__, ["--size", args.size, "--write-weights", weights])
        except RuntimeError as e:
            sys.exit(f"error: writing the reference's weights: {e}")
        runs = [(f"{fw}/{form}/{mode}", ["--size", args.size, "--batch", args.batch, "--iters", args.iters,
                                          "--torch-device", args.torch_device, "--weights", weights,
                                          "--one", f"{fw}:{form}:{mode}"] + (["--build-only"] if args.build_only else []))
                for fw, form, mode in configs]

        def describe(name, r):
            return (f"  {r['framework']:5s} {r['form']:13s} {r['mode']:8s} {r['images_per_s']:8.3f} img/s  "
                    f"peak {r['peak_bytes'] / 2**20:8.0f} MiB")
        results = common.run_children(__file__, runs, None if args.build_only else describe)
    if args.build_only:
        print(f"built {len(results)} of {len(configs)} configurations")
        return
    hardware = common.hardware()
    base = {r["mode"]: r for r in results if r["framework"] == "torch"}
    print(f"\nStyleGAN2 {args.size}px, batch {args.batch}, {hardware['jax_device']} ({hardware['machine']}, "
          f"{hardware['cpus']} CPUs)")
    print(f"{'framework':9s} {'modconv':13s} {'mode':8s} {'img/s':>8s} {'vs torch':>8s} {'peak MiB':>9s}")
    for r in results:
        t = base.get(r["mode"])
        r["ratio_vs_torch"] = r["images_per_s"] / t["images_per_s"] if t else None
        ratio = f"{r['ratio_vs_torch']:7.2f}x" if t else f"{'-':>8s}"
        print(f"{r['framework']:9s} {r['form']:13s} {r['mode']:8s} {r['images_per_s']:8.3f} {ratio} "
              f"{r['peak_bytes'] / 2**20:9.0f}")
    common.write_results(args.json, dict(size=args.size, batch=args.batch, hardware=hardware, results=results))


if __name__ == "__main__":
    main()
