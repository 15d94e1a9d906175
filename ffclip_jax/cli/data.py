"""ffclip data build|info: build the `ffclip_latents` dataset, or describe a built one.

    ffclip data build --domain ffhq --train train_latents.npy --test test_latents.npy --data-dir DIR
    ffclip data build --domain car --manual-dir LATENTS_DIR --data-dir DIR  # {train,test}_latents.npy
    ffclip data build --domain ffhq --synthetic 10000 --generator weights/stylegan2 --truncation 0.7 --data-dir DIR
    ffclip data build --domain ffhq --images photos/ --encoder weights/e4e [--align PREDICTOR] \
        [--test-fraction 0.1 --split-seed 0 | --train-list train.txt --test-list test.txt] --data-dir DIR \
        [--devices N] [--distributed ...]
    ffclip data info --domain ffhq --data-dir DIR

--images: every image under the folder (subfolders too) inverted into the dataset, each row recording its photo;
unreadable photos and photos without a face are skipped and listed (in the dataset's metadata too). Resumable: the
same command after a kill continues from the parts saved (`ffclip_jax.data.photos`, `ffclip_jax.parts`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ffclip_jax.cli.arguments import (add_align_argument, add_batch_size_argument, add_file_job_arguments,
                                      add_refine_arguments, at_least, refine_stage, start_distributed)
from ffclip_jax.data.builder import build, describe
from ffclip_jax.data.latents import DOMAINS, expected_shape, load_generator, synthetic_latents
from ffclip_jax.data.photos import DEFAULT_TEST_FRACTION, build_from_photos
from ffclip_jax.errors import ConfigError
from ffclip_jax.inputs import load_latents
from ffclip_jax.pipeline import Editor
from ffclip_jax.weights.manifest import resolve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ffclip data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="validate latents and write the ffclip_latents/<domain> dataset")
    b.add_argument("--domain", required=True, choices=list(DOMAINS), help="dataset config (sets the default n_latent)")
    b.add_argument("--data-dir", required=True, help="TFDS data directory (written: DIR/ffclip_latents/<domain>/)")
    b.add_argument("--train", help="train latents .npy (N, n_latent, 512)")
    b.add_argument("--test", help="test latents .npy (M, n_latent, 512)")
    b.add_argument("--manual-dir", help="directory holding train_latents.npy and test_latents.npy")
    b.add_argument("--synthetic", type=int, metavar="N", help="instead of files: N latents mapped from random z")
    b.add_argument("--synthetic-test", type=int, default=64, metavar="M", help="synthetic test latents (default 64)")
    b.add_argument("--generator", help="converted stylegan2 directory: checks n_latent; maps z for --synthetic")
    b.add_argument("--truncation", type=float, default=1.0, help="synthetic truncation toward latent_avg (default 1)")
    b.add_argument("--seed", type=int, default=0, help="synthetic z seed (default 0)")
    b.add_argument("--n-latent", type=int, help="expected n_latent (default: the generator's, else the domain's)")
    b.add_argument("--force", action="store_true", help="replace an existing dataset")
    photos = b.add_argument_group("from photos (--images)")
    photos.add_argument("--images", metavar="DIR", help="instead of latents: invert every image under DIR")
    photos.add_argument("--encoder", help="converted e4e directory (or a weights directory with one) for --images")
    add_align_argument(photos)
    photos.add_argument("--no-resize", action="store_true", help="images must be the encoder's input size")
    photos.add_argument("--train-list", help="file of the train photos (paths relative to DIR, one per line)")
    photos.add_argument("--test-list", help="file of the test photos (with --train-list; unlisted photos ignored)")
    photos.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                        help=f"without lists: the seeded share of test photos (default {DEFAULT_TEST_FRACTION})")
    photos.add_argument("--split-seed", type=int, default=0, help="without lists: the split's seed (default 0)")
    add_refine_arguments(photos)
    add_batch_size_argument(photos)
    add_file_job_arguments(photos)
    i = sub.add_parser("info", help="print a built dataset's shape, split sizes and source as JSON")
    i.add_argument("--domain", required=True, choices=list(DOMAINS))
    i.add_argument("--data-dir", required=True)
    return parser


def _file_splits(args, expected):
    if args.manual_dir:
        if args.train or args.test:
            raise ConfigError("give either --manual-dir or --train/--test, not both")
        args.train = os.path.join(args.manual_dir, "train_latents.npy")
        args.test = os.path.join(args.manual_dir, "test_latents.npy")
    if not (args.train and args.test):
        raise ConfigError("build needs --train and --test latents (or --manual-dir, or --synthetic N --generator DIR)")
    splits = {name: load_latents(path, expected, mmap=True) for name, path in (("train", args.train),
                                                                                ("test", args.test))}
    source = {"source": "files", "train": os.path.abspath(args.train), "test": os.path.abspath(args.test)}
    return splits, source


def _synthetic_splits(args, module, variables):
    if args.train or args.test or args.manual_dir:
        raise ConfigError("--synthetic takes no --train/--test/--manual-dir")
    if module is None:
        raise ConfigError("--synthetic needs --generator DIR (a converted stylegan2 directory)")
    splits = {name: synthetic_latents(module, variables, num, seed=args.seed, stream=stream,
                                      truncation=args.truncation, desc=f"mapping {name} z")
              for stream, (name, num) in enumerate((("train", args.synthetic), ("test", args.synthetic_test)))}
    source = {"source": "synthetic", "generator": os.path.abspath(args.generator), "seed": args.seed,
              "truncation": args.truncation}
    return splits, source


def run_photos(args) -> None:
    if args.train or args.test or args.manual_dir or args.synthetic is not None:
        raise ConfigError("--images takes no --train/--test/--manual-dir/--synthetic")
    if not args.encoder:
        raise ConfigError("--images needs --encoder DIR (a converted e4e directory)")
    at_least(args, 1, "batch_size", "part_size")
    refine = refine_stage(args)
    start_distributed(args)
    expected = expected_shape(args.domain, n_latent=args.n_latent)
    generator = args.generator
    if refine and not generator and not resolve(args.encoder).has("generator"):
        generator = os.path.join(args.encoder, "generator")  # a converted e4e directory's
    editor = Editor.from_pretrained(args.encoder, align=args.align, batch_size=args.batch_size,
                                    networks=("e4e", "generator") if refine else ("e4e",), generator=generator,
                                    devices=args.devices, frozen=args.frozen_sharding, lpips=args.lpips)
    if refine is not None and refine.stage == "w+":  # a missing network fails before any part is written
        editor.refine_size(), editor.lpips("lpips_vgg")
    done = build_from_photos(args.data_dir, args.domain, args.images, editor, align=args.align,
                             resize=not args.no_resize, part_size=args.part_size, force=args.force,
                             train_list=args.train_list, test_list=args.test_list, test_fraction=args.test_fraction,
                             seed=args.split_seed, latent_shape=(expected.n_latent, expected.style_dim), refine=refine)
    if done is None:
        print("this process's parts are done; process 0 writes the dataset", file=sys.stderr)
        return
    if done.get("already_built"):
        print(f"ffclip_latents/{args.domain} in {done['path']} is built already from these photos", file=sys.stderr)
        return
    for _, reason in done["skipped"]:
        print(f"skipped {reason}", file=sys.stderr)
    sizes = ", ".join(f"{name} {n}" for name, n in done["splits"].items())
    print(f"wrote ffclip_latents/{args.domain} ({sizes}; {len(done['skipped'])} skipped; w ({done['n_latent']}, "
          f"{done['style_dim']})) to {done['path']}")


def run_build(args) -> None:
    if args.images:
        return run_photos(args)
    module, variables = load_generator(args.generator) if args.generator else (None, None)
    expected = expected_shape(args.domain, n_latent=args.n_latent, generator=module, generator_dir=args.generator)
    if args.synthetic is not None:
        if module is not None and expected.n_latent != module.n_latent:
            raise ConfigError(f"--n-latent {expected.n_latent} differs from the generator's {module.n_latent}")
        splits, source = _synthetic_splits(args, module, variables)
    else:
        splits, source = _file_splits(args, expected)
    path = build(args.data_dir, args.domain, splits, source, overwrite=args.force)
    sizes = ", ".join(f"{name} {arr.shape[0]}" for name, arr in splits.items())
    print(f"wrote ffclip_latents/{args.domain} ({sizes}; w {tuple(splits['train'].shape[1:])}) to {path}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "build":
        run_build(args)
    else:
        print(json.dumps(describe(args.data_dir, args.domain), indent=2))
