"""ffclip align: FFHQ face alignment of raw photos (`ffclip_jax.align`), the crop e4e and the FFHQ StyleGAN2 expect.

    ffclip align --images raw/ more.jpg --output aligned/ \\
        (--predictor shape_predictor_68_face_landmarks.dat | --landmarks landmarks.json) \\
        [--size 1024] [--transform-size 4096] [--all-faces] [--overwrite]

Writes aligned/<stem>.png, and with --all-faces <stem>_1.png, <stem>_2.png ... for the other faces (detected faces
largest first, JSON faces in their order), and aligned/ffclip-run.json listing them; unreadable photos and photos
without a face are skipped and listed. The predictor file and the landmarks JSON format: `ffclip_jax.align`.
OUTPUT must be new, empty or a previous run's (replaced with --overwrite: see `ffclip_jax.outputs`).
"""
from __future__ import annotations

import argparse
import sys

from ffclip_jax import inputs
from ffclip_jax.align import align_files
from ffclip_jax.cli.arguments import add_overwrite_argument
from ffclip_jax.errors import InputError
from ffclip_jax.outputs import RunFolder


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ffclip align", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, nargs="+", help="image files and/or folders")
    p.add_argument("--output", required=True, help="folder for the aligned PNGs")
    add_overwrite_argument(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictor", help="dlib shape_predictor_68_face_landmarks.dat (detect faces with dlib)")
    source.add_argument("--landmarks", help="JSON {file name: 68 or 5 [x, y] points, or a list of faces}")
    p.add_argument("--size", type=int, default=1024, help="output size (default 1024, FFHQ)")
    p.add_argument("--transform-size", type=int, default=4096,
                   help="size of the QUAD transform before the resize to --size (default 4096, FFHQ; e4e uses 256)")
    p.add_argument("--all-faces", action="store_true", help="align every face, not only the largest")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    files = inputs.list_images(args.images)
    output = RunFolder(args.output, "align", overwrite=args.overwrite)
    written, skipped = align_files(files, output, predictor=args.predictor, landmarks=args.landmarks,
                                   size=args.size, transform_size=args.transform_size, all_faces=args.all_faces)
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not written:
        raise InputError(f"no face aligned from {len(files)} file(s)")
    print(f"wrote {len(written)} aligned face(s) to {args.output}")
