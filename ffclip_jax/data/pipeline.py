"""Deterministic, resumable, multi-process input pipeline over a random-access latents split.

Batches are dicts {"w": (B, n_latent, D) float32, "prompt": (B,) int32, "index": (B,) int32}: `prompt` indexes the
prompt list (the trainer looks the text embeddings up in its cached table), `index` is the example's source row.

Everything random is a pure function of (seed, epoch, example index) through a counter-based hash, so results do
not depend on the process count, on prefetching or on numpy's generator versions:
- the order of an epoch is a permutation drawn from (seed, epoch);
- an example's prompt is uniform over the list's entries (duplicates weigh more) from (seed, epoch, index).
An epoch is one pass over the train split in global batches of `global_batch_size`; the last partial global batch
is dropped (its examples come back, reshuffled, in later epochs). Global batch b of an epoch holds positions
[b*G, (b+1)*G) of the permutation; process p reads its contiguous share [p*G/P, (p+1)*G/P) and the shares become one
global jax.Array with `jax.make_array_from_process_local_data`.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Dict, Iterator, Optional, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from ffclip_jax.errors import ConfigError

_SHUFFLE, _PROMPT, _TEST_PROMPT = 1, 2, 3  # independent hash streams


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer on uint64 arrays (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_indices(keys: Sequence[int], indices: np.ndarray) -> np.ndarray:
    """A uint64 hash per index, a pure function of (keys, index)."""
    with np.errstate(over="ignore"):
        h = np.zeros((), np.uint64)
        for k in keys:
            h = _splitmix64(h ^ np.uint64(int(k) & 0xFFFFFFFFFFFFFFFF))
        return _splitmix64(h ^ np.asarray(indices, np.uint64))


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The example order of an epoch: (num_examples,) int64."""
    return np.argsort(hash_indices((seed, _SHUFFLE, epoch), np.arange(num_examples)), kind="stable")


def train_prompts(seed: int, epoch: int, indices: np.ndarray, num_prompts: int) -> np.ndarray:
    """Prompt index of each example in an epoch, uniform over [0, num_prompts): (len(indices),) int32."""
    return (hash_indices((seed, _PROMPT, epoch), indices) % np.uint64(num_prompts)).astype(np.int32)


def eval_prompts(seed: int, indices: np.ndarray, num_prompts: int) -> np.ndarray:
    """Fixed prompt index of each test example (the same in every evaluation): (len(indices),) int32."""
    return (hash_indices((seed, _TEST_PROMPT), indices) % np.uint64(num_prompts)).astype(np.int32)


def read_examples(source, indices: np.ndarray) -> Dict[str, np.ndarray]:
    """{"w": (n, L, D) float32, "index": (n,) int32} for the given rows of a random-access source."""
    rows = [int(i) for i in indices]
    examples = source.__getitems__(rows) if hasattr(source, "__getitems__") else [source[i] for i in rows]
    return {"w": np.stack([np.asarray(e["w"], np.float32) for e in examples]),
            "index": np.asarray([e["index"] for e in examples], np.int32)}


def _process(process_index: Optional[int], process_count: Optional[int]):
    count = jax.process_count() if process_count is None else int(process_count)
    index = jax.process_index() if process_index is None else int(process_index)
    if not 0 <= index < count:
        raise ConfigError(f"process_index {index} outside [0, {count})")
    return index, count


class _Placement:
    """Local share of a global batch -> global jax.Arrays sharded along the batch axis (or host numpy if None).

    `sharding`'s first PartitionSpec entry (the batch axis) is applied to the leading axis of every array."""

    def __init__(self, sharding, global_batch: int, local_batch: int):
        self.global_batch = global_batch
        self.sharding = None
        if sharding is not None:
            spec = tuple(sharding.spec)
            self.sharding = NamedSharding(sharding.mesh, PartitionSpec(spec[0] if spec else None))
            try:
                self.sharding.shard_shape((global_batch,))
            except ValueError:
                raise ConfigError(f"global batch {global_batch} does not split evenly over the batch axis "
                                  f"{spec[0] if spec else None!r} of mesh {dict(sharding.mesh.shape)}") from None

    def __call__(self, local: Dict[str, np.ndarray]):
        if self.sharding is None:
            return local
        return {k: jax.make_array_from_process_local_data(self.sharding, v, (self.global_batch,) + v.shape[1:])
                for k, v in local.items()}


class _Prefetcher:
    """Runs a generator of (item, state) in a daemon thread, `size` items ahead."""
    _END = object()

    def __init__(self, produce: Iterator, size: int):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(produce,), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, produce):
        try:
            for item in produce:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as e:  # re-raised in the consumer
            self._put(e)

    def get(self):
        item = self._queue.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        self._stop.set()
        self._thread.join()


def _train_stream(source, place, seed, num_prompts, num_examples, global_batch, offset, local_batch, num_epochs,
                  epoch, position):
    """Yields (placed local batch, (epoch, position) after it) from (epoch, position) on. A plain function (not a
    method) so that a prefetch thread does not keep its TrainBatches alive."""
    steps = num_examples // global_batch
    while num_epochs is None or epoch < num_epochs:
        order = epoch_permutation(seed, epoch, num_examples)
        for b in range(position, steps):
            start = b * global_batch + offset
            batch = read_examples(source, order[start:start + local_batch])
            batch["prompt"] = train_prompts(seed, epoch, batch["index"], num_prompts)
            yield place(batch), ((epoch, b + 1) if b + 1 < steps else (epoch + 1, 0))
        epoch, position = epoch + 1, 0


