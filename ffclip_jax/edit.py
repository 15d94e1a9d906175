"""Free-form text edits of photos and latents with one trained FFCLIP mapper: e4e inversion, the mapper for every
(image, prompt, strength), the StyleGAN2 generator.

    python -m ffclip_jax.edit --weights weights/ffhq --text "blue hair" --text "Man aged 10" --strength 0.5,1,1.5 \
        --images photos/ --output out/ [--save-latents] [--batch-size 8]
    python -m ffclip_jax.edit --weights weights/ffhq --text Bald --latents latents.npy --output out/
    python -m ffclip_jax.edit --weights weights/ffhq --text Bald --random 8 --seed 0 --truncation 0.7 --output out/

Writes out/<source>__<prompt>__<strength>.png per edit, out/<source>__reconstruction.png, out/grid.png (source,
reconstruction, then the edits; first --grid-rows sources) and with --save-latents out/latents.npy (N, P, S, L, D)
edited w+ with out/latents.json (sources, prompts, strengths). Photos must be FFHQ-aligned face crops (see README).

    from ffclip_jax.edit import Editor
    editor = Editor.from_pretrained("weights/ffhq")
    result = editor.edit(uint8_images_or_latents, ["blue hair", "Bald"], strength=[0.5, 1.0])
    result.images     # (N, P, S, H, W, 3) float32 in [-1, 1]; result.latents (N, P, S, L, D)
    codes = editor.invert(uint8_images)  # (N, L, D)
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from ffclip_jax.align import add_align_argument
from ffclip_jax.batching import in_batches, jit_apply
from ffclip_jax.errors import CheckpointError, InputError, run_cli
from ffclip_jax.fileio import atomic_write, write_json_atomic
from ffclip_jax.models.stylegan2 import Generator
from ffclip_jax.text.embeddings import add_cache_dir_argument, prompt_embeddings
from ffclip_jax.weights import pretrained
from ffclip_jax.weights.manifest import WeightsDir, resolve

DEFAULT_BATCH = 8
GRID_CELL = 256  # grid cells are downscaled to at most this many pixels a side


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


class Editor:
    """The networks of one weights directory, loaded once, with jit-compiled edit / invert / render / sample.

    Every call runs fixed-size batches of `batch_size` rows, so each network compiles once whatever the number of
    images, prompts and strengths. `map_latents` and `render` are plain jitted functions of arrays (any batch) for
    use inside user code."""

    def __init__(self, mapper, generator, *, clip=None, encoder=None, clip_dir: Optional[str] = None,
                 weights: Optional[WeightsDir] = None, batch_size: int = DEFAULT_BATCH,
                 cache_dir: Optional[str] = None):
        """mapper, generator, clip, encoder: (module, variables) pairs; clip_dir: the converted CLIP directory (key
        of the on-disk text-embedding cache, `ffclip_jax.text.embeddings.prompt_embeddings`)."""
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        self.mapper, self.mapper_variables = mapper
        self.generator, self.generator_variables = generator
        self.clip, self.encoder = clip, encoder
        self.clip_dir, self.weights, self.cache_dir = clip_dir, weights, cache_dir
        self.batch_size = batch_size
        self._embeddings: Dict[str, np.ndarray] = {}
        self._check_shapes()

    @classmethod
    def from_pretrained(cls, directory: str, *, e4e: Optional[str] = None, clip: Optional[str] = None,
                        generator: Optional[str] = None, batch_size: int = DEFAULT_BATCH,
                        cache_dir: Optional[str] = None) -> "Editor":
        """Load the mapper, generator and (when present) CLIP and e4e of a weights directory (`convert_weights all`
        output, trainer export or workdir, or a `convert_weights ffclip` directory); e4e/clip/generator name other
        converted directories to use instead."""
        weights = resolve(directory).with_overrides(e4e=e4e, clip=clip, generator=generator)
        nets = {"mapper": pretrained.load(weights.path("mapper")),
                "generator": pretrained.load(weights.path("generator", "rendering edits"))}
        for name in ("clip", "e4e"):
            if weights.has(name):
                nets[name] = pretrained.load(weights.path(name))
        return cls(nets["mapper"], nets["generator"], clip=nets.get("clip"), encoder=nets.get("e4e"),
                   clip_dir=weights.networks.get("clip"), weights=weights, batch_size=batch_size, cache_dir=cache_dir)

    def _missing(self, network: str, needed_for: str):
        where = f"weights directory {self.weights.root}" if self.weights else "this Editor"
        return CheckpointError(f"{where} has no {network}: needed for {needed_for}")

    def _check_shapes(self) -> None:
        want = (self.mapper.n_latent, self.mapper.style_dim)
        got = (self.generator.n_latent, self.generator.style_dim)
        if got != want:
            raise CheckpointError(f"the generator ({self.generator.size}px) takes w+ of shape {got} but the mapper "
                                  f"edits {want}; use the generator the mapper was trained with")
        if self.encoder is not None:
            enc = self.encoder[0]
            if (enc.n_latent, enc.style_dim) != want:
                raise CheckpointError(f"the e4e encoder predicts w+ of shape {(enc.n_latent, enc.style_dim)} but the "
                                      f"mapper edits {want}")
        if self.clip is not None and self.clip[0].config.projection_dim != want[1]:
            raise CheckpointError(f"CLIP embeds text in {self.clip[0].config.projection_dim} dims but the mapper "
                                  f"expects {want[1]}")

    # ---- jittable pieces ------------------------------------------------------------------------------------

    @property
    def latent_shape(self) -> Tuple[int, int]:
        return self.mapper.n_latent, self.mapper.style_dim

    def map_latents(self, w, embeddings, strength=1.0):
        """w_hat = w + strength * mapper delta: w (B, L, D), embeddings (B, D) or (1, D), strength scalar or (B,)."""
        return jit_apply(self.mapper)(self.mapper_variables, w, embeddings, strength)

    def render(self, w):
        """Generator images (B, H, W, 3) of w+ (B, L, D)."""
        return jit_apply(self.generator, input_is_latent=True)(self.generator_variables, w)

    # ---- numpy in / numpy out ------------------------------------------------------------------------------

    def invert(self, images, progress: bool = False) -> np.ndarray:
        """uint8 images ((N, H, W, 3) array or a list of arrays / PIL images, any size) -> w+ (N, L, D) by e4e."""
        from ffclip_jax.invert import invert_arrays

        if self.encoder is None:
            raise self._missing("e4e encoder", "inverting images")
        return invert_arrays(*self.encoder, images, batch_size=self.batch_size, progress=progress)

    def sample(self, n: int, seed: int = 0, truncation: float = 1.0) -> np.ndarray:
        """n random w+ (n, L, D): z ~ N(0, I) (PRNGKey(seed)) -> mapping -> truncation towards latent_avg."""
        if n < 1:
            raise InputError(f"number of samples must be >= 1, got {n}")
        z = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (n, self.generator.style_dim)))
        sample = jit_apply(self.generator, Generator.w_plus)
        return in_batches(lambda zs: sample(self.generator_variables, zs, jnp.float32(truncation)), [z],
                          self.batch_size)

    def text_embeddings(self, prompts: Sequence[str]) -> np.ndarray:
        """(P, D) CLIP `encode_text` of each prompt, computed once per prompt (kept in memory and in the on-disk
        cache of `ffclip_jax.text.embeddings.prompt_embeddings`)."""
        prompts = check_prompts(prompts)
        for p in prompts:
            if p not in self._embeddings:
                if self.clip is None:
                    raise self._missing("CLIP model", "text prompts")
                self._embeddings[p] = prompt_embeddings(self.clip_dir, [p], self.cache_dir, clip=self.clip)[0]
        return np.stack([self._embeddings[p] for p in prompts])

    def source_latents(self, images_or_latents) -> np.ndarray:
        """Float (N, L, D) arrays are latents; anything else is images to invert."""
        x = images_or_latents
        if isinstance(x, (np.ndarray, jax.Array)) and np.issubdtype(x.dtype, np.floating):
            if x.ndim != 3 or tuple(x.shape[1:]) != self.latent_shape:
                raise InputError(f"latents: expected w+ of shape (N, {self.latent_shape[0]}, "
                                 f"{self.latent_shape[1]}), got {tuple(x.shape)} (images must be uint8)")
            return np.asarray(x, np.float32)
        return self.invert(x)

    def edit(self, images_or_latents, prompts: Union[str, Sequence[str]], strength=1.0,
             progress: bool = False) -> EditResult:
        """Edit every source with every prompt at every strength (see `EditResult`). images_or_latents: uint8
        images (inverted by e4e) or w+ latents (N, L, D) float; strength: a number or a list of numbers."""
        from tqdm import tqdm

        prompts = check_prompts(prompts)
        strengths = check_strengths(strength)
        w = self.source_latents(images_or_latents)
        e = self.text_embeddings(prompts)
        n, p, s = len(w), len(prompts), len(strengths)
        idx_n, idx_p, idx_s = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(p), np.arange(s),
                                                              indexing="ij"))
        map_fn = functools.partial(jit_apply(self.mapper), self.mapper_variables)
        render_fn = functools.partial(jit_apply(self.generator, input_is_latent=True), self.generator_variables)
        edited = in_batches(map_fn, [w[idx_n], e[idx_p], np.asarray(strengths, np.float32)[idx_s]], self.batch_size)
        with tqdm(total=n + len(edited), desc="rendering", unit="img", disable=not progress) as bar:
            recon = in_batches(render_fn, [w], self.batch_size, bar)
            images = in_batches(render_fn, [edited], self.batch_size, bar)
        return EditResult(images.reshape((n, p, s) + images.shape[1:]), edited.reshape((n, p, s) + w.shape[1:]),
                          w, recon, prompts, strengths)


def check_prompts(prompts) -> List[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or any(not isinstance(t, str) or not t.strip() for t in prompts):
        raise InputError("no prompt given: expected at least one non-empty text prompt (--text \"blue hair\")")
    return prompts


def check_strengths(strength) -> List[float]:
    values = np.atleast_1d(np.asarray(strength, dtype=np.float64))
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise InputError(f"strength: expected finite numbers, got {strength!r}")
    return [float(v) for v in values]


# ---------------------------------------------------------------------------------------------------------------
# CLI


def safe_name(text: str, limit: int = 60) -> str:
    """A file-name fragment of `text`: runs of characters other than letters, digits, '.', '-' become '_'."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_.")[:limit] or "x"


