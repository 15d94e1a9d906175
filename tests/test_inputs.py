"""The one reader per kind of user input (`ffclip_jax.inputs`): images of every PIL mode and the array layouts, the
size and uint8 checks, image folders, w+ latents (shapes, dtypes, NaN/inf, memory maps), prompts and strengths.
(The EXIF orientation: test_align, through the reader and the tools.)"""
import numpy as np
import pytest
from PIL import Image

from ffclip_jax import inputs
from ffclip_jax.errors import InputError


def gradient(h=12, w=20) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.stack([xx * 12, yy * 20, 255 - xx * 12], axis=-1).astype(np.uint8)


# ------------------------------------------------------------------------------------------------------------ images

def test_pil_modes_become_rgb_uint8():
    rgb = gradient()
    for mode in ("L", "LA", "RGBA", "P", "CMYK", "1", "YCbCr"):
        im = Image.fromarray(rgb).convert(mode)
        got = inputs.to_rgb(im)
        assert got.shape == rgb.shape and got.dtype == np.uint8, mode
        np.testing.assert_array_equal(got, np.asarray(im.convert("RGB")), err_msg=mode)  # PIL's own conversion
    rgba = np.concatenate([rgb, np.zeros(rgb.shape[:2] + (1,), np.uint8)], axis=-1)  # fully transparent
    np.testing.assert_array_equal(inputs.to_rgb(Image.fromarray(rgba, "RGBA")), rgb)  # alpha dropped, as e4e


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896], [65535, 1000, 40000]], np.uint16)
    want = np.rint(values / 65535.0 * 255.0).astype(np.uint8)
    for mode, arr in (("I;16", values), ("I", values.astype(np.int32))):
        im = Image.fromarray(arr)
        assert im.mode == mode
        np.testing.assert_array_equal(inputs.to_rgb(im), np.repeat(want[..., None], 3, axis=2), err_msg=mode)
    Image.fromarray(values).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode == "I;16"
    np.testing.assert_array_equal(inputs.read_image(str(tmp_path / "gray16.png"))[..., 0], want)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 2 ** 31, (3, 4)).astype(np.int32)).save(tmp_path / "big.tif")  # beyond 16 bits
    assert inputs.read_image(str(tmp_path / "big.tif")).max() == 255


def test_cmyk_jpeg_file(tmp_path):
    im = Image.fromarray(gradient()).convert("CMYK")
    im.save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    got = inputs.read_image(str(tmp_path / "cmyk.jpg"))
    assert got.shape == gradient().shape and got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB")))


def test_array_layouts_and_one_uint8_message():
    rgb = gradient()
    for arr in (rgb[..., 0], rgb[..., :1], rgb, np.concatenate([rgb, rgb[..., :1]], axis=-1)):
        got = inputs.to_rgb(arr)
        assert got.shape == rgb.shape[:2] + (3,) and got.dtype == np.uint8
    np.testing.assert_array_equal(inputs.to_rgb(rgb[..., 0])[..., 2], rgb[..., 0])
    for bad in (rgb.astype(np.float32), rgb.astype(np.uint16), rgb[..., :2], rgb[None]):
        with pytest.raises(InputError, match=r"^photo: expected a uint8 \(H, W\), \(H, W, 1\), \(H, W, 3\) or "
                                             r"\(H, W, 4\) image, got"):
            inputs.to_rgb(bad, "photo")


def test_one_size_check():
    inputs.check_size(1, 1, "x")
    with pytest.raises(InputError, match=r"^x: is 0x5 \(HxW\), expected at least 1 pixel a side$"):
        inputs.to_rgb(np.zeros((0, 5), np.uint8), "x")
    with pytest.raises(InputError, match=r"^x: is 3x9 \(HxW\), expected at least 4 pixels a side$"):
        inputs.check_size(3, 9, "x", min_side=4)
    with pytest.raises(InputError, match=r"^x: is 3x9 \(HxW\), expected at most 8 pixels a side$"):
        inputs.check_size(3, 9, "x", max_side=8)
    with pytest.raises(InputError, match=r"^x: is 3x9 \(HxW\), expected 4x4 by the encoder$"):
        inputs.check_size(3, 9, "x", expected=(4, 4), expected_by="the encoder")


