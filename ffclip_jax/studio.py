"""FFCLIP studio: a local web page (Gradio) that edits a photo, uploaded w+ latents or a random sample with free-form
text prompts, using one trained mapper. The command line is `ffclip studio` (`ffclip_jax/cli/studio.py`).

    ffclip studio --weights runs/tiny/weights [--host 127.0.0.1] [--port 7860] [--align PREDICTOR]
        [--auth-file users.txt] [--batch-size 8] [--no-batching]

The networks are loaded and jit-compiled once at start-up and shared by every visitor. Concurrent edit requests are
queued and run together (Gradio batch functions) in the Editor's fixed-size batches. The strength slider re-renders
without the encoder or the mapper: the mapper's offset delta = w_hat(strength 1) - w is kept per request on the server,
a new strength only runs the generator on w + strength * delta.

Named API endpoints (gradio_client): /edit, /sweep, /random_sample, /rerender. Every file the page writes lives under
one per-server temporary directory, which is the only path the server lets clients read.
"""
from __future__ import annotations

import collections
import concurrent.futures
import functools
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm import tqdm

from ffclip_jax import inputs, metrics
from ffclip_jax.batching import in_batches
from ffclip_jax.errors import CheckpointError, FFCLIPError, InputError
from ffclip_jax.fileio import atomic_write
from ffclip_jax.grid import save_png, to_uint8
from ffclip_jax.outputs import unique_names
from ffclip_jax.pipeline import DEFAULT_BATCH, Editor
from ffclip_jax.text.prompts import load_prompts

MAX_PROMPTS = 8
MAX_SOURCES = 8
MAX_SIDE = 4096  # pixels a side of an uploaded photo
MAX_FILE_SIZE = "20mb"
MAX_FILE_BYTES = 20 * 1024 * 1024
STRENGTH_RANGE = (-1.0, 2.0)
SWEEP_FRAMES = 8
CACHE_ENTRIES = 64  # edit results kept for the slider / sweep (least recently used dropped, with their files)
SOURCES = ("photo", "latents", "random")
STRENGTH_HELP = ("**Strength**: 1 is upstream FFCLIP, 0 the reconstruction, values above 1 exaggerate the edit and "
                 "negative values push the image *away* from the text. Moving the slider re-renders with the "
                 "generator only (no encoder, no mapper).")


