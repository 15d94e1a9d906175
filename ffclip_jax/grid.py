"""Labelled PNG image grids, written atomically (training's eval grids, the edit tool's outputs).

    save_grid("edits.png", images, column_labels=["source", "Bald", "Blue eyes"], row_labels=["#0", "#1"])

images: (R, C, H, W, 3) floats in the generator's range [-1, 1] (or uint8). Cells smaller than `min_cell` pixels
are enlarged (nearest neighbour) so labels stay legible.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ffclip_jax.errors import InputError
from ffclip_jax.fileio import atomic_write

LABEL_HEIGHT = 16
PAD = 2


def to_uint8(images) -> np.ndarray:
    """[-1, 1] floats (or uint8) -> uint8 [0, 255], clipped."""
    a = np.asarray(images)
    if a.dtype == np.uint8:
        return a
    return np.clip(np.rint((a.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def cells(images, size: int) -> np.ndarray:
    """Images (N, H, W, 3) ([-1, 1] floats or uint8) -> uint8 (N, size, size, 3) grid cells (PIL BOX resize)."""
    return np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.BOX)) for a in to_uint8(images)])


def make_grid(images, column_labels: Optional[Sequence[str]] = None, row_labels: Optional[Sequence[str]] = None,
              min_cell: int = 128):
    """A PIL image: a header row of column labels, a left column of row labels, R x C cells."""
    a = to_uint8(images)
    if a.ndim != 5 or a.shape[-1] != 3:
        raise InputError(f"grid images must have shape (rows, columns, H, W, 3), got {a.shape}")
    rows, cols, h, w, _ = a.shape
    for name, labels, n in (("column", column_labels, cols), ("row", row_labels, rows)):
        if labels is not None and len(labels) != n:
            raise InputError(f"{len(labels)} {name} labels for {n} {name}s")
    scale = max(1, -(-min_cell // max(h, w)))
    ch, cw = h * scale, w * scale
    font = ImageFont.load_default()
    left = 0
    if row_labels is not None:
        left = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(str(t), font=font)) for t in row_labels)
        left += 2 * PAD
    top = LABEL_HEIGHT if column_labels is not None else 0
    canvas = Image.new("RGB", (left + cols * (cw + PAD) + PAD, top + rows * (ch + PAD) + PAD), "white")
    draw = ImageDraw.Draw(canvas)
    for j in range(cols):
        x0 = left + PAD + j * (cw + PAD)
        if column_labels is not None:
            draw.text((x0, 2), _fit(draw, str(column_labels[j]), font, cw), fill="black", font=font)
        for i in range(rows):
            y0 = top + PAD + i * (ch + PAD)
            cell = Image.fromarray(a[i, j])
            canvas.paste(cell.resize((cw, ch), Image.NEAREST) if scale > 1 else cell, (x0, y0))
    if row_labels is not None:
        for i, t in enumerate(row_labels):
            draw.text((PAD, top + PAD + i * (ch + PAD) + ch // 2 - 5), str(t), fill="black", font=font)
    return canvas


def _fit(draw, text: str, font, width: int) -> str:
    """`text` shortened with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def save_png(path: str, image) -> str:
    """One (H, W, 3) image ([-1, 1] floats or uint8) as PNG, written atomically; returns `path`."""
    atomic_write(path, lambda tmp: Image.fromarray(to_uint8(image)).save(tmp, format="PNG"))
    return path


def save_grid(path: str, images, column_labels=None, row_labels=None, min_cell: int = 128) -> str:
    """Write the grid as PNG atomically (temporary file + rename); returns `path`."""
    grid = make_grid(images, column_labels, row_labels, min_cell)
    atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))
    return path
