"""python -m convert_weights <model> --input FILE --output DIR [--force] [model options]

One sub-command per upstream format; each lives in `convert_weights/<model>.py` with NAME, HELP, `run(args)` and,
if it has options beyond --input/--output/--force, `add_arguments(parser)`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ffclip_jax.errors import run_cli

CONVERTERS = ("stylegan2", "e4e", "ffclip", "clip", "arcface", "parsenet", "moco", "all")


def _available():
    mods = {}
    for name in CONVERTERS:
        try:
            mods[name] = importlib.import_module(f"convert_weights.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"convert_weights.{name}":
                raise
    return mods


def build_parser(mods) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m convert_weights",
                                     description="Convert upstream PyTorch checkpoints to ffclip-jax directories.")
    sub = parser.add_subparsers(dest="model", required=True, metavar="MODEL")
    for name, mod in mods.items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        if name != "all":
            p.add_argument("--input", required=True, help="upstream checkpoint file")
        p.add_argument("--output", required=True, help="directory to write (written atomically)")
        p.add_argument("--force", action="store_true", help="replace an existing output directory")
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(p)
    return parser


def main(argv=None):
    mods = _available()
    args = build_parser(mods).parse_args(argv)
    mods[args.model].run(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
