"""CLIP text embeddings of prompts: OpenAI's `encode_text` on strings, and prompt tables cached on disk.

    clip = pretrained.load("weights/clip")                     # (module, variables); from `convert_weights clip`
    e = encode_text(clip, ["Bald", "Blue eyes"])               # (2, 512) = OpenAI model.encode_text(clip.tokenize(..))
    table = prompt_embeddings("weights/clip", prompts)         # computed once, cached on disk
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from ffclip_jax.batching import bucket, in_batches, jit_apply
from ffclip_jax.errors import InputError
from ffclip_jax.fileio import atomic_write
from ffclip_jax.models.clip import CLIP
from ffclip_jax.text.tokenizer import tokenize
from ffclip_jax.weights import pretrained

Network = Tuple[Any, Any]  # (CLIP module, variables), what `pretrained.load` returns


def encode_text(clip: Network, prompts: Union[Sequence[str], np.ndarray], batch_size: int = 64) -> np.ndarray:
    """OpenAI `model.encode_text(clip.tokenize(prompts, truncate=True))` (unnormalised): (N, embed_dim) float32.
    `prompts`: strings, or an (N, context_length) array of token ids. Jit-compiled once per model and batch size
    (N rounded up to a power of two, at most `batch_size`; `batching.in_batches`)."""
    module, variables = clip
    context = module.config.text_config.max_position_embeddings
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = np.asarray(prompts) if isinstance(prompts, np.ndarray) else tokenize(list(prompts), context)
    if ids.ndim != 2 or ids.shape[1] != context or not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"token ids: expected an integer array (N, {context}), got {ids.dtype} {ids.shape}")
    fn = functools.partial(jit_apply(module, CLIP.encode_text), variables)
    return in_batches(fn, [ids.astype(np.int32)], bucket(len(ids), batch_size))


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ffclip_jax", "prompt_embeddings")


def prompt_embeddings(clip_dir: str, prompts: Sequence[str], cache_dir: Optional[str] = None,
                      clip: Optional[Network] = None) -> np.ndarray:
    """(P, embed_dim) float32 `encode_text` of `prompts`, cached in `cache_dir` (default ~/.cache/ffclip_jax/...)
    under a key of the weights' sha256 and the exact prompt list; computed (with `clip`, or loading `clip_dir`) only
    when the cache has no entry. The cache file is written atomically."""
    prompts = list(prompts)
    if not prompts:
        raise InputError("no prompts given: expected at least one non-empty text prompt")
    key = hashlib.sha256(json.dumps({"weights": pretrained.clip_weights_hash(clip_dir), "prompts": prompts}).encode()).hexdigest()
    cache_dir = cache_dir or default_cache_dir()
    path = os.path.join(cache_dir, f"clip_text_{key[:24]}.npz")
    if os.path.isfile(path):
        with np.load(path) as f:
            if list(f["prompts"]) == prompts:
                return f["embeddings"]
    if clip is None:
        clip = pretrained.load(clip_dir)
    table = encode_text(clip, prompts).astype(np.float32)
    atomic_write(path, lambda tmp: np.savez(tmp, embeddings=table, prompts=np.asarray(prompts)))
    return table
