"""python -m convert_weights <converter> --input FILE --output DIR [--force] [converter options]

One sub-command per upstream format, in `convert_weights/<converter>.py` (the converters the network registry
`ffclip_jax.weights.registry` names, plus `all`). Each module has NAME, HELP, `recognise(ckpt)` (except `all`),
`convert(input, output, *, force=False, **options)` and, if it has options beyond --input/--output/--force,
`add_arguments(parser)` whose argument dests are `convert`'s keyword names; INPUT_ALIASES names other spellings of
--input (lpips: --backbone-file).
"""
from __future__ import annotations

import argparse
import sys

from convert_weights.common import converter
from ffclip_jax.errors import run_cli
from ffclip_jax.weights.registry import CONVERTERS

SUBCOMMANDS = CONVERTERS + ("all",)
COMMON = ("converter", "input", "output", "force")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m convert_weights",
                                     description="Convert upstream PyTorch checkpoints to ffclip-jax directories.")
    sub = parser.add_subparsers(dest="converter", required=True, metavar="CONVERTER")
    for name in SUBCOMMANDS:
        module = converter(name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        if name != "all":
            p.add_argument("--input", *getattr(module, "INPUT_ALIASES", ()), dest="input", required=True,
                           help="upstream checkpoint file")
        p.add_argument("--output", required=True, help="directory to write (written atomically)")
        p.add_argument("--force", action="store_true", help="replace an existing output directory")
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in COMMON}
    converter(args.converter).convert(args.input, args.output, force=args.force, **options)


if __name__ == "__main__":
    sys.exit(run_cli(main))
