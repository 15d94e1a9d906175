"""Invert photos to w+ codes with a converted e4e (or pSp) encoder, as e4e's `scripts/inference.py` does.

    python -m ffclip_jax.invert --encoder weights/e4e --images photos/ --output latents.npy [--batch-size 8]
        [--generator weights/e4e/generator --grid recon.png]

Writes latents.npy (N, n_latent, 512) float32 and latents.json (the source files, in the same order); unreadable
files are skipped and listed. Preprocessing is e4e's: RGB, PIL bilinear resize to the encoder's input size
(256x256; cars 192x256), ToTensor, Normalize(0.5, 0.5) -> [-1, 1].

    from ffclip_jax.invert import load_encoder, invert_arrays
    encoder, variables = load_encoder("weights/e4e")
    codes = invert_arrays(encoder, variables, uint8_images)  # list or array of (H, W, 3) uint8 -> (N, n, 512)
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ffclip_jax import grid
from ffclip_jax.batching import in_batches, jit_apply
from ffclip_jax.align import add_align_argument
from ffclip_jax.errors import CheckpointError, InputError, run_cli
from ffclip_jax.fileio import atomic_write, write_json_atomic

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
ENCODER_MODELS = ("e4e", "psp")
GRID_MAX_ROWS = 16


def load_encoder(directory: str):
    """(module, variables) of a converted e4e/pSp directory (`python -m convert_weights e4e`)."""
    from ffclip_jax.weights import pretrained

    meta = pretrained.read_meta(directory)
    if meta["model"] not in ENCODER_MODELS:
        raise CheckpointError(f"{directory}: holds a {meta['model']} model, expected an e4e/psp encoder "
                              f"(convert one with `python -m convert_weights e4e`)")
    return pretrained.load(directory)


def to_unit_range(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> float32 in [-1, 1]: ToTensor (x / 255) then Normalize(0.5, 0.5)."""
    x = images_uint8.astype(np.float32) / np.float32(255)
    return (x - np.float32(0.5)) / np.float32(0.5)


