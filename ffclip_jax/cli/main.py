"""`ffclip COMMAND ...`: the one console script (setup.cfg's entry point), also `python -m ffclip_jax COMMAND ...`.
Each command is the module `ffclip_jax.cli.<command>` (its `build_parser` and `main(argv)`, run by `errors.run_cli`:
an `FFCLIPError` is one `error: ...` line and exit status 2)."""
from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

from ffclip_jax import __version__
from ffclip_jax.errors import run_cli

COMMANDS = {
    "edit": "edit photos, w+ latents or random samples with free-form text prompts",
    "invert": "invert photos to w+ codes with an e4e encoder",
    "align": "FFHQ-align the faces of raw photos",
    "studio": "serve the edit studio, a web page",
    "evaluate": "score a mapper's edits (CLIP score, identity and background, or MoCo) into a report",
    "report": "compare evaluation reports side by side",
    "convert": "convert upstream PyTorch checkpoints to ffclip-jax directories",
    "data": "build or describe the ffclip_latents training set",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: ffclip COMMAND [options]   (ffclip COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines + ["", "Training: python train.py --config configs/tiny.py --workdir runs/tiny"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command in ("-h", "--help"):
        print(usage())
        return 0
    if command == "--version":
        print(f"ffclip-jax {__version__}")
        return 0
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; expected one of {', '.join(COMMANDS)} (ffclip --help)",
              file=sys.stderr)
        return 2
    # the chosen command's module alone is imported: `ffclip align` does not pay for the networks' libraries
    module = importlib.import_module(f"ffclip_jax.cli.{command}")
    return run_cli(module.main, rest)


def run() -> None:
    """The console script `ffclip`."""
    sys.exit(main())
