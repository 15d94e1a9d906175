"""The studio's engine: requests in, numpy out. Edit requests become rows of the Editor's fixed-batch runners (many
requests in one mapper call and one generator call), the slider re-renders a cached edit at another strength with
the generator only, the sweep renders strengths 0 to s, and each edit is kept (least recently used dropped) with what
those need: the sources' w+ (N, L, D), the mapper's offsets at strength 1 delta (N, P, L, D), the prompts' text
embeddings and the sources' score features.

    engine = Engine.for_editor(Editor.from_pretrained("weights/ffhq", align=predictor))
    edit = engine.edit_many([EditRequest(source="random", seed=3, prompts="Bald\nBlue hair", strength=0.5)])[0]
    edit.frames.images     # (N, P, H, W, 3) float in [-1, 1]; .latents (N, P, L, D); .scores (N, P, S) or None
    frames = engine.rerender(edit.frames.token, 1.5)      # w + 1.5 * delta through the generator only
    sweep = engine.sweep(edit.frames.token, 1.5, 8)      # the first source and prompt at 8 strengths from 0 to 1.5

No Gradio, no threads, no files: `serving` runs it on its one device thread (so it holds no lock) and `outputs`
writes what the page shows. The slider arithmetic: an edit at strength s is w_hat = w + s * delta (the mapper's own
form), so a new strength needs only the generator. An entry's `generator_variables` (None: the Editor's generator)
is where a per-photo tuned generator goes (inversion refinement, e.g. PTI): every re-render and sweep of the entry
renders with it. Photos become w+ in `_sources` (the Editor's `invert`); with a refine stage (`REFINE`: none, W+
or PTI with a step count, the Editor's `invert(refine=...)`) a photo's refined code, and for PTI its tuned generator
(the entry's `generator_variables`), are what the edit, the slider and the sweep use; a photo's refinement is kept
per (file, stage, steps) (the last REFINED_KEPT), so the preview's refinement serves the edit that follows.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import os
import sys
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from ffclip_jax import inputs, metrics
from ffclip_jax.errors import CheckpointError, FFCLIPError, InputError
from ffclip_jax.pipeline import Editor
from ffclip_jax.text.prompts import load_prompts

MAX_PROMPTS = 8
MAX_SOURCES = 8  # latents rows per edit
MAX_SIDE = 4096  # pixels a side of an uploaded photo (at least inputs.MIN_PHOTO_SIDE)
MAX_FILE_BYTES = 20 * 1024 * 1024
STRENGTH_RANGE = (-1.0, 2.0)
TRUNCATION_RANGE = (0.0, 1.0)
SEED_RANGE = (0, 2 ** 31 - 1)
SWEEP_FRAMES = 8
SWEEP_FRAMES_RANGE = (2, 32)
CACHE_ENTRIES = 64  # edits kept for the slider and the sweep
SOURCES = ("photo", "latents", "random")
REFINE = {"none": None, "W+": "w+", "PTI": "pti"}  # the page's choice: the Editor's refine stage
REFINE_STEPS_RANGE = (0, 5000)  # 0 (or empty): the stage's default
REFINED_KEPT = 8  # refined photos kept (a PTI entry holds one tuned generator each)


@dataclasses.dataclass
class EditRequest:
    """One visitor's edit: the source ("photo": an image file; "latents": a .npy of w+, its first row or with
    all_rows every row; "random": seed and truncation), prompts (one per line, or a list), a strength, scores on/off.
    photo / latents: a file path or a dict with "path" (and "orig_name", the name messages use), as Gradio sends."""
    source: str = "photo"
    photo: Any = None
    latents: Any = None
    all_rows: bool = False
    seed: Any = 0
    truncation: Any = 0.7
    prompts: Union[str, Sequence[str]] = ""
    strength: Any = 1.0
    scores: bool = True
    refine: Any = "none"
    refine_steps: Any = None


@dataclasses.dataclass
class Entry:
    """A cached edit (see the module docstring): w (N, L, D), delta (N, P, L, D), the prompts, their embeddings
    (P, D), the sources' score features ({name: (N, F)}; None: scores off), the source kind, and the generator the
    entry renders with (None: the Editor's)."""
    w: np.ndarray
    delta: np.ndarray
    prompts: List[str]
    embeddings: np.ndarray
    source_features: Optional[Dict[str, np.ndarray]]
    kind: str
    generator_variables: Any = None


@dataclasses.dataclass
class Frames:
    """A cached edit at one strength: images (N, P, H, W, 3) float in [-1, 1], their w+ latents (N, P, L, D),
    scores (N, P, len(score_names)) or None, and the generator's seconds for these frames."""
    token: str
    prompts: List[str]
    strength: float
    images: np.ndarray
    latents: np.ndarray
    scores: Optional[np.ndarray]
    seconds: float

    @property
    def ms_per_frame(self) -> float:
        return 1000.0 * self.seconds / max(1, self.images.shape[0] * self.images.shape[1])


@dataclasses.dataclass
class Edit:
    """An edit request's answer: its frames at the asked strength, the sources through the generator (N, H, W, 3)
    (the reconstructions) and the sources' w+ (N, L, D)."""
    frames: Frames
    sources: np.ndarray
    source_latents: np.ndarray


@dataclasses.dataclass
class Sweep:
    """The first source and prompt of an edit at `strengths` (F,) from 0 to s: images (F, H, W, 3), w+ (F, L, D)."""
    token: str
    strengths: List[float]
    images: np.ndarray
    latents: np.ndarray


@dataclasses.dataclass
class Refined:
    """A photo through the refine stage: its e4e code and the refined one (PTI: the pivot, e4e's) (1, L, D), the
    tuned generator's variables (PTI; None: the Editor's), the stage ('w+' / 'pti'), its steps and its numbers
    (`pipeline.REFINEMENT_FIELDS`, one value each)."""
    e4e: np.ndarray
    w: np.ndarray
    generator_variables: Any
    stage: str
    steps: int
    numbers: Dict[str, float]


@dataclasses.dataclass
class Preview:
    """An uploaded photo as the encoder takes it (aligned with a predictor; (H, W, 3) uint8), its e4e w+ (1, L, D)
    and its reconstruction (H', W', 3) float in [-1, 1]; with a refine stage its `Refined` and the refined
    reconstruction (on the tuned generator for PTI) beside e4e's."""
    photo: np.ndarray
    w: np.ndarray
    reconstruction: np.ndarray
    refined: Optional[Refined] = None
    refined_reconstruction: Optional[np.ndarray] = None


@dataclasses.dataclass
class Sample:
    """A random source: its seed and truncation, w+ (1, L, D) and image (H, W, 3) float in [-1, 1]."""
    seed: int
    truncation: float
    w: np.ndarray
    image: np.ndarray


def file_of(value, missing: str):
    """(path, name for messages) of an uploaded file: a path or a dict with "path" (Gradio's FileData); `missing`:
    the message without one."""
    if isinstance(value, dict):
        path = value.get("path")
        name = value.get("orig_name") or (os.path.basename(path) if path else None)
    else:
        path = os.fspath(value) if value else None
        name = os.path.basename(path) if path else None
    if not path:
        raise InputError(missing)
    return path, name


def number(value, bounds, name: str) -> float:
    """One finite number within bounds (the strengths rule, `inputs.strength`)."""
    return inputs.strength(value, bounds=bounds, name=name)


def domain_prompts(weights) -> List[str]:
    """The manifest's "prompts" field (a list, or a built-in list name / file), else the FFHQ list; each prompt once
    (`inputs.prompts`)."""
    field = weights.manifest.get("prompts") if weights is not None else None
    if isinstance(field, list) and all(isinstance(p, str) for p in field) and field:
        return inputs.prompts(field)
    if isinstance(field, str):
        try:
            return inputs.prompts(load_prompts(field))
        except FFCLIPError:
            pass
    return inputs.prompts(load_prompts("ffhq"))


@dataclasses.dataclass
class _Job:
    """An edit request on its way through `edit_many`."""
    kind: str
    value: Any
    prompts: List[str]
    strength: float
    scores: bool
    refine: Optional[Tuple[str, Optional[int]]] = None
    photo: Any = None
    w: Optional[np.ndarray] = None
    e: Optional[np.ndarray] = None
    generator_variables: Any = None


class Engine:
    """The Editor, the scoring networks and the cache of edits behind the page (see the module docstring).

    editor: an `ffclip_jax.pipeline.Editor` (its predictor aligns uploaded photos); prompts: the page's examples;
    scorers: `metrics.MetricNetworks` (None: no scores) with their variables {name: variables}; on_drop(token): called
    when an entry leaves the cache (serving removes its files)."""

    def __init__(self, editor: Editor, *, prompts: Sequence[str] = (), scorers: Optional[metrics.MetricNetworks] = None,
                 scorer_variables: Optional[Dict] = None, cache_entries: int = CACHE_ENTRIES,
                 on_drop: Optional[Callable[[str], None]] = None):
        self.editor = editor
        self.prompts = list(prompts)
        self.scorers, self.scorer_variables = scorers, scorer_variables
        self.cache_entries = cache_entries
        self.on_drop = on_drop
        self._cache: "collections.OrderedDict[str, Entry]" = collections.OrderedDict()
        self._shown: Optional[Frames] = None  # the last re-render's frames (for `rescore`)
        self._refined: "collections.OrderedDict[tuple, Refined]" = collections.OrderedDict()

    @classmethod
    def for_editor(cls, editor: Editor, *, scores: bool = True, **kwargs) -> "Engine":
        """The engine of an Editor with its domain's prompts and, when its weights directory has the networks, its
        scores (identity for faces, else MoCo similarity)."""
        weights = editor.weights
        kwargs.setdefault("prompts", domain_prompts(weights))
        if scores and editor.clip is not None and weights is not None:
            try:
                domain = metrics.choose_domain(weights, background=False)
            except CheckpointError:
                return cls(editor, **kwargs)
            nets, variables = metrics.metric_networks(weights, editor.clip, domain, background=False)
            return cls(editor, scorers=nets, scorer_variables=variables, **kwargs)
        return cls(editor, **kwargs)

    # ---- scores ----------------------------------------------------------------------------------------------

    @property
    def score_names(self) -> List[str]:
        """The `ffclip_jax.metrics` scores of each edit, as `ffclip evaluate` reports them: CLIP score of the edit,
        of the source and the change, and identity (faces) or MoCo similarity (other domains)."""
        if self.scorers is None:
            return []
        return ["clip_score", "clip_score_source", "clip_score_delta",
                "identity" if self.scorers.face else "moco_similarity"]

    @functools.cached_property
    def _features_fn(self):
        """jit x (B, H, W, 3) -> `metrics.image_features`, the scoring networks placed on the Editor's devices."""
        return functools.partial(jax.jit(metrics.image_features, static_argnames="nets"),
                                 self.editor.place(self.scorer_variables), nets=self.scorers)

    @functools.cached_property
    def _compare_fn(self):
        """jit (source features, edit features, e) -> (B, len(score_names)) with `metrics.compare`."""
        names = self.score_names

        def compare(source, edited, e):
            zeros = jnp.zeros((e.shape[0], 1, 1))  # images (used with a background mask only) and latent change
            out = metrics.compare(source, edited, zeros, zeros, zeros, zeros, e)
            return jnp.stack([out[k] for k in names], axis=-1)

        return jax.jit(compare)

    def features(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        """Score features {name: (B, F)} of images (B, H, W, 3), in the Editor's batches on its devices."""
        return self.editor.run(self._features_fn, [x])

    def scores(self, source_features, edit_features, e) -> np.ndarray:
        """(B, len(score_names)) of rows of source features, edit features and text embeddings (B, D)."""
        return self.editor.run(self._compare_fn, [source_features, edit_features, e])

    # ---- inputs ----------------------------------------------------------------------------------------------

    def read_photo(self, photo) -> np.ndarray:
        """An uploaded photo -> (H, W, 3) uint8 (`inputs.read_image`, at least MIN_PHOTO_SIDE and at most MAX_SIDE
        pixels a side; aligned first when the Editor has a face predictor)."""
        path, name = file_of(photo, "no photo uploaded: upload a photo, or choose latents or a random sample")
        if not os.path.isfile(path):
            raise InputError(f"{name}: the upload is gone (upload it again)")
        if os.path.getsize(path) > MAX_FILE_BYTES:
            raise InputError(f"{name}: larger than the upload limit {MAX_FILE_BYTES // 2 ** 20} MB")
        image = inputs.read_image(path, name, min_side=inputs.MIN_PHOTO_SIDE, max_side=MAX_SIDE)
        if self.editor.predictor is not None:
            aligned, skipped = self.editor.align([image])
            if skipped:
                raise InputError(f"{name}: no face found to align")
            image = aligned[0]
        return image

    def read_latents(self, latents, all_rows: bool = False) -> np.ndarray:
        """Uploaded w+ latents (`inputs.load_latents`): the first row, or every row (at most MAX_SOURCES)."""
        path, name = file_of(latents, "no latents uploaded: upload a .npy of w+ latents")
        expected = inputs.LatentShape(*self.editor.latent_shape, "the studio's mapper")
        a = inputs.load_latents(path, expected, name=name, mmap=True)
        a = a if all_rows else a[:1]
        if len(a) > MAX_SOURCES:
            raise InputError(f"{name}: {len(a)} latents, at most {MAX_SOURCES} per edit")
        return np.asarray(a, np.float32)

    def _job(self, req: EditRequest) -> _Job:
        """A request's checked values (one-line InputErrors)."""
        prompts = inputs.prompts(req.prompts if req.prompts is not None else "", max_count=MAX_PROMPTS)
        strength = number(req.strength, STRENGTH_RANGE, "strength")
        kind = req.source or "photo"
        if kind == "photo":
            value = self.read_photo(req.photo)
        elif kind == "latents":
            value = self.read_latents(req.latents, bool(req.all_rows))
        elif kind == "random":
            value = (self.seed(req.seed), number(req.truncation, TRUNCATION_RANGE, "truncation"))
        else:
            raise InputError(f"unknown source {kind!r}: expected one of {', '.join(SOURCES)}")
        refine = self.refine_choice(req.refine, req.refine_steps) if kind == "photo" else None
        return _Job(kind, value, prompts, strength, bool(req.scores), refine, req.photo)

    @staticmethod
    def refine_choice(refine, steps) -> Optional[Tuple[str, Optional[int]]]:
        """(the Editor's stage, steps or None: the stage's default, asked by 0 or no value) of the page's choice;
        None: no refinement."""
        choice = "none" if refine in (None, "") else refine
        if choice not in REFINE:
            raise InputError(f"refine {choice!r}: expected one of {', '.join(REFINE)}")
        if REFINE[choice] is None:
            return None
        if steps in (None, ""):
            return REFINE[choice], None
        n = number(steps, REFINE_STEPS_RANGE, "refine steps")
        if not float(n).is_integer():
            raise InputError(f"refine steps {n:g}: expected an integer")
        return REFINE[choice], int(n) or None

    def refined(self, photo, image: np.ndarray, refine: Tuple[str, Optional[int]]) -> Refined:
        """A photo through the refine stage (`Editor.invert(refine=...)`), kept per (file, stage, steps)."""
        path, _ = file_of(photo, "no photo uploaded")
        stat = os.stat(path)
        key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size) + tuple(refine)
        if key in self._refined:
            self._refined.move_to_end(key)
            return self._refined[key]
        stage, steps = refine
        e4e = self.editor.invert([image], align=False)  # `read_photo` aligned it
        enc = self.editor.invert([image], align=False, refine=stage, steps=steps)
        variables = None if enc.params is None else self.editor.tuned_variables(enc.params, 0)
        numbers = {k: float(v[0]) for k, v in enc.refinement.items()}
        done = Refined(e4e, enc.w, variables, stage, int(numbers["steps"]), numbers)
        self._refined[key] = done
        while len(self._refined) > REFINED_KEPT:
            self._refined.popitem(last=False)
        return done

    @staticmethod
    def seed(value) -> int:
        """A random source's seed: an integer in SEED_RANGE."""
        s = number(value, None, "seed")
        if not float(s).is_integer() or not SEED_RANGE[0] <= s <= SEED_RANGE[1]:
            raise InputError(f"seed {s:g}: expected an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}")
        return int(s)

    # ---- the cache -------------------------------------------------------------------------------------------

    def _put(self, entry: Entry) -> str:
        token = uuid.uuid4().hex
        self._cache[token] = entry
        while len(self._cache) > self.cache_entries:
            old, _ = self._cache.popitem(last=False)
            if self.on_drop is not None:
                self.on_drop(old)
        return token

    def entry(self, token) -> Entry:
        """The cached edit of a token (most recently used from now on)."""
        if not token or token not in self._cache:
            raise InputError("no edit to re-render: press Edit first (or the edit expired)")
        self._cache.move_to_end(token)
        return self._cache[token]

    def _editor_of(self, entry: Entry) -> Editor:
        """The Editor that renders an entry: the shared one, or a copy holding the entry's own generator (placed on
        the Editor's devices once, so its re-renders run on the same sharded runners)."""
        if entry.generator_variables is not None:
            entry.generator_variables = self.editor.place(entry.generator_variables)
        return self._renderer(entry.generator_variables)

    def _renderer(self, generator_variables) -> Editor:
        """The shared Editor (None), or a copy of it rendering with these generator variables."""
        if generator_variables is None:
            return self.editor
        editor = copy.copy(self.editor)
        editor.generator = (self.editor.generator[0], self.editor.place(generator_variables))
        return editor

    # ---- the page's actions ----------------------------------------------------------------------------------

    def preview(self, photo, refine="none", steps=None) -> Preview:
        """An uploaded photo, its w+ and its reconstruction (what the page shows on upload, before any edit); with a
        refine stage also the refined code and its reconstruction (PTI: on the photo's tuned generator)."""
        choice = self.refine_choice(refine, steps)
        image = self.read_photo(photo)
        if choice is None:
            w = self.editor.invert([image], align=False)  # `read_photo` aligned it
            return Preview(image, w, self.editor.render_rows(w)[0])
        r = self.refined(photo, image, choice)
        recon, refined = self.editor.render_rows(r.e4e)[0], self._renderer(r.generator_variables).render_rows(r.w)[0]
        return Preview(image, r.e4e, recon, r, refined)

    def random_sample(self, seed, truncation) -> Sample:
        """A random w+ (`Editor.sample_rows`: z of PRNGKey(seed), truncated) and its image."""
        seed, truncation = self.seed(seed), number(truncation, TRUNCATION_RANGE, "truncation")
        w = self.editor.sample_rows([seed], [truncation])
        return Sample(seed, truncation, w, self.editor.render_rows(w)[0])

    def _sources(self, jobs: List[_Job]) -> None:
        """Each job's w (N, L, D): photos through one `Editor.invert` call (e4e; a photo with a refine stage through
        `refined`, with its tuned generator for PTI), random sources through one `sample_rows` call, latents as
        uploaded."""
        for j in jobs:
            if j.kind == "photo" and j.refine is not None:
                r = self.refined(j.photo, j.value, j.refine)
                j.w, j.generator_variables = r.w, r.generator_variables
        photos = [j for j in jobs if j.kind == "photo" and j.refine is None]
        if photos:
            codes = self.editor.invert([j.value for j in photos], align=False)  # `read_photo` aligned them
            for j, c in zip(photos, codes):
                j.w = c[None]
        randoms = [j for j in jobs if j.kind == "random"]
        if randoms:
            ws = self.editor.sample_rows([j.value[0] for j in randoms], [j.value[1] for j in randoms])
            for j, w in zip(randoms, ws):
                j.w = w[None]
        for j in jobs:
            if j.kind == "latents":
                j.w = j.value

    def edit_many(self, requests: Sequence[EditRequest]) -> List[Union[Edit, FFCLIPError]]:
        """Many edit requests in one mapper call and one generator call (the Editor's fixed-size batches). Each
        answer is an `Edit` or the FFCLIPError that refused that request: one bad request fails no other."""
        answers: List[Any] = []
        for req in requests:
            try:
                answers.append(self._job(req))
            except FFCLIPError as e:
                answers.append(e)
        jobs = [a for a in answers if isinstance(a, _Job)]
        try:
            self._sources(jobs)
        except FFCLIPError as e:
            answers = [e if isinstance(a, _Job) and a.kind == "photo" else a for a in answers]
            jobs = [a for a in answers if isinstance(a, _Job)]
            self._sources(jobs)
        for i, a in enumerate(answers):
            if isinstance(a, _Job):
                try:
                    a.e = self.editor.text_embeddings(a.prompts)
                except FFCLIPError as e:
                    answers[i] = e
        jobs = [a for a in answers if isinstance(a, _Job)]
        if jobs:
            edits = iter(self._edit_jobs(jobs))
            answers = [next(edits) if isinstance(a, _Job) else a for a in answers]
        return answers

    def _edit_jobs(self, jobs: List[_Job]) -> List[Edit]:
        """Rows (job, source, prompt) at the job's strength and at 1 (delta) through one mapper call; sources and
        edits through one generator call (a PTI photo's on its tuned generator); the scores of the jobs that want
        them in one scoring call."""
        ed = self.editor
        rows_w, rows_e, rows_s = [], [], []
        for j in jobs:
            n, k = len(j.w), len(j.prompts)
            w, e = np.repeat(j.w, k, axis=0), np.tile(j.e, (n, 1))
            rows_w += [w, w]
            rows_e += [e, e]
            rows_s += [np.full(n * k, j.strength, np.float32), np.ones(n * k, np.float32)]
        w_all = np.concatenate(rows_w)
        mapped = ed.map_rows(w_all, np.concatenate(rows_e), np.concatenate(rows_s))
        edited, deltas, pos = [], [], 0
        for j in jobs:
            m = len(j.w) * len(j.prompts)
            edited.append(mapped[pos:pos + m])
            deltas.append(mapped[pos + m:pos + 2 * m] - w_all[pos:pos + m])
            pos += 2 * m
        t0 = time.perf_counter()
        shared = [i for i, j in enumerate(jobs) if j.generator_variables is None]
        recon_of, x_hat_of = {}, {}
        if shared:  # the sources and edits of every job on the shared generator: one generator call
            rendered = ed.render_rows(np.concatenate([jobs[i].w for i in shared] + [edited[i] for i in shared]))
            r0, e0 = 0, sum(len(jobs[i].w) for i in shared)
            for i in shared:
                n, m = len(jobs[i].w), len(edited[i])
                recon_of[i], x_hat_of[i] = rendered[r0:r0 + n], rendered[e0:e0 + m]
                r0, e0 = r0 + n, e0 + m
        for i, j in enumerate(jobs):  # a photo's tuned generator (PTI) renders its own rows
            if j.generator_variables is not None:
                own = self._renderer(j.generator_variables).render_rows(np.concatenate([j.w, edited[i]]))
                recon_of[i], x_hat_of[i] = own[:len(j.w)], own[len(j.w):]
        seconds = time.perf_counter() - t0
        recon = np.concatenate([recon_of[i] for i in range(len(jobs))])
        x_hat = np.concatenate([x_hat_of[i] for i in range(len(jobs))])
        scored_jobs = [j.scores and bool(self.score_names) for j in jobs]
        source_features = self.features(recon) if any(scored_jobs) else None
        out, entries, a, b = [], [], 0, 0
        for j, w_hat, delta, scored in zip(jobs, edited, deltas, scored_jobs):
            n, k = len(j.w), len(j.prompts)
            features = jax.tree.map(lambda f: f[a:a + n], source_features) if scored else None
            entry = Entry(j.w, delta.reshape((n, k) + j.w.shape[1:]), j.prompts, j.e, features, j.kind,
                          j.generator_variables)
            images = x_hat[b:b + n * k]
            frames = Frames(self._put(entry), j.prompts, j.strength, images.reshape((n, k) + images.shape[1:]),
                            w_hat.reshape((n, k) + j.w.shape[1:]), None, seconds)
            out.append(Edit(frames, recon[a:a + n], j.w))
            entries.append((entry, images) if scored else None)
            a, b = a + n, b + n * k
        scored = [(i, e) for i, e in enumerate(entries) if e is not None]
        for (i, _), scores in zip(scored, self._scores([e for _, e in scored])):
            out[i].frames.scores = scores
        return out

    def _scores(self, items) -> List[np.ndarray]:
        """Scores (N, P, S) of [(entry, its edit images (N * P, H, W, 3), row i * P + j: source i, prompt j)], all
        in one scoring call."""
        if not items:
            return []
        sizes = [entry.delta.shape[:2] for entry, _ in items]
        src = jax.tree.map(lambda *fs: np.concatenate(fs), *[
            jax.tree.map(lambda f: np.repeat(f, k, axis=0), entry.source_features)
            for (entry, _), (_, k) in zip(items, sizes)])
        e = np.concatenate([np.tile(entry.embeddings, (n, 1)) for (entry, _), (n, _) in zip(items, sizes)])
        x = np.concatenate([images for _, images in items])
        rows = self.scores(src, self.features(x), e)
        ends = np.cumsum([n * k for n, k in sizes])
        return [r.reshape(n, k, -1) for r, (n, k) in zip(np.split(rows, ends[:-1]), sizes)]

    def rerender(self, token, strength) -> Frames:
        """The cached edit at another strength: w + strength * delta through the generator only (in the smallest
        power-of-two batch that holds the frames); no scores (`rescore` follows)."""
        s = number(strength, STRENGTH_RANGE, "strength")
        entry = self.entry(token)
        n, k = entry.delta.shape[:2]
        w_hat = (entry.w[:, None] + np.float32(s) * entry.delta).astype(np.float32)
        t0 = time.perf_counter()
        x = self._editor_of(entry).render_rows(w_hat.reshape((n * k,) + entry.w.shape[1:]), small=True)
        self._shown = Frames(token, entry.prompts, s, x.reshape((n, k) + x.shape[1:]), w_hat, None,
                             time.perf_counter() - t0)
        return self._shown

    def rescore(self, token, strength) -> Frames:
        """The cached edit at `strength` with its scores (None: the edit has scores off): the frames of the last
        `rerender` when they are that token's at that strength, else frames rendered again."""
        s = number(strength, STRENGTH_RANGE, "strength")
        entry = self.entry(token)
        shown = self._shown
        if shown is None or shown.token != token or shown.strength != s:
            shown = self.rerender(token, s)
        if entry.source_features is None:
            return shown
        n, k = shown.images.shape[:2]
        images = shown.images.reshape((n * k,) + shown.images.shape[2:])
        return dataclasses.replace(shown, scores=self._scores([(entry, images)])[0])

    def sweep(self, token, strength, frames=SWEEP_FRAMES) -> Sweep:
        """The first source and prompt at `frames` strengths from 0 to `strength`: w + t * delta."""
        s = number(strength, STRENGTH_RANGE, "strength")
        entry = self.entry(token)
        count = number(frames, SWEEP_FRAMES_RANGE, "sweep frames")
        if not float(count).is_integer():
            raise InputError(f"sweep frames {count:g}: expected an integer")
        steps = np.linspace(0.0, s, int(count)).astype(np.float32)
        ws = (entry.w[0][None] + steps[:, None, None] * entry.delta[0, 0][None]).astype(np.float32)
        return Sweep(token, [float(v) for v in steps], self._editor_of(entry).render_rows(ws), ws)

    def warm_up(self) -> None:
        """Compile every network once (the first visitor should not wait for XLA): sampling, the mapper, the
        generator (the edit's batch and the slider's one frame), the encoder, the scores."""
        ed = self.editor
        steps = ["sample", "mapper", "generator"] + (["encoder"] if ed.encoder else []) + (
            ["scores"] if self.score_names else [])
        with tqdm(total=len(steps), desc="studio warm-up (jit)", unit="net", file=sys.stderr) as bar:
            w = ed.sample_rows([0], [1.0])
            bar.update()
            e = ed.text_embeddings([self.prompts[0] if self.prompts else "a face"])
            w_hat = ed.map_rows(w, e, [1.0])
            bar.update()
            x = ed.render_rows(np.concatenate([w, w_hat]))
            rows = 1
            while rows < ed.batch_size:  # the slider's batches: 1, 2, 4, ... frames
                ed.render_rows(np.repeat(w_hat, rows, axis=0), small=True)
                rows *= 2
            bar.update()
            if ed.encoder:
                ed.invert_rows(np.zeros((1,) + ed.input_size + (3,), np.float32))
                bar.update()
            if self.score_names:
                f = self.features(x)
                self.scores(jax.tree.map(lambda a: a[:1], f), jax.tree.map(lambda a: a[1:], f), e)
                bar.update()
