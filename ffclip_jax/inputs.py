"""One reader per kind of user input, used by every tool (edit, invert, align, evaluate, data, the studio), so the same
input meets the same rules and the same one-line errors everywhere.

- Images: the pixels as displayed (a file's EXIF orientation applied, `PIL.ImageOps.exif_transpose`), as RGB uint8
  (H, W, 3). Grayscale, LA, P, RGBA (alpha dropped, as e4e's `convert('RGB')`), CMYK (PIL's conversion) become RGB;
  16-bit grayscale (I;16*, I) is scaled by 255/65535 and rounded. Arrays must be uint8 (H, W), (H, W, 1), (H, W, 3)
  or (H, W, 4). Every image is at least 1 pixel a side; a tool may ask for more, less or an exact size (`check_size`).
  `MIN_PHOTO_SIDE` (16 pixels a side) is the least a photo to edit sensibly has, what the studio asks of uploads: a
  smaller one holds no face to find or keep (e4e would blow each pixel up to a 16x16 block of its 256 px input).
- Image folders: `list_images` takes files as given and the image files of folders (by extension, sorted).
- Latents: one .npy array, floating point, (L, D) (one code) or (N, L, D) with N >= 1, every value finite, L and D
  those of the networks that use it.
- Prompts: each stripped; empty ones dropped; repeats dropped (the first kept, order kept); at least one; at most a
  tool's limit. A string is one prompt per line.
- Strengths: numbers (a string: comma-separated), each finite, repeats dropped (the first kept); at least one; within
  a tool's range where it has one.
"""
from __future__ import annotations

import dataclasses
import os
from numbers import Real
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ffclip_jax.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
ARRAY_LAYOUTS = "a uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image"
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
MIN_PHOTO_SIDE = 16  # pixels a side of a photo to edit (the module docstring; the studio's uploads)
LATENT_CHECK_CHUNK = 4096  # latents per NaN/inf check step (bounded memory on memory-mapped files)


# ------------------------------------------------------------------------------------------------------------ images

def check_size(height: int, width: int, name: str, *, expected: Optional[Tuple[int, int]] = None,
               expected_by: str = "", min_side: int = 1, max_side: Optional[int] = None) -> None:
    """The one image size check: an exact (H, W) when `expected`, else at least `min_side` and at most `max_side`
    pixels a side."""
    size = f"{height}x{width} (HxW)"
    if expected is not None and (height, width) != tuple(expected):
        by = f" by {expected_by}" if expected_by else ""
        raise InputError(f"{name}: is {size}, expected {expected[0]}x{expected[1]}{by}")
    if min(height, width) < min_side:
        raise InputError(f"{name}: is {size}, expected at least {min_side} pixel{'s' * (min_side > 1)} a side")
    if max_side is not None and max(height, width) > max_side:
        raise InputError(f"{name}: is {size}, expected at most {max_side} pixels a side")


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(image, np.float64), 0, 65535)
        gray = np.rint(values * (255.0 / 65535.0)).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def to_rgb(image, name: str = "image", **size) -> np.ndarray:
    """A PIL image (any mode; EXIF orientation applied) or a uint8 array (`ARRAY_LAYOUTS`) -> (H, W, 3) uint8 RGB;
    `size`: `check_size`'s limits."""
    if isinstance(image, Image.Image):
        rgb = _pil_to_rgb(image)
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise InputError(f"{name}: expected {ARRAY_LAYOUTS}, got {arr.dtype} {arr.shape}")
        if arr.ndim == 2 or arr.shape[2] == 1:
            rgb = np.repeat(arr.reshape(arr.shape[:2] + (1,)), 3, axis=2)
        else:
            rgb = np.ascontiguousarray(arr[..., :3])
    check_size(rgb.shape[0], rgb.shape[1], name, **size)
    return rgb


def read_image(path: str, name: Optional[str] = None, **size) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file as displayed (see the module docstring); `name` is what messages call it
    (default: the path); `size`: `check_size`'s limits, the largest side checked before the pixels are decoded."""
    name = name or os.fspath(path)
    try:
        with Image.open(path) as im:
            if size.get("max_side") is not None:
                check_size(im.height, im.width, name, max_side=size["max_side"])
            im.load()
            return to_rgb(im, name, **size)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"{name}: not a readable image ({type(e).__name__})") from None


def list_images(paths: Sequence[str]) -> List[str]:
    """Files as given and the image files (by extension, sorted) of folders, in the order given."""
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


# ----------------------------------------------------------------------------------------------------------- latents

@dataclasses.dataclass(frozen=True)
class LatentShape:
    """What w+ latents must look like: n_latent and style_dim (None: any), and what expects them (for messages)."""
    n_latent: Optional[int]
    style_dim: Optional[int]
    why: str = ""


