"""Benchmark: one full FFCLIP training step (render w without grad, mapper, render w_hat, ID + CLIP + latent-L1 +
background + embedding losses, backward, clip + Adam), JAX (`ffclip_jax.train.step.train_step`, jitted) against a
PyTorch pipeline from torch_ref with upstream's exact operations (the literal nn.Upsample(x7) + AvgPool2d before
CLIP, AdaptiveAvgPool2d for ID and parsing), same sizes, random weights (ViT-B/32, IR-SE50, UNet/4, 4-block mapper).

    python bench/train_step.py --size 256 --batch 2 [--iters 3] [--json bench/results/train_step.json]
    python bench/train_step.py --memory-only --size 1024 --batch 8 [--remat]   # XLA's memory plan, nothing run

Each framework runs in its own subprocess (no process imports both; each initialises its own random weights of the
same shapes: timing does not depend on their values) so its peak memory is its own: on GPU/TPU the device's peak
bytes, on CPU the process's peak RSS. `--build-only` builds the networks and inputs (JAX: shapes only) and traces the
JAX step, timing nothing. Prints a table with images/s and JAX / PyTorch; writes JSON. `--memory-only` compiles the
JAX step for abstract inputs (no weights allocated) and prints the compiled program's memory plan on this backend
(arguments + outputs + temporaries - donated aliases): how the ffhq step at batch 8 per device is checked against a
16 GB device from a machine without one.
"""
import argparse
import json
import os
import sys
import time

import common

WEIGHTS = dict(id=0.9, clip=1.0, latent=1.6, background=2.0, embedding=1.0)  # upstream FFHQ


def run_torch(size, batch, iters, device, build_only=False):
    common.isolate("torch")
    import torch
    import torch.nn.functional as F
    from torch_ref import clip as tclip, irse, mapper as tmapper, parsenet, stylegan2

    dev = torch.device(device)
    torch.manual_seed(0)
    gen = stylegan2.Generator(size, 512, 8, channel_multiplier=2).to(dev).eval()
    n_latent = gen.n_latent
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

    return None if build_only else common.time_torch(step, iters, dev)


def build_jax(size, batch, remat=False, dtype="float32", abstract=False):
    """(jitted step, state, frozen, batch) of the FFCLIP step on a mesh over this process's devices; `abstract`:
    shapes only (jax.ShapeDtypeStruct with shardings), nothing allocated."""
    common.isolate("jax")
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ffclip_jax.models import clip as clip_lib
    from configs import default as default_config
    from ffclip_jax import tiny, train as tl
    from ffclip_jax.models.arcface import Backbone
    from ffclip_jax.models.mapper import DynamicMapper
    from ffclip_jax.models.parsenet import UNet
    from ffclip_jax.models.stylegan2 import Generator

    config = default_config.get_config()
    gen = Generator(size=size, remat=remat)
    mapper = DynamicMapper(n_latent=gen.n_latent)
    clip_config = clip_lib.vit_b_32_config()
    arcface, parse = Backbone(112, 50, "ir_se"), UNet(4)
    key = jax.random.PRNGKey(0)
    inits = {"generator": lambda: gen.init(key, jnp.zeros((1, 512))),
             "arcface": lambda: arcface.init(key, jnp.zeros((1, 112, 112, 3))),
             "parsenet": lambda: parse.init(key, jnp.zeros((1, 32, 32, 3))),
             "prompts": lambda: jax.random.normal(key, (53, 512))}
    frozen = {k: jax.eval_shape(f) for k, f in inits.items()}
    frozen["clip"] = clip_lib.expected_shapes(clip_config)
    if not abstract:  # random values of those shapes filled in numpy: no init function is compiled (minutes on CPU)
        rng = np.random.RandomState(0)
        frozen = jax.tree_util.tree_map_with_path(lambda p, leaf: tiny._random_like(p, leaf, rng), frozen)
    clip_module = clip_lib.build(clip_config)
    nets = tl.Networks(generator=gen, mapper=mapper, clip=clip_module, arcface=arcface, parsenet=parse)
    opts = tl.StepOptions(tuple(sorted(WEIGHTS.items())), dtype, "const", 1)
    optimizer, schedule = tl.make_optimizer(config, 1000)
    mesh = tl.make_mesh()
    if abstract:
        state = tl.abstract_state(mapper, optimizer)
    else:
        state = tl.create_state(tl.init_mapper_params(config, mapper, 0), optimizer, 0)
    ss, fs = tl.state_sharding(mesh, state), tl.frozen_sharding(mesh, frozen)
    bs = tl.batch_sharding(mesh)
    step = tl.make_train_step(nets, opts, optimizer, schedule, mesh, ss, fs)
    if abstract:
        spec = lambda tree, shardings: jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)
        batch_spec = {"w": jax.ShapeDtypeStruct((batch, gen.n_latent, 512), jnp.float32, sharding=bs),
                      "prompt": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=bs)}
        return step, spec(state, ss), spec(frozen, fs), batch_spec
    rng = np.random.RandomState(0)
    batch_np = {"w": rng.randn(batch, gen.n_latent, 512).astype(np.float32),
                "prompt": rng.randint(0, 53, batch).astype(np.int32)}
    return step, jax.device_put(state, ss), jax.device_put(frozen, fs), jax.device_put(batch_np, bs)


