"""The photo-to-edit chain as one object, `Editor`: photo -> align -> e4e invert -> [refine] -> map -> render.

    editor = Editor.from_pretrained("weights/ffhq", align="shape_predictor_68_face_landmarks.dat")
    r = editor.edit(photos, ["blue hair", "Bald"], strength=[0.5, 1.0])   # or w+ latents (N, L, D)
    r.images      # (N, P, S, H, W, 3) float32 in [-1, 1]; r.latents (N, P, S, L, D)
    codes = editor.invert(photos)                 # (N, L, D): aligned first when the Editor has a predictor
    enc = editor.encode_files(paths)              # the file tools: unreadable or faceless photos skipped and listed
    enc = editor.invert(photos, refine="pti", steps=100)   # Encoded: enc.w pivots, enc.params per-image generators
    r = editor.edit(photos, "blue hair", refine="pti")     # (or editor.edit(enc, ...)): rendered on each tuned G

The stages, each usable alone: `align` (the largest face of each photo, FFHQ-aligned at the encoder's input size),
`invert_rows` (e4e on preprocessed photos), `refine_rows` (the refine stage, `ffclip_jax.refine`: W+ optimisation
of the e4e codes, or pivotal tuning of one generator per photo around them; `Refine` names the stage and its
settings), `map_rows` (w + strength * mapper delta), `render_rows` (generator images), `render_tuned_rows` (rows on
their photos' tuned generators), `sample_rows` (random w+). Every row runner runs fixed-size batches of `batch_size`
rows (`batching.in_batches`), so each network compiles once whatever the number of rows, and every one calls the
device through `Editor._run` (-> `batching.in_batches`, where the metrics and CLIP's text encoder call it too).

Devices: `devices=N` (or 'all'; default every local device on an accelerator, one on CPU: `sharding.tool_devices`)
splits every batch over a `data` mesh of this process's first N devices, the networks replicated on each (or with
frozen='fsdp' their large arrays split, the `sharding.frozen` rule of training). The default batch is DEFAULT_BATCH
rows per device; a given batch size is rounded up to a multiple of the devices. A row's result does not depend on
the device count: N devices at b rows each compute bit for bit what one device computes at batch b.
The refinement splits its batches the same way (each device refines its own photos; PTI's tuned parameters stay on
the device of their photo while it is tuned); photo i's randomness is keyed by its index in the call (with
`encode_files`, `offset` + its position), so it does not depend on the batch or device count either.
`map_latents` and `render` are the jitted networks themselves (any batch) for use inside user code. Every tool (edit,
invert, evaluate, the studio) is a client of this class; `align` the tool needs no networks (`ffclip_jax.align`).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import jax
import numpy as np
from PIL import Image
from tqdm import tqdm

from ffclip_jax import inputs
from ffclip_jax.align import align_for_encoder, load_predictor
from ffclip_jax.batching import bucket, in_batches, jit_apply, round_up
from ffclip_jax.errors import CheckpointError, InputError
from ffclip_jax.models.stylegan2 import Generator
from ffclip_jax.nn.image_ops import adaptive_avg_pool2d
from ffclip_jax.refine import (PTISettings, WPlusSettings, check_settings, refine_pti, refine_w_plus, render_tuned,
                               save_generator)
from ffclip_jax.sharding import FSDP_MIN_SIZE, frozen_sharding, make_mesh, put, tool_devices
from ffclip_jax.text.embeddings import prompt_embeddings
from ffclip_jax.weights import pretrained
from ffclip_jax.weights.manifest import WeightsDir, resolve

DEFAULT_BATCH = 8  # rows per device of one device call
EDIT_NETWORKS = ("mapper", "generator", "clip", "e4e")  # what `from_pretrained` loads when the directory has it
Network = Tuple[Any, Any]  # (flax module, variables), what `pretrained.load` returns
REFINE_STAGES = {"w+": ("lpips_vgg", WPlusSettings), "pti": ("lpips_alex", PTISettings)}  # stage: LPIPS, settings
REFINEMENT_FIELDS = ("steps", "converged", "failed", "lpips_start", "mse_start", "lpips", "mse")


@dataclasses.dataclass(frozen=True)
class Refine:
    """The refine stage of the chain (`ffclip_jax.refine`): 'w+' (W+ optimisation from the e4e code, LPIPS-VGG) or
    'pti' (pivotal tuning of the generator around the e4e code, LPIPS-alex), its settings (`WPlusSettings` /
    `PTISettings`; None: upstream's defaults) and seed (photo i's randomness: fold_in(PRNGKey(seed), i))."""
    stage: str
    settings: Any = None
    seed: int = 0

    @classmethod
    def of(cls, refine, steps: Optional[int] = None) -> Optional["Refine"]:
        """None, 'w+', 'pti' or a Refine, with `steps` (when given) replacing its settings' steps, checked: a bad
        value is a one-line InputError."""
        if refine is None:
            if steps is not None:
                raise InputError(f"refinement steps ({steps}) given without a refine stage: refine='w+' or 'pti'")
            return None
        spec = refine if isinstance(refine, Refine) else cls(refine)
        if not isinstance(spec.stage, str) or spec.stage not in REFINE_STAGES:
            raise InputError(f"refine must be one of {', '.join(REFINE_STAGES)} (or None), got {spec.stage!r}")
        kind = REFINE_STAGES[spec.stage][1]
        settings = kind() if spec.settings is None else spec.settings
        if not isinstance(settings, kind):
            raise InputError(f"refine {spec.stage!r} takes {kind.__name__}, got {type(settings).__name__}")
        if steps is not None:
            settings = dataclasses.replace(settings, steps=steps)
        check_settings(settings)
        return dataclasses.replace(spec, settings=settings)


@dataclasses.dataclass
class EditResult:
    """images (N, P, S, H, W, 3) and latents (N, P, S, L, D) of every (source, prompt, strength); the sources'
    w+ (N, L, D) and their generator images (N, H, W, 3). Images are float32 in the generator's range ~[-1, 1]."""
    images: np.ndarray
    latents: np.ndarray
    source_latents: np.ndarray
    reconstructions: np.ndarray
    prompts: List[str]
    strengths: List[float]


