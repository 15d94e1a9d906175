"""ffclip data build|info: build the `ffclip_latents` dataset, or describe a built one.

    ffclip data build --domain ffhq --train train_latents.npy --test test_latents.npy --data-dir DIR
    ffclip data build --domain car --manual-dir LATENTS_DIR --data-dir DIR  # {train,test}_latents.npy
    ffclip data build --domain ffhq --synthetic 10000 --generator weights/stylegan2 --truncation 0.7 --data-dir DIR
    ffclip data info --domain ffhq --data-dir DIR
"""
from __future__ import annotations

import argparse
import json
import os

from ffclip_jax.data.builder import build, describe
from ffclip_jax.data.latents import DOMAINS, expected_shape, load_generator, synthetic_latents
from ffclip_jax.errors import ConfigError
from ffclip_jax.inputs import load_latents


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


def run_build(args) -> None:
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
