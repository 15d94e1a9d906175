"""Benchmark: one full FFCLIP training step (render w without grad, mapper, render w_hat, ID + CLIP + latent-L1 +
background + embedding losses, backward, clip + Adam), JAX (`ffclip_jax.train_lib.train_step`, jitted) against a
PyTorch pipeline from tests/torch_ref with upstream's exact operations (the literal nn.Upsample(x7) + AvgPool2d before
CLIP, AdaptiveAvgPool2d for ID and parsing), same sizes, random weights (ViT-B/32, IR-SE50, UNet/4, 4-block mapper).

    python bench/train_step.py --size 256 --batch 2 [--iters 3] [--json bench/results/train_step.json]

Each framework runs in its own subprocess so its peak memory is its own: on GPU/TPU the device's peak bytes, on CPU
the process's peak RSS. Prints a table with images/s and JAX / PyTorch; writes JSON.
"""
import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

WEIGHTS = dict(id=0.9, clip=1.0, latent=1.6, background=2.0, embedding=1.0)  # upstream FFHQ


def _peak(device_bytes):
    return int(device_bytes if device_bytes is not None else
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def run_torch(size, batch, iters, device):
    import torch
    import torch.nn.functional as F
    from torch_ref import clip as tclip, irse, mapper as tmapper, parsenet, stylegan2

    dev = torch.device(device)
    torch.manual_seed(0)
    n_latent = 2 * int(math.log2(size)) - 2
    gen = stylegan2.Generator(size, 512, 8, channel_multiplier=2).to(dev).eval()
    clip = tclip.CLIP(**tclip.VIT_B_32).to(dev).eval()
    arcface = irse.Backbone(112, 50, "ir_se").to(dev).eval()
    parse = parsenet.build(4).to(dev).eval()
    for net in (gen, clip, arcface, parse):
        net.requires_grad_(False)
    mapper = tmapper.DynamicMapper(n_latent, 512).to(dev).train()
    opt = torch.optim.Adam(mapper.parameters(), lr=5e-4, eps=1e-8)
    kernel = size * 7 // 224
    w = torch.randn(batch, n_latent, 512, device=dev)
    text = torch.randn(batch, 1, 512, device=dev)

    def id_feats(x):
        x = F.adaptive_avg_pool2d(x, 256)[:, :, 35:223, 32:220]
        return arcface(F.adaptive_avg_pool2d(x, 112))

    def bg_mask(x):
        label = parse(F.adaptive_avg_pool2d(x, 512)).argmax(1, keepdim=True)
        return F.adaptive_avg_pool2d((label != 13).float(), x.shape[-1])

    def step():
        with torch.no_grad():
            x, _ = gen([w], input_is_latent=True, randomize_noise=False)
        w_hat = w + mapper(w, text)
        x_hat, _ = gen([w_hat], input_is_latent=True, randomize_noise=False)
        img = F.avg_pool2d(F.interpolate(x_hat, scale_factor=7, mode="nearest"), kernel)  # upstream's literal x7
        fi = clip.encode_image(img)
        fi = fi / fi.norm(dim=-1, keepdim=True)
        ft = text[:, 0] / text[:, 0].norm(dim=-1, keepdim=True)
        loss_clip = (1 - clip.logit_scale.exp() * (fi * ft).sum(-1) / 100).mean()
        loss_emb = tclip.embedding_loss(clip, x, x_hat)
        loss_id = (1 - (id_feats(x_hat) * id_feats(x).detach()).sum(-1)).mean()
        with torch.no_grad():
            keep = ((bg_mask(x) == 1) & (bg_mask(x_hat) == 1)).float()
        loss_bg = F.mse_loss(x * keep, x_hat * keep)
        loss_latent = (w - w_hat).abs().mean()
        loss = (WEIGHTS["id"] * loss_id + WEIGHTS["clip"] * loss_clip + WEIGHTS["latent"] * loss_latent +
                WEIGHTS["background"] * loss_bg + WEIGHTS["embedding"] * loss_emb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(mapper.parameters(), 5.0)
        opt.step()
        return loss

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
    return dt, _peak(torch.cuda.max_memory_allocated() if dev.type == "cuda" else None)


def run_jax(size, batch, iters, remat=False, dtype="float32"):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ffclip_jax import clip as clip_lib, train_lib as tl
    from ffclip_jax.arcface import Backbone
    from ffclip_jax.mapper import DynamicMapper
    from ffclip_jax.parsenet import UNet
    from ffclip_jax.stylegan2 import Generator

    config = tl.base_config()
    config.model.remat, config.model.compute_dtype = remat, dtype
    gen = Generator(size=size, remat=remat)
    mapper = DynamicMapper(n_latent=gen.n_latent)
    clip_module, clip_vars = clip_lib.init_random(clip_lib.vit_b_32_config())
    arcface, parse = Backbone(112, 50, "ir_se"), UNet(4)
    key = jax.random.PRNGKey(0)
    frozen = {"generator": jax.jit(gen.init)(key, jnp.zeros((1, 512))), "clip": clip_vars,
              "arcface": jax.jit(arcface.init)(key, jnp.zeros((1, 112, 112, 3))),
              "parsenet": jax.jit(parse.init)(key, jnp.zeros((1, 32, 32, 3))),
              "prompts": jax.random.normal(key, (53, 512))}
    nets = tl.Networks(generator=gen, mapper=mapper, clip=clip_module, arcface=arcface, parsenet=parse)
    opts = tl.StepOptions(tuple(sorted(WEIGHTS.items())), dtype, "const", 1)
    optimizer, schedule = tl.make_optimizer(config, 1000)
    mesh = tl.make_mesh()
    state = tl.create_state(tl.init_mapper_params(config, mapper, 0), optimizer, 0)
    ss, fs = tl.state_sharding(mesh, state), tl.frozen_sharding(mesh, frozen)
    state, frozen = jax.device_put(state, ss), jax.device_put(frozen, fs)
    step = tl.make_train_step(nets, opts, optimizer, schedule, mesh, ss, fs)
    rng = np.random.RandomState(0)
    batch_np = {"w": rng.randn(batch, gen.n_latent, 512).astype(np.float32),
                "prompt": rng.randint(0, 53, batch).astype(np.int32)}
    b = jax.device_put(batch_np, tl.batch_sharding(mesh))
    state, m = step(state, frozen, b)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(iters):
        state, m = step(state, frozen, b)
    jax.block_until_ready(m)
    dt = time.perf_counter() - t0
    stats = jax.devices()[0].memory_stats() or {}
    return dt, _peak(stats.get("peak_bytes_in_use"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="generator resolution (a multiple of 32)")
    ap.add_argument("--batch", type=int, default=2, help="global batch (JAX splits it over all local devices)")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--remat", action="store_true", help="JAX: rematerialise generator blocks")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="JAX compute dtype")
    ap.add_argument("--frameworks", default="jax,torch")
    ap.add_argument("--torch-device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES", "") else "cpu")
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "train_step.json"))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one framework and print its JSON
    args = ap.parse_args()
    if args.one:
        if args.one == "torch":
            dt, peak = run_torch(args.size, args.batch, args.iters, args.torch_device)
        else:
            dt, peak = run_jax(args.size, args.batch, args.iters, args.remat, args.dtype)
        print(json.dumps(dict(framework=args.one, size=args.size, batch=args.batch, iters=args.iters,
                              images_per_s=args.batch * args.iters / dt, peak_bytes=peak)))
        return
    results = []
    for fw in args.frameworks.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--one", fw, "--size", str(args.size), "--batch",
               str(args.batch), "--iters", str(args.iters), "--dtype", args.dtype, "--torch-device", args.torch_device]
        out = subprocess.run(cmd + (["--remat"] if args.remat else []), capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"error: {fw} run failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ''}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    import jax

    hardware = dict(jax_device=str(jax.devices()[0].device_kind), devices=jax.device_count(),
                    machine=platform.processor() or platform.machine(), cpus=os.cpu_count())
    by = {r["framework"]: r for r in results}
    ratio = by["jax"]["images_per_s"] / by["torch"]["images_per_s"] if len(by) == 2 else None
    print(f"FFCLIP train step, size {args.size}, batch {args.batch}, {hardware['jax_device']}")
    print(f"{'framework':<10}{'images/s':>12}{'peak MiB':>12}")
    for r in results:
        print(f"{r['framework']:<10}{r['images_per_s']:>12.3f}{r['peak_bytes'] / 2 ** 20:>12.0f}")
    if ratio:
        print(f"JAX / PyTorch: {ratio:.2f}x")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(dict(results=results, ratio=ratio, hardware=hardware, args=vars(args)), f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