@dataclasses.dataclass
class Encoded:
    """Photos through the chain up to w+: codes w (K, L, D) of the K photos kept, `sources` (their files or
    indices), `skipped` [(file or index, one-line reason)], `inputs` the first photos as the encoder saw them
    ((k, H, W, 3) float32 in [-1, 1])."""
    w: np.ndarray
    sources: List[Any]
    skipped: List[Tuple[Any, str]]
    inputs: np.ndarray
    # with a refine stage: w the refined codes (PTI: the pivots, e4e's), `refinement` per photo (K,) the
    # REFINEMENT_FIELDS of `ffclip_jax.refine.Refinement`, `messages` its failures; PTI: `params` the tuned
    # generators' params, every leaf with a leading K axis (numpy), for `Editor.render_tuned_rows` (their buffers
    # are the generator's)
    stage: Optional[str] = None
    refinement: Optional[Dict[str, np.ndarray]] = None
    messages: Tuple[str, ...] = ()
    params: Any = None

    def rows(self, start: int, end: int) -> "Encoded":
        """Photos [start, end) of this result (their codes, sources, refinement, tuned params, kept inputs)."""
        cut = lambda tree: None if tree is None else jax.tree.map(lambda a: a[start:end], tree)
        return dataclasses.replace(self, w=self.w[start:end], sources=self.sources[start:end],
                                   inputs=self.inputs[start:end], refinement=cut(self.refinement),
                                   params=cut(self.params))


