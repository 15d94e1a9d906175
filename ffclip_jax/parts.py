"""Resumable work in parts, on one process or several: an ordered list of items (input files, latent rows) cut into
parts of a fixed size, each computed once and saved atomically (temporary file, then rename) in a work folder beside
the output. A killed run loses at most the parts in progress; the same command run again does only the parts not
saved yet. With several processes (`--distributed`, jax.distributed) part i belongs to process i % P, a split that
depends on nothing but i and P; each process computes its unsaved parts, then process 0 waits for the others and
merges every part, in order, into exactly the outputs of a one-process run, and removes the work folder.

    job = Parts(work_folder, files, part_size=256, plan={"tool": "invert", "encoder": ...})
    for i in job.todo():                          # this process's parts not saved yet
        job.save(i, {"w": codes}, {"skipped": [...]})
    if job.finish():                              # every part saved; True on process 0 only
        parts = job.load_all()                    # [(arrays, info)] in part order
        ... write the outputs ...
        job.remove()

Photos to w+ in parts (invert, data build, edit): `encode_parts(editor, job, files_of)` then, on process 0,
`merged_codes(job)`.

The plan (items, part size and whatever else decides the results) is stored in the folder: a rerun with another plan
is refused rather than mixed with the old parts. `crash_point` names the places a crash-resume test kills a run at.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from tqdm import tqdm

from ffclip_jax.errors import InputError
from ffclip_jax.fileio import atomic_write, write_json_atomic
from ffclip_jax.pipeline import Encoded
from ffclip_jax.sharding import barrier

PLAN = "plan.json"
FORMAT = "ffclip-jax parts"
DEFAULT_PART_SIZE = 256
CRASH_ENV = "FFCLIP_CRASH_AT"
_INFO = "__info__"
_crash_counts: Dict[str, int] = {}


def crash_point(name: str) -> None:
    """The test hook of the crash-resume tests: with FFCLIP_CRASH_AT=NAME[:K] in the environment, the K-th (default
    first) time this process reaches `name` it kills itself with SIGKILL (as `kill -9` would); otherwise nothing."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def full_plan(items: Sequence, part_size: int, plan: Dict[str, Any]) -> Dict[str, Any]:
    """The plan a `Parts` job stores (as read back from JSON)."""
    return json.loads(json.dumps({"format": FORMAT, "part_size": int(part_size), **plan, "items": list(items)}))