class TrainBatches:
    """Endless (or `num_epochs`) iterator of shuffled training batches with a resumable state.

        batches = TrainBatches(open_split(d, "ffhq", "train"), global_batch_size=64, num_prompts=len(prompts),
                               seed=0, sharding=NamedSharding(mesh, P("data")))
        batch = next(batches)            # {"w", "prompt", "index"} global jax.Arrays
        ckpt_state = batches.state()     # {"epoch": e, "position": b, ...}: JSON-able, save it with the checkpoint
        batches.restore(ckpt_state)      # continues with exactly the batches that followed

    `state()` counts the batches handed out (not those prefetched). process_index/process_count default to jax's;
    pass them (with sharding=None) to simulate other hosts. prefetch: batches prepared ahead in a background thread
    (0: synchronous).
    """

    def __init__(self, source, *, global_batch_size: int, num_prompts: int, seed: int = 0, sharding=None,
                 prefetch: int = 2, process_index: Optional[int] = None, process_count: Optional[int] = None,
                 num_epochs: Optional[int] = None, state: Optional[Dict[str, Any]] = None):
        self.source = source
        self.num_examples = len(source)
        self.global_batch_size = int(global_batch_size)
        self.num_prompts = int(num_prompts)
        self.seed = int(seed)
        self.num_epochs = num_epochs
        self.process_index, self.process_count = _process(process_index, process_count)
        if self.num_prompts <= 0:
            raise ConfigError(f"num_prompts must be positive, got {num_prompts}")
        if self.global_batch_size <= 0 or self.global_batch_size % self.process_count:
            raise ConfigError(f"global batch size {global_batch_size} must be a positive multiple of the process "
                              f"count {self.process_count}")
        self.steps_per_epoch = self.num_examples // self.global_batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"train split has {self.num_examples} examples, fewer than one global batch "
                              f"({self.global_batch_size})")
        self.local_batch_size = self.global_batch_size // self.process_count
        self._place = _Placement(sharding, self.global_batch_size, self.local_batch_size)
        self._prefetch = int(prefetch)
        self._prefetcher: Optional[_Prefetcher] = None
        self._epoch, self._position = 0, 0
        if state is not None:
            self.restore(state)

    def state(self) -> Dict[str, int]:
        """The position after the last batch handed out; JSON-able (ints only)."""
        return {"epoch": self._epoch, "position": self._position, "seed": self.seed,
                "global_batch_size": self.global_batch_size, "num_examples": self.num_examples}

    def restore(self, state: Dict[str, Any]) -> None:
        """Continue from a `state()`; the seed, batch size and split size must be those it was saved with."""
        for key in ("seed", "global_batch_size", "num_examples"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ConfigError(f"saved input-pipeline state has {key}={int(state[key])} but this pipeline has "
                                  f"{getattr(self, key)}; it cannot resume exactly")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.steps_per_epoch:
            raise ConfigError(f"saved input-pipeline state (epoch {epoch}, position {position}) outside "
                              f"[0, {self.steps_per_epoch}] batches per epoch")
        self.close()
        self._epoch, self._position = epoch, position

    def __iter__(self):
        return self

    def __next__(self):
        if self._prefetcher is None:
            produce = _train_stream(self.source, self._place, self.seed, self.num_prompts, self.num_examples,
                                    self.global_batch_size, self.process_index * self.local_batch_size,
                                    self.local_batch_size, self.num_epochs, self._epoch, self._position)
            if self._prefetch <= 0:
                batch, (self._epoch, self._position) = next(produce)
                return batch
            self._prefetcher = _Prefetcher(produce, self._prefetch)
        batch, (self._epoch, self._position) = self._prefetcher.get()
        return batch

    def close(self) -> None:
        """Stop the prefetch thread (the iterator can still be used: it restarts from `state()`)."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


def eval_batches(source, *, batch_size: int, num_prompts: int, seed: int = 0, num_examples: Optional[int] = None,
                 sharding=None, process_index: Optional[int] = None, process_count: Optional[int] = None):
    """Test-split batches in order, each example with its fixed prompt (same grid in every evaluation).

    Covers the first `num_examples` rows (default: all) in global batches of `batch_size`; the last batch is padded
    by repeating the last row so every batch has the same shape, and carries "valid": (B,) bool marking real rows.
    """
    process_index, process_count = _process(process_index, process_count)
    total = len(source) if num_examples is None else min(int(num_examples), len(source))
    if total <= 0 or batch_size <= 0 or batch_size % process_count:
        raise ConfigError(f"test batches need examples ({total}) and a batch size ({batch_size}) that is a positive "
                          f"multiple of the process count {process_count}")
    local = batch_size // process_count
    place = _Placement(sharding, batch_size, local)
    for start in range(0, total, batch_size):
        positions = start + process_index * local + np.arange(local)
        batch = read_examples(source, np.minimum(positions, total - 1))
        batch["prompt"] = eval_prompts(seed, batch["index"], num_prompts)
        batch["valid"] = positions < total
        yield place(batch)
