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
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def _torch_generator(size, seed=0):
    import torch
    from torch_ref.stylegan2 import Generator, randomize_

    torch.manual_seed(seed)
    return randomize_(Generator(size, 512, 8, channel_multiplier=2), seed=seed).eval()


def run_one(framework, form, mode, size, batch, iters, device):
    """Time one configuration in this process; returns a result dict."""
    import numpy as np

    n_latent = 2 * int(np.log2(size)) - 2
    w_np = np.random.RandomState(0).randn(batch, n_latent, 512).astype(np.float32)
    tg = _torch_generator(size)
    if framework == "torch":
        import torch

        dev = torch.device(device)
        fused = form == "grouped"
        if not fused:
            for m in tg.modules():
                if hasattr(m, "fused"):
                    m.fused = False
        tg = tg.to(dev)
        for p in tg.parameters():
            p.requires_grad_(False)
        w = torch.from_numpy(w_np).to(dev)

        def step():
            if mode == "forward":
                with torch.no_grad():
                    img, _ = tg([w], input_is_latent=True, randomize_noise=False)
                return img
            wg = w.clone().requires_grad_(True)
            img, _ = tg([wg], input_is_latent=True, randomize_noise=False)
            img.square().mean().backward()
            return wg.grad

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize()

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        step(); sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        sync()
        dt = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
    else:
        import jax
        import jax.numpy as jnp
        from convert_weights.stylegan2 import convert_state_dict
        from ffclip_jax.stylegan2 import Generator

        sd = {k: v.numpy() for k, v in tg.state_dict().items()}
        config, variables = convert_state_dict(sd, np.zeros(512, np.float32))
        config["blur_kernel"] = tuple(config["blur_kernel"])
        gen = Generator(**config, modconv=form)
        variables = jax.device_put(variables)
        w = jnp.asarray(w_np)
        if mode == "forward":
            fn = jax.jit(lambda v, w: gen.apply(v, w, input_is_latent=True))
        else:
            fn = jax.jit(jax.grad(lambda v, w: jnp.mean(jnp.square(gen.apply(v, w, input_is_latent=True))),
                                  argnums=1))
        fn(variables, w).block_until_ready()
        t0 = time.perf_counter()
        for _ in range(iters):
            out = fn(variables, w)
        out.block_until_ready()
        dt = time.perf_counter() - t0
        stats = jax.devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
    if peak is None:  # CPU: the process's peak resident set
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(framework=framework, form=form, mode=mode, size=size, batch=batch, iters=iters,
                images_per_s=batch * iters / dt, peak_bytes=int(peak))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--modes", default="forward,backward")
    ap.add_argument("--jax-forms", default="input_scaling,grouped",
                    help="JAX modconv forms to time (grouped convolutions are very slow on XLA:CPU)")
    ap.add_argument("--torch-device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES", "") else "cpu")
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "generator.json"))
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
        cmd = [sys.executable, __file__, "--size", str(args.size), "--batch", str(args.batch), "--iters",
               str(args.iters), "--torch-device", args.torch_device, "--one", f"{fw}:{form}:{mode}"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{fw}/{form}/{mode} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"  {fw:5s} {form:13s} {mode:8s} {r['images_per_s']:8.3f} img/s  peak {r['peak_bytes'] / 2**20:8.0f} MiB",
              flush=True)
    base = {r["mode"]: r for r in results if r["framework"] == "torch"}
    print(f"\nStyleGAN2 {args.size}px, batch {args.batch}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'framework':9s} {'modconv':13s} {'mode':8s} {'img/s':>8s} {'vs torch':>8s} {'peak MiB':>9s}")
    for r in results:
        t = base.get(r["mode"])
        ratio = r["images_per_s"] / t["images_per_s"] if t else float("nan")
        r["ratio_vs_torch"] = ratio
        print(f"{r['framework']:9s} {r['form']:13s} {r['mode']:8s} {r['images_per_s']:8.3f} {ratio:8.2f}x "
              f"{r['peak_bytes'] / 2**20:9.0f}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"size": args.size, "batch": args.batch, "machine": platform.platform(), "results": results}, f,
                  indent=2)
    os.replace(tmp, args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