def to_unit_range(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> float32 in [-1, 1]: ToTensor (x / 255) then Normalize(0.5, 0.5)."""
    x = images_uint8.astype(np.float32) / np.float32(255)
    return (x - np.float32(0.5)) / np.float32(0.5)


def encoder_input(image, size: Tuple[int, int], resize: bool = True, name: str = "image") -> np.ndarray:
    """e4e's preprocessing (`scripts/inference.py`) of one image (`inputs.to_rgb`: a PIL image or a uint8 array):
    RGB, PIL bilinear resize to `size` (H, W), ToTensor, Normalize(0.5, 0.5) -> (H, W, 3) float32 in [-1, 1].
    resize=False requires the image to be `size` already."""
    exact = {} if resize else dict(expected=tuple(size), expected_by="the encoder (resizing is off)")
    rgb = inputs.to_rgb(image, name, **exact)
    if rgb.shape[:2] != tuple(size):
        rgb = np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR))
    return to_unit_range(rgb)


def encoder_view(images: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Generator images (N, S, S, 3) as e4e compares them with its input: cropped to the encoder's aspect (cars:
    rows 64:448 of 512) and average-pooled to `size` (H, W) (pSp's face_pool) -> (N, H, W, 3)."""
    h, w = size
    s = images.shape[1]
    crop = s * h // w
    top = (s - crop) // 2
    return np.asarray(adaptive_avg_pool2d(images[:, top:top + crop], (h, w)))


def none_readable(count: int, skipped: Sequence[Tuple[Any, str]], face: bool) -> InputError:
    """The error of a run that kept none of its `count` photos, with the first reasons."""
    what = "an image with a face" if face else "an image"
    reasons = "; ".join(reason for _, reason in skipped[:3]) + (" ..." if len(skipped) > 3 else "")
    return InputError(f"none of the {count} files could be read as {what} ({reasons})")


def _predictor(align):
    """A dlib shape predictor from a file path, or `align` as it is (a loaded predictor or None)."""
    return load_predictor(os.fspath(align)) if isinstance(align, (str, os.PathLike)) else align


class Editor:
    """The networks of one weights directory, loaded once, and the chain around them (see the module docstring).

    mapper, generator, clip, encoder: (module, variables) pairs, each optional (a method that needs a missing one
    says so in one line); clip_dir: the converted CLIP directory (key of the on-disk text-embedding cache);
    align: a dlib 68-point predictor file (or a loaded one) to FFHQ-align photos first; lpips: {"lpips_alex" /
    "lpips_vgg": network} for the refine stage (default: loaded from `weights` when first needed); devices: how many
    of this process's devices every batch is split over (an int, 'all', or None: `sharding.tool_devices`);
    batch_size: rows per device call (None: DEFAULT_BATCH per device; rounded up to a multiple of the devices);
    frozen: 'replicate' or 'fsdp', how the networks' variables lie on the devices (fsdp: arrays of at least
    fsdp_min_size elements split, `sharding.frozen_sharding`)."""

    def __init__(self, mapper: Optional[Network] = None, generator: Optional[Network] = None, *,
                 clip: Optional[Network] = None, encoder: Optional[Network] = None, clip_dir: Optional[str] = None,
                 weights: Optional[WeightsDir] = None, batch_size: Optional[int] = None,
                 cache_dir: Optional[str] = None, align=None, lpips: Optional[Dict[str, Network]] = None,
                 devices: Union[int, str, None] = None, frozen: str = "replicate",
                 fsdp_min_size: int = FSDP_MIN_SIZE):
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        self.mesh = make_mesh(tool_devices(devices))
        self.frozen, self.fsdp_min_size = frozen, fsdp_min_size
        frozen_sharding(self.mesh, {}, frozen)  # a bad rule fails here, before any network is placed
        self.mapper, self.generator, self.clip, self.encoder = (self._placed(net)
                                                                for net in (mapper, generator, clip, encoder))
        self.clip_dir, self.weights, self.cache_dir = clip_dir, weights, cache_dir
        n = self.mesh.size
        self.batch_size = DEFAULT_BATCH * n if batch_size is None else round_up(batch_size, n)
        self.predictor = _predictor(align)
        self._lpips = {name: self._placed(net) for name, net in (lpips or {}).items()}
        self._embeddings: Dict[str, np.ndarray] = {}
        self._check_shapes()

    @classmethod
    def from_pretrained(cls, directory: str, *, e4e: Optional[str] = None, clip: Optional[str] = None,
                        generator: Optional[str] = None, align=None, batch_size: Optional[int] = None,
                        cache_dir: Optional[str] = None, networks: Sequence[str] = EDIT_NETWORKS,
                        devices: Union[int, str, None] = None, frozen: str = "replicate",
                        lpips: Optional[str] = None) -> "Editor":
        """The mapper, generator, CLIP and e4e a weights directory has (`ffclip convert all` output, trainer export
        or workdir, a converted ffclip or e4e directory), or only those of `networks`; e4e/clip/generator/lpips
        name other converted directories to use instead (lpips: an LPIPS directory of either backbone); the refine
        stage's LPIPS is loaded when first used; align: a predictor file (read before any network is loaded);
        devices, frozen: see the class."""
        weights = resolve(directory).with_overrides(e4e=e4e, clip=clip, generator=generator)
        if lpips:
            model = pretrained.read_meta(lpips)["model"]
            if model not in ("lpips_alex", "lpips_vgg"):
                raise CheckpointError(f"--lpips {lpips}: holds a {model!r} model, expected an LPIPS network")
            weights = weights.with_overrides(**{model: lpips})
        tool_devices(devices)  # a bad count fails before any network is loaded
        predictor = _predictor(align)
        nets = {name: pretrained.load(weights.path(name)) for name in networks if weights.has(name)}
        return cls(nets.get("mapper"), nets.get("generator"), clip=nets.get("clip"), encoder=nets.get("e4e"),
                   clip_dir=weights.networks.get("clip"), weights=weights, batch_size=batch_size,
                   cache_dir=cache_dir, align=predictor, devices=devices, frozen=frozen)

    def lpips(self, network: str) -> Network:
        """The refine stage's LPIPS network ('lpips_alex' or 'lpips_vgg'), loaded from the weights directory once."""
        if network not in self._lpips:
            if self.weights is None or not self.weights.has(network):
                where = f"weights directory {self.weights.root}" if self.weights else "this Editor"
                raise CheckpointError(f"{where} has no {network}: needed for refinement (convert it with `ffclip "
                                      f"convert lpips`, or pass its directory: --lpips DIR)")
            self._lpips[network] = self._placed(pretrained.load(self.weights.path(network)))
        return self._lpips[network]

    def _need(self, network: str, needed_for: str) -> Network:
        net = {"mapper": self.mapper, "generator": self.generator, "CLIP model": self.clip,
               "e4e encoder": self.encoder}[network]
        if net is None:
            where = f"weights directory {self.weights.root}" if self.weights else "this Editor"
            raise CheckpointError(f"{where} has no {network}: needed for {needed_for}")
        return net

    def _check_shapes(self) -> None:
        shapes = [(f"the {name} {verb}", (net[0].n_latent, net[0].style_dim)) for name, verb, net in (
            ("mapper", "edits", self.mapper), ("generator", "renders", self.generator),
            ("e4e encoder", "predicts", self.encoder)) if net is not None]
        if len({shape for _, shape in shapes}) > 1:
            raise CheckpointError("the networks disagree on w+: " + ", ".join(f"{who} {shape}" for who, shape in shapes)
                                  + "; use the networks the mapper was trained with")
        if self.clip is not None and shapes and self.clip[0].config.projection_dim != shapes[0][1][1]:
            raise CheckpointError(f"CLIP embeds text in {self.clip[0].config.projection_dim} dims but {shapes[0][0]} "
                                  f"w+ of {shapes[0][1][1]}")

    @property
    def latent_shape(self) -> Tuple[int, int]:
        """(n_latent, style_dim) of the w+ codes the networks take."""
        for net in (self.mapper, self.generator, self.encoder):
            if net is not None:
                return net[0].n_latent, net[0].style_dim
        raise CheckpointError("this Editor has no mapper, generator or encoder: no w+ shape")

    @property
    def input_size(self) -> Tuple[int, int]:
        """(H, W) of the encoder's input photos."""
        return tuple(self._need("e4e encoder", "photos")[0].input_size)

    # ---- devices, and the one place the row runners call them ---------------------------------------------------

    @property
    def devices(self) -> List[Any]:
        """The devices every batch is split over."""
        return list(self.mesh.devices.flat)

    def place(self, variables):
        """Variables (a pytree) on the Editor's devices by its `frozen` rule (arrays placed so already are kept);
        unchanged on one device."""
        if self.mesh.size == 1:
            return variables
        return jax.tree.map(lambda a, s: a if isinstance(a, jax.Array) and a.sharding == s else put(a, s),
                            variables, frozen_sharding(self.mesh, variables, self.frozen, self.fsdp_min_size))

    def _placed(self, network: Optional[Network]) -> Optional[Network]:
        return None if network is None else (network[0], self.place(network[1]))

    def run(self, fn: Callable, arrays: Sequence, batch: Optional[int] = None, progress=None):
        """fn(*rows) over rows in fixed-size batches split over the Editor's devices (`batching.in_batches`);
        whatever fn closes over should be `place`d."""
        return in_batches(fn, arrays, batch or self.batch_size, progress, mesh=self.mesh)

    def _run(self, network: Network, arrays: Sequence, batch: Optional[int] = None, progress=None, **static):
        """network.apply(variables, *rows, **static) jitted, over rows in fixed-size batches (`run`)."""
        module, variables = network
        return self.run(functools.partial(jit_apply(module, **static), variables), arrays, batch, progress)

    # ---- jittable pieces ------------------------------------------------------------------------------------

    def map_latents(self, w, embeddings, strength=1.0):
        """w_hat = w + strength * mapper delta: w (B, L, D), embeddings (B, D) or (1, D), strength scalar or (B,)."""
        mapper, variables = self._need("mapper", "editing")
        return jit_apply(mapper)(variables, w, embeddings, strength)

    def render(self, w):
        """Generator images (B, H, W, 3) of w+ (B, L, D)."""
        generator, variables = self._need("generator", "rendering")
        return jit_apply(generator, input_is_latent=True)(variables, w)

    # ---- the chain, stage by stage (numpy in, numpy out) -----------------------------------------------------

    def align(self, images: Sequence) -> Tuple[List[np.ndarray], List[int]]:
        """The largest face of each photo ((H, W[, C]) uint8 arrays or PIL images) FFHQ-aligned at the encoder's
        input size -> (aligned (S, S, 3) uint8 list, indices of the photos without a face)."""
        if self.predictor is None:
            raise CheckpointError("this Editor has no face predictor: pass align=PREDICTOR (dlib's "
                                  "shape_predictor_68_face_landmarks.dat)")
        return align_for_encoder([inputs.to_rgb(im, f"image {i}") for i, im in enumerate(images)], self.predictor,
                                 self.input_size)

    def invert_rows(self, x: np.ndarray, progress=None) -> np.ndarray:
        """e4e codes (B, L, D) float32 of preprocessed photos x (B, H, W, 3) in [-1, 1] (`encoder_input`)."""
        return self._run(self._need("e4e encoder", "inverting photos"), [x], progress=progress).astype(np.float32)

    def map_rows(self, w, e, s) -> np.ndarray:
        """Edited w+ (R, L, D) of rows: w (R, L, D), text embeddings e (R, D), strengths s (R,) or one number."""
        w = np.asarray(w, np.float32)
        s = np.broadcast_to(np.asarray(s, np.float32), (len(w),))
        return self._run(self._need("mapper", "editing"), [w, np.asarray(e, np.float32), s])

    def render_rows(self, w, small: bool = False, progress=None) -> np.ndarray:
        """Generator images (R, H, W, 3) of w+ rows (R, L, D); small=True (the studio's slider) runs few rows in the
        smallest power-of-two batch that holds them (1, 2, 4, ... batch_size: a few compilations, no padding)."""
        w = np.asarray(w, np.float32)
        batch = bucket(len(w), self.batch_size) if small else self.batch_size
        return self._run(self._need("generator", "rendering"), [w], batch, progress, input_is_latent=True)

    def refine_size(self) -> int:
        """The size (S, S) of the photos the refine stage fits: the generator's (a square encoder input only)."""
        generator = self._need("generator", "refinement (it fits the generator's images to the photos)")[0]
        h, w = self.input_size
        if h != w:
            raise CheckpointError(f"refinement needs square photos: this encoder takes {h}x{w} ones, which the "
                                  f"{generator.size} px generator renders padded (cars)")
        return generator.size

    def refine_rows(self, targets, w, indices, refine: Refine, progress=False) -> Dict[str, Any]:
        """The refine stage on rows: photos `targets` (R, S, S, 3) in [-1, 1] at `refine_size`, their e4e codes w
        (R, L, D), `indices` (R,) ints (the photos' random keys and message names) -> {"w": refined codes (PTI: the
        pivots), the REFINEMENT_FIELDS (R,), "messages": tuple, PTI: "params" (tuned, leading R axis, numpy)}; in
        fixed-size batches split over the devices (`run`), a short batch padded. progress: a bar per batch."""
        spec = Refine.of(refine)
        generator = self._need("generator", "refinement")
        lpips = self.lpips(REFINE_STAGES[spec.stage][0])
        messages = []

        def one_batch(targets, w, indices):
            fn = refine_w_plus if spec.stage == "w+" else refine_pti
            r = fn(generator, lpips, w, targets, spec.settings, seed=spec.seed, progress=progress, mesh=self.mesh,
                   indices=indices)
            messages.extend(r.messages)
            out = {f: getattr(r, f) for f in REFINEMENT_FIELDS}
            return dict(out, w=r.codes, ) if spec.stage == "w+" else dict(out, w=r.pivots, params=r.params)

        out = self.run(one_batch, [np.asarray(targets, np.float32), np.asarray(w, np.float32),
                                   np.asarray(indices, np.int64)])
        return dict(out, messages=tuple(dict.fromkeys(messages)))  # a padded row repeats its photo's message

    def render_tuned_rows(self, params, w, progress=None) -> np.ndarray:
        """Rows on their photos' tuned generators: params (PTI's, every leaf with a leading N axis), w (N, K, L, D)
        -> images (N, K, H, W, 3): row [i, k] rendered by photo i's generator (`refine.render_tuned`), in batches
        of photos split over the devices, each photo's generator on the device that renders its rows."""
        generator, variables = self._need("generator", "rendering")
        buffers = variables.get("buffers", {})
        fn = lambda params, w: render_tuned(generator, params, buffers, w, mesh=self.mesh)
        return self.run(fn, [params, np.asarray(w, np.float32)], progress=progress)

    def tuned_variables(self, params, row: int):
        """Photo `row`'s tuned generator variables ({"params", "buffers"}, for the generator's `apply`) from PTI's
        stacked params (`Encoded.params`)."""
        buffers = self._need("generator", "tuned generators")[1].get("buffers", {})
        return {"params": jax.tree.map(lambda a: np.asarray(a[row]), params), "buffers": buffers}

    def save_tuned(self, directory: str, enc: "Encoded", row: int, extra: Optional[Dict[str, Any]] = None) -> None:
        """Photo `row`'s tuned generator (`enc` from the PTI stage) as a converted generator directory (replaced if
        there): `pretrained.load(directory)` renders its pivot `enc.w[row]` as the tuned generator does."""
        if enc.params is None:
            raise InputError("no tuned generators to save: refine with 'pti'")
        facts = {f: enc.refinement[f][row].item() for f in REFINEMENT_FIELDS}
        save_generator(directory, self.generator[0], self.tuned_variables(enc.params, row),
                       extra=dict(facts, **(extra or {})), overwrite=True)

    def _w_plus_rows(self, z: np.ndarray, truncations: np.ndarray) -> np.ndarray:
        return self._run(self._need("generator", "random samples"), [z, truncations], method=Generator.w_plus)

    def sample_rows(self, seeds: Sequence[int], truncations) -> np.ndarray:
        """w+ (R, L, D) of one z ~ N(0, I) per seed (PRNGKey(seed)), each truncated by its own truncation (a number
        or one per row): row i equals `sample(1, seeds[i], truncations[i])`."""
        style_dim = self._need("generator", "random samples")[0].style_dim
        z = np.concatenate([np.asarray(jax.random.normal(jax.random.PRNGKey(int(s)), (1, style_dim)))
                            for s in seeds])
        return self._w_plus_rows(z, np.broadcast_to(np.asarray(truncations, np.float32), (len(z),)))

    def sample(self, n: int, seed: int = 0, truncation: float = 1.0) -> np.ndarray:
        """n random w+ (n, L, D): z ~ N(0, I) (PRNGKey(seed)) -> mapping -> truncation towards latent_avg."""
        if n < 1:
            raise InputError(f"number of samples must be >= 1, got {n}")
        style_dim = self._need("generator", "random samples")[0].style_dim
        z = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (n, style_dim)))
        return self._w_plus_rows(z, np.full((n,), truncation, np.float32))

    def text_embeddings(self, prompts: Union[str, Sequence[str]]) -> np.ndarray:
        """(P, D) CLIP `encode_text` of `inputs.prompts(prompts)`, computed once per prompt (kept in memory and in
        the on-disk cache of `ffclip_jax.text.embeddings.prompt_embeddings`)."""
        prompts = inputs.prompts(prompts)
        for p in prompts:
            if p not in self._embeddings:
                clip = self._need("CLIP model", "text prompts")
                self._embeddings[p] = prompt_embeddings(self.clip_dir, [p], self.cache_dir, clip=clip)[0]
        return np.stack([self._embeddings[p] for p in prompts])

    # ---- photos to w+ ------------------------------------------------------------------------------------------

    def _prepare(self, image, name: str, resize: bool, align: bool,
                 target_size: Optional[int] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """One photo as the encoder takes it: aligned (with a predictor, unless align=False; no face is an
        InputError), `encoder_input` -> (H, W, 3) float32 in [-1, 1]; with target_size S, also the same photo
        (aligned) at (S, S) for the refine stage (`encoder_input`'s resize: PIL bilinear), else None."""
        size = self.input_size
        if align and self.predictor is not None:
            aligned, _ = align_for_encoder([inputs.to_rgb(image, name)], self.predictor, size)
            if not aligned:
                raise InputError(f"{name}: no face found")
            image = aligned[0]
        x = encoder_input(image, size, resize, name)
        return x, None if target_size is None else encoder_input(image, (target_size, target_size), True, name)

    def _encode(self, items: Iterable[Tuple[Any, Callable[[], Any], str]], *, skip: bool, resize: bool,
                keep_inputs: int, progress, total: int, align: bool = True, refine: Optional[Refine] = None,
                offset: int = 0) -> Encoded:
        """The chain up to w+ over (source, read, name) items (read() -> an image), streamed in batches: read,
        align (with a predictor, unless align=False), preprocess, e4e, the refine stage (`refine`; the k-th item's
        index `offset` + k). skip: an unreadable or faceless photo is skipped and listed (else its InputError
        propagates). progress: True (a bar of its own), False, or a tqdm bar to advance by one per photo."""
        codes, sources, skipped, kept, batch, targets, indices, refined = [], [], [], [], [], [], [], []
        target_size = self.refine_size() if refine is not None else None

        def flush():
            x = np.stack(batch)
            w = self.invert_rows(x)
            if refine is None:
                codes.append(w)
            else:
                refined.append(self.refine_rows(np.stack(targets), w, indices, refine, progress=bool(progress)))
                codes.append(refined[-1]["w"])
            batch.clear(), targets.clear(), indices.clear()

        own = not hasattr(progress, "update")
        bar = tqdm(total=total, desc="inverting", unit="img", disable=not progress) if own else progress
        for k, (source, read, name) in enumerate(items):
            try:
                x, target = self._prepare(read(), name, resize, align, target_size)
            except InputError as e:
                if not skip:
                    raise
                skipped.append((source, str(e)))
                bar.update(1)
                continue
            sources.append(source)
            if len(kept) < keep_inputs:
                kept.append(x)
            batch.append(x), targets.append(target), indices.append(offset + k)
            if len(batch) == self.batch_size:
                flush()
            bar.update(1)
        if batch:
            flush()
        if own:
            bar.close()
        w = np.concatenate(codes) if codes else np.zeros((0,) + self.latent_shape, np.float32)
        enc = Encoded(w, sources, skipped, np.asarray(kept, np.float32).reshape((-1,) + self.input_size + (3,)))
        if refine is None:
            return enc
        joined = lambda key: jax.tree.map(lambda *a: np.concatenate(a), *[r[key] for r in refined]) if refined \
            else None
        empty = {f: np.zeros((0,), bool if f in ("converged", "failed") else np.float32) for f in REFINEMENT_FIELDS}
        return dataclasses.replace(enc, stage=refine.stage,
                                   refinement={f: joined(f) if refined else empty[f] for f in REFINEMENT_FIELDS},
                                   messages=tuple(m for r in refined for m in r["messages"]),
                                   params=joined("params") if refine.stage == "pti" else None)

    def invert(self, images: Iterable, *, align: bool = True, resize: bool = True, progress: bool = False,
               refine=None, steps: Optional[int] = None):
        """Photos ((N, H, W, 3) uint8 array or a list of arrays / PIL images, any size with resize=True) -> w+
        (N, L, D): aligned first with a predictor (a photo without a face is an error; align=False: the photos are
        aligned already), e4e. refine: None (e4e's codes), 'w+', 'pti' or a `Refine` (steps: its settings'
        steps): the refine stage too, and then an `Encoded` is returned (w the refined codes, for PTI the pivots,
        and `params` photo i's tuned generator at row i; `refinement` the per-photo numbers)."""
        spec = Refine.of(refine, steps)
        images = list(images)
        if not images:
            raise InputError("no images to invert")
        items = ((i, lambda im=im: im, f"image {i}") for i, im in enumerate(images))
        enc = self._encode(items, skip=False, resize=resize, keep_inputs=0, progress=progress,
                           total=len(images), align=align, refine=spec)
        return enc.w if spec is None else enc

    def encode_files(self, files: Sequence[str], *, resize: bool = True, keep_inputs: int = 0,
                     progress=True, allow_none: bool = False, sources: Optional[Sequence] = None,
                     refine=None, steps: Optional[int] = None, offset: int = 0) -> Encoded:
        """Image files through the chain up to w+ (`inputs.read_image`: EXIF orientation applied), streamed;
        unreadable photos and, with a predictor, photos without a face are skipped and listed (none kept is an
        error unless allow_none); the first `keep_inputs` encoder inputs are kept (grids); progress: as `_encode`;
        sources: what `Encoded.sources` and `skipped` call each file (default: the files); refine, steps: the
        refine stage, as `invert` (file k's random key: offset + k)."""
        items = ((s, functools.partial(inputs.read_image, f), f) for s, f in zip(sources or files, files))
        enc = self._encode(items, skip=True, resize=resize, keep_inputs=keep_inputs, progress=progress,
                           total=len(files), refine=Refine.of(refine, steps), offset=offset)
        if not enc.sources and not allow_none:
            raise none_readable(len(files), enc.skipped, self.predictor is not None)
        return enc

    def encoder_inputs(self, files: Sequence[str], resize: bool = True) -> np.ndarray:
        """The photos of readable files as the encoder sees them (read, aligned with a predictor, preprocessed), no
        network run: (N, H, W, 3) float32 in [-1, 1] (grids of a run whose codes are computed already)."""
        return np.stack([self._prepare(inputs.read_image(f), f, resize, True)[0] for f in files])

    # ---- edits ---------------------------------------------------------------------------------------------

    def source_latents(self, images_or_latents) -> np.ndarray:
        """Float arrays are w+ latents ((N, L, D) or one (L, D), `inputs.check_latents`); anything else is photos
        to `invert`."""
        x = images_or_latents
        if isinstance(x, (np.ndarray, jax.Array)) and np.issubdtype(x.dtype, np.floating):
            if x.ndim == 4:
                raise InputError(f"images must be uint8, got {x.dtype} {tuple(x.shape)}")
            expected = inputs.LatentShape(*self.latent_shape, "the networks of this Editor")
            return inputs.check_latents(np.asarray(x), expected, "latents").astype(np.float32)
        return self.invert(x)

    def edit(self, images_or_latents, prompts: Union[str, Sequence[str]], strength=1.0, progress: bool = False,
             refine=None, steps: Optional[int] = None) -> EditResult:
        """Edit every source with every prompt at every strength (see `EditResult`; `inputs.prompts` and
        `inputs.strengths` rules). images_or_latents: uint8 photos (through `invert`), w+ latents, or an `Encoded`
        (`invert(..., refine=...)`'s, `encode_files`'). refine, steps: photos through the refine stage first (as
        `invert`). With PTI's tuned generators each photo's reconstruction and edits are rendered on its own
        generator (the mapper edits the pivot)."""
        prompts = inputs.prompts(prompts)
        strengths = inputs.strengths(strength)
        spec = Refine.of(refine, steps)
        source = images_or_latents
        if spec is not None:
            if isinstance(source, Encoded) or (isinstance(source, (np.ndarray, jax.Array))
                                               and np.issubdtype(source.dtype, np.floating)):
                raise InputError("refine needs photos: latents (or an Encoded result) have no photo to fit")
            source = self.invert(source, refine=spec)
        w = source.w if isinstance(source, Encoded) else self.source_latents(source)
        params = source.params if isinstance(source, Encoded) else None
        e = self.text_embeddings(prompts)
        n, p, s = len(w), len(prompts), len(strengths)
        idx_n, idx_p, idx_s = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(p), np.arange(s),
                                                              indexing="ij"))
        edited = self.map_rows(w[idx_n], e[idx_p], np.asarray(strengths, np.float32)[idx_s])
        if params is None:
            with tqdm(total=n + len(edited), desc="rendering", unit="img", disable=not progress) as bar:
                recon = self.render_rows(w, progress=bar)
                images = self.render_rows(edited, progress=bar)
        else:  # row 0 of each photo its reconstruction, then its edits, on its tuned generator
            rows = np.concatenate([w[:, None], edited.reshape((n, p * s) + w.shape[1:])], axis=1)
            with tqdm(total=n, desc="rendering", unit="photo", disable=not progress) as bar:
                out = self.render_tuned_rows(params, rows, progress=bar)
            recon, images = out[:, 0], out[:, 1:].reshape((n * p * s,) + out.shape[2:])
        return EditResult(images.reshape((n, p, s) + images.shape[1:]), edited.reshape((n, p, s) + w.shape[1:]),
                          w, recon, prompts, strengths)
