"""TFDS dataset `ffclip_latents` (configs ffhq, car, church, custom): w+ latents as array_record, read without TF.

Layout: DATA_DIR/ffclip_latents/<domain>/1.0.0/ with `train` and `test` splits of
{"w": float32 (n_latent, style_dim), "index": int64 (row in the source array, or the photo's place in the input
list), "source": text (the photo's file, relative to the photo folder; "" for latents arrays)}, stored in source
order (shuffling is the input pipeline's job). Datasets built before `source` existed read the same. Read it with

    split = ffclip_jax.data.open_split(DATA_DIR, "ffhq", "train")   # a random-access source, no TensorFlow
    # equivalently: tfds.data_source("ffclip_latents/ffhq", data_dir=DATA_DIR, split="train")

The `metadata` of the dataset records where the latents came from (files, generator/seed/truncation, or photos with
the encoder, the split rule and the skipped photos: `ffclip_jax.data.photos`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Dict, Mapping, Optional

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core.utils import py_utils

from ffclip_jax.data.latents import DOMAINS, STYLE_DIM
from ffclip_jax.errors import ConfigError, InputError
from ffclip_jax.fileio import atomic_output_dir
from ffclip_jax.logs import QuietPreparation
from ffclip_jax.parts import crash_point

NAME = "ffclip_latents"
DATASET_VERSION = "1.0.0"
SPLITS = ("train", "test")


@dataclasses.dataclass(eq=False)
class LatentsConfig(tfds.core.BuilderConfig):
    """One domain; n_latent is the generator's default (None for `custom`)."""
    n_latent: Optional[int] = None


class LocalDatasetInfo(tfds.core.DatasetInfo):
    """TFDS's DatasetInfo for a dataset that exists only where it is built (never on TFDS's GCS bucket)."""

    def initialize_from_bucket(self) -> None:
        """Nothing to look up: TFDS's own makes a temporary folder before it finds GCS off, and leaves it behind."""


