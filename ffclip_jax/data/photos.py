"""Photos to the `ffclip_latents` dataset in one resumable command (`ffclip data build --images DIR --encoder E4E`):
every image under DIR (subfolders included, sorted by relative path) through the Editor's chain (align, e4e, and the
refine stage when one is given: `refine`, W+ only, item k's random key k) in parts (`ffclip_jax.parts`: saved as
they finish, split between processes with --distributed), then one dataset whose rows record their photo (`source`,
relative to DIR) and its place in the input list (`index`).

The split: given file lists (`train_list` / `test_list`, one path relative to DIR per line; the inputs are the listed
files), or the seeded rule (every image; a photo is in test when the first 8 bytes of sha256("<seed>:<path>"), read
as a big-endian integer, are below test_fraction * 2**64: a photo's split depends on nothing but its own path and
the seed). The rule, the photos skipped (unreadable, or no face with a predictor) with their reasons and the input
count are in the dataset's metadata: train + test + skipped = inputs.

A run killed at any point (`kill -9`) resumes when the same command is run again: finished parts are kept, a dataset
being written is written again from them, and a dataset finished by the same plan is recognised as built.
"""
from __future__ import annotations

import collections
import glob
import hashlib
import json
import os
import shutil
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ffclip_jax.data.builder import SPLITS, build, dataset_dir, describe
from ffclip_jax.errors import ConfigError, InputError
from ffclip_jax.inputs import IMAGE_EXTENSIONS
from ffclip_jax.parts import Parts, crash_point, encode_parts, encode_plan, full_plan, merged_codes
from ffclip_jax.pipeline import none_readable

DEFAULT_TEST_FRACTION = 0.1


