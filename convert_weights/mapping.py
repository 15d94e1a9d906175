"""The one key-mapping mechanism every converter uses.

A converter declares `Rule`s: a regular expression over flat PyTorch keys (full match), a transform of the array
(transpose, reshape, ...) and a target path template in the Flax variables ('params/convs_0/conv/weight'). When the
target is omitted it is derived from the key: 'convs.0.conv.weight' -> 'params/convs_0/conv/weight'. Keys that a
model does not use are listed as `ignore` patterns. `apply_rules` is strict: every source key is consumed by exactly one
rule or ignored, every expected target is filled exactly once, and every shape matches; otherwise it raises a
ConversionError naming the first offending keys.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ffclip_jax.errors import ConversionError

Transform = Callable[[np.ndarray], np.ndarray]


def identity(a: np.ndarray) -> np.ndarray:
    return a


def linear(a: np.ndarray) -> np.ndarray:
    """torch Linear weight (out, in) -> (in, out)."""
    return a.T


def conv(a: np.ndarray) -> np.ndarray:
    """torch conv weight (out, in, kh, kw) -> HWIO; a leading 1 (modulated conv's (1, out, in, k, k)) is dropped."""
    if a.ndim == 5:
        a = a[0]
    return a.transpose(2, 3, 1, 0)


def conv_transpose(a: np.ndarray) -> np.ndarray:
    """torch ConvTranspose2d weight (in, out, kh, kw) -> HWIO of the equivalent forward conv on the dilated input
    (spatially flipped, in/out as (in, out))."""
    return a.transpose(2, 3, 0, 1)[::-1, ::-1]


def nchw(a: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N, H, W, C)."""
    return a.transpose(0, 2, 3, 1)


def split(parts: int, then: Transform = identity, axis: int = 0) -> Transform:
    """One tensor -> a tuple of `parts` equal chunks along `axis`, each through `then`; for a Rule with as many
    targets (e.g. a fused q/k/v projection `in_proj_weight` -> q, k, v kernels: `split(3, linear)`)."""
    def f(a: np.ndarray) -> Tuple[np.ndarray, ...]:
        return tuple(then(c) for c in np.split(a, parts, axis=axis))
    f.__name__ = f"split{parts}_{then.__name__}"
    return f


def reshape(*shape: int) -> Transform:
    def f(a: np.ndarray) -> np.ndarray:
        return a.reshape(shape)
    f.__name__ = f"reshape{shape}"
    return f


def flax_path(key: str, collection: str = "params") -> str:
    """'convs.0.conv.weight' -> 'params/convs_0/conv/weight' (Flax names list members `name_i`)."""
    key = re.sub(r"\.(\d+)(?=\.|$)", r"_\1", key)
    return f"{collection}/{key.replace('.', '/')}"


@dataclasses.dataclass(frozen=True)
class Rule:
    """Map source keys matching `pattern` (full match) through `transform` to `target` (a re.sub template over the
    match; None derives it from the key with `flax_path(key, collection)`). `target` may be a tuple of templates:
    then `transform` returns a tuple of as many arrays (see `split`), one per target."""
    pattern: str
    transform: Transform = identity
    target: Optional[Union[str, Tuple[str, ...]]] = None
    collection: str = "params"

    def target_for(self, m: "re.Match[str]") -> str:
        return flax_path(m.string, self.collection) if self.target is None else m.expand(self.target)

    def targets_for(self, m: "re.Match[str]") -> Tuple[str, ...]:
        return tuple(m.expand(t) for t in self.target) if isinstance(self.target, tuple) else (self.target_for(m),)


def _flatten(tree, prefix=()) -> Dict[Tuple[str, ...], object]:
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, prefix + (str(k),)))
        return out
    return {prefix: tree}


def _unflatten(flat: Mapping[Tuple[str, ...], object]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return tree


def _first(items: Iterable[str], n: int = 5) -> str:
    items = sorted(items)
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def apply_rules(state_dict: Mapping[str, np.ndarray], rules: Sequence[Rule], expected, *,
            ignore: Sequence[str] = (), source: str = "checkpoint", dtype=np.float32) -> dict:
    """Apply `rules` to the flat `state_dict` and return nested Flax variables matching `expected` (a pytree of
    objects with `.shape`, e.g. `jax.eval_shape(model.init, ...)`). Floating arrays are cast to `dtype`."""
    compiled = [(re.compile(r.pattern), r) for r in rules]
    ignored = [re.compile(p) for p in ignore]
    want = {"/".join(p): leaf for p, leaf in _flatten(expected).items()}
    out: Dict[str, np.ndarray] = {}
    unmatched, ambiguous, unknown_target, duplicate, shapes = [], [], [], [], []
    for key, value in state_dict.items():
        hits = [(m, r) for c, r in compiled if (m := c.fullmatch(key))]
        if not hits:
            if not any(p.fullmatch(key) for p in ignored):
                unmatched.append(key)
            continue
        if len(hits) > 1:
            ambiguous.append(key)
            continue
        m, rule = hits[0]
        targets = rule.targets_for(m)
        if any(t not in want for t in targets):
            unknown_target.append(f"{key} -> {', '.join(t for t in targets if t not in want)}")
            continue
        if any(t in out for t in targets):
            duplicate.append(f"{key} -> {', '.join(t for t in targets if t in out)}")
            continue
        arrays = rule.transform(np.asarray(value))
        for target, arr in zip(targets, arrays if len(targets) > 1 else (arrays,), strict=True):
            arr = np.asarray(arr)
            if np.issubdtype(arr.dtype, np.floating) or arr.dtype.name == "bfloat16":
                arr = arr.astype(dtype)
            exp_shape = tuple(want[target].shape)
            if arr.shape != exp_shape:
                shapes.append(f"{key} {tuple(np.shape(value))} -> {target} {arr.shape}, expected {exp_shape}")
                continue
            out[target] = np.asarray(arr, order="C")  # (ascontiguousarray would make scalars 1-d)
    problems = []
    if unmatched:
        problems.append(f"unexpected keys in {source}: {_first(unmatched)}")
    if ambiguous:
        problems.append(f"keys matched by several rules: {_first(ambiguous)}")
    if unknown_target:
        problems.append(f"keys mapped to no parameter of the model: {_first(unknown_target)}")
    if duplicate:
        problems.append(f"parameters filled twice: {_first(duplicate)}")
    if shapes:
        problems.append(f"shape mismatch: {_first(shapes, 3)}")
    missing = set(want) - set(out)
    if missing and not problems:
        problems.append(f"missing from {source}: parameters {_first(missing)}")
    if problems:
        raise ConversionError("; ".join(problems))
    return _unflatten({tuple(k.split("/")): v for k, v in out.items()})