def preprocess(image, size: Tuple[int, int], resize: bool = True, name: str = "image") -> np.ndarray:
    """A PIL image or (H, W[, C]) uint8 array -> (H, W, 3) float32 in [-1, 1] at `size` (H, W). Grayscale/RGBA are
    converted to RGB; resize=False requires the image to be `size` already."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise InputError(f"{name}: expected a uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got "
                             f"{arr.dtype} {arr.shape}")
        image = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    image = image.convert("RGB")
    h, w = size
    if image.size != (w, h):
        if not resize:
            raise InputError(f"{name}: is {image.size[1]}x{image.size[0]} (HxW), the encoder expects {h}x{w} "
                             f"(resizing is off)")
        image = image.resize((w, h), Image.BILINEAR)
    return to_unit_range(np.asarray(image))


def _invert_stream(encoder, variables, arrays: Iterable[np.ndarray], batch_size: int) -> Optional[np.ndarray]:
    """Codes of a stream of preprocessed (H, W, 3) arrays, run in batches of batch_size; None for an empty stream."""
    run = functools.partial(jit_apply(encoder), variables)
    codes, batch = [], []
    for x in arrays:
        batch.append(x)
        if len(batch) == batch_size:
            codes.append(in_batches(run, [np.stack(batch)], batch_size))
            batch = []
    if batch:
        codes.append(in_batches(run, [np.stack(batch)], batch_size))
    return np.concatenate(codes).astype(np.float32) if codes else None


def invert_arrays(encoder, variables, images: Iterable, *, batch_size: int = 8, resize: bool = True,
                  progress: bool = True) -> np.ndarray:
    """Invert uint8 images ((N, H, W, 3) array or a list of (H, W[, C]) arrays / PIL images, of any size with
    resize=True) -> codes (N, n_latent, style_dim) float32."""
    from tqdm import tqdm

    images = list(images)
    if not images:
        raise InputError("no images to invert")
    size = tuple(encoder.input_size)
    arrays = (preprocess(img, size, resize, f"image {i}")
              for i, img in enumerate(tqdm(images, desc="inverting", unit="img", disable=not progress)))
    return _invert_stream(encoder, variables, arrays, batch_size)


def list_images(paths: Sequence[str]) -> List[str]:
    """Files and the image files (by extension, sorted) of folders, in the order given."""
    files: List[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p)
                           if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(p, f)))
            if not found:
                raise InputError(f"{p}: folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    return files


def _read(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def reconstruct(generator, gen_variables, codes: np.ndarray, size: Tuple[int, int], batch_size: int) -> np.ndarray:
    """Generator images of `codes` cropped to the encoder's aspect (cars: rows 64:448 of 512, as e4e does) and
    average-pooled to `size` (pSp's face_pool) -> (N, H, W, 3) in about [-1, 1]."""
    import jax

    from ffclip_jax.nn.image_ops import adaptive_avg_pool2d

    h, w = size

    def render(variables, c):
        img = generator.apply(variables, c, input_is_latent=True)
        s = img.shape[1]
        crop = s * h // w
        top = (s - crop) // 2
        return adaptive_avg_pool2d(img[:, top:top + crop], (h, w))

    return in_batches(functools.partial(jax.jit(render), gen_variables), [codes], batch_size)


def save_grid(path: str, inputs: np.ndarray, recons: np.ndarray) -> None:
    """PNG with one row per image: input | reconstruction (both (N, H, W, 3) in [-1, 1]); written atomically."""
    grid.save_grid(path, np.stack([inputs, recons], axis=1), column_labels=["input", "reconstruction"])


def invert_files(encoder, variables, files: Sequence[str], *, batch_size: int = 8, resize: bool = True,
                 keep_inputs: int = 0, progress: bool = True, align: Optional[str] = None):
    """Read, preprocess and invert image files in batches. Returns (codes (N, n, 512) float32, the files inverted,
    the files skipped (unreadable, or no face found with `align`), the first `keep_inputs` preprocessed inputs
    (K, H, W, 3)). align: a dlib 68-point predictor file; each photo's largest face is FFHQ-aligned first, at the
    encoder's input size as e4e's own inference does (`ffclip_jax.align`)."""
    from tqdm import tqdm

    size = tuple(encoder.input_size)
    done, skipped, kept = [], [], []
    if align is not None:
        from ffclip_jax import align as align_lib

        predictor = align_lib.load_predictor(align)

    def arrays():
        for path in tqdm(files, desc="inverting", unit="img", disable=not progress):
            image = _read(path)
            if image is not None and align is not None:
                aligned, _ = align_lib.align_for_encoder([image], predictor, size)
                image = aligned[0] if aligned else None
            if image is None:
                skipped.append(path)
                continue
            x = preprocess(image, size, resize, path)
            done.append(path)
            if len(kept) < keep_inputs:
                kept.append(x)
            yield x

    codes = _invert_stream(encoder, variables, arrays(), batch_size)
    if codes is None:
        raise InputError(f"none of the {len(files)} files could be read as an image ({', '.join(skipped[:3])}"
                         f"{' ...' if len(skipped) > 3 else ''})")
    return codes, done, skipped, np.asarray(kept)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ffclip_jax.invert", description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", required=True, help="converted e4e/psp directory")
    p.add_argument("--images", required=True, nargs="+", help="image files and/or folders")
    p.add_argument("--output", required=True, help="latents .npy to write (a .json list of sources is written beside)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-resize", action="store_true", help="do not resize: images must be the encoder's input size")
    add_align_argument(p)
    p.add_argument("--generator", help="converted stylegan2 directory for --grid (default: ENCODER/generator)")
    p.add_argument("--grid", help="write a PNG of input | reconstruction rows (first 16 images)")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.output.endswith(".npy"):
        raise InputError(f"--output {args.output}: expected a .npy file name")
    generator_dir = args.generator
    if args.grid and generator_dir is None:
        generator_dir = os.path.join(args.encoder, "generator")
        if not os.path.isdir(generator_dir):
            raise InputError(f"--grid needs a generator: pass --generator DIR ({args.encoder} has no generator/)")
    encoder, variables = load_encoder(args.encoder)
    generator = None
    if args.grid:
        from ffclip_jax.weights import pretrained
        generator = pretrained.load(generator_dir)
    files = list_images(args.images)
    codes, done, skipped, inputs = invert_files(encoder, variables, files, batch_size=args.batch_size,
                                                resize=not args.no_resize, align=args.align,
                                                keep_inputs=GRID_MAX_ROWS if args.grid else 0)
    sources = os.path.splitext(args.output)[0] + ".json"
    atomic_write(args.output, lambda tmp: np.save(tmp, codes))
    write_json_atomic(sources, done)
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s){' or photos without a face' if args.align else ''}: "
              f"{', '.join(skipped)}", file=sys.stderr)
    print(f"wrote {codes.shape} codes to {args.output} and their sources to {sources}")
    if args.grid:
        recons = reconstruct(*generator, codes[:len(inputs)], tuple(encoder.input_size), args.batch_size)
        save_grid(args.grid, inputs, recons)
        print(f"wrote input | reconstruction grid of {len(inputs)} images to {args.grid}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