def test_read_image_errors(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(InputError, match=r"broken.png: not a readable image \("):
        inputs.read_image(str(tmp_path / "broken.png"))
    with pytest.raises(InputError, match=r"^upload.png: not a readable image"):  # the name messages use
        inputs.read_image(str(tmp_path / "missing.png"), "upload.png")
    Image.fromarray(gradient(12, 40)).save(tmp_path / "wide.png")
    with pytest.raises(InputError, match=r"wide.png: is 12x40 \(HxW\), expected at most 32 pixels a side"):
        inputs.read_image(str(tmp_path / "wide.png"), max_side=32)


def test_list_images(tmp_path):
    for name in ("b.png", "a.JPG", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert inputs.list_images([str(tmp_path), str(tmp_path / "c.txt")]) == [
        str(tmp_path / "a.JPG"), str(tmp_path / "b.png"), str(tmp_path / "c.txt")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="folder has no images"):
        inputs.list_images([str(tmp_path / "empty")])
    with pytest.raises(InputError, match="no such file or folder"):
        inputs.list_images([str(tmp_path / "nope.png")])


# ----------------------------------------------------------------------------------------------------------- latents

SHAPE = inputs.LatentShape(3, 4, "the mapper")


def test_latents_shapes_dtypes_and_memory_maps(tmp_path):
    one = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.save(tmp_path / "one.npy", one)
    got = inputs.load_latents(str(tmp_path / "one.npy"), SHAPE)
    assert got.shape == (1, 3, 4) and got.dtype == np.float32
    np.testing.assert_array_equal(got[0], one)
    many = np.ones((5, 3, 4), np.float16)
    np.save(tmp_path / "many.npy", many)
    mapped = inputs.load_latents(str(tmp_path / "many.npy"), SHAPE, mmap=True)
    assert isinstance(mapped, np.memmap) and mapped.dtype == np.float16 and mapped.shape == (5, 3, 4)
    assert inputs.load_latents(str(tmp_path / "many.npy")).shape == (5, 3, 4)  # any (L, D) without expectations
    np.testing.assert_array_equal(inputs.check_latents(one[None]), one[None])


@pytest.mark.parametrize("case", ["rank 1", "rank 4", "L", "D", "int", "nan", "inf", "empty", "npz", "pickle",
                                  "not npy", "missing"])
def test_latents_errors(tmp_path, case):
    path = tmp_path / "w.npy"
    good = np.zeros((2, 3, 4), np.float32)
    arrays = {"rank 1": np.zeros(12, np.float32), "rank 4": good[None], "L": np.zeros((2, 5, 4), np.float32),
              "D": np.zeros((3, 5), np.float32), "int": good.astype(np.int64), "empty": good[:0],
              "nan": np.concatenate([good, np.full((1, 3, 4), np.nan, np.float32)]),
              "inf": np.where(np.arange(4) == 2, np.inf, good).astype(np.float32)}
    if case in arrays:
        np.save(path, arrays[case])
    elif case == "npz":
        with open(path, "wb") as f:  # an .npz archive under a .npy name
            np.savez(f, a=good, b=good)
    elif case == "pickle":
        np.save(path, np.array([{"w": 1}], dtype=object), allow_pickle=True)
    elif case == "not npy":
        path.write_bytes(b"no array here")
    want = {"nan": "latent 2 contains NaN or inf", "inf": "latent 0 contains NaN or inf", "empty": "empty",
            "npz": "holds several arrays", "pickle": "not a readable .npy array", "not npy": "not a readable .npy",
            "missing": "no such latents file"}.get(
        case, r"expected float w\+ latents of shape \(N, 3, 4\) or \(3, 4\) \(expected by the mapper\), got")
    with pytest.raises(InputError, match=f"^upload.npy: {want}"):
        inputs.load_latents(str(path), SHAPE, name="upload.npy")


# ----------------------------------------------------------------------------------------------- prompts, strengths

def test_prompts_rule():
    assert inputs.prompts(["  Bald ", "", "Blue hair", "Bald", "   ", "blue hair"]) == ["Bald", "Blue hair",
                                                                                         "blue hair"]
    assert inputs.prompts("Bald\n\n  Smiling \nBald\n") == ["Bald", "Smiling"]  # a string: one prompt per line
    assert inputs.prompts(("a", "b"), max_count=2) == ["a", "b"]
    assert inputs.prompts(["a"] * 9, max_count=2) == ["a"]  # repeats do not count against the limit
    with pytest.raises(InputError, match="^3 prompts: at most 2 per edit$"):
        inputs.prompts("a\nb\nc", max_count=2)
    for empty in ([], "", ["  ", ""], "\n \n"):
        with pytest.raises(InputError, match="^no prompt given: expected at least one non-empty text prompt$"):
            inputs.prompts(empty)
    with pytest.raises(InputError, match="^prompt 1: expected a string, got int$"):
        inputs.prompts(["a", 3])


def test_strengths_rule():
    assert inputs.strengths("0.5, 1,1.5,1") == [0.5, 1.0, 1.5]
    assert inputs.strengths(2) == [2.0] and inputs.strengths(np.array([0.0, -1.0], np.float32)) == [0.0, -1.0]
    assert inputs.strength("0.25", bounds=(-1, 2)) == 0.25
    for bad, message in (("1,x", r"strength '1,x': expected comma-separated numbers"),
                         ("nan", "expected finite numbers"), ([1.0, float("inf")], "expected finite numbers"),
                         ([], "expected at least one number"), (True, "expected numbers"),
                         ([[1.0, 2.0]], "expected numbers"), (None, "expected numbers")):
        with pytest.raises(InputError, match=message):
            inputs.strengths(bad)
    with pytest.raises(InputError, match=r"^--strength 5: expected a number from -1 to 2$"):
        inputs.strengths("0.5,5", bounds=(-1.0, 2.0), name="--strength")
    with pytest.raises(InputError, match="expected one number"):
        inputs.strength("0.5,1")
