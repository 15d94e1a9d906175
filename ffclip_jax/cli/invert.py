"""ffclip invert: photos to w+ codes with a converted e4e (or pSp) encoder, as e4e's `scripts/inference.py` does.

    ffclip invert --encoder weights/e4e --images photos/ --output latents.npy [--align PREDICTOR] [--batch-size 8]
        [--generator weights/e4e/generator --grid recon.png] [--devices N] [--distributed ...]

Writes latents.npy (N, n_latent, 512) float32 and latents.json (the source files, in the same order); unreadable
photos (and with --align, photos without a face) are skipped and listed. Preprocessing is e4e's: RGB, PIL bilinear
resize to the encoder's input size (256x256; cars 192x256), ToTensor, Normalize(0.5, 0.5) -> [-1, 1]. --encoder is
a converted e4e directory or any weights directory with one.

The photos go in parts of --part-size, each saved in latents.parts/ when done: a killed run, rerun as it was, does
only the parts not saved yet. With --distributed (the same command on every host) part i is process i % P's, and
process 0 writes the same files as a one-host run (see `ffclip_jax.parts`).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from ffclip_jax import inputs
from ffclip_jax.cli.arguments import (add_align_argument, add_batch_size_argument, add_devices_arguments,
                                      add_distributed_arguments, add_part_size_argument, at_least, start_distributed)
from ffclip_jax.errors import InputError
from ffclip_jax.fileio import atomic_write, write_json_atomic
from ffclip_jax.grid import save_grid
from ffclip_jax.parts import Parts, encode_parts, encode_plan, merged_codes
from ffclip_jax.pipeline import Editor, encoder_view, none_readable
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
    add_part_size_argument(p)
    add_devices_arguments(p)
    add_distributed_arguments(p)
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    at_least(args, 1, "batch_size", "part_size")
    start_distributed(args)
    if not args.output.endswith(".npy") or os.path.isdir(args.output):
        raise InputError(f"--output {args.output}: expected a .npy file name")
    weights = resolve(args.encoder)
    weights.path("e4e", "--encoder (inverting photos)")
    if args.grid and not args.generator and not weights.has("generator"):
        args.generator = os.path.join(args.encoder, "generator")
        if not os.path.isdir(args.generator):
            raise InputError(f"--grid needs a generator: pass --generator DIR ({args.encoder} has no generator/)")
    files = inputs.list_images(args.images)
    networks = ("e4e", "generator") if args.grid else ("e4e",)
    editor = Editor.from_pretrained(args.encoder, generator=args.generator, align=args.align,
                                    batch_size=args.batch_size, networks=networks, devices=args.devices,
                                    frozen=args.frozen_sharding)
    job = Parts(os.path.splitext(args.output)[0] + ".parts", [os.path.abspath(f) for f in files], args.part_size,
                plan=encode_plan(editor, "invert", args.align, resize=not args.no_resize))
    encode_parts(editor, job, resize=not args.no_resize)
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
    sources_json = os.path.splitext(args.output)[0] + ".json"
    atomic_write(args.output, lambda tmp: np.save(tmp, enc.w))
    write_json_atomic(sources_json, sources)
    job.remove()
    print(f"wrote {enc.w.shape} codes to {args.output} and their sources to {sources_json}")
    if args.grid:
        shown = sources[:GRID_MAX_ROWS]
        x = editor.encoder_inputs(shown, resize=not args.no_resize)
        recons = encoder_view(editor.render_rows(enc.w[:len(shown)]), editor.input_size)
        save_grid(args.grid, np.stack([x, recons], axis=1), column_labels=["input", "reconstruction"])
        print(f"wrote input | reconstruction grid of {len(shown)} images to {args.grid}")