def image_files(folder: str) -> List[str]:
    """Paths (relative to `folder`, '/'-separated) of every image file under it, subfolders included, sorted."""
    if not os.path.isdir(folder):
        raise InputError(f"--images {folder}: no such folder")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                found.append(os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/"))
    if not found:
        raise InputError(f"--images {folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in it or its subfolders")
    return sorted(found)


def read_list(path: str, option: str) -> List[str]:
    """The paths of a file list: one per line, blank lines and '#' comments skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f]
    except OSError as e:
        raise InputError(f"{option} {path}: unreadable ({e.strerror})") from None
    names = [n.replace(os.sep, "/") for n in names if n and not n.startswith("#")]
    if not names:
        raise InputError(f"{option} {path}: lists no file")
    return names


def seeded_is_test(name: str, seed: int, test_fraction: float) -> bool:
    """The seeded rule (module docstring) for one relative path."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode("utf-8")).digest()[:8], "big")
    return h < test_fraction * 2.0 ** 64


def split_photos(folder: str, *, train_list: Optional[str] = None, test_list: Optional[str] = None,
                 test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0) -> Tuple[List[str], List[str], Dict]:
    """(input paths relative to `folder` in input order, their split names, the rule as metadata)."""
    files = image_files(folder)
    if train_list or test_list:
        if not (train_list and test_list):
            raise ConfigError("give both --train-list and --test-list (or neither, for the seeded split)")
        paths = {"train": train_list, "test": test_list}
        lists = {split: read_list(path, f"--{split}-list") for split, path in paths.items()}
        present = set(files)
        for split, names in lists.items():
            missing = [n for n in names if n not in present]
            if missing:
                raise InputError(f"--{split}-list {paths[split]}: {len(missing)} listed file(s) not under {folder} "
                                 f"(e.g. {missing[0]})")
            repeated = sorted(n for n, count in collections.Counter(names).items() if count > 1)
            if repeated:
                raise InputError(f"--{split}-list {paths[split]}: lists {repeated[0]} more than once")
        both = sorted(set(lists["train"]) & set(lists["test"]))
        if both:
            raise InputError(f"{both[0]} is in both --train-list and --test-list ({len(both)} such files)")
        split_of = {n: split for split, names in lists.items() for n in names}
        names = [f for f in files if f in split_of]
        rule = {"rule": "lists", "train_list": os.path.abspath(train_list), "test_list": os.path.abspath(test_list),
                "unlisted_files_ignored": len(files) - len(names)}
    else:
        if not 0.0 < test_fraction < 1.0:
            raise ConfigError(f"--test-fraction must be in (0, 1), got {test_fraction}")
        names = files
        split_of = {n: "test" if seeded_is_test(n, seed, test_fraction) else "train" for n in names}
        rule = {"rule": "seeded", "test_fraction": test_fraction, "seed": seed,
                "test_when": "first 8 bytes of sha256('<seed>:<path>') as a big-endian integer < test_fraction * 2**64"}
    splits = [split_of[n] for n in names]
    for split in SPLITS:
        if split not in splits:
            raise ConfigError(f"the split puts none of the {len(names)} photos in {split}: "
                              + ("change the lists" if train_list else "change --test-fraction or --split-seed"))
    return names, splits, rule


def _digest(plan: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode("utf-8")).hexdigest()


def _remove_stale(target: str) -> None:
    """Temporary siblings a killed dataset write left (`fileio.atomic_output_dir`'s .tmp- and .old- folders)."""
    name = os.path.basename(target)
    for stale in glob.glob(os.path.join(os.path.dirname(target), f".{name}.tmp-*")) + glob.glob(
            os.path.join(os.path.dirname(target), f".{name}.old-*")):
        shutil.rmtree(stale, ignore_errors=True)


def build_from_photos(data_dir: str, domain: str, folder: str, editor, *, align: Optional[str] = None,
                      resize: bool = True, part_size: int, force: bool = False, train_list: Optional[str] = None,
                      test_list: Optional[str] = None, test_fraction: float = DEFAULT_TEST_FRACTION,
                      seed: int = 0, latent_shape: Optional[Sequence[Optional[int]]] = None,
                      refine=None) -> Optional[Dict]:
    """Build (or resume, or recognise as built) the dataset of the photos under `folder` (module docstring); returns
    `describe` of it with "skipped" [(file, reason)] and "resumed_parts", on process 0 (None on the others).
    editor: an `ffclip_jax.pipeline.Editor` with an encoder (and the predictor of `align`)."""
    if refine is not None and refine.stage != "w+":
        raise ConfigError(f"data build --refine {refine.stage}: the dataset holds codes, and PTI keeps e4e's (it "
                          f"tunes a generator per photo); use --refine w+")
    folder = os.path.abspath(folder)
    names, splits, rule = split_photos(folder, train_list=train_list, test_list=test_list,
                                       test_fraction=test_fraction, seed=seed)
    if latent_shape is not None and any(want not in (None, got) for want, got in zip(latent_shape,
                                                                                      editor.latent_shape)):
        raise ConfigError(f"domain {domain} expects w+ {tuple(latent_shape)} but the encoder predicts "
                          f"{editor.latent_shape}; use --domain custom (or --n-latent) for other generators")
    plan = dict(encode_plan(editor, "data build", align, refine, resize=resize), domain=domain, images=folder,
                split=rule, splits=splits)
    target = dataset_dir(data_dir, domain)
    built = _built_plan(data_dir, domain)
    job_folder = target + ".parts"
    digest = _digest(full_plan(names, part_size, plan))
    if built == digest:
        shutil.rmtree(job_folder, ignore_errors=True)  # killed after the dataset was renamed into place
        return dict(describe(data_dir, domain), already_built=True)
    if built is not None and not force and not os.path.isdir(job_folder):
        raise InputError(f"{target}: a dataset of other inputs or options exists (pass --force to replace it)")
    job = Parts(job_folder, names, part_size, plan)
    resumed = len(job.mine()) - len(job.todo())
    encode_parts(editor, job, lambda name: os.path.join(folder, name), resize=resize, desc="photos to w+",
                 refine=refine)
    if not job.finish():
        return None
    enc = merged_codes(job)
    if not enc.sources:
        job.remove()
        raise none_readable(len(names), enc.skipped, editor.predictor is not None)
    kept_split = np.asarray([splits[k] for k in enc.sources])
    arrays, rows = {}, {}
    for split in SPLITS:
        take = np.flatnonzero(kept_split == split)
        if not len(take):
            raise InputError(f"every photo of the {split} split was skipped ({len(enc.skipped)} skipped); nothing to "
                             f"build (remove {job_folder} and change the split)")
        arrays[split] = enc.w[take]
        rows[split] = {"index": np.asarray(enc.sources)[take], "source": [names[enc.sources[k]] for k in take]}
    metadata = {"source": "photos", "images": folder, "encoder": plan["encoder"], "align": plan["align"],
                "resize": resize, "rows_per_device": plan["rows_per_device"], "split": rule, "inputs": len(names),
                "skipped": [list(s) for s in enc.skipped], "plan_sha256": digest,
                **({"refine": plan["refine"], "refine_messages": list(enc.messages)} if refine else {})}
    _remove_stale(target)
    build(data_dir, domain, arrays, metadata, overwrite=True, rows=rows)
    crash_point("dataset-renamed")
    job.remove()
    return dict(describe(data_dir, domain), skipped=enc.skipped, resumed_parts=resumed)


def _built_plan(data_dir: str, domain: str) -> Optional[str]:
    """The plan digest of the built dataset ('' for one not built from photos), None when there is none."""
    try:
        return describe(data_dir, domain)["source"].get("plan_sha256", "")
    except ConfigError:
        return None
