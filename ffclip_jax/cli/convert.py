"""ffclip convert CONVERTER --input FILE --output DIR [--force] [converter options] (also `python -m convert_weights`).

One sub-command per upstream format, each the module `convert_weights/<converter>.py` (the converters the network
registry `ffclip_jax.weights.registry` names, plus `all`): NAME, HELP, `recognise(ckpt)` (except `all`),
`convert(input, output, *, force=False, **options)` and, if it has options beyond --input/--output/--force,
`add_arguments(parser)` whose argument dests are `convert`'s keyword names; INPUT_ALIASES names other spellings of
--input (lpips: --backbone-file). Only the chosen converter's module is
imported (the CLIP one brings transformers).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from convert_weights.all import HELP as ALL_HELP
from convert_weights.common import converter
from ffclip_jax.weights.registry import CONVERTERS, ENTRIES

SUBCOMMANDS = CONVERTERS + ("all",)
COMMON = ("converter", "input", "output", "force")


def summary(name: str) -> str:
    """One line per converter from the registry (no converter module imported)."""
    if name == "all":
        return ALL_HELP
    entries = [e for e in ENTRIES if e.converter == name]
    return " / ".join(e.description for e in entries) + f" ({entries[0].upstream_file})"


def build_parser(prog: str = "ffclip convert", chosen: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; the `chosen` converter's sub-command gets its module's full arguments."""
    parser = argparse.ArgumentParser(prog=prog, description="Convert upstream PyTorch checkpoints to ffclip-jax "
                                                            "directories.")
    sub = parser.add_subparsers(dest="converter", required=True, metavar="CONVERTER")
    for name in SUBCOMMANDS:
        if name != chosen:
            sub.add_parser(name, help=summary(name))
            continue
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


def main(argv=None, prog: str = "ffclip convert") -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv[:1] if a in SUBCOMMANDS), None)
    args = build_parser(prog, chosen).parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in COMMON}
    converter(args.converter).convert(args.input, args.output, force=args.force, **options)
