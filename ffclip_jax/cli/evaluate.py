"""ffclip evaluate: score a trained FFCLIP mapper: CLIP score, identity / background (faces) or MoCo (other domains)
preservation and latent change for every (test latent, prompt); writes report.json, report.md and PNG plots.

    ffclip evaluate --weights weights/ffhq --latents test_latents.npy --prompts ffhq --limit 200 \
        [--compositions --num-compositions 10] [--seed 0] --output report/

--weights: a `ffclip convert all` directory, a trainer export or a training workdir (see ffclip_jax.weights).
--prompts: a built-in list (ffhq, car, church) or a file, one prompt per line; duplicates are evaluated once.
--domain: face (identity + background; needs arcface and parsenet) or other (MoCo; needs moco); default: face when
the weights directory has arcface and parsenet, else other.

The latents go in parts of --part-size, each saved in OUTPUT.parts/ when done: a killed run, rerun as it was, does
only the parts not saved yet. With --distributed (the same command on every host) part i is process i % P's, and
process 0 writes the same report as a one-host run (see `ffclip_jax.parts`).

The reconstruction report (`ffclip_jax.reconstruction`): how well e4e, e4e + W+ optimisation and e4e + PTI keep the
photos of a folder, and, with --text, how the mapper's edits on each inversion score:

    ffclip evaluate --reconstruction photos/ --weights weights/ffhq [--align PREDICTOR] [--refine-steps 100] \
        [--text "blue hair" --text Bald] [--strength 1] --output recon/

It needs the weights directory's lpips_alex, lpips_vgg and arcface networks (and the mapper and CLIP for --text);
it runs in one process and is not resumable (--latents, --compositions, --distributed do not apply).
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np
from tqdm import tqdm

from ffclip_jax import inputs, metrics, reconstruction, report
from ffclip_jax.cli.arguments import (add_align_argument, add_batch_size_argument, add_cache_dir_argument,
                                      add_file_job_arguments, at_least, start_distributed)
from ffclip_jax.errors import InputError
from ffclip_jax.parts import Parts
from ffclip_jax.pipeline import Editor
from ffclip_jax.text.prompts import load_prompts
from ffclip_jax.weights import pretrained
from ffclip_jax.weights.manifest import resolve


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ffclip evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="weights directory (manifest, trainer export or workdir)")
    p.add_argument("--latents", help="test w+ latents .npy (N, n_latent, style_dim) (required unless --reconstruction)")
    p.add_argument("--prompts", help="built-in prompt list (ffhq, car, church) or a prompt file (required unless "
                                     "--reconstruction; with it, edit prompts besides --text)")
    p.add_argument("--output", required=True, help="report directory (written atomically)")
    p.add_argument("--limit", type=int, help="evaluate only the first N latents (--reconstruction: photos)")
    p.add_argument("--reconstruction", metavar="PHOTOS", help="the reconstruction report of a folder of photos (or "
                                                              "files): e4e, e4e + W+, e4e + PTI")
    p.add_argument("--text", action="append", default=[], help="with --reconstruction: an edit prompt (repeat for "
                                                               "several)")
    p.add_argument("--refine-steps", type=int, help="with --reconstruction: steps of both refinements (default "
                                                    "upstream's: W+ 1000, PTI 350)")
    add_align_argument(p)
    p.add_argument("--compositions", action="store_true",
                   help="also evaluate prompts made of two training prompts ('Blue hair, wearing glasses')")
    p.add_argument("--num-compositions", type=int, default=10, help="number of composed prompts (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the composition pairs")
    p.add_argument("--strength", type=float, default=1.0, help="edit strength (1 = upstream FFCLIP)")
    p.add_argument("--domain", choices=("auto", "face", "other"), default="auto")
    add_batch_size_argument(p)
    add_cache_dir_argument(p)
    p.add_argument("--force", action="store_true", help="replace an existing --output directory")
    add_file_job_arguments(p)
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if os.path.exists(args.output) and not args.force:
        raise InputError(f"--output {args.output}: already exists (pass --force to replace it)")
    at_least(args, 1, "limit", "batch_size", "num_compositions", "part_size", "refine_steps")
    if args.reconstruction is not None:
        return reconstruction_main(args)
    for flag in ("text", "refine_steps", "align"):
        if getattr(args, flag):
            raise InputError(f"--{flag.replace('_', '-')}: only with --reconstruction")
    for flag in ("latents", "prompts"):
        if getattr(args, flag) is None:
            raise InputError(f"--{flag} is required (or --reconstruction PHOTOS for the reconstruction report)")
    start_distributed(args)
    strength = inputs.strength(args.strength, name="--strength")
    prompts = inputs.prompts(load_prompts(args.prompts))
    entries = [{"prompt": p, "kind": "single", "parts": [p]} for p in prompts]
    if args.compositions:
        entries += [{"prompt": metrics.compose(pair), "kind": "composition", "parts": list(pair)}
                    for pair in metrics.composition_pairs(prompts, args.num_compositions, args.seed)]

    weights = resolve(args.weights)
    weights.path("clip", "the CLIP score")
    domain = metrics.choose_domain(weights, args.domain)
    for name in metrics.DOMAIN_NETWORKS[domain]:
        weights.path(name, f"the {domain}-domain metrics (--domain {domain})")
    mapper = pretrained.read_meta(weights.path("mapper"))["config"]
    expected = inputs.LatentShape(mapper["n_latent"], mapper["style_dim"], f"the mapper in {weights.root}")
    latents = inputs.load_latents(args.latents, expected, mmap=True)
    indices = np.arange(len(latents) if args.limit is None else min(args.limit, len(latents)))
    latents = np.asarray(latents[indices], np.float32)
    editor = Editor.from_pretrained(args.weights, batch_size=args.batch_size, cache_dir=args.cache_dir,
                                    networks=("mapper", "generator", "clip"), devices=args.devices,
                                    frozen=args.frozen_sharding)
    nets, variables = metrics.metric_networks(weights, editor.clip, domain)

    embeddings = editor.text_embeddings([e["prompt"] for e in entries])
    parts = [editor.text_embeddings(e["parts"]) for e in entries] if args.compositions else None
    rows_per_device = editor.batch_size // len(editor.devices)
    stat = os.stat(args.latents)
    job = Parts(os.path.normpath(args.output) + ".parts", indices.tolist(), args.part_size, plan={
        "tool": "evaluate", "weights": weights.root, "networks": dict(weights.networks), "domain": domain,
        "latents": [os.path.abspath(args.latents), stat.st_size, stat.st_mtime_ns], "entries": entries,
        "strength": strength, "rows_per_device": rows_per_device})
    with tqdm(total=sum(len(job.part_items(i)) for i in job.mine()), initial=job.done_items(), desc="evaluating",
              unit="latent") as bar:
        for i in job.todo():
            start, end = job.range(i)
            job.save(i, metrics.evaluate(editor, nets, variables, latents[start:end], embeddings, strength=strength,
                                         part_embeddings=parts, progress=False))
            bar.update(end - start)
    if not job.finish():
        print(f"process {job.process}: parts {job.mine()} done; process 0 writes {args.output}", file=sys.stderr)
        return
    saved = [arrays for arrays, _ in job.load_all()]
    results = {k: np.concatenate([a[k] for a in saved], axis=1) for k in saved[0]}

    meta = {"weights": weights.root, "latents": os.path.abspath(args.latents), "prompts": args.prompts,
            "domain": domain, "seed": args.seed, "strength": strength, "compositions": args.compositions,
            "rows_per_device": rows_per_device, "image_size": int(editor.generator[0].size),
            "clip_preprocess": "PIL bicubic (antialiased) resize of the shorter side + center crop + CLIP mean/std",
            "jax_backend": jax.default_backend(), "networks": dict(weights.networks)}
    rep = report.build_report(entries, results, indices, meta)
    files = report.write_report(args.output, rep, results, overwrite=args.force)
    job.remove()
    print(f"wrote {', '.join(files)} to {args.output} ({len(indices)} latents x {len(entries)} prompts)")


def reconstruction_main(args) -> None:
    """`--reconstruction PHOTOS`: the reconstruction report (see the module docstring)."""
    for flag in ("latents", "compositions", "distributed"):
        if getattr(args, flag):
            raise InputError(f"--{flag}: not with --reconstruction")
    files = inputs.list_images([args.reconstruction])[:args.limit]
    strength = inputs.strength(args.strength, name="--strength")
    prompts = inputs.prompts(args.text + (load_prompts(args.prompts) if args.prompts else [])) if (
        args.text or args.prompts) else []
    weights = resolve(args.weights)
    weights.path("e4e", "--reconstruction (inverting the photos)")
    weights.path("generator", "--reconstruction")
    nets, variables = reconstruction.load_networks(weights)
    if prompts:
        weights.path("mapper", "--text edits")
        weights.path("clip", "--text edits")
    editor = Editor.from_pretrained(args.weights, align=args.align, batch_size=args.batch_size,
                                    cache_dir=args.cache_dir, devices=args.devices, frozen=args.frozen_sharding,
                                    networks=("generator", "e4e") + (("mapper", "clip") if prompts else ()))
    run = reconstruction.reconstruct(editor, nets, variables, reconstruction.photo_chunks(editor, files),
                                     prompts=prompts, strength=strength, steps=args.refine_steps, seed=args.seed)
    for _, reason in run.skipped:
        print(f"skipped {reason}", file=sys.stderr)
    for r in run.refinement.values():
        for message in r["messages"]:
            print(f"note: {message}", file=sys.stderr)
    meta = {"weights": weights.root, "photo_folder": os.path.abspath(args.reconstruction), "align": args.align,
            "strength": strength, "seed": args.seed, "refine_steps": args.refine_steps,
            "image_size": int(editor.generator[0].size), "eval_size": reconstruction.EVAL_SIZE,
            "batch_size": editor.batch_size, "jax_backend": jax.default_backend(), "networks": dict(weights.networks)}
    rep = reconstruction.build_report(run, meta)
    files_written = reconstruction.write_report(args.output, rep, overwrite=args.force)
    print(f"wrote {', '.join(files_written)} to {args.output} ({len(run.sources)} photo(s) x 3 inversions"
          + (f", {len(prompts)} prompt(s)" if prompts else "") + ")")
