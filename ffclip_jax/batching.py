"""Running networks on numpy data from the user tools (edit, invert, evaluate, the studio): one jit compilation per
(equal) module, fixed-size batches so a compilation serves every call. Every device call of the tools goes through
`in_batches` (the Editor's row runners, the metrics, CLIP's text encoder).

    fn = functools.partial(jit_apply(generator, input_is_latent=True), variables)
    images = in_batches(fn, [w_plus], batch_size=8)          # (N, H, W, 3) numpy, N any
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import jax
import numpy as np


@functools.lru_cache(maxsize=None)
def jit_apply(module, method: Optional[Callable] = None, **kwargs):
    """jax.jit(lambda variables, *args: module.apply(variables, *args, method=method, **kwargs)), created once per
    (equal, hashable) module, method and static keyword arguments."""
    return jax.jit(lambda variables, *args: module.apply(variables, *args, method=method, **kwargs))


def bucket(n: int, cap: int) -> int:
    """The smallest power of two >= n, at most `cap`: a batch size for few rows with few compilations."""
    return max(1, min(cap, 1 << max(0, int(n) - 1).bit_length()))


def in_batches(fn: Callable, arrays: Sequence, batch_size: int, progress=None):
    """fn(*batch) over the rows of `arrays` (arrays, or pytrees of arrays, with the same number of rows) in fixed-size
    batches, the last one padded by repeating its last row so that one compilation serves every call; returns the
    outputs (an array or a pytree) of the real rows, stacked, as numpy. `progress`: a tqdm bar advanced by the real
    rows of each batch."""
    n = len(jax.tree.leaves(arrays[0])[0])
    out = []
    for start in range(0, n, batch_size):
        real = min(batch_size, n - start)
        rows = jax.tree.map(lambda a: _padded(np.asarray(a[start:start + real]), batch_size), list(arrays))
        out.append(jax.tree.map(lambda y: np.asarray(y)[:real], fn(*rows)))
        if progress is not None:
            progress.update(real)
    return jax.tree.map(lambda *ys: np.concatenate(ys), *out)


def _padded(rows: np.ndarray, batch_size: int) -> np.ndarray:
    if len(rows) == batch_size:
        return rows
    return np.concatenate([rows, np.repeat(rows[-1:], batch_size - len(rows), axis=0)])