def check_latents(a: np.ndarray, expected: Optional[LatentShape] = None, name: str = "latents") -> np.ndarray:
    """The latents rule (module docstring) on an array: (N, L, D) (an (L, D) code becomes N = 1), dtype kept."""
    expected = expected or LatentShape(None, None)
    if not isinstance(a, np.ndarray):
        raise InputError(f"{name}: expected one array of w+ latents, got {type(a).__name__}")
    shape_ok = a.ndim in (2, 3) and all(want is None or got == want for got, want in
                                        zip(a.shape[-2:], (expected.n_latent, expected.style_dim)))
    if not shape_ok or not np.issubdtype(a.dtype, np.floating):
        l, d = (str(v) if v is not None else k for v, k in ((expected.n_latent, "L"), (expected.style_dim, "D")))
        by = f" (expected by {expected.why})" if expected.why else ""
        raise InputError(f"{name}: expected float w+ latents of shape (N, {l}, {d}) or ({l}, {d}){by}, got "
                         f"{a.dtype} {a.shape}")
    a = a[None] if a.ndim == 2 else a
    if len(a) == 0:
        raise InputError(f"{name}: empty (shape {a.shape}); expected at least one latent")
    for start in range(0, len(a), LATENT_CHECK_CHUNK):
        finite = np.isfinite(a[start:start + LATENT_CHECK_CHUNK]).all(axis=(1, 2))
        if not finite.all():
            raise InputError(f"{name}: latent {start + int(np.argmin(finite))} contains NaN or inf")
    return a


def load_latents(path: str, expected: Optional[LatentShape] = None, *, name: Optional[str] = None,
                 mmap: bool = False) -> np.ndarray:
    """w+ latents (N, L, D) of a .npy file, checked (`check_latents`): float32 in memory, or with `mmap` the file's
    read-only memory map in its own float dtype (large training sets). `name`: what messages call the file."""
    path = os.fspath(path)
    name = name or path
    if not os.path.isfile(path):
        raise InputError(f"{name}: no such latents file")
    try:
        a = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{name}: not a readable .npy array ({(str(e).splitlines() or [type(e).__name__])[0]})") \
            from None
    if not isinstance(a, np.ndarray):
        raise InputError(f"{name}: holds several arrays ({type(a).__name__}); expected one .npy array")
    a = check_latents(a, expected, name)
    return a if mmap else np.asarray(a, np.float32)


# ----------------------------------------------------------------------------------------------- prompts, strengths

def prompts(values: Union[str, Sequence[str]], *, max_count: Optional[int] = None) -> List[str]:
    """The prompts rule (module docstring): a string (one prompt per line) or a sequence of strings -> the list."""
    lines = values.splitlines() if isinstance(values, str) else list(values)
    for i, p in enumerate(lines):
        if not isinstance(p, str):
            raise InputError(f"prompt {i}: expected a string, got {type(p).__name__}")
    out = list(dict.fromkeys(p.strip() for p in lines if p.strip()))
    if not out:
        raise InputError("no prompt given: expected at least one non-empty text prompt")
    if max_count is not None and len(out) > max_count:
        raise InputError(f"{len(out)} prompts: at most {max_count} per edit")
    return out


def strengths(value, *, bounds: Optional[Tuple[float, float]] = None, name: str = "strength") -> List[float]:
    """The strengths rule (module docstring): a number, a comma-separated string or a sequence of numbers -> the
    list; `bounds` (low, high) inclusive."""
    items = value.split(",") if isinstance(value, str) else np.atleast_1d(np.asarray(value, dtype=object)).tolist()
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (Real, str)):
            raise InputError(f"{name}: expected numbers, got {value!r}")
        try:
            s = float(item)
        except ValueError:
            raise InputError(f"{name} {value!r}: expected comma-separated numbers, e.g. 0.5,1,1.5") from None
        if not np.isfinite(s):
            raise InputError(f"{name}: expected finite numbers, got {value!r}")
        if bounds is not None and not bounds[0] <= s <= bounds[1]:
            raise InputError(f"{name} {s:g}: expected a number from {bounds[0]:g} to {bounds[1]:g}")
        out.append(s)
    if not out:
        raise InputError(f"{name}: expected at least one number, got {value!r}")
    return list(dict.fromkeys(out))


def strength(value, *, bounds: Optional[Tuple[float, float]] = None, name: str = "strength") -> float:
    """One strength by the strengths rule."""
    values = strengths(value, bounds=bounds, name=name)
    if len(values) != 1:
        raise InputError(f"{name}: expected one number, got {value!r}")
    return values[0]