class Parts:
    """The parts of one job in `folder` (see the module docstring). items: JSON-able, in output order; plan: the
    job's other settings that decide the results (JSON-able); process / processes: default jax's (pass them to
    simulate other hosts)."""

    def __init__(self, folder: str, items: Sequence, part_size: int, plan: Dict[str, Any], *,
                 process: Optional[int] = None, processes: Optional[int] = None):
        if part_size < 1:
            raise InputError(f"--part-size must be at least 1, got {part_size}")
        if not items:
            raise InputError("nothing to do: no input items")
        self.folder = os.path.abspath(folder)
        self.items, self.part_size = list(items), int(part_size)
        self.count = -(-len(self.items) // self.part_size)
        self.process = jax.process_index() if process is None else int(process)
        self.processes = jax.process_count() if processes is None else int(processes)
        self.plan = plan = full_plan(self.items, self.part_size, plan)
        path = os.path.join(self.folder, PLAN)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)
            if stored != plan:
                changed = sorted(k for k in set(stored) | set(plan) if stored.get(k) != plan.get(k))
                raise InputError(f"{self.folder}: holds the unfinished parts of another run ({', '.join(changed)} "
                                 f"differ); rerun that command to finish it, or remove the folder to start over")
        else:  # every process writes the same plan: whichever rename lands last, the file is whole
            write_json_atomic(path, plan)

    def range(self, i: int) -> Tuple[int, int]:
        """[start, end) of part i in the items."""
        return i * self.part_size, min(len(self.items), (i + 1) * self.part_size)

    def part_items(self, i: int) -> List:
        start, end = self.range(i)
        return self.items[start:end]

    def _path(self, i: int) -> str:
        return os.path.join(self.folder, f"part-{i:05d}.npz")

    def done(self, i: int) -> bool:
        return os.path.isfile(self._path(i))

    def mine(self) -> List[int]:
        """This process's parts: i % processes == process."""
        return list(range(self.process, self.count, self.processes))

    def todo(self) -> List[int]:
        """This process's parts not saved yet."""
        return [i for i in self.mine() if not self.done(i)]

    def done_items(self) -> int:
        """How many items this process's saved parts hold (a resumed progress bar starts there)."""
        return sum(len(self.part_items(i)) for i in self.mine() if self.done(i))

    def save(self, i: int, arrays: Dict[str, np.ndarray], info: Optional[Dict[str, Any]] = None) -> None:
        """Part i's results (named arrays and JSON-able info), written atomically."""
        def write(tmp):
            np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()}, **{_INFO: json.dumps(info or {})})
            crash_point("part-written")
        atomic_write(self._path(i), write)
        crash_point("part-saved")

    def load(self, i: int) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
        with np.load(self._path(i)) as f:
            arrays = {k: f[k] for k in f.files if k != _INFO}
            return arrays, json.loads(str(f[_INFO]))

    def missing(self) -> List[int]:
        return [i for i in range(self.count) if not self.done(i)]

    def finish(self) -> bool:
        """Wait for every process; True on process 0 when every part is saved (then it writes the outputs), False on
        the others. A missing part (a process failed) is a one-line error naming them."""
        barrier(f"ffclip parts {self.folder}")
        if self.process != 0:
            return False
        missing = self.missing()
        if missing:
            shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
            raise InputError(f"{self.folder}: {len(missing)} of {self.count} parts unfinished ({shown}); rerun the "
                             f"same command to do them")
        return True

    def load_all(self) -> List[Tuple[Dict[str, np.ndarray], Dict[str, Any]]]:
        return [self.load(i) for i in range(self.count)]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def encode_parts(editor, job: Parts, path_of=lambda item: item, *, resize: bool = True,
                 desc: str = "inverting", refine=None, on_part=None) -> None:
    """This process's unsaved parts of image files through `editor.encode_files` (path_of(item) -> the file; refine:
    its refine stage, item k's random key k), each saved as {"w": (K, L, D) codes, "kept": (K,) item indices, with
    a refine stage "refinement_<field>" (K,)} and {"skipped": [[item, reason]], "messages": [...]}, with one progress
    bar (images/s, ETA) over this process's share, resumed parts counted as done. on_part(enc): called with each
    part's `Encoded` before the part is saved (PTI's tuned generators written there: a crash in between redoes the
    part)."""
    total = sum(len(job.part_items(i)) for i in job.mine())
    with tqdm(total=total, initial=job.done_items(), desc=desc, unit="img", smoothing=0.1) as bar:
        for i in job.todo():
            start, end = job.range(i)
            enc = editor.encode_files([path_of(item) for item in job.items[start:end]], resize=resize,
                                      progress=bar, allow_none=True, sources=range(start, end), refine=refine,
                                      offset=start)
            if on_part is not None:
                on_part(enc)
            refined = {f"refinement_{f}": a for f, a in (enc.refinement or {}).items()}
            job.save(i, {"w": enc.w, "kept": np.asarray(enc.sources, np.int64), **refined},
                     {"skipped": [[job.items[k], reason] for k, reason in enc.skipped],
                      "messages": list(enc.messages)})


def merged_codes(job: Parts) -> Encoded:
    """Every part of `encode_parts` in order: codes w (K, L, D), `sources` the indices of the kept items, `skipped`
    [(item, reason)], with a refine stage `refinement` and `messages` (no encoder inputs, no tuned params)."""
    parts = job.load_all()
    w = np.concatenate([arrays["w"] for arrays, _ in parts])
    kept = np.concatenate([arrays["kept"] for arrays, _ in parts])
    skipped = [(item, reason) for _, info in parts for item, reason in info["skipped"]]
    fields = [k[len("refinement_"):] for k in parts[0][0] if k.startswith("refinement_")]
    refinement = {f: np.concatenate([arrays[f"refinement_{f}"] for arrays, _ in parts]) for f in fields} or None
    messages = tuple(m for _, info in parts for m in info.get("messages", []))
    return Encoded(w, [int(k) for k in kept], skipped, np.zeros((0, 0, 0, 3), np.float32),
                   refinement=refinement, messages=messages)


def encode_plan(editor, tool: str, align: Optional[str], refine=None, **options) -> Dict[str, Any]:
    """What decides the codes of an `encode_parts` job besides its files: the encoder's directory, the face predictor
    file, the rows each device computes at once (the same rows per device give the same codes bit for bit, whatever
    the device or process count), the refine stage (its settings and seed) and the tool's own options."""
    encoder = editor.weights.networks.get("e4e") if editor.weights is not None else None
    networks = editor.weights.networks if editor.weights is not None else {}
    used = ("generator", "lpips_vgg" if refine is not None and refine.stage == "w+" else "lpips_alex")
    stage = None if refine is None else {"stage": refine.stage, "seed": refine.seed,
                                         "settings": dataclasses.asdict(refine.settings),
                                         **{n: os.path.abspath(networks[n]) if n in networks else None for n in used}}
    return {"tool": tool, "encoder": os.path.abspath(encoder) if encoder else None,
            "align": os.path.abspath(align) if align else None,
            "rows_per_device": editor.batch_size // len(editor.devices), **({"refine": stage} if stage else {}),
            **options}