class FfclipLatents(QuietPreparation, tfds.core.GeneratorBasedBuilder):
    """Inverted (or synthetic) StyleGAN2 w+ latents for FFCLIP training. Built from arrays given to the constructor
    (`splits={"train": (N, L, D), "test": (M, L, D)}`, validated by `ffclip_jax.data.latents`; `rows` optionally
    {split: {"index": (N,), "source": N strings}}); use `ffclip data build`, which does that."""

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: "w+ latents with their source row index."}
    BUILDER_CONFIGS = [LatentsConfig(name=name, description=d.description, n_latent=d.n_latent)
                       for name, d in DOMAINS.items()]

    @py_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. (TFDS's own lookup imports the `importlib_resources` backport, absent on Python >= 3.9.)"""
        return epath.Path(__file__)

    def __init__(self, *, splits: Optional[Mapping[str, Any]] = None, source: Optional[Dict[str, Any]] = None,
                 rows: Optional[Mapping[str, Mapping[str, Any]]] = None, **kwargs):
        self._splits = dict(splits) if splits is not None else None
        self._source = dict(source or {})
        self._rows = dict(rows or {})
        super().__init__(**kwargs)

    def _features(self):
        if self._splits is not None:
            shape = tuple(self._splits["train"].shape[1:])
        elif (self.data_path / "features.json").exists():  # reading a built dataset: its stored shape
            return tfds.features.FeatureConnector.from_config(os.fspath(self.data_path))
        else:
            shape = (self.builder_config.n_latent, STYLE_DIM)
        return tfds.features.FeaturesDict({
            "w": tfds.features.Tensor(shape=shape, dtype=np.float32, doc="w+ latent (n_latent, style_dim)"),
            "index": tfds.features.Scalar(dtype=np.int64, doc="row of the example in its source array (photos: the "
                                                              "place of its file in the input list)"),
            "source": tfds.features.Text(doc="the example's photo, relative to the photo folder ('' for arrays)"),
        })

    def _info(self) -> tfds.core.DatasetInfo:
        return LocalDatasetInfo(
            builder=self, description=self.builder_config.description, features=self._features(),
            disable_shuffling=True, metadata=tfds.core.MetadataDict(self._source),
            homepage="https://github.com/kristen-rang/FFCLIP")

    def _split_generators(self, dl_manager):
        if self._splits is None:
            raise ConfigError(f"{NAME} is built from your latents: run `ffclip data build --domain "
                              f"{self.builder_config.name} --train TRAIN.npy --test TEST.npy --data-dir DIR`")
        return {name: self._generate_examples(arr, self._rows.get(name)) for name, arr in self._splits.items()}

    def _generate_examples(self, latents, rows):
        for i in range(latents.shape[0]):
            crash_point("dataset-example")
            yield i, {"w": np.asarray(latents[i], np.float32), "index": int(rows["index"][i]) if rows else i,
                      "source": rows["source"][i] if rows else ""}


def dataset_dir(data_dir: str, domain: str) -> str:
    """DATA_DIR/ffclip_latents/<domain>/<version>."""
    return os.path.join(os.path.abspath(os.fspath(data_dir)), NAME, domain, DATASET_VERSION)


def build(data_dir: str, domain: str, splits: Mapping[str, Any], source: Dict[str, Any], *,
          overwrite: bool = False, rows: Optional[Mapping[str, Mapping[str, Any]]] = None) -> str:
    """Write validated latent arrays as the `ffclip_latents/<domain>` dataset; returns its directory. rows: each
    split's {"index", "source"} (default: the row number and "").

    Written atomically: TFDS writes into a temporary sibling that replaces the dataset directory only when done.
    """
    if domain not in DOMAINS:
        raise ConfigError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    if set(splits) != set(SPLITS):
        raise ConfigError(f"splits must be exactly {SPLITS}, got {tuple(splits)}")
    shapes = {name: tuple(arr.shape[1:]) for name, arr in splits.items()}
    if shapes["train"] != shapes["test"]:
        raise InputError(f"test latents have per-example shape {shapes['test']} but train latents {shapes['train']}")
    target = dataset_dir(data_dir, domain)
    with atomic_output_dir(target, overwrite) as tmp:
        work_root = os.path.join(tmp, "_tfds")
        builder = FfclipLatents(config=domain, data_dir=work_root, file_format="array_record",
                                splits=splits, source=dict(source, domain=domain), rows=rows)
        builder.download_and_prepare(download_dir=os.path.join(tmp, "_downloads"))
        built = os.fspath(builder.data_path)
        for name in os.listdir(built):
            os.rename(os.path.join(built, name), os.path.join(tmp, name))
        shutil.rmtree(work_root)
        shutil.rmtree(os.path.join(tmp, "_downloads"), ignore_errors=True)
    return target


def _builder(data_dir: str, domain: str):
    path = dataset_dir(data_dir, domain)
    if not os.path.isfile(os.path.join(path, "dataset_info.json")):
        raise ConfigError(f"{path}: no built {NAME}/{domain} dataset; build it with `ffclip data build "
                          f"--domain {domain} --data-dir {data_dir} ...`")
    return tfds.builder_from_directory(path)


def open_split(data_dir: str, domain: str, split: str):
    """A random-access source (len, [i], __getitems__) of {"w", "index"} dicts; usable by grain, no TensorFlow."""
    builder = _builder(data_dir, domain)
    if split not in builder.info.splits:
        raise ConfigError(f"{dataset_dir(data_dir, domain)}: no split {split!r} (has {', '.join(builder.info.splits)})")
    return builder.as_data_source(split)


def describe(data_dir: str, domain: str) -> Dict[str, Any]:
    """Shape, split sizes and source metadata of a built dataset (JSON-able)."""
    info = _builder(data_dir, domain).info
    n_latent, style_dim = info.features["w"].shape
    return {"dataset": f"{NAME}/{domain}", "path": dataset_dir(data_dir, domain), "n_latent": n_latent,
            "style_dim": style_dim, "splits": {name: info.splits[name].num_examples for name in info.splits},
            "source": json.loads(json.dumps(dict(info.metadata or {})))}