def unique_names(texts: Sequence[str]) -> List[str]:
    """safe_name of each text, with _2, _3, ... appended to repeats."""
    seen: Dict[str, int] = {}
    out = []
    for t in texts:
        name = safe_name(t)
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def parse_strengths(text: str) -> List[float]:
    try:
        return check_strengths([float(v) for v in text.split(",")])
    except ValueError:
        raise InputError(f"--strength {text!r}: expected comma-separated numbers, e.g. 0.5,1,1.5") from None


def load_latents(path: str, shape: Tuple[int, int]) -> np.ndarray:
    """(N, L, D) float latents from a .npy file (a single (L, D) code is accepted as N = 1)."""
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"--latents {path}: unreadable .npy file ({e})") from None
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or tuple(a.shape[1:]) != shape or not np.issubdtype(a.dtype, np.floating):
        raise InputError(f"--latents {path}: expected float w+ of shape (N, {shape[0]}, {shape[1]}), got "
                         f"{a.dtype} {a.shape}")
    return a.astype(np.float32)


def _cell(images: np.ndarray, size: int) -> np.ndarray:
    """[-1, 1] images (N, H, W, 3) -> uint8 (N, size, size, 3) for the grid."""
    from PIL import Image

    from ffclip_jax.grid import to_uint8

    return np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.BOX)) for a in to_uint8(images)])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ffclip_jax.edit", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True,
                   help="weights directory (`convert_weights all` output, training workdir or its export)")
    p.add_argument("--text", action="append", default=[], help="edit prompt (repeat for several)")
    p.add_argument("--strength", default="1", help="comma-separated edit strengths (1 = upstream FFCLIP)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", help="photos (FFHQ-aligned faces, or any photo with --align): files and/or "
                                                 "folders")
    src.add_argument("--latents", help="w+ latents .npy (N, L, D), e.g. from `python -m ffclip_jax.invert`")
    src.add_argument("--random", type=int, metavar="N", help="N random latents from the generator")
    p.add_argument("--seed", type=int, default=0, help="seed of --random")
    p.add_argument("--truncation", type=float, default=1.0, help="truncation of --random (e.g. 0.7)")
    p.add_argument("--output", required=True, help="folder for the PNGs, grid.png and latents")
    p.add_argument("--save-latents", action="store_true", help="write the edited w+ to OUTPUT/latents.npy")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--grid-rows", type=int, default=16, help="sources shown in grid.png")
    p.add_argument("--e4e", help="converted e4e directory to use instead of the weights directory's")
    add_align_argument(p)
    p.add_argument("--clip", help="converted CLIP directory to use instead of the weights directory's")
    add_cache_dir_argument(p)
    return p


