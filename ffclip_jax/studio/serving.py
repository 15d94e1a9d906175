"""The studio's serving side: the engine and its files behind one device thread. Every call of the page (or of any
other client thread) runs on that one thread, one at a time: the engine needs no lock, the networks' big temporary
buffers come from one malloc arena (the server's memory stays flat whichever worker thread serves a request), and
many edit requests handed over together (a Gradio batch function's list) run as one `Engine.edit_many` call.

    studio = Studio(Engine.for_editor(Editor.from_pretrained("weights/ffhq", devices="all")), workdir)
    studio.warm_up()
    shown = studio.edit_many([EditRequest(source="random", seed=3, prompts="Bald")])[0]   # Shown or FFCLIPError
    shown.files.images[0][0]        # the PNG of source 0, prompt 0; shown.frames.scores (N, P, S)
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import sys
import time
import traceback
from typing import List, Sequence, Tuple, Union

from ffclip_jax.errors import FFCLIPError
from ffclip_jax.studio.engine import Edit, EditRequest, Engine, Frames, Preview, Sample, Sweep
from ffclip_jax.studio.outputs import FramesFiles, StudioFiles


def log(msg: str) -> None:
    print(f"[studio] {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Shown:
    """An edit at one strength as the page shows it: the engine's frames and their files."""
    frames: Frames
    files: FramesFiles


class Studio:
    """The engine (its cache entries' files removed as it drops them), its files under `workdir` and the device
    thread. An unexpected exception of a call is logged with its traceback and answered as a one-line
    FFCLIPError ("internal error ..."), so the page keeps serving."""

    def __init__(self, engine: Engine, workdir: str):
        self.engine = engine
        self.files = StudioFiles(workdir, samples_kept=engine.cache_entries)
        self.workdir = self.files.workdir
        engine.on_drop = self.files.remove
        self._device = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-device")

    def on_device(self, fn, *args):
        """fn(*args) on the device thread."""
        return self._device.submit(self._guarded, fn, *args).result()

    @staticmethod
    def _guarded(fn, *args):
        try:
            return fn(*args)
        except FFCLIPError:
            raise
        except Exception as e:  # keep serving: the visitor gets one line, the server log the traceback
            log(f"{getattr(fn, '__name__', 'call')} failed:\n{traceback.format_exc().rstrip()}")
            raise FFCLIPError(f"internal error ({type(e).__name__}: {e})") from None

    def warm_up(self) -> None:
        t0 = time.perf_counter()
        self.on_device(self.engine.warm_up)
        log(f"warm-up done in {time.perf_counter() - t0:.1f}s")

    def edit_many(self, requests: Sequence[EditRequest]) -> List[Union[Shown, FFCLIPError]]:
        """Many requests in one engine call; each answer a `Shown` or the FFCLIPError that refused it."""
        try:
            return self.on_device(self._edit_many, list(requests))
        except FFCLIPError as e:  # an internal error: every request of the batch hears of it
            return [e] * len(requests)

    def _edit_many(self, requests: List[EditRequest]) -> List[Union[Shown, FFCLIPError]]:
        t0 = time.perf_counter()
        answers = self.engine.edit_many(requests)
        shown = [Shown(a.frames, self.files.write_edit(a)) if isinstance(a, Edit) else a for a in answers]
        ok = sum(isinstance(a, Shown) for a in shown)
        log(f"edit: {len(requests)} request(s) ({ok} ok) in one batch, {time.perf_counter() - t0:.3f}s")
        return shown

    def rerender(self, token, strength) -> Shown:
        return self.on_device(self._rerender, token, strength)

    def _rerender(self, token, strength) -> Shown:
        frames = self.engine.rerender(token, strength)
        log(f"re-render: {frames.images.shape[0] * frames.images.shape[1]} frame(s) at strength {frames.strength:g}, "
            f"{frames.ms_per_frame:.1f} ms per frame (generator only)")
        return Shown(frames, self.files.write_frames(frames))

    def rescore(self, token, strength) -> Frames:
        """A cached edit at a strength with its scores (`Engine.rescore`)."""
        return self.on_device(self.engine.rescore, token, strength)

    def sweep(self, token, strength, frames) -> Tuple[Sweep, str, str]:
        """(the sweep, its animated WebP, its latents .npy)."""
        return self.on_device(self._sweep, token, strength, frames)

    def _sweep(self, token, strength, frames):
        sweep = self.engine.sweep(token, strength, frames)
        return (sweep,) + self.files.write_sweep(sweep)

    def random_sample(self, seed, truncation) -> Tuple[Sample, str, str]:
        """(the sample, its PNG, its latents .npy)."""
        return self.on_device(self._random_sample, seed, truncation)

    def _random_sample(self, seed, truncation):
        sample = self.engine.random_sample(seed, truncation)
        return (sample,) + self.files.write_sample(sample)

    def preview(self, photo, refine="none", steps=None) -> Preview:
        return self.on_device(self.engine.preview, photo, refine, steps)
