"""The one [-1, 1] -> uint8 conversion (rounding, clipping) and the PNG grids built on it."""
import numpy as np
from PIL import Image

from ffclip_jax.grid import save_grid, to_uint8


def test_to_uint8_rounds_to_nearest_and_clips():
    x = np.array([-2.0, -1.0, -1 + 0.6 / 127.5, -1 + 1.4 / 127.5, 0.0, 1 - 0.4 / 127.5, 1.0, 3.0], np.float32)
    np.testing.assert_array_equal(to_uint8(x), [0, 0, 1, 1, 128, 255, 255, 255])
    # 127.5 * (x + 1) for x = -1 + k / 127.5 is exactly k: every grey level survives a round trip
    levels = np.arange(256)
    np.testing.assert_array_equal(to_uint8(levels / 127.5 - 1), levels)
    assert to_uint8(np.zeros((2, 2), np.uint8)).dtype == np.uint8


def test_grid_png_holds_the_rounded_pixels(tmp_path):
    rng = np.random.RandomState(0)
    images = rng.uniform(-1, 1, (2, 3, 128, 128, 3)).astype(np.float32)
    path = save_grid(str(tmp_path / "g.png"), images, ["a", "b", "c"], ["r0", "r1"])
    grid = np.asarray(Image.open(path))
    want = to_uint8(images)
    # a cell is found at its offset: cells are 128 px, 2 px apart, after the label row and column
    cell = grid[-(128 + 2):-2, -(128 + 2):-2]
    np.testing.assert_array_equal(cell, want[1, 2])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
