"""python -m convert_weights <converter> --input FILE --output DIR [--force] [converter options]: the same command
line as `ffclip convert` (`ffclip_jax/cli/convert.py`)."""
import functools
import sys

from ffclip_jax.cli.convert import main
from ffclip_jax.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(functools.partial(main, prog="python -m convert_weights")))
