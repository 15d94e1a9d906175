"""Arguments that several command lines share, so that each means the same in every tool."""
from __future__ import annotations

import argparse

from ffclip_jax import sharding
from ffclip_jax.errors import InputError
from ffclip_jax.parts import DEFAULT_PART_SIZE
from ffclip_jax.pipeline import DEFAULT_BATCH, REFINE_STAGES, Refine
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
    parser.add_argument("--batch-size", type=int,
                        help=f"rows per device call, the jit batch, split over the --devices (default {DEFAULT_BATCH} "
                             f"per device; rounded up to a multiple of the devices)")


def add_part_size_argument(parser: argparse.ArgumentParser) -> None:
    """`--part-size` of the resumable file tools (`ffclip_jax.parts`)."""
    parser.add_argument("--part-size", type=int, default=DEFAULT_PART_SIZE,
                        help=f"inputs per saved part: a rerun of a killed run redoes at most the parts in progress "
                             f"(default {DEFAULT_PART_SIZE})")


def devices_count(text: str):
    """--devices: a positive integer or 'all'."""
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of devices or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 device, got {value}")
    return value


def add_devices_arguments(parser: argparse.ArgumentParser) -> None:
    """`--devices` and `--frozen-sharding` of the tools that run networks (`ffclip_jax.sharding`)."""
    parser.add_argument("--devices", type=devices_count, metavar="N|all",
                        help="split every batch over this process's first N devices (default: every GPU/TPU, or "
                             "one CPU device)")
    parser.add_argument("--frozen-sharding", choices=sharding.FROZEN_RULES, default="replicate",
                        help="networks on every device (replicate, default) or their large arrays split over the "
                             "devices (fsdp: less memory per device, more communication)")


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """The multi-host switch of the file tools, as the trainer's `config.distributed`: `--distributed` alone
    auto-detects TPU slices, SLURM and Open MPI; elsewhere the three explicit values."""
    parser.add_argument("--distributed", action="store_true",
                        help="one of several processes (the same command on every host): jax.distributed, the "
                             "input files split between the processes, the output on storage every host sees")
    parser.add_argument("--coordinator-address", metavar="HOST:PORT", help="with --distributed: process 0's address")
    parser.add_argument("--num-processes", type=int, metavar="N", help="with --distributed: the number of processes")
    parser.add_argument("--process-id", type=int, metavar="I", help="with --distributed: this process's index")


def add_file_job_arguments(parser: argparse.ArgumentParser) -> None:
    """What the resumable file tools (invert, evaluate, data build) share: --part-size, the devices, --distributed."""
    add_part_size_argument(parser)
    add_devices_arguments(parser)
    add_distributed_arguments(parser)


def start_distributed(args: argparse.Namespace) -> None:
    """jax.distributed for --distributed (call before anything touches a device); the explicit values only with it."""
    explicit = [f"--{n.replace('_', '-')}" for n in ("coordinator_address", "num_processes", "process_id")
                if getattr(args, n) is not None]
    if not args.distributed:
        if explicit:
            raise InputError(f"{', '.join(explicit)}: only with --distributed")
        return
    at_least(args, 1, "num_processes")
    at_least(args, 0, "process_id")
    sharding.start_distributed(args.coordinator_address, args.num_processes, args.process_id)


def add_refine_arguments(parser: argparse.ArgumentParser) -> None:
    """`--refine`, `--refine-steps` and `--lpips` of the tools that invert photos (invert, edit, data build)."""
    parser.add_argument("--refine", metavar="|".join(REFINE_STAGES),
                        help="refine each photo's e4e code: w+ (W+ optimisation, LPIPS-VGG) or pti (pivotal tuning: "
                             "a generator per photo tuned around the e4e code, LPIPS-alex); upstream's settings")
    parser.add_argument("--refine-steps", type=int, metavar="N",
                        help="refinement steps (default upstream's: w+ 1000, pti 350)")
    parser.add_argument("--lpips", metavar="DIR",
                        help="converted LPIPS directory for --refine (default: the weights directory's lpips_vgg for "
                             "w+, lpips_alex for pti)")


def refine_stage(args: argparse.Namespace):
    """The `Refine` stage of --refine / --refine-steps (None without --refine); bad values are one-line errors."""
    at_least(args, 1, "refine_steps")
    if not args.refine:
        given = [f for f, v in (("--refine-steps", args.refine_steps), ("--lpips", args.lpips)) if v is not None]
        if given:
            raise InputError(f"{', '.join(given)}: only with --refine {'|'.join(REFINE_STAGES)}")
        return None
    if args.refine not in REFINE_STAGES:
        raise InputError(f"--refine must be one of {', '.join(REFINE_STAGES)}, got {args.refine!r}")
    return Refine.of(args.refine, args.refine_steps)


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