def log(msg: str) -> None:
    print(f"[studio] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# the engine: everything the page does, without Gradio


class Studio:
    """The Editor, the scoring networks and the per-request cache behind the page; every method takes and returns
    plain Python / numpy values and file paths under `workdir`."""

    def __init__(self, editor, workdir: str, *, prompts: Sequence[str] = (), scorers=None,
                 scorer_variables: Optional[Dict] = None, cache_entries: int = CACHE_ENTRIES):
        """editor: an `ffclip_jax.pipeline.Editor` (its face predictor aligns uploaded photos); scorers:
        `metrics.MetricNetworks` (None: no scores) with their variables {name: variables}."""
        self.editor = editor
        self.workdir = os.path.abspath(workdir)
        os.makedirs(os.path.join(self.workdir, "out"), exist_ok=True)
        self.prompts = list(prompts)
        self.scorers, self.scorer_variables = scorers, scorer_variables
        self._cache: "collections.OrderedDict[str, Dict]" = collections.OrderedDict()
        self._cache_entries = cache_entries
        self._lock = threading.Lock()
        # every device call runs on this one thread, one at a time (`on_device`): big temporary buffers come from
        # one malloc arena, so the server's memory stays flat whichever Gradio worker thread serves a request
        self._device = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-device")
        self.last_frame_ms: Optional[float] = None

    # ---- scores ----------------------------------------------------------------------------------------------

    @property
    def score_names(self) -> List[str]:
        """The `ffclip_jax.metrics` scores shown per edit: CLIP score, of the source and the change, and identity
        (faces) or MoCo similarity (other domains), as `ffclip evaluate` reports them."""
        if self.scorers is None:
            return []
        return ["clip_score", "clip_score_source", "clip_score_delta",
                "identity" if self.scorers.face else "moco_similarity"]

    @functools.cached_property
    def _score_fn(self):
        """jit (x, x_hat, e) -> (B, len(score_names)) with `metrics.image_features` and `metrics.compare`."""
        nets, names = self.scorers, self.score_names

        def score(variables, x, x_hat, e):
            source, edited = (metrics.image_features(variables, a, nets=nets) for a in (x, x_hat))
            w = jnp.zeros((x.shape[0], 1, 1))  # the latent change is not shown
            out = metrics.compare(source, edited, x, x_hat, w, w, e)
            return jnp.stack([out[k] for k in names], axis=-1)

        return functools.partial(jax.jit(score), self.scorer_variables)

    def scores(self, x, x_hat, e) -> np.ndarray:
        if not self.score_names or not len(x):
            return np.zeros((len(x), 0))
        return in_batches(self._score_fn, [x, x_hat, e], self.editor.batch_size)

    # ---- inputs ----------------------------------------------------------------------------------------------

    def read_photo(self, path) -> np.ndarray:
        """An uploaded photo -> (H, W, 3) uint8 (`inputs.read_image`; aligned first when the Editor has a face
        predictor)."""
        if not path:
            raise InputError("no photo uploaded: upload a photo, or choose latents / a random sample")
        path = _path_of(path)
        name = os.path.basename(path)
        if os.path.getsize(path) > MAX_FILE_BYTES:
            raise InputError(f"{name}: larger than the upload limit {MAX_FILE_SIZE}")
        arr = inputs.read_image(path, name, max_side=MAX_SIDE)
        if self.editor.predictor is not None:
            aligned, skipped = self.editor.align([arr])
            if skipped:
                raise InputError(f"{name}: no face found to align")
            arr = aligned[0]
        return arr

    def read_latents(self, path, all_rows: bool = False) -> np.ndarray:
        """Uploaded w+ latents (`inputs.load_latents`): the first row, or every row (at most MAX_SOURCES)."""
        if not path:
            raise InputError("no latents uploaded: upload a .npy of w+ latents")
        path = _path_of(path)
        name = os.path.basename(path)
        expected = inputs.LatentShape(*self.editor.latent_shape, "the studio's mapper")
        a = inputs.load_latents(path, expected, name=name, mmap=True)
        a = a if all_rows else a[:1]
        if len(a) > MAX_SOURCES:
            raise InputError(f"{name}: {len(a)} latents, at most {MAX_SOURCES} per edit")
        return np.asarray(a, np.float32)

    # ---- device work -----------------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Compile every network once (the first visitor should not wait for XLA)."""
        ed = self.editor
        steps = ["sample", "mapper", "generator"] + (["encoder"] if ed.encoder else []) + (
            ["scores"] if self.score_names else [])
        t0 = time.perf_counter()
        with tqdm(total=len(steps), desc="studio warm-up (jit)", unit="net", file=sys.stderr) as bar:
            w = ed.sample_rows([0], [1.0])
            bar.update()
            e = ed.text_embeddings([self.prompts[0] if self.prompts else "a face"])
            w_hat = ed.map_rows(w, e, [1.0])
            bar.update()
            x = ed.render_rows(np.concatenate([w, w_hat]))
            ed.render_rows(w_hat, small=True)  # the slider's one-frame re-render
            bar.update()
            if ed.encoder:
                ed.invert_rows(np.zeros((1,) + ed.input_size + (3,), np.float32))
                bar.update()
            if self.score_names:
                self.scores(x[:1], x[1:], e)
                bar.update()
        log(f"warm-up done in {time.perf_counter() - t0:.1f}s")

    # ---- cache -----------------------------------------------------------------------------------------------

    def _put(self, entry: Dict) -> str:
        token = uuid.uuid4().hex
        entry["dir"] = os.path.join(self.workdir, "out", token)
        os.makedirs(entry["dir"], exist_ok=True)
        with self._lock:
            self._cache[token] = entry
            while len(self._cache) > self._cache_entries:
                _, old = self._cache.popitem(last=False)
                shutil.rmtree(old["dir"], ignore_errors=True)
        return token

    def get(self, token) -> Dict:
        with self._lock:
            if not token or token not in self._cache:
                raise InputError("no edit to re-render: press Edit first (or the edit expired)")
            self._cache.move_to_end(token)
            return self._cache[token]

    # ---- the page's actions ----------------------------------------------------------------------------------

    def _source(self, req: Dict):
        """('images', uint8 array) or ('latents', (N, L, D)) or ('random', (seed, truncation))."""
        kind = req.get("source") or "photo"
        if kind == "photo":
            return "images", self.read_photo(req.get("photo"))
        if kind == "latents":
            return "latents", self.read_latents(req.get("latents"), bool(req.get("all_rows")))
        if kind == "random":
            try:
                seed, trunc = int(req.get("seed") or 0), float(req.get("truncation", 1.0))
            except (TypeError, ValueError):
                raise InputError("seed must be an integer and truncation a number") from None
            if not np.isfinite(trunc):
                raise InputError("truncation must be finite")
            return "random", (seed, trunc)
        raise InputError(f"unknown source {kind!r}: expected one of {', '.join(SOURCES)}")

    def on_device(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) on the device thread (see __init__)."""
        return self._device.submit(fn, *args, **kwargs).result()

    def edit_many(self, requests: Sequence[Dict]) -> List[Dict]:
        return self.on_device(self._edit_many, requests)

    def _edit_many(self, requests: Sequence[Dict]) -> List[Dict]:
        """Run many edit requests together. Each request: {source, photo, latents, all_rows, seed, truncation,
        prompts (text, one per line), strength, scores (bool, default True)}. Returns per request {token, recon,
        gallery, compare, files, table, headers, strength} or {error}; one bad request does not fail the others."""
        t0 = time.perf_counter()
        parsed: List[Any] = []
        for req in requests:
            try:
                prompts = inputs.prompts(str(req.get("prompts") or ""), max_count=MAX_PROMPTS)
                strength = inputs.strength(req.get("strength", 1.0), bounds=STRENGTH_RANGE)
                kind, value = self._source(req)
                parsed.append(dict(kind=kind, value=value, prompts=prompts, strength=strength,
                                   scores_on=bool(req.get("scores", True))))
            except FFCLIPError as e:
                parsed.append(dict(error=str(e)))
        ed = self.editor
        # sources
        images = [(i, p["value"]) for i, p in enumerate(parsed) if p.get("kind") == "images"]
        if images:
            try:
                codes = ed.invert([v for _, v in images], align=False)  # `read_photo` aligned them
                for (i, _), c in zip(images, codes):
                    parsed[i]["w"] = c[None]
            except FFCLIPError as e:
                for i, _ in images:
                    parsed[i] = dict(error=str(e))
        rnd = [(i, p["value"]) for i, p in enumerate(parsed) if p.get("kind") == "random"]
        if rnd:
            ws = ed.sample_rows([v[0] for _, v in rnd], [v[1] for _, v in rnd])
            for (i, _), w in zip(rnd, ws):
                parsed[i]["w"] = w[None]
        for p in parsed:
            if p.get("kind") == "latents":
                p["w"] = p["value"]
        # text
        for p in parsed:
            if "error" not in p:
                try:
                    p["e"] = ed.text_embeddings(p["prompts"])
                except FFCLIPError as e:
                    p.clear()
                    p["error"] = str(e)
        ok = [p for p in parsed if "error" not in p]
        # rows: (request, source, prompt) at the chosen strength and at 1 (for the slider's delta)
        rows_w, rows_e, rows_s = [], [], []
        for p in ok:
            n, k = len(p["w"]), len(p["prompts"])
            w = np.repeat(p["w"], k, axis=0)
            e = np.tile(p["e"], (n, 1))
            rows_w += [w, w]
            rows_e += [e, e]
            rows_s += [np.full(n * k, p["strength"], np.float32), np.ones(n * k, np.float32)]
        if ok:
            w_all, e_all = np.concatenate(rows_w), np.concatenate(rows_e)
            mapped = ed.map_rows(w_all, e_all, np.concatenate(rows_s))
            srcs = np.concatenate([p["w"] for p in ok])
            edited_rows, pos = [], 0
            for p in ok:
                m = len(p["w"]) * len(p["prompts"])
                p["w_hat"] = mapped[pos:pos + m]
                p["delta"] = mapped[pos + m:pos + 2 * m] - w_all[pos:pos + m]
                edited_rows.append(p["w_hat"])
                pos += 2 * m
            edited = np.concatenate(edited_rows)
            rendered = ed.render_rows(np.concatenate([srcs, edited]))
            recon_all, x_hat_all = rendered[:len(srcs)], rendered[len(srcs):]
            # scores: source image of each row vs its edit
            x_rows = np.concatenate([np.repeat(recon_all[a:a + len(p["w"])], len(p["prompts"]), axis=0)
                                     for p, a in zip(ok, np.cumsum([0] + [len(p["w"]) for p in ok]))])
            e_rows = np.concatenate([np.tile(p["e"], (len(p["w"]), 1)) for p in ok])
            want = np.concatenate([np.full(len(p["w"]) * len(p["prompts"]), p["scores_on"]) for p in ok])
            sc = np.full((len(want), len(self.score_names)), np.nan)
            if want.any():
                sc[want] = self.scores(x_rows[want], x_hat_all[want], e_rows[want])
            a = b = 0
            for p in ok:
                n, k = len(p["w"]), len(p["prompts"])
                p["recon"] = recon_all[a:a + n]
                p["x_hat"] = x_hat_all[b:b + n * k]
                p["scores"] = sc[b:b + n * k]
                a, b = a + n, b + n * k
        out = []
        for p in parsed:
            if "error" in p:
                out.append({"error": p["error"]})
                continue
            out.append(self._write_edit(p))
        n_ok = sum("error" not in o for o in out)
        log(f"edit: {len(requests)} request(s) ({n_ok} ok) in one batch, {time.perf_counter() - t0:.3f}s")
        return out

    def _write_edit(self, p: Dict) -> Dict:
        n, k = len(p["w"]), len(p["prompts"])
        entry = dict(w=p["w"], delta=p["delta"].reshape((n, k) + p["w"].shape[1:]), prompts=p["prompts"],
                     strength=p["strength"], source_kind=p["kind"])
        token = self._put(entry)
        d = entry["dir"]
        entry["recon_paths"] = [save_png(os.path.join(d, f"source{i}__reconstruction.png"), p["recon"][i])
                                for i in range(n)]
        x_hat = p["x_hat"].reshape((n, k) + p["x_hat"].shape[1:])
        res = self._edit_outputs(entry, x_hat, p["w_hat"].reshape((n, k) + p["w"].shape[1:]), p["strength"], "edit")
        rows = []
        for i in range(n):
            for j, prompt in enumerate(p["prompts"]):
                rows.append([i, prompt, round(p["strength"], 4)] + [round(float(v), 4) for v in p["scores"][i * k + j]])
        res.update(token=token, table=rows, headers=["source", "prompt", "strength"] + self.score_names)
        return res

    def _edit_outputs(self, entry: Dict, x_hat: np.ndarray, w_hat: np.ndarray, strength: float, tag: str) -> Dict:
        """PNGs, gallery, comparison, zip and latents of edits (N, P, H, W, 3) at one strength."""
        d = entry["dir"]
        sub = os.path.join(d, f"{tag}_{uuid.uuid4().hex[:8]}")
        os.makedirs(sub, exist_ok=True)
        n, k = x_hat.shape[:2]
        names = unique_names(entry["prompts"])
        gallery, pngs = [], []
        for i in range(n):
            for j, prompt in enumerate(entry["prompts"]):
                path = save_png(os.path.join(sub, f"source{i}__{names[j]}__{strength:g}.png"), x_hat[i, j])
                pngs.append(path)
                caption = f"{prompt} · {strength:g}" + (f" (source {i})" if n > 1 else "")
                gallery.append((path, caption))
        latents = os.path.join(sub, "edited_latents.npy")
        atomic_write(latents, lambda tmp: np.save(tmp, np.asarray(w_hat, np.float32)))
        sources = os.path.join(d, "source_latents.npy")
        if not os.path.exists(sources):
            atomic_write(sources, lambda tmp: np.save(tmp, np.asarray(entry["w"], np.float32)))
        zpath = os.path.join(sub, "edits.zip")

        def write_zip(tmp):
            with zipfile.ZipFile(tmp, "w") as z:
                for f in entry["recon_paths"] + pngs:
                    z.write(f, os.path.basename(f))
        atomic_write(zpath, write_zip)
        return dict(recon=entry["recon_paths"][0], gallery=gallery, compare=(entry["recon_paths"][0], pngs[0]),
                    files=[zpath, latents, sources], strength=strength)

    def rerender(self, token, strength) -> Dict:
        return self.on_device(self._rerender, token, strength)

    def _rerender(self, token, strength) -> Dict:
        """The cached edit at another strength: w + strength * delta through the generator only."""
        entry = self.get(token)
        s = inputs.strength(strength, bounds=STRENGTH_RANGE)
        w, delta = entry["w"], entry["delta"]
        n, k = delta.shape[:2]
        w_hat = (w[:, None] + np.float32(s) * delta).astype(np.float32)
        t0 = time.perf_counter()
        x = self.editor.render_rows(w_hat.reshape((n * k,) + w.shape[1:]), small=True)
        dt = time.perf_counter() - t0
        self.last_frame_ms = 1000 * dt / (n * k)
        log(f"re-render: {n * k} frame(s) at strength {s:g} in {dt * 1000:.1f} ms "
             f"({self.last_frame_ms:.1f} ms/frame, generator only)")
        res = self._edit_outputs(entry, x.reshape((n, k) + x.shape[1:]), w_hat, s, "rerender")
        res["ms_per_frame"] = self.last_frame_ms
        return res

    def sweep(self, token, strength, frames: int = SWEEP_FRAMES) -> Dict:
        return self.on_device(self._sweep, token, strength, frames)

    def _sweep(self, token, strength, frames: int = SWEEP_FRAMES) -> Dict:
        """An animated lossless WebP of the first source and prompt from strength 0 to `strength` and the frames'
        latents (frames, L, D)."""
        entry = self.get(token)
        s = inputs.strength(strength, bounds=STRENGTH_RANGE)
        frames = int(frames)
        if not 2 <= frames <= 64:
            raise InputError(f"frames: expected 2 to 64, got {frames}")
        steps = np.linspace(0.0, s, frames).astype(np.float32)
        w, delta = entry["w"][0], entry["delta"][0, 0]
        ws = (w[None] + steps[:, None, None] * delta[None]).astype(np.float32)
        x = to_uint8(self.editor.render_rows(ws))
        sub = os.path.join(entry["dir"], f"sweep_{uuid.uuid4().hex[:8]}")
        os.makedirs(sub, exist_ok=True)
        anim = os.path.join(sub, "sweep.webp")
        ims = [Image.fromarray(a) for a in x]
        atomic_write(anim, lambda tmp: ims[0].save(tmp, format="WEBP", save_all=True, append_images=ims[1:],
                                                    lossless=True, duration=150, loop=0))
        lat = os.path.join(sub, "sweep_latents.npy")
        atomic_write(lat, lambda tmp: np.save(tmp, ws))
        return dict(animation=anim, latents=lat, strengths=[float(v) for v in steps])

    def random_sample(self, seed, truncation) -> Dict:
        return self.on_device(self._random_sample, seed, truncation)

    def _random_sample(self, seed, truncation) -> Dict:
        try:
            seed, truncation = int(seed), float(truncation)
        except (TypeError, ValueError):
            raise InputError("seed must be an integer and truncation a number") from None
        w = self.editor.sample_rows([seed], [truncation])
        x = self.editor.render_rows(w)
        d = os.path.join(self.workdir, "out", "samples", uuid.uuid4().hex[:12])
        os.makedirs(d, exist_ok=True)
        png = save_png(os.path.join(d, f"sample_seed{seed}.png"), x[0])
        lat = os.path.join(d, f"sample_seed{seed}.npy")
        atomic_write(lat, lambda tmp: np.save(tmp, w))
        return dict(image=png, latents=lat)


def _path_of(value) -> str:
    if isinstance(value, dict):
        value = value.get("path") or value.get("name")
    return os.fspath(getattr(value, "name", value))


# ---------------------------------------------------------------------------------------------------------------
# loading


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


def load_studio(weights_dir: str, workdir: str, *, batch_size: int = DEFAULT_BATCH, align: Optional[str] = None,
                cache_dir: Optional[str] = None, scores: bool = True) -> Studio:
    log(f"loading networks from {weights_dir}")
    editor = Editor.from_pretrained(weights_dir, batch_size=batch_size, cache_dir=cache_dir, align=align)
    return _studio_for(editor, workdir, scores=scores)


def _studio_for(editor, workdir: str, scores: bool = True) -> Studio:
    """The studio of an Editor, with the scores of its domain (identity for faces, else MoCo similarity) when the
    weights directory has the networks."""
    weights = editor.weights
    prompts = domain_prompts(weights)
    if not scores or editor.clip is None or weights is None:
        return Studio(editor, workdir, prompts=prompts)
    try:
        domain = metrics.choose_domain(weights, background=False)
    except CheckpointError:
        return Studio(editor, workdir, prompts=prompts)
    nets, variables = metrics.metric_networks(weights, editor.clip, domain, background=False)
    return Studio(editor, workdir, prompts=prompts, scorers=nets, scorer_variables=variables)


# ---------------------------------------------------------------------------------------------------------------
# the page


def theme():
    import gradio as gr  # optional (the `studio` extra) and slow to import: only when a page is built

    # system fonts only: nothing is fetched from the internet (the default theme would name web fonts)
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "SFMono-Regular", "monospace"])


def build_app(editor_or_weights_dir, workdir: Optional[str] = None, *, batching: bool = True,
              max_batch_size: Optional[int] = None, align: Optional[str] = None, cache_dir: Optional[str] = None,
              batch_size: int = DEFAULT_BATCH, warm_up: bool = True):
    """The Gradio Blocks of the studio around an Editor (or a weights directory, loaded here with the face predictor
    `align`; an Editor brings its own). Returns the Blocks; its `.studio` attribute is the engine and
    `.studio.workdir` the only directory the page writes to."""
    import gradio as gr  # optional (the `studio` extra) and slow to import: only when a page is built
    import pandas as pd  # gradio's dependency, for its tables

    workdir = workdir or tempfile.mkdtemp(prefix="ffclip-studio-")
    if isinstance(editor_or_weights_dir, (str, os.PathLike)):
        studio = load_studio(os.fspath(editor_or_weights_dir), workdir, align=align, cache_dir=cache_dir,
                             batch_size=batch_size)
    else:
        studio = _studio_for(editor_or_weights_dir, workdir)
    if warm_up:
        studio.warm_up()
    max_batch = max_batch_size or max(1, studio.editor.batch_size)
    has_encoder = studio.editor.encoder is not None
    headers = ["source", "prompt", "strength"] + studio.score_names
    empty_table = pd.DataFrame([], columns=headers)

    def edit_outputs(res):
        if "error" in res:
            return (gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                    f"**Error:** {res['error']}")
        table = pd.DataFrame(res["table"], columns=res["headers"])
        return (res["recon"], res["gallery"], res["compare"], table, res["files"], res["token"],
                f"Edited {len(res['gallery'])} image(s) at strength {res['strength']:g}.")

    def to_request(source, photo, latents, all_rows, seed, truncation, prompts, strength, scores):
        return dict(source=source, photo=photo, latents=latents, all_rows=all_rows, seed=seed,
                    truncation=truncation, prompts=prompts, strength=strength, scores=scores)

    def edit_batch(*columns):
        reqs = [to_request(*row) for row in zip(*columns)]
        try:
            results = studio.edit_many(reqs)
        except Exception as e:  # keep serving: report the failure to every user of this batch
            log(f"edit failed: {type(e).__name__}: {e}")
            results = [{"error": f"internal error ({type(e).__name__}: {e})"}] * len(reqs)
        outs = [edit_outputs(r) for r in results]
        return [list(col) for col in zip(*outs)]

    def edit_single(*values):
        out = edit_batch(*[[v] for v in values])
        return tuple(col[0] for col in out)

    def rerender(token, strength):
        if not token:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            res = studio.rerender(token, strength)
        except FFCLIPError as e:
            return gr.skip(), gr.skip(), gr.skip(), f"**Error:** {e}"
        return (res["gallery"], res["compare"], res["files"],
                f"Re-rendered at strength {res['strength']:g}: {res['ms_per_frame']:.1f} ms per frame "
                f"(generator only).")

    def sweep(token, strength, frames):
        try:
            res = studio.sweep(token, strength, frames)
        except FFCLIPError as e:
            return gr.skip(), gr.skip(), f"**Error:** {e}"
        return res["animation"], res["latents"], f"Sweep: {len(res['strengths'])} frames, 0 to {strength:g}."

    def random_sample(seed, truncation):
        try:
            res = studio.random_sample(seed, truncation)
        except FFCLIPError as e:
            return gr.skip(), gr.skip(), gr.skip(), f"**Error:** {e}"
        return res["image"], res["latents"], "random", f"Random sample: seed {int(seed)}, truncation {truncation:g}."

    def add_prompt(text, sample):
        p = sample[0] if isinstance(sample, (list, tuple)) else sample
        lines = [l for l in str(text or "").splitlines() if l.strip()]
        return "\n".join(lines + [str(p)])

    with gr.Blocks(title="FFCLIP studio", analytics_enabled=False, delete_cache=(1800, 3600)) as app:
        gr.Markdown("# FFCLIP studio\nEdit a face (or any image of the generator's domain) with free-form text: "
                    "one trained mapper, any prompt.")
        with gr.Row():
            with gr.Column():
                source = gr.Radio(list(SOURCES), value="photo" if has_encoder else "random", label="source",
                                  elem_id="source")
                photo = gr.File(label="photo (an aligned face" + (", or any photo: it is aligned first)"
                                                                    if studio.editor.predictor is not None else ")"),
                                file_types=["image"], type="filepath", elem_id="photo")
                latents = gr.File(label="w+ latents (.npy, (L, D) or (N, L, D))", file_types=[".npy"],
                                  type="filepath", elem_id="latents")
                all_rows = gr.Checkbox(label=f"edit every row of the latents (at most {MAX_SOURCES})", value=False)
                with gr.Row():
                    seed = gr.Number(label="seed", value=0, precision=0, elem_id="seed")
                    truncation = gr.Slider(0.0, 1.0, value=0.7, step=0.05, label="truncation")
                    sample_btn = gr.Button("Random sample", elem_id="sample-btn")
            with gr.Column():
                recon = gr.Image(label="reconstruction (the source through the generator)", type="filepath",
                                 interactive=False, elem_id="recon", height=256)
        prompts = gr.Textbox(label=f"prompts (one per line, at most {MAX_PROMPTS})", lines=3,
                             placeholder="Blue hair\nMan aged 10", elem_id="prompts")
        examples = gr.Dataset(components=[gr.Textbox(visible=False)], samples=[[p] for p in studio.prompts],
                              label="prompt list (click to add)", type="values", samples_per_page=60,
                              elem_id="examples")
        gr.Markdown(STRENGTH_HELP)
        strength = gr.Slider(STRENGTH_RANGE[0], STRENGTH_RANGE[1], value=1.0, step=0.05, label="strength",
                             elem_id="strength")
        with_scores = gr.Checkbox(label="compute scores (CLIP, identity / MoCo)", value=True, elem_id="with-scores")
        edit_btn = gr.Button("Edit", variant="primary", elem_id="edit-btn")
        status = gr.Markdown("", elem_id="status")
        token = gr.Textbox(visible=False, elem_id="token")
        gallery = gr.Gallery(label="edits (prompt · strength)", columns=4, elem_id="gallery", format="png")
        compare = gr.ImageSlider(label="before / after (first edit)", type="filepath", elem_id="compare")
        table = gr.Dataframe(value=empty_table, label="scores (CLIP score and its change from the source; "
                                                      "identity (ArcFace) or MoCo similarity)",
                             interactive=False, elem_id="scores")
        files = gr.File(label="downloads: edits.zip, edited_latents.npy (N, P, L, D), source_latents.npy",
                        file_count="multiple", interactive=False, elem_id="files")
        with gr.Row():
            frames = gr.Slider(2, 32, value=SWEEP_FRAMES, step=1, label="sweep frames")
            sweep_btn = gr.Button("Strength sweep (0 to strength)", elem_id="sweep-btn")
        sweep_img = gr.Image(label="sweep (animated WebP)", type="filepath", interactive=False, elem_id="sweep")
        sweep_lat = gr.File(label="sweep latents (.npy)", interactive=False)

        edit_inputs = [source, photo, latents, all_rows, seed, truncation, prompts, strength, with_scores]
        edit_outputs_ = [recon, gallery, compare, table, files, token, status]
        if batching:
            edit_btn.click(edit_batch, edit_inputs, edit_outputs_, api_name="edit", batch=True,
                           max_batch_size=max_batch, concurrency_limit=1, concurrency_id="device")
        else:
            edit_btn.click(edit_single, edit_inputs, edit_outputs_, api_name="edit", concurrency_limit=1,
                           concurrency_id="device")
        strength.change(rerender, [token, strength], [gallery, compare, files, status], api_name="rerender",
                        trigger_mode="always_last", show_progress="hidden", concurrency_limit=1,
                        concurrency_id="device")
        sweep_btn.click(sweep, [token, strength, frames], [sweep_img, sweep_lat, status], api_name="sweep",
                        concurrency_limit=1, concurrency_id="device")
        sample_btn.click(random_sample, [seed, truncation], [recon, latents, source, status],
                         api_name="random_sample", concurrency_limit=1, concurrency_id="device")
        examples.click(add_prompt, [prompts, examples], prompts, api_visibility="private", queue=False)
    app.studio = studio
    return app