def main(argv=None) -> None:
    from tqdm import tqdm

    from ffclip_jax import invert as invert_lib
    from ffclip_jax.grid import save_grid, save_png

    args = build_parser().parse_args(argv)
    prompts = list(dict.fromkeys(check_prompts(args.text)))
    strengths = parse_strengths(args.strength)
    weights = resolve(args.weights).with_overrides(e4e=args.e4e, clip=args.clip)
    mapper_config = pretrained.read_meta(weights.path("mapper"))["config"]
    if args.images:
        weights.path("e4e", "--images")
    weights.path("clip", "--text prompts")
    # cheap input checks before loading any network
    files = invert_lib.list_images(args.images) if args.images else None
    if args.latents:
        w = load_latents(args.latents, (mapper_config["n_latent"], mapper_config["style_dim"]))
    if args.random is not None and args.random < 1:
        raise InputError(f"--random must be >= 1, got {args.random}")
    editor = Editor.from_pretrained(args.weights, e4e=args.e4e, clip=args.clip, batch_size=args.batch_size,
                                    cache_dir=args.cache_dir)
    inputs = None  # the preprocessed photos of the first grid rows
    if files is not None:
        w, sources, skipped, inputs = invert_lib.invert_files(*editor.encoder, files, batch_size=args.batch_size,
                                                              align=args.align,
                                                              keep_inputs=args.grid_rows)
        if skipped:
            print(f"skipped {len(skipped)} unreadable file(s): {', '.join(skipped)}", file=sys.stderr)
        names = [os.path.splitext(os.path.basename(f))[0] for f in sources]
    else:
        if args.random is not None:
            w = editor.sample(args.random, args.seed, args.truncation)
        kind = "latent" if args.latents else "random"
        sources = names = [f"{kind}{i:04d}" for i in range(len(w))]
    names, prompt_names = unique_names(names), unique_names(prompts)
    strength_names = [f"{s:g}" for s in strengths]
    editor.text_embeddings(prompts)

    os.makedirs(args.output, exist_ok=True)
    grid_rows, edited = [], []
    chunk = args.batch_size  # sources per editor call: B * P * S edits in batches of B
    with tqdm(total=len(w) * len(prompts) * len(strengths), desc="editing", unit="edit") as bar:
        for start in range(0, len(w), chunk):
            r = editor.edit(w[start:start + chunk], prompts, strengths)
            edited.append(r.latents)
            for i, name in enumerate(names[start:start + chunk]):
                save_png(os.path.join(args.output, f"{name}__reconstruction.png"), r.reconstructions[i])
                for j, pn in enumerate(prompt_names):
                    for k, sn in enumerate(strength_names):
                        save_png(os.path.join(args.output, f"{name}__{pn}__{sn}.png"), r.images[i, j, k])
            keep = max(0, min(args.grid_rows - start, len(r.source_latents)))
            if keep:
                size = min(GRID_CELL, r.images.shape[-2])
                columns = ([inputs[start:start + keep]] if inputs is not None else []) + [r.reconstructions[:keep]]
                columns += [r.images[:keep, j, k] for j in range(len(prompts)) for k in range(len(strengths))]
                grid_rows.append(np.stack([_cell(c, size) for c in columns], axis=1))
            bar.update(len(r.source_latents) * len(prompts) * len(strengths))
    labels = (["source"] if inputs is not None else []) + ["reconstruction"] + [
        f"{p} x{s}" if len(strengths) > 1 or strengths[0] != 1 else p for p in prompts for s in strength_names]
    written = f"{len(w) * len(prompts) * len(strengths)} edits"
    if grid_rows:
        save_grid(os.path.join(args.output, "grid.png"), np.concatenate(grid_rows), column_labels=labels,
                  row_labels=names[:sum(len(g) for g in grid_rows)])
        written += ", grid.png"
    if args.save_latents:
        latents = np.concatenate(edited)
        atomic_write(os.path.join(args.output, "latents.npy"), lambda tmp: np.save(tmp, latents))
        write_json_atomic(os.path.join(args.output, "latents.json"),
                          {"sources": list(sources), "prompts": prompts, "strengths": strengths,
                           "shape": "(sources, prompts, strengths, n_latent, style_dim)"})
        written += f", latents.npy {latents.shape}"
    print(f"wrote {written} to {args.output}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