def run_jax(size, batch, iters, remat=False, dtype="float32", build_only=False):
    common.isolate("jax")
    import jax

    if build_only:
        step, state, frozen, b = build_jax(size, batch, remat, dtype, abstract=True)
        step.lower(state, frozen, b)  # traces every Python path; compiles and runs nothing
        return None
    step, state, frozen, b = build_jax(size, batch, remat, dtype)
    holder = {"state": state}

    def one():
        holder["state"], metrics = step(holder["state"], frozen, b)
        return metrics
    times = common.time_iters(one, iters, jax.block_until_ready)
    return times, common.jax_peak_bytes()


def memory_plan(size, batch, remat=False, dtype="float32"):
    """Bytes of the compiled step's buffers on this backend, per device, without running it."""
    step, state, frozen, b = build_jax(size, batch, remat, dtype, abstract=True)
    m = step.lower(state, frozen, b).compile().memory_analysis()
    plan = dict(arguments=m.argument_size_in_bytes, outputs=m.output_size_in_bytes,
                temporaries=m.temp_size_in_bytes, aliased=m.alias_size_in_bytes)
    plan["total"] = plan["arguments"] + plan["outputs"] + plan["temporaries"] - plan["aliased"]
    return plan


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="generator resolution (a multiple of 32)")
    ap.add_argument("--batch", type=int, default=2, help="global batch (JAX splits it over all local devices)")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--remat", action="store_true", help="JAX: rematerialise generator blocks")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="JAX compute dtype")
    ap.add_argument("--frameworks", default="jax,torch")
    ap.add_argument("--torch-device", default=common.default_torch_device())
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)  # with --one: build, trace, no timing
    ap.add_argument("--memory-only", action="store_true",
                    help="JAX only: compile for abstract inputs and print the memory plan (nothing is run)")
    ap.add_argument("--json", default=os.path.join(common.ROOT, "bench", "results", "train_step.json"))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one framework and print its JSON
    args = ap.parse_args()
    common_args = ["--size", args.size, "--batch", args.batch, "--iters", args.iters, "--dtype", args.dtype,
                   "--torch-device", args.torch_device] + (["--remat"] if args.remat else [])
    if args.memory_only:
        common.isolate("jax")
        import jax

        plan = memory_plan(args.size, args.batch, args.remat, args.dtype)
        per_device = args.batch // jax.device_count()
        print(f"FFCLIP train step memory plan, size {args.size}, batch {args.batch} ({per_device} per device), "
              f"{args.dtype}, remat {args.remat}, {jax.devices()[0].device_kind}")
        for k, v in plan.items():
            print(f"  {k:<12}{v / 2 ** 30:8.2f} GiB")
        common.write_results(args.json, dict(memory_plan=plan, hardware=common.hardware(), args=vars(args)))
        return
    if args.one:
        t0 = time.perf_counter()
        if args.one == "torch":
            out = run_torch(args.size, args.batch, args.iters, args.torch_device, args.build_only)
        else:
            out = run_jax(args.size, args.batch, args.iters, args.remat, args.dtype, args.build_only)
        print(json.dumps(common.measurement(out, t0, args.batch, args.iters, framework=args.one, size=args.size,
                                            dtype=args.dtype)))
        return
    try:
        results = [common.run_child(__file__, ["--one", fw] + common_args) for fw in args.frameworks.split(",")]
    except RuntimeError as e:
        sys.exit(f"error: {e}")
    hardware = common.hardware()
    by = {r["framework"]: r for r in results}
    ratio = by["jax"]["images_per_s"] / by["torch"]["images_per_s"] if len(by) == 2 else None
    print(f"FFCLIP train step, size {args.size}, batch {args.batch}, {args.dtype}, remat {args.remat}, "
          f"{hardware['jax_device']} ({hardware['machine']}, {hardware['cpus']} CPUs)")
    print(f"{'framework':<10}{'images/s':>12}{'peak MiB':>12}")
    for r in results:
        print(f"{r['framework']:<10}{r['images_per_s']:>12.3f}{r['peak_bytes'] / 2 ** 20:>12.0f}")
    if ratio:
        print(f"JAX / PyTorch: {ratio:.2f}x")
    common.write_results(args.json, dict(results=results, ratio=ratio, hardware=hardware, args=vars(args)))


if __name__ == "__main__":
    main()
