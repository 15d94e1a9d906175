"""Prompt lists: built-in per-domain lists (package data `ffclip_jax/text/prompt_lists/<name>.txt`) or a user file.

A list file has one prompt per line; blank lines and lines starting with `#` are skipped. Duplicates are kept:
training draws an entry uniformly, so a repeated prompt weighs more (upstream's FFHQ list relies on this). The tools
that edit with a list (evaluate, the studio's examples) apply `ffclip_jax.inputs.prompts` to it, which drops them.

    prompts = load_prompts("ffhq")             # the official FFCLIP 53-entry list
    prompts = load_prompts("my_prompts.txt")   # any file
"""
from __future__ import annotations

import os
from typing import List

from ffclip_jax.errors import InputError

PROMPTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompt_lists")
BUILTIN = ("ffhq", "car", "church")


def prompt_file(name_or_path: str) -> str:
    """The file behind a built-in name or a user path."""
    if name_or_path in BUILTIN:
        return os.path.join(PROMPTS_DIR, f"{name_or_path}.txt")
    if not os.path.isfile(name_or_path):
        raise InputError(f"{name_or_path}: no such prompt file and not a built-in prompt list "
                         f"({', '.join(BUILTIN)})")
    return name_or_path


def load_prompts(name_or_path: str) -> List[str]:
    """The prompt list named `ffhq`, `car`, `church`, or read from a file; a one-line InputError if none."""
    path = prompt_file(os.fspath(name_or_path))
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f.read().splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable prompt file ({e})") from None
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise InputError(f"{path}: no prompts (expected one prompt per line; '#' starts a comment line)")
    return prompts
