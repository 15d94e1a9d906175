"""The photo-to-edit chain as one object, `Editor`: photo -> align -> e4e invert -> [refine] -> map -> render.

    editor = Editor.from_pretrained("weights/ffhq", align="shape_predictor_68_face_landmarks.dat")
    r = editor.edit(photos, ["blue hair", "Bald"], strength=[0.5, 1.0])   # or w+ latents (N, L, D)
    r.images      # (N, P, S, H, W, 3) float32 in [-1, 1]; r.latents (N, P, S, L, D)
    codes = editor.invert(photos)                 # (N, L, D): aligned first when the Editor has a predictor
    enc = editor.encode_files(paths)              # the file tools: unreadable or faceless photos skipped and listed

The stages, each usable alone: `align` (the largest face of each photo, FFHQ-aligned at the encoder's input size),
`invert_rows` (e4e on preprocessed photos), `refiner` (the slot between invert and map for a refinement stage;
None: e4e's codes are used as they are), `map_rows` (w + strength * mapper delta), `render_rows` (generator images),
`sample_rows` (random w+). Every row runner runs fixed-size batches of `batch_size` rows (`batching.in_batches`),
so each network compiles once whatever the number of rows, and every one calls the device through `Editor._run`
(-> `batching.in_batches`, where the metrics and CLIP's text encoder call it too).

Devices: `devices=N` (or 'all'; default every local device on an accelerator, one on CPU: `sharding.tool_devices`)
splits every batch over a `data` mesh of this process's first N devices, the networks replicated on each (or with
frozen='fsdp' their large arrays split, the `sharding.frozen` rule of training). The default batch is DEFAULT_BATCH
rows per device; a given batch size is rounded up to a multiple of the devices. A row's result does not depend on
the device count: N devices at b rows each compute bit for bit what one device computes at batch b.
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
from ffclip_jax.sharding import FSDP_MIN_SIZE, frozen_sharding, make_mesh, put, tool_devices
from ffclip_jax.text.embeddings import prompt_embeddings
from ffclip_jax.weights import pretrained
from ffclip_jax.weights.manifest import WeightsDir, resolve

DEFAULT_BATCH = 8  # rows per device of one device call
EDIT_NETWORKS = ("mapper", "generator", "clip", "e4e")  # what `from_pretrained` loads when the directory has it
Network = Tuple[Any, Any]  # (flax module, variables), what `pretrained.load` returns
# the refinement slot: (encoder inputs (B, H, W, 3) in [-1, 1], e4e codes (B, L, D)) -> refined codes (B, L, D)
Refiner = Callable[[np.ndarray, np.ndarray], np.ndarray]


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
    align: a dlib 68-point predictor file (or a loaded one) to FFHQ-align photos first; refiner: the refinement
    stage (`Refiner`); devices: how many of this process's devices every batch is split over (an int, 'all', or
    None: `sharding.tool_devices`); batch_size: rows per device call (None: DEFAULT_BATCH per device; rounded up to
    a multiple of the devices); frozen: 'replicate' or 'fsdp', how the networks' variables lie on the devices (fsdp:
    arrays of at least fsdp_min_size elements split, `sharding.frozen_sharding`)."""

    def __init__(self, mapper: Optional[Network] = None, generator: Optional[Network] = None, *,
                 clip: Optional[Network] = None, encoder: Optional[Network] = None, clip_dir: Optional[str] = None,
                 weights: Optional[WeightsDir] = None, batch_size: Optional[int] = None,
                 cache_dir: Optional[str] = None, align=None, refiner: Optional[Refiner] = None,
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
        self.refiner = refiner
        self._embeddings: Dict[str, np.ndarray] = {}
        self._check_shapes()

    @classmethod
    def from_pretrained(cls, directory: str, *, e4e: Optional[str] = None, clip: Optional[str] = None,
                        generator: Optional[str] = None, align=None, batch_size: Optional[int] = None,
                        cache_dir: Optional[str] = None, networks: Sequence[str] = EDIT_NETWORKS,
                        devices: Union[int, str, None] = None, frozen: str = "replicate") -> "Editor":
        """The mapper, generator, CLIP and e4e a weights directory has (`ffclip convert all` output, trainer export
        or workdir, a converted ffclip or e4e directory), or only those of `networks`; e4e/clip/generator name other
        converted directories to use instead; align: a predictor file (read before any network is loaded);
        devices, frozen: see the class."""
        weights = resolve(directory).with_overrides(e4e=e4e, clip=clip, generator=generator)
        tool_devices(devices)  # a bad count fails before any network is loaded
        predictor = _predictor(align)
        nets = {name: pretrained.load(weights.path(name)) for name in networks if weights.has(name)}
        return cls(nets.get("mapper"), nets.get("generator"), clip=nets.get("clip"), encoder=nets.get("e4e"),
                   clip_dir=weights.networks.get("clip"), weights=weights, batch_size=batch_size,
                   cache_dir=cache_dir, align=predictor, devices=devices, frozen=frozen)

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

    def _prepare(self, image, name: str, resize: bool, align: bool) -> np.ndarray:
        """One photo as the encoder takes it: aligned (with a predictor, unless align=False; no face is an
        InputError), `encoder_input` -> (H, W, 3) float32 in [-1, 1]."""
        size = self.input_size
        if align and self.predictor is not None:
            aligned, _ = align_for_encoder([inputs.to_rgb(image, name)], self.predictor, size)
            if not aligned:
                raise InputError(f"{name}: no face found")
            image = aligned[0]
        return encoder_input(image, size, resize, name)

    def _encode(self, items: Iterable[Tuple[Any, Callable[[], Any], str]], *, skip: bool, resize: bool,
                keep_inputs: int, progress, total: int, align: bool = True) -> Encoded:
        """The chain up to w+ over (source, read, name) items (read() -> an image), streamed in batches: read,
        align (with a predictor, unless align=False), preprocess, e4e, refine (with a refiner). skip: an
        unreadable or faceless photo is skipped and listed (else its InputError propagates). progress: True (a
        bar of its own), False, or a tqdm bar to advance by one per photo."""
        codes, sources, skipped, kept, batch = [], [], [], [], []

        def flush():
            x = np.stack(batch)
            w = self.invert_rows(x)
            codes.append(self.refiner(x, w) if self.refiner is not None else w)
            batch.clear()

        own = not hasattr(progress, "update")
        bar = tqdm(total=total, desc="inverting", unit="img", disable=not progress) if own else progress
        for source, read, name in items:
            try:
                x = self._prepare(read(), name, resize, align)
            except InputError as e:
                if not skip:
                    raise
                skipped.append((source, str(e)))
                bar.update(1)
                continue
            sources.append(source)
            if len(kept) < keep_inputs:
                kept.append(x)
            batch.append(x)
            if len(batch) == self.batch_size:
                flush()
            bar.update(1)
        if batch:
            flush()
        if own:
            bar.close()
        w = np.concatenate(codes) if codes else np.zeros((0,) + self.latent_shape, np.float32)
        return Encoded(w, sources, skipped, np.asarray(kept, np.float32).reshape((-1,) + self.input_size + (3,)))

    def invert(self, images: Iterable, *, align: bool = True, resize: bool = True,
               progress: bool = False) -> np.ndarray:
        """Photos ((N, H, W, 3) uint8 array or a list of arrays / PIL images, any size with resize=True) -> w+
        (N, L, D): aligned first with a predictor (a photo without a face is an error; align=False: the photos are
        aligned already), e4e, the refiner if set."""
        images = list(images)
        if not images:
            raise InputError("no images to invert")
        items = ((i, lambda im=im: im, f"image {i}") for i, im in enumerate(images))
        return self._encode(items, skip=False, resize=resize, keep_inputs=0, progress=progress,
                            total=len(images), align=align).w

    def encode_files(self, files: Sequence[str], *, resize: bool = True, keep_inputs: int = 0,
                     progress=True, allow_none: bool = False, sources: Optional[Sequence] = None) -> Encoded:
        """Image files through the chain up to w+ (`inputs.read_image`: EXIF orientation applied), streamed;
        unreadable photos and, with a predictor, photos without a face are skipped and listed (none kept is an
        error unless allow_none); the first `keep_inputs` encoder inputs are kept (grids); progress: as `_encode`;
        sources: what `Encoded.sources` and `skipped` call each file (default: the files)."""
        items = ((s, functools.partial(inputs.read_image, f), f) for s, f in zip(sources or files, files))
        enc = self._encode(items, skip=True, resize=resize, keep_inputs=keep_inputs, progress=progress,
                           total=len(files))
        if not enc.sources and not allow_none:
            raise none_readable(len(files), enc.skipped, self.predictor is not None)
        return enc

    def encoder_inputs(self, files: Sequence[str], resize: bool = True) -> np.ndarray:
        """The photos of readable files as the encoder sees them (read, aligned with a predictor, preprocessed), no
        network run: (N, H, W, 3) float32 in [-1, 1] (grids of a run whose codes are computed already)."""
        return np.stack([self._prepare(inputs.read_image(f), f, resize, True) for f in files])

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

    def edit(self, images_or_latents, prompts: Union[str, Sequence[str]], strength=1.0,
             progress: bool = False) -> EditResult:
        """Edit every source with every prompt at every strength (see `EditResult`; `inputs.prompts` and
        `inputs.strengths` rules). images_or_latents: uint8 photos (through `invert`) or w+ latents."""
        prompts = inputs.prompts(prompts)
        strengths = inputs.strengths(strength)
        w = self.source_latents(images_or_latents)
        e = self.text_embeddings(prompts)
        n, p, s = len(w), len(prompts), len(strengths)
        idx_n, idx_p, idx_s = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(p), np.arange(s),
                                                              indexing="ij"))
        edited = self.map_rows(w[idx_n], e[idx_p], np.asarray(strengths, np.float32)[idx_s])
        with tqdm(total=n + len(edited), desc="rendering", unit="img", disable=not progress) as bar:
            recon = self.render_rows(w, progress=bar)
            images = self.render_rows(edited, progress=bar)
        return EditResult(images.reshape((n, p, s) + images.shape[1:]), edited.reshape((n, p, s) + w.shape[1:]),
                          w, recon, prompts, strengths)
