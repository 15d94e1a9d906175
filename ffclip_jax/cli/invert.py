"""ffclip invert: photos to w+ codes with a converted e4e (or pSp) encoder, as e4e's `scripts/inference.py` does.

    ffclip invert --encoder weights/e4e --images photos/ --output latents.npy [--align PREDICTOR] [--batch-size 8]
        [--generator weights/e4e/generator --grid recon.png] [--devices N] [--distributed ...]
        [--refine w+|pti [--refine-steps N] [--lpips DIR] [--save-tuned DIR]]

Writes latents.npy (N, n_latent, 512) float32 and latents.json (the source files, in the same order); unreadable
photos (and with --align, photos without a face) are skipped and listed. Preprocessing is e4e's: RGB, PIL bilinear
resize to the encoder's input size (256x256; cars 192x256), ToTensor, Normalize(0.5, 0.5) -> [-1, 1]. --encoder is
a converted e4e directory or any weights directory with one.

--refine w+ writes the W+-optimised codes; --refine pti writes the pivots (e4e's codes) and, with --save-tuned DIR,
each photo's tuned generator as DIR/<photo name>/ (a converted generator directory: `pretrained.load` it and render
its row of latents.npy); latents.refine.json holds the stage, its settings and each photo's LPIPS and MSE before
and after. Refinement needs the generator (--generator, default ENCODER/generator) and an LPIPS network (--lpips).

The photos go in parts of --part-size, each saved in latents.parts/ when done: a killed run, rerun as it was, does
only the parts not saved yet. With --distributed (the same command on every host) part i is process i % P's, and
process 0 writes the same files as a one-host run (see `ffclip_jax.parts`).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

from ffclip_jax import inputs
from ffclip_jax.batching import jit_apply
from ffclip_jax.cli.arguments import (add_align_argument, add_batch_size_argument, add_file_job_arguments,
                                      add_refine_arguments, at_least, refine_stage, start_distributed)
from ffclip_jax.errors import InputError
from ffclip_jax.fileio import atomic_write, write_json_atomic
from ffclip_jax.grid import save_grid
from ffclip_jax.outputs import unique_names
from ffclip_jax.parts import Parts, encode_parts, encode_plan, merged_codes
from ffclip_jax.pipeline import REFINE_STAGES, Editor, encoder_view, none_readable
from ffclip_jax.weights import pretrained
from ffclip_jax.weights.manifest import resolve

GRID_MAX_ROWS = 16


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ffclip invert", description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", required=True, help="converted e4e/psp directory (or a weights directory with one)")
    p.add_argument("--images", required=True, nargs="+", help="image files and/or folders")
    p.add_argument("--output", required=True, help="latents .npy to write (a .json list of sources is written beside)")
    add_batch_size_argument(p)
    p.add_argument("--no-resize", action="store_true", help="do not resize: images must be the encoder's input size")
    add_align_argument(p)
    p.add_argument("--generator", help="converted stylegan2 directory for --grid (default: ENCODER/generator)")
    p.add_argument("--grid", help="write a PNG of input | reconstruction rows (first 16 images)")
    add_refine_arguments(p)
    p.add_argument("--save-tuned", metavar="DIR",
                   help="with --refine pti: write each photo's tuned generator to DIR/<photo name>/")
    add_file_job_arguments(p)
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    at_least(args, 1, "batch_size", "part_size")
    start_distributed(args)
    if not args.output.endswith(".npy") or os.path.isdir(args.output):
        raise InputError(f"--output {args.output}: expected a .npy file name")
    refine = refine_stage(args)
    if args.save_tuned and (refine is None or refine.stage != "pti"):
        raise InputError("--save-tuned: only with --refine pti (W+ tunes no generator)")
    if args.grid and args.save_tuned is None and refine is not None and refine.stage == "pti":
        raise InputError("--grid with --refine pti renders the tuned generators: give --save-tuned DIR too")
    weights = resolve(args.encoder)
    weights.path("e4e", "--encoder (inverting photos)")
    if (args.grid or refine) and not args.generator and not weights.has("generator"):
        args.generator = os.path.join(args.encoder, "generator")
        if not os.path.isdir(args.generator):
            raise InputError(f"--{'grid' if args.grid else 'refine'} needs a generator: pass --generator DIR "
                             f"({args.encoder} has no generator/)")
    files = inputs.list_images(args.images)
    networks = ("e4e", "generator") if args.grid or refine else ("e4e",)
    editor = Editor.from_pretrained(args.encoder, generator=args.generator, align=args.align,
                                    batch_size=args.batch_size, networks=networks, devices=args.devices,
                                    frozen=args.frozen_sharding, lpips=args.lpips)
    if refine is not None:
        editor.lpips(REFINE_STAGES[refine.stage][0])  # a missing LPIPS fails before any photo is read
    items = [os.path.abspath(f) for f in files]
    job = Parts(os.path.splitext(args.output)[0] + ".parts", items, args.part_size,
                plan=encode_plan(editor, "invert", args.align, refine, resize=not args.no_resize,
                                 **({"save_tuned": os.path.abspath(args.save_tuned)} if args.save_tuned else {})))
    tuned_names = unique_names([os.path.splitext(os.path.basename(f))[0] for f in files])

    def save_tuned(enc):
        for row, k in enumerate(enc.sources):
            editor.save_tuned(os.path.join(args.save_tuned, tuned_names[k]), enc, row,
                              extra={"photo": items[k], "latents": os.path.abspath(args.output)})
    encode_parts(editor, job, resize=not args.no_resize, refine=refine,
                 on_part=save_tuned if args.save_tuned else None)
    if not job.finish():
        print(f"process {job.process}: parts {job.mine()} done; process 0 writes {args.output}", file=sys.stderr)
        return
    enc = merged_codes(job)
    for _, reason in enc.skipped:
        print(f"skipped {reason}", file=sys.stderr)
    if not enc.sources:
        job.remove()
        raise none_readable(len(files), enc.skipped, editor.predictor is not None)
    sources = [files[k] for k in enc.sources]  # as the user named them
    for m in enc.messages:
        print(m, file=sys.stderr)
    sources_json = os.path.splitext(args.output)[0] + ".json"
    atomic_write(args.output, lambda tmp: np.save(tmp, enc.w))
    write_json_atomic(sources_json, sources)
    what = "codes"
    if refine is not None:
        what = "W+-refined codes" if refine.stage == "w+" else "PTI pivots"
        report = {"stage": refine.stage, "seed": refine.seed, "settings": dataclasses.asdict(refine.settings),
                  "photos": [dict({f: a[row].item() for f, a in enc.refinement.items()}, source=src,
                                  **({"tuned": os.path.join(args.save_tuned, tuned_names[k])} if args.save_tuned
                                     else {}))
                             for row, (k, src) in enumerate(zip(enc.sources, sources))],
                  "messages": list(enc.messages)}
        write_json_atomic(os.path.splitext(args.output)[0] + ".refine.json", report)
    job.remove()
    tuned = f" and {len(sources)} tuned generators to {args.save_tuned}" if args.save_tuned else ""
    print(f"wrote {enc.w.shape} {what} to {args.output}{tuned} and their sources to {sources_json}")
    if args.grid:
        shown = sources[:GRID_MAX_ROWS]
        x = editor.encoder_inputs(shown, resize=not args.no_resize)
        if args.save_tuned:  # each reconstruction on its photo's tuned generator, reloaded
            images = [np.asarray(jit_apply(g, input_is_latent=True)(v, enc.w[row:row + 1]))
                      for row, k in enumerate(enc.sources[:len(shown)])
                      for g, v in [pretrained.load(os.path.join(args.save_tuned, tuned_names[k]))]]
            recons = encoder_view(np.concatenate(images), editor.input_size)
        else:
            recons = encoder_view(editor.render_rows(enc.w[:len(shown)]), editor.input_size)
        save_grid(args.grid, np.stack([x, recons], axis=1), column_labels=["input", "reconstruction"])
        print(f"wrote input | reconstruction grid of {len(shown)} images to {args.grid}")

