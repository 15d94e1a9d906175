"""ffclip edit: free-form text edits of photos, w+ latents or random samples with one trained FFCLIP mapper.

    ffclip edit --weights weights/ffhq --text "blue hair" --text "Man aged 10" --strength 0.5,1,1.5 \
        --images photos/ --output out/ [--align PREDICTOR] [--save-latents] [--batch-size 8]
    ffclip edit --weights weights/ffhq --text Bald --latents latents.npy --output out/
    ffclip edit --weights weights/ffhq --text Bald --random 8 --seed 0 --truncation 0.7 --output out/
    ffclip edit --weights weights/ffhq --text "blue hair" --images raw/ --align PREDICTOR --refine pti --output out/

Writes out/<source>__<prompt>__<strength>.png per edit, out/<source>__reconstruction.png, out/grid.png (source,
reconstruction, then the edits; the first --grid-rows sources), with --save-latents out/latents.npy (N, P, S, L, D)
edited w+ and out/latents.json (sources, prompts, strengths), and out/ffclip-run.json listing every file written.
OUTPUT must be new, empty or a previous run's (replaced with --overwrite: see `ffclip_jax.outputs`).
--refine w+|pti (photos only): each photo's e4e code refined first (`Editor.edit(..., refine=...)`): the mapper
edits the refined code (PTI: the pivot) and, with PTI, each photo's reconstruction and edits are rendered on its own
tuned generator.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from tqdm import tqdm

from ffclip_jax import inputs
from ffclip_jax.cli.arguments import (add_align_argument, add_batch_size_argument, add_cache_dir_argument,
                                      add_devices_arguments, add_overwrite_argument, add_refine_arguments, at_least,
                                      refine_stage)
from ffclip_jax.errors import InputError
from ffclip_jax.grid import cells, save_grid
from ffclip_jax.outputs import RunFolder, unique_names
from ffclip_jax.pipeline import REFINE_STAGES, Editor
from ffclip_jax.weights import pretrained
from ffclip_jax.weights.manifest import resolve

GRID_CELL = 256  # grid cells are downscaled to at most this many pixels a side


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ffclip edit", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True,
                   help="weights directory (`ffclip convert all` output, training workdir or its export)")
    p.add_argument("--text", action="append", default=[], help="edit prompt (repeat for several)")
    p.add_argument("--strength", default="1", help="comma-separated edit strengths (1 = upstream FFCLIP)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", help="photos (FFHQ-aligned faces, or any photo with --align): files and/or "
                                                 "folders")
    src.add_argument("--latents", help="w+ latents .npy (N, L, D) or (L, D), e.g. from `ffclip invert`")
    src.add_argument("--random", type=int, metavar="N", help="N random latents from the generator")
    p.add_argument("--seed", type=int, default=0, help="seed of --random")
    p.add_argument("--truncation", type=float, default=1.0, help="truncation of --random (e.g. 0.7)")
    p.add_argument("--output", required=True, help="folder for the PNGs, grid.png and latents")
    add_overwrite_argument(p)
    p.add_argument("--save-latents", action="store_true", help="write the edited w+ to OUTPUT/latents.npy")
    add_batch_size_argument(p)
    p.add_argument("--grid-rows", type=int, default=16, help="sources shown in grid.png")
    p.add_argument("--e4e", help="converted e4e directory to use instead of the weights directory's")
    add_align_argument(p)
    p.add_argument("--clip", help="converted CLIP directory to use instead of the weights directory's")
    add_cache_dir_argument(p)
    add_devices_arguments(p)
    add_refine_arguments(p)
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    prompts = inputs.prompts(args.text)
    strengths = inputs.strengths(args.strength, name="--strength")
    at_least(args, 1, "batch_size", "random")
    at_least(args, 0, "grid_rows")
    refine = refine_stage(args)
    if refine is not None and not args.images:
        raise InputError("--refine needs --images: latents and random samples have no photo to fit")
    output = RunFolder(args.output, "edit", overwrite=args.overwrite)
    # cheap checks before any network is loaded
    weights = resolve(args.weights).with_overrides(e4e=args.e4e, clip=args.clip)
    mapper = pretrained.read_meta(weights.path("mapper"))["config"]
    if args.images:
        weights.path("e4e", "--images")
    weights.path("clip", "--text prompts")
    files = inputs.list_images(args.images) if args.images else None
    if args.latents:
        w = inputs.load_latents(args.latents, inputs.LatentShape(mapper["n_latent"], mapper["style_dim"],
                                                                 f"the mapper in {weights.root}"))
    editor = Editor.from_pretrained(args.weights, e4e=args.e4e, clip=args.clip, align=args.align,
                                    batch_size=args.batch_size, cache_dir=args.cache_dir, devices=args.devices,
                                    frozen=args.frozen_sharding, lpips=args.lpips)
    grid_inputs = enc = None  # the first grid rows as the encoder saw them; the refined photos
    if refine is not None:
        editor.refine_size(), editor.lpips(REFINE_STAGES[refine.stage][0])  # fail before any photo is read
    if files is not None:
        enc = editor.encode_files(files, keep_inputs=args.grid_rows, refine=refine)
        for _, reason in enc.skipped:
            print(f"skipped {reason}", file=sys.stderr)
        for m in enc.messages:
            print(m, file=sys.stderr)
        w, sources, grid_inputs = enc.w, enc.sources, enc.inputs
        names = [os.path.splitext(os.path.basename(f))[0] for f in sources]
    else:
        if args.random is not None:
            w = editor.sample(args.random, args.seed, args.truncation)
        kind = "latent" if args.latents else "random"
        sources = names = [f"{kind}{i:04d}" for i in range(len(w))]
    names, prompt_names = unique_names(names), unique_names(prompts)
    strength_names = [f"{s:g}" for s in strengths]
    editor.text_embeddings(prompts)

    output.begin()
    grid_rows, edited = [], []
    chunk = editor.batch_size  # sources per editor call: B * P * S edits in batches of B
    with tqdm(total=len(w) * len(prompts) * len(strengths), desc="editing", unit="edit") as bar:
        for start in range(0, len(w), chunk):
            r = editor.edit(enc.rows(start, start + chunk) if refine else w[start:start + chunk], prompts, strengths)
            edited.append(r.latents)
            for i, name in enumerate(names[start:start + chunk]):
                output.save_png(f"{name}__reconstruction.png", r.reconstructions[i])
                for j, pn in enumerate(prompt_names):
                    for k, sn in enumerate(strength_names):
                        output.save_png(f"{name}__{pn}__{sn}.png", r.images[i, j, k])
            keep = max(0, min(args.grid_rows - start, len(r.source_latents)))
            if keep:
                size = min(GRID_CELL, r.images.shape[-2])
                columns = ([grid_inputs[start:start + keep]] if grid_inputs is not None else [])
                columns += [r.reconstructions[:keep]]
                columns += [r.images[:keep, j, k] for j in range(len(prompts)) for k in range(len(strengths))]
                grid_rows.append(np.stack([cells(c, size) for c in columns], axis=1))
            bar.update(len(r.source_latents) * len(prompts) * len(strengths))
    recon_label = "reconstruction" + {None: "", "w+": " (W+)", "pti": " (PTI)"}[refine and refine.stage]
    labels = (["source"] if grid_inputs is not None else []) + [recon_label] + [
        f"{p} x{s}" if len(strengths) > 1 or strengths[0] != 1 else p for p in prompts for s in strength_names]
    written = f"{len(w) * len(prompts) * len(strengths)} edits"
    if grid_rows:
        save_grid(output.path("grid.png"), np.concatenate(grid_rows), column_labels=labels,
                  row_labels=names[:sum(len(g) for g in grid_rows)])
        written += ", grid.png"
    if args.save_latents:
        latents = np.concatenate(edited)
        output.write("latents.npy", lambda tmp: np.save(tmp, latents))
        output.write_json("latents.json", {"sources": list(sources), "prompts": prompts, "strengths": strengths,
                                           "shape": "(sources, prompts, strengths, n_latent, style_dim)"})
        written += f", latents.npy {latents.shape}"
    refined = {} if refine is None else {"refine": dict(
        stage=refine.stage, steps=refine.settings.steps, **{f: enc.refinement[f].tolist() for f in ("lpips_start",
                                                                                                    "lpips")})}
    output.commit(sources=list(sources), prompts=prompts, strengths=strengths, **refined)
    print(f"wrote {written} to {args.output}")

