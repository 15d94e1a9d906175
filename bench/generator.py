"""Benchmark: StyleGAN2 generator forward and forward+backward (gradient w.r.t. w+), JAX (both modconv forms)
against the PyTorch reference (tests/torch_ref, rosinality's ops), measured in the same run on the same weights.

    python bench/generator.py --size 256 --batch 2 [--iters 5] [--json bench/results/generator.json]

Each (framework, form, mode) runs in its own subprocess so peak memory is its own: on GPU/TPU the device's peak
bytes (JAX memory_stats / torch.cuda.max_memory_allocated), on CPU the process's peak RSS. Prints a table with
images/s and the ratio JAX / PyTorch; writes JSON.
"""
import argparse
import json
import os
import sys

import common


def _torch_generator(size, seed=0):
    import torch
    from torch_ref.stylegan2 import Generator, randomize_

    torch.manual_seed(seed)
    return randomize_(Generator(size, 512, 8, channel_multiplier=2), seed=seed).eval()


def run_one(framework, form, mode, size, batch, iters, device):
    """Time one configuration in this process; returns a result dict."""
    import numpy as np

    from ffclip_jax.models.stylegan2 import n_latent

    w_np = np.random.RandomState(0).randn(batch, n_latent(size), 512).astype(np.float32)
    tg = _torch_generator(size)
    if framework == "torch":
        import torch

        dev = torch.device(device)
        if form != "grouped":  # rosinality's non-fused path: input scaling + shared conv + demodulation
            for m in tg.modules():
                if hasattr(m, "fused"):
                    m.fused = False
        tg = tg.to(dev).requires_grad_(False)
        w = torch.from_numpy(w_np).to(dev)

        def step():
            if mode == "forward":
                with torch.no_grad():
                    return tg([w], input_is_latent=True, randomize_noise=False)[0]
            wg = w.clone().requires_grad_(True)
            img, _ = tg([wg], input_is_latent=True, randomize_noise=False)
            img.square().mean().backward()
            return wg.grad

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        dt = common.time_iters(step, iters, lambda _: torch.cuda.synchronize() if dev.type == "cuda" else None)
        peak = common.torch_peak_bytes(dev)
    else:
        import jax
        import jax.numpy as jnp
        from convert_weights.stylegan2 import convert_state_dict
        from ffclip_jax.models.stylegan2 import Generator

        sd = {k: v.numpy() for k, v in tg.state_dict().items()}
        config, variables = convert_state_dict(sd, np.zeros(512, np.float32))
        config["blur_kernel"] = tuple(config["blur_kernel"])
        gen = Generator(**config, modconv=form)
        variables = jax.device_put(variables)
        w = jnp.asarray(w_np)
        render = lambda v, w: gen.apply(v, w, input_is_latent=True)
        fn = jax.jit(render if mode == "forward" else jax.grad(lambda v, w: jnp.mean(jnp.square(render(v, w))),
                                                               argnums=1))
        dt = common.time_iters(lambda: fn(variables, w), iters, jax.block_until_ready)
        peak = common.jax_peak_bytes()
    return dict(framework=framework, form=form, mode=mode, size=size, batch=batch, iters=iters,
                images_per_s=batch * iters / dt, peak_bytes=peak)


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
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration and print its JSON
    args = ap.parse_args()
    if args.one:
        fw, form, mode = args.one.split(":")
        print(json.dumps(run_one(fw, form, mode, args.size, args.batch, args.iters, args.torch_device)))
        return
    configs = [(fw, form, mode) for mode in args.modes.split(",")
               for fw, form in [("torch", "grouped")] + [("jax", f) for f in args.jax_forms.split(",")]]
    results = []
    for fw, form, mode in configs:
        try:
            r = common.run_child(__file__, ["--size", args.size, "--batch", args.batch, "--iters", args.iters,
                                            "--torch-device", args.torch_device, "--one", f"{fw}:{form}:{mode}"])
        except RuntimeError as e:
            print(f"{fw}/{form}/{mode} failed: {e}", file=sys.stderr)
            continue
        results.append(r)
        print(f"  {fw:5s} {form:13s} {mode:8s} {r['images_per_s']:8.3f} img/s  peak {r['peak_bytes'] / 2**20:8.0f} MiB",
              flush=True)
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
