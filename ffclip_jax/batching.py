"""Running networks on numpy data from the user tools (edit, invert, evaluate, the studio): one jit compilation per
(equal) module, fixed-size batches so a compilation serves every call.

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


def in_batches(fn: Callable, arrays: Sequence[np.ndarray], batch_size: int, progress=None) -> np.ndarray:
    """fn(*batch) over rows of `arrays` in fixed-size batches (the last one padded by repeating its last row, so one
    compilation serves every call); returns the stacked outputs of the real rows as numpy. `progress`: a tqdm bar
    advanced by the real rows of each batch."""
    n = len(arrays[0])
    out = []
    for start in range(0, n, batch_size):
        rows = [np.asarray(a[start:start + batch_size]) for a in arrays]
        real = len(rows[0])
        if real < batch_size:
            rows = [np.concatenate([r, np.repeat(r[-1:], batch_size - real, axis=0)]) for r in rows]
        out.append(np.asarray(fn(*rows))[:real])
        if progress is not None:
            progress.update(real)
    return np.concatenate(out)
