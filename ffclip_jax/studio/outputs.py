"""The studio's files: what the page shows and offers for download, at the images' real size. Everything lives under
WORKDIR/out/ (the only server folder clients may read, with Gradio's own copies under WORKDIR/gradio), one folder per
cached edit, removed when the engine drops the edit; PNGs through `grid.save_png`, names from prompts through
`ffclip_jax.outputs.unique_names`, every file written atomically (`fileio.atomic_write`).

    out/<token>/source0__reconstruction.png, source_latents.npy          the sources (N, L, D)
    out/<token>/s0.5/source0__Blue_hair__0.5.png, edits.zip, edited_latents.npy (N, P, L, D)   one folder a strength
    out/<token>/sweep_1.5x8/sweep.webp (animated, lossless), sweep_latents.npy (F, L, D)
    out/samples/seed7_t0.7/sample.png, sample.npy (1, L, D)              the last `samples_kept` random samples
"""
from __future__ import annotations

import collections
import dataclasses
import os
import shutil
import zipfile
from typing import List, Tuple

import numpy as np
from PIL import Image

from ffclip_jax.fileio import atomic_write
from ffclip_jax.grid import save_png, to_uint8
from ffclip_jax.outputs import unique_names
from ffclip_jax.studio.engine import CACHE_ENTRIES, Edit, Frames, Sample, Sweep

SWEEP_FRAME_MS = 150


@dataclasses.dataclass
class FramesFiles:
    """The files of an edit at one strength: edit PNGs (N, P) nested, the reconstructions (N), the zip of all those
    PNGs, the edits' latents and the sources' latents."""
    images: List[List[str]]
    sources: List[str]
    zip: str
    latents: str
    source_latents: str

    @property
    def downloads(self) -> List[str]:
        return [self.zip, self.latents, self.source_latents]


def save_npy(path: str, array) -> str:
    atomic_write(path, lambda tmp: np.save(tmp, np.asarray(array, np.float32)))
    return path


class StudioFiles:
    """The folders of the module docstring under `workdir`."""

    def __init__(self, workdir: str, samples_kept: int = CACHE_ENTRIES):
        self.workdir = os.path.abspath(workdir)
        self.root = os.path.join(self.workdir, "out")
        os.makedirs(self.root, exist_ok=True)
        self._samples: "collections.deque[str]" = collections.deque()
        self.samples_kept = samples_kept

    def edit_dir(self, token: str) -> str:
        return os.path.join(self.root, token)

    def remove(self, token: str) -> None:
        """Remove an edit's folder (the engine dropped it)."""
        shutil.rmtree(self.edit_dir(token), ignore_errors=True)

    def _sources(self, token: str, n: int) -> List[str]:
        return [os.path.join(self.edit_dir(token), f"source{i}__reconstruction.png") for i in range(n)]

    def write_edit(self, edit: Edit) -> FramesFiles:
        """An edit's sources (reconstruction PNGs, latents) and its frames."""
        token = edit.frames.token
        for path, image in zip(self._sources(token, len(edit.sources)), edit.sources):
            save_png(path, image)
        save_npy(os.path.join(self.edit_dir(token), "source_latents.npy"), edit.source_latents)
        return self.write_frames(edit.frames)

    def write_frames(self, frames: Frames) -> FramesFiles:
        """An edit at one strength: its PNGs, their zip (with the reconstructions) and its latents."""
        folder = os.path.join(self.edit_dir(frames.token), f"s{frames.strength:g}")
        n, k = frames.images.shape[:2]
        names = unique_names(frames.prompts)
        images = [[save_png(os.path.join(folder, f"source{i}__{names[j]}__{frames.strength:g}.png"),
                            frames.images[i, j]) for j in range(k)] for i in range(n)]
        sources = self._sources(frames.token, n)
        archive = os.path.join(folder, "edits.zip")

        def write_zip(tmp):
            with zipfile.ZipFile(tmp, "w") as z:
                for f in sources + [p for row in images for p in row]:
                    z.write(f, os.path.basename(f))

        atomic_write(archive, write_zip)
        return FramesFiles(images, sources, archive, save_npy(os.path.join(folder, "edited_latents.npy"),
                                                               frames.latents),
                           os.path.join(self.edit_dir(frames.token), "source_latents.npy"))

    def write_sweep(self, sweep: Sweep) -> Tuple[str, str]:
        """(animated lossless WebP, latents .npy) of a sweep."""
        folder = os.path.join(self.edit_dir(sweep.token), f"sweep_{sweep.strengths[-1]:g}x{len(sweep.strengths)}")
        frames = [Image.fromarray(a) for a in to_uint8(sweep.images)]
        animation = os.path.join(folder, "sweep.webp")
        os.makedirs(folder, exist_ok=True)
        atomic_write(animation, lambda tmp: frames[0].save(tmp, format="WEBP", save_all=True, append_images=frames[1:],
                                                          lossless=True, duration=SWEEP_FRAME_MS, loop=0))
        return animation, save_npy(os.path.join(folder, "sweep_latents.npy"), sweep.latents)

    def write_sample(self, sample: Sample) -> Tuple[str, str]:
        """(PNG, latents .npy) of a random sample; the oldest sample folder beyond `samples_kept` is removed."""
        folder = os.path.join(self.root, "samples", f"seed{sample.seed}_t{sample.truncation:g}")
        if folder in self._samples:
            self._samples.remove(folder)
        self._samples.append(folder)
        while len(self._samples) > self.samples_kept:
            shutil.rmtree(self._samples.popleft(), ignore_errors=True)
        name = f"sample_seed{sample.seed}"
        return (save_png(os.path.join(folder, f"{name}.png"), sample.image),
                save_npy(os.path.join(folder, f"{name}.npy"), sample.w))
