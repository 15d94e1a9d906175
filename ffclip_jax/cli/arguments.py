"""Arguments that several command lines share, so that each means the same in every tool."""
from __future__ import annotations

import argparse

from ffclip_jax.errors import InputError
from ffclip_jax.pipeline import DEFAULT_BATCH
from ffclip_jax.text.embeddings import default_cache_dir


def add_align_argument(parser: argparse.ArgumentParser) -> None:
    """`--align PREDICTOR` of the tools that take raw photos (invert, edit, studio)."""
    parser.add_argument("--align", metavar="PREDICTOR",
                        help="FFHQ-align raw photos first (largest face, at the encoder's input size) with this dlib "
                             "68-point landmark predictor file (shape_predictor_68_face_landmarks.dat)")


def add_cache_dir_argument(parser: argparse.ArgumentParser) -> None:
    """`--cache-dir` of the tools that embed prompts (edit, evaluate, studio)."""
    parser.add_argument("--cache-dir", help=f"text-embedding cache (default {default_cache_dir()})")


def add_batch_size_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                        help=f"rows per device call, the jit batch (default {DEFAULT_BATCH})")


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the previous run in --output (exactly the files its ffclip-run.json lists), "
                             "or write beside other files")


def at_least(args: argparse.Namespace, low: int, *names: str) -> None:
    """A one-line error for each integer option (by dest name) that is set and below `low`."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < low:
            raise InputError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
