"""Running networks on numpy data from the user tools (edit, invert, evaluate, the studio, data build): one jit
compilation per (equal) module, fixed-size batches so a compilation serves every call, each batch split over the
devices of a mesh (`ffclip_jax.sharding`). Every device call of the tools goes through `in_batches` (the Editor's
row runners, the metrics, CLIP's text encoder).

    fn = functools.partial(jit_apply(generator, input_is_latent=True), variables)
    images = in_batches(fn, [w_plus], batch_size=8)              # (N, H, W, 3) numpy, N any
    images = in_batches(fn, [w_plus], 64, mesh=make_mesh(devs))  # 8 rows on each of 8 devices (variables placed)
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from ffclip_jax.sharding import batch_sharding


@functools.lru_cache(maxsize=None)
def jit_apply(module, method: Optional[Callable] = None, **kwargs):
    """jax.jit(lambda variables, *args: module.apply(variables, *args, method=method, **kwargs)), created once per
    (equal, hashable) module, method and static keyword arguments."""
    return jax.jit(lambda variables, *args: module.apply(variables, *args, method=method, **kwargs))


def bucket(n: int, cap: int) -> int:
    """The smallest power of two >= n, at most `cap`: a batch size for few rows with few compilations."""
    return max(1, min(cap, 1 << max(0, int(n) - 1).bit_length()))


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` >= n (a batch that splits evenly over the devices)."""
    return -(-int(n) // multiple) * multiple


def in_batches(fn: Callable, arrays: Sequence, batch_size: int, progress=None, mesh: Optional[Mesh] = None):
    """fn(*batch) over the rows of `arrays` (arrays, or pytrees of arrays, with the same number of rows) in fixed-size
    batches, the last one padded by repeating its last row so that one compilation serves every call; returns the
    outputs (an array or a pytree) of the real rows, stacked, as numpy. `progress`: a tqdm bar advanced by the real
    rows of each batch. mesh: with more than one device each batch (batch_size rounded up to a multiple of the device
    count) is split over the mesh's `data` axis, rows [k*b, (k+1)*b) on its k-th device; whatever fn closes over
    should be placed on the mesh already (`Editor.place`). Without a mesh (or with one device) the rows go to fn as
    numpy arrays and jit places them."""
    n = len(jax.tree.leaves(arrays[0])[0])
    split = mesh is not None and mesh.size > 1
    if split:
        batch_size = round_up(batch_size, mesh.size)
    out = []
    for start in range(0, n, batch_size):
        real = min(batch_size, n - start)
        rows = jax.tree.map(lambda a: _padded(np.asarray(a[start:start + real]), batch_size), list(arrays))
        if split:
            rows = jax.device_put(rows, batch_sharding(mesh))
        out.append(jax.tree.map(lambda y: np.asarray(y)[:real], fn(*rows)))
        if progress is not None:
            progress.update(real)
    return jax.tree.map(lambda *ys: np.concatenate(ys), *out)


def _padded(rows: np.ndarray, batch_size: int) -> np.ndarray:
    if len(rows) == batch_size:
        return rows
    return np.concatenate([rows, np.repeat(rows[-1:], batch_size - len(rows), axis=0)])
