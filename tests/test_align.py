"""FFHQ face alignment (ffclip_jax.align): geometry on synthetic faces, equality with an in-test transcription of the
published procedure, 5 vs 68 points, the dlib path with a shape predictor trained here, the CLI and bad inputs, and
`--align` of invert and the studio, photos stored rotated with an EXIF orientation tag included."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.ndimage
from PIL import Image, ImageDraw

from ffclip_jax import align
from ffclip_jax.cli import align as align_cli
from ffclip_jax.cli.invert import main as invert_main
from ffclip_jax.errors import CheckpointError, ConfigError, InputError, run_cli
from ffclip_jax.inputs import read_image
from ffclip_jax.outputs import MANIFEST, RunFolder
from ffclip_jax.pipeline import Editor
from ffclip_jax.studio.engine import Engine
from test_invert import encoder_dir  # noqa: F401  (fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------- synthetic faces

def _ellipse(cx, cy, rx, ry, degrees):
    a = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([cx + rx * np.cos(a), cy - ry * np.sin(a)], axis=1)


def template_68() -> np.ndarray:
    """Canonical 68 dlib points (x right, y down): eye centres (-1, 0) and (1, 0), mouth corners (-0.8, 2), (0.8, 2)."""
    return np.concatenate([
        _ellipse(0, 0.3, 2.1, 3.2, np.linspace(180, 360, 17)),             # 0-16 chin, image left to right
        _ellipse(-1, -0.5, 0.6, 0.25, np.linspace(160, 20, 5)),            # 17-21 brow
        _ellipse(1, -0.5, 0.6, 0.25, np.linspace(160, 20, 5)),             # 22-26 brow
        np.stack([np.zeros(4), np.linspace(-0.1, 1.2, 4)], axis=1),        # 27-30 nose bridge to tip
        np.stack([np.linspace(-0.4, 0.4, 5), np.full(5, 1.45)], axis=1),   # 31-35 nostrils
        _ellipse(-1, 0, 0.45, 0.18, [180, 135, 45, 0, -45, -135]),         # 36-41 eye (mean = centre)
        _ellipse(1, 0, 0.45, 0.18, [180, 135, 45, 0, -45, -135]),          # 42-47 eye
        _ellipse(0, 2, 0.8, 0.3, 180 - 30 * np.arange(12)),               # 48-59 outer lip, 48 and 54 the corners
        _ellipse(0, 2, 0.6, 0.12, 180 - 45 * np.arange(8)),                # 60-67 inner lip
    ])


# For the template, eye_to_eye = (2, 0), eye_to_mouth = (0, 2): x = (2, 0) - (-2, 0) -> direction (1, 0), length
# max(2 * 2, 1.8 * 2) = 4; y = (0, 4); c = (0, 0.2): the crop square has its top-left corner at (-4, -3.8) and side 8.
# A point p lands at output pixel index (p - (-4, -3.8)) / 8 * N - 0.5 (PIL samples pixel centres), for any
# rotation, scale and translation of the face (the procedure is similarity-equivariant).
CANONICAL = {"eye_left": (-1.0, 0.0), "eye_right": (1.0, 0.0), "mouth": (0.0, 2.0)}
EXPECTED_FRACTION = {"eye_left": (0.375, 0.475), "eye_right": (0.625, 0.475), "mouth": (0.5, 0.725)}
SPOT_COLOURS = {"eye_left": (230, 30, 30), "eye_right": (30, 230, 30), "mouth": (30, 30, 230)}


def similarity(points, scale, theta, translate) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.asarray(points, dtype=np.float64) @ np.array([[c, -s], [s, c]]).T * scale + np.asarray(translate)


def save_rotated(path, displayed: np.ndarray, orientation: int = 6) -> None:
    """Save `displayed` (H, W, 3) uint8 as a camera does: the pixels stored turned, and the EXIF Orientation tag
    (3: 180 degrees, 6: 90 clockwise, 8: 90 counter-clockwise to display) saying how to turn them back."""
    undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(displayed).transpose(undo).save(path, exif=exif)


def spot_image(h, w, spots) -> np.ndarray:
    """(h, w, 3) uint8: a grey gradient (R = G = B) with anti-aliased discs; spots [((x, y), radius, rgb)]."""
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    img = np.repeat((70 + 100 * (0.6 * xx / w + 0.4 * yy / h))[..., None], 3, axis=2)
    for (cx, cy), r, rgb in spots:
        cover = np.clip(r + 0.5 - np.hypot(xx - cx, yy - cy), 0, 1)[..., None]
        img = img * (1 - cover) + np.asarray(rgb, dtype=np.float64) * cover
    return np.uint8(np.rint(img))


def spot_centre(out, channel, expected, radius):
    """Centroid (x, y) of how much `channel` exceeds the other two, within 2 radius + 3 px of the expected centre."""
    others = [c for c in range(3) if c != channel]
    weight = np.clip(out[..., channel].astype(np.float64) - out[..., others].mean(axis=-1), 0, None)
    yy, xx = np.mgrid[:out.shape[0], :out.shape[1]]
    weight *= np.hypot(xx - expected[0], yy - expected[1]) <= 2 * radius + 3
    # the disc's colour excess (200 levels) times its area, kept by resampling up to its blurred, clipped rim:
    # 25% only asks that the spot is there (a missing spot gives ~100%)
    assert abs(weight.sum() / (200 * np.pi * radius ** 2) - 1) < 0.25, "spot not found where expected"
    return np.array([(weight * xx).sum(), (weight * yy).sum()]) / weight.sum()


GEOMETRY_CASES = {
    # name: ((h, w), scale, theta, eye_avg position, output_size, transform_size, padded)
    "plain": ((400, 400), 25, 0.3, (200, 170), 128, 256, False),
    "tilted": ((300, 360), 18, -0.6, (170, 140), 96, 256, False),
    "upside-down": ((360, 360), 22, 2.6, (180, 170), 128, 512, False),
    "edge-padding": ((260, 300), 25, 0.15, (115, 45), 128, 256, True),
    "shrink": ((520, 480), 40, 0.7, (240, 230), 64, 256, False),
    "shrink-padding": ((330, 330), 40, -0.9, (220, 110), 64, 256, True),
}


@pytest.mark.parametrize("name", list(GEOMETRY_CASES))
def test_eyes_and_mouth_land_where_ffhq_puts_them(name, monkeypatch):
    (h, w), scale, theta, translate, size, transform_size, padded = GEOMETRY_CASES[name]
    landmarks = similarity(template_68(), scale, theta, translate)
    centres = {k: similarity([p], scale, theta, translate)[0] for k, p in CANONICAL.items()}
    image = spot_image(h, w, [(centres[k], 0.3 * scale, SPOT_COLOURS[k]) for k in CANONICAL])
    pads = []
    real_blur_pad = align._blur_pad
    monkeypatch.setattr(align, "_blur_pad", lambda img, pad, qsize: pads.append(pad) or real_blur_pad(img, pad, qsize))

    out = align.align_face(image, landmarks, output_size=size, transform_size=transform_size)

    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert bool(pads) == padded
    if name.startswith("shrink"):
        assert np.floor(8 * scale / size * 0.5) > 1
    radius = 0.3 * size / 8
    for channel, key in enumerate(CANONICAL):
        expected = np.array(EXPECTED_FRACTION[key]) * size - 0.5
        found = spot_centre(out, channel, expected, radius)
        # a symmetric disc's centroid stays at its mapped centre up to resampling asymmetry (a fraction of a
        # pixel): geometry, not rounding (1e-6 px)
        assert np.abs(found - expected).max() < 1.0, (key, found, expected)


# ------------------------------------------------------------------------------------ the published procedure

def reference_ffhq(img, lm, output_size, transform_size, enable_padding):
    """Step-by-step transcription of FFHQ's recreate_aligned_images for one PIL RGB image and (68, 2) landmarks."""
    lm = np.asarray(lm, dtype=np.float64)
    eye_left, eye_right = np.mean(lm[36:42], axis=0), np.mean(lm[42:48], axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (lm[48] + lm[54]) * 0.5 - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    qsize = np.hypot(*x) * 2

    def box():
        return [int(np.floor(quad[:, 0].min())), int(np.floor(quad[:, 1].min())),
                int(np.ceil(quad[:, 0].max())), int(np.ceil(quad[:, 1].max()))]

    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        img = img.resize((int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink))),
                         Image.LANCZOS)
        quad /= shrink
        qsize /= shrink
    border = max(int(np.rint(qsize * 0.1)), 3)
    b = box()
    crop = (max(b[0] - border, 0), max(b[1] - border, 0), min(b[2] + border, img.size[0]),
            min(b[3] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]
    b = box()
    pad = (max(-b[0] + border, 0), max(-b[1] + border, 0), max(b[2] - img.size[0] + border, 0),
           max(b[3] - img.size[1] + border, 0))
    if enable_padding and max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        a = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = a.shape
        yy, xx, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(1.0 - np.minimum(np.float32(xx) / pad[0], np.float32(w - 1 - xx) / pad[2]),
                          1.0 - np.minimum(np.float32(yy) / pad[1], np.float32(h - 1 - yy) / pad[3]))
        blur = qsize * 0.02
        a += (scipy.ndimage.gaussian_filter(a, [blur, blur, 0]) - a) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        a += (np.median(a, axis=(0, 1)) - a) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(a), 0, 255)))
        quad += pad[:2]
    img = img.transform((transform_size, transform_size), Image.QUAD, (quad + 0.5).flatten(), Image.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.LANCZOS)
    return np.asarray(img)


def random_case(seed, h, w, scale, centre):
    rng = np.random.default_rng(seed)
    image = np.uint8(scipy.ndimage.gaussian_filter(rng.uniform(0, 255, (h, w, 3)), [1, 1, 0]) * 0.5
                     + rng.uniform(0, 127, (h, w, 3)))
    lm = similarity(template_68() + rng.normal(0, 0.05, (68, 2)), scale * rng.uniform(0.9, 1.1),
                    rng.uniform(-0.5, 0.5), np.asarray(centre) + rng.uniform(-5, 5, 2))
    return image, lm


@pytest.mark.parametrize("seed, h, w, scale, centre, size, transform_size, padding", [
    (0, 300, 280, 20, (140, 130), 128, 256, True),     # inside the image: crop only
    (1, 240, 260, 24, (60, 50), 128, 384, True),       # near the top-left corner: padded
    (2, 240, 260, 24, (200, 190), 96, 256, False),     # near the bottom-right corner, padding off
    (3, 420, 400, 38, (190, 150), 64, 128, True),      # shrink, then padded at the top
])
def test_matches_transcription_of_ffhq_procedure(seed, h, w, scale, centre, size, transform_size, padding):
    image, lm = random_case(seed, h, w, scale, centre)
    ours = align.align_face(image, lm, output_size=size, transform_size=transform_size, enable_padding=padding)
    ref = reference_ffhq(Image.fromarray(image), lm, size, transform_size, padding)
    assert ours.shape == ref.shape == (size, size, 3)
    # the same float pipeline rounded to uint8 at the end: a value within float rounding of k + 0.5 may round
    # either way, so a pixel may differ by one level, never more
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


def test_five_points_equal_68_points():
    image, lm = random_case(4, 220, 240, 20, (120, 100))
    five = np.stack([lm[36:42].mean(axis=0), lm[42:48].mean(axis=0), lm[48], lm[54], lm[30]])
    np.testing.assert_array_equal(align.face_keypoints(five), align.face_keypoints(lm))
    np.testing.assert_array_equal(align.align_face(image, five, 64, 128), align.align_face(image, lm, 64, 128))


def test_pil_grayscale_and_rgba_inputs_become_rgb():
    image, lm = random_case(5, 200, 200, 16, (100, 90))
    gray = image[..., 0]
    expected = align.align_face(np.repeat(gray[..., None], 3, axis=2), lm, 64, 128)
    np.testing.assert_array_equal(align.align_face(Image.fromarray(gray), lm, 64, 128), expected)
    np.testing.assert_array_equal(align.align_face(gray[..., None], lm, 64, 128), expected)
    rgba = np.concatenate([image, np.full((200, 200, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(align.align_face(rgba, lm, 64, 128), align.align_face(image, lm, 64, 128))


# ------------------------------------------------------------------------------------------------------- dlib

def face_landmarks(scale, theta, centre):
    return similarity(template_68(), scale, theta, centre)


def draw_faces(h, w, faces, background=(90, 120, 160)) -> np.ndarray:
    """(h, w, 3) uint8 cartoon faces drawn from their 68 landmarks: skin head, dark eyes, brows, nose and mouth."""
    im = Image.new("RGB", (w, h), background)
    d = ImageDraw.Draw(im)
    for lm in faces:
        scale = np.hypot(*(lm[42:48].mean(0) - lm[36:42].mean(0))) / 2
        top = lm[0] + (lm[16] - lm[0]) * 0.5 + (lm[0] - lm[8]) * 0.35
        d.polygon([tuple(p) for p in np.concatenate([lm[:17], [top]])], fill=(225, 185, 150))
        d.ellipse([*(top - scale * 2), *(top + scale * 2)], fill=(225, 185, 150))
        for part in (lm[36:42], lm[42:48]):
            d.polygon([tuple(p) for p in part], fill=(40, 30, 30))
        for brow in (lm[17:22], lm[22:27]):
            d.line([tuple(p) for p in brow], fill=(70, 50, 40), width=max(1, int(scale * 0.25)))
        d.line([tuple(p) for p in lm[27:31]], fill=(170, 120, 100), width=max(1, int(scale * 0.15)))
        d.polygon([tuple(p) for p in lm[48:60]], fill=(150, 40, 50))
        d.polygon([tuple(p) for p in lm[60:68]], fill=(60, 20, 25))
    return np.asarray(im)


def landmark_box(lm):
    import dlib

    (left, top), (right, bottom) = np.floor(lm.min(0)), np.ceil(lm.max(0))
    return dlib.rectangle(int(left), int(top), int(right), int(bottom))


@pytest.fixture(scope="module")
def predictor_path(tmp_path_factory):
    """A tiny 68-point dlib shape predictor trained on 16 cartoon faces (a couple of seconds)."""
    import dlib

    rng = np.random.default_rng(0)
    images, detections = [], []
    for _ in range(16):
        lm = face_landmarks(rng.uniform(12, 18), rng.uniform(-0.3, 0.3), rng.uniform(70, 90, 2))
        images.append(draw_faces(160, 160, [lm]))
        parts = [dlib.point(int(round(x)), int(round(y))) for x, y in lm]
        detections.append([dlib.full_object_detection(landmark_box(lm), parts)])
    options = dlib.shape_predictor_training_options()
    options.tree_depth, options.cascade_depth, options.num_trees_per_cascade_level = 2, 3, 5
    options.oversampling_amount, options.nu, options.feature_pool_size = 1, 0.1, 50
    options.num_threads, options.be_verbose = 1, False
    path = str(tmp_path_factory.mktemp("predictor") / "tiny_predictor_68.dat")
    dlib.train_shape_predictor(images, detections, options).save(path)
    return path


@pytest.fixture
def drawn_photos(tmp_path, monkeypatch):
    """photos/ with one.png (one face), group.png (a large and a small face), plain.png (no face) and broken.jpg;
    the HOG detector is replaced by the true face boxes for the drawn photos (it does not see cartoon faces)."""
    one = [face_landmarks(15, 0.1, (85, 75))]
    group = [face_landmarks(9, -0.1, (60, 60)), face_landmarks(16, 0.2, (170, 100))]
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(draw_faces(160, 170, one)).save(photos / "one.png")
    Image.fromarray(draw_faces(200, 260, group)).save(photos / "group.png")
    Image.new("RGB", (150, 140), (128, 128, 128)).save(photos / "plain.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    boxes = {(160, 170): [landmark_box(lm) for lm in one], (200, 260): [landmark_box(lm) for lm in group]}
    real = align._face_rectangles
    monkeypatch.setattr(align, "_face_rectangles", lambda img: boxes.get(img.shape[:2]) or real(img))
    return photos, one, group


def test_detect_landmarks_with_trained_predictor(predictor_path, drawn_photos):
    photos, one, group = drawn_photos
    image = np.asarray(Image.open(photos / "one.png"))
    (lm,) = align.detect_landmarks(image, predictor_path)
    assert lm.shape == (68, 2) and lm.dtype == np.float64
    # the tiny predictor (dlib's trainer is seeded: the same model everywhere) places points within 5% of the face
    # width on average; a wrong face or a failed fit is off by its whole size
    assert np.abs(lm - one[0]).mean() < 0.05 * np.ptp(one[0][:, 0])
    faces = align.detect_landmarks(Image.open(photos / "group.png"), align.load_predictor(predictor_path),
                                   all_faces=True)
    assert len(faces) == 2
    # the larger face first: face centres within 3 px (the faces are 60+ px apart), same seeded predictor
    assert np.abs(faces[0].mean(0) - group[1].mean(0)).max() < 3
    assert np.abs(faces[1].mean(0) - group[0].mean(0)).max() < 3
    assert align.detect_landmarks(Image.open(photos / "plain.png"), predictor_path) == []   # real HOG detector

    aligned, skipped = align.align_images([image, np.asarray(Image.open(photos / "plain.png"))], predictor_path, 64)
    assert skipped == [1] and len(aligned) == 1 and aligned[0].shape == (64, 64, 3)


def test_cli_with_predictor_aligns_all_faces_and_lists_skipped(predictor_path, drawn_photos, tmp_path, capsys):
    photos, _, _ = drawn_photos
    out = tmp_path / "aligned"
    rc = run_cli(align_cli.main, ["--images", str(photos), "--output", str(out), "--predictor", predictor_path,
                              "--size", "96", "--transform-size", "192", "--all-faces"])
    err = capsys.readouterr().err
    assert rc == 0
    assert sorted(os.listdir(out)) == [MANIFEST, "group.png", "group_1.png", "one.png"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["tool"] == "align" and sorted(manifest["files"]) == ["group.png", "group_1.png", "one.png"]
    assert sorted(os.path.basename(s["file"]) for s in manifest["skipped"]) == ["broken.jpg", "plain.png"]
    for f in manifest["files"]:
        assert np.asarray(Image.open(out / f)).shape == (96, 96, 3)
    assert f"skipped {photos / 'plain.png'}: no face found" in err
    assert f"skipped {photos / 'broken.jpg'}: not a readable image" in err


# ------------------------------------------------------------------------------------------------ landmarks JSON

def test_cli_landmarks_json_writes_aligned_pngs_atomically(tmp_path):
    a, lm_a = random_case(6, 200, 220, 16, (110, 95))
    b, lm_b = random_case(7, 180, 240, 14, (120, 80))
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.jpg", quality=95)
    five_b = np.stack([lm_b[36:42].mean(0), lm_b[42:48].mean(0), lm_b[48], lm_b[54], lm_b[30]])
    spec = {str(tmp_path / "a.png"): lm_a.tolist(), "b.jpg": [five_b.tolist(), (lm_a * 0.5).tolist()]}
    (tmp_path / "lm.json").write_text(json.dumps(spec))
    out = tmp_path / "aligned"
    proc = subprocess.run([sys.executable, "-m", "ffclip_jax", "align", "--images", str(tmp_path / "a.png"),
                           str(tmp_path / "b.jpg"), "--output", str(out), "--landmarks", str(tmp_path / "lm.json"),
                           "--size", "64", "--transform-size", "128"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ["a.png", "b.png", MANIFEST]  # first face only without --all-faces, no temp files
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a.png")), align.align_face(a, lm_a, 64, 128))
    b_read = np.asarray(Image.open(tmp_path / "b.jpg"))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "b.png")), align.align_face(b_read, five_b, 64, 128))


# -------------------------------------------------------------------------------------------------- bad inputs

def _cli_error(capsys, argv):
    rc = run_cli(align_cli.main, argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_bad_predictor_files_give_one_line_errors(tmp_path, capsys):
    Image.new("RGB", (64, 64)).save(tmp_path / "x.png")
    args = ["--images", str(tmp_path / "x.png"), "--output", str(tmp_path / "out"), "--predictor"]
    err = _cli_error(capsys, args + [str(tmp_path / "missing.dat")])
    assert "missing.dat" in err and "shape_predictor_68_face_landmarks.dat" in err
    (tmp_path / "random.dat").write_bytes(np.random.default_rng(0).bytes(4096))
    err = _cli_error(capsys, args + [str(tmp_path / "random.dat")])
    assert "random.dat: not a dlib shape predictor" in err and "shape_predictor_68_face_landmarks.dat" in err
    assert not (tmp_path / "out").exists()


def test_missing_dlib_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(ConfigError, match=r"pip install 'ffclip-jax\[align\]'"):
        align.load_predictor(str(tmp_path / "p.dat"))


def test_bad_landmarks_give_one_line_errors(tmp_path, capsys):
    Image.new("RGB", (64, 64)).save(tmp_path / "x.png")
    args = ["--images", str(tmp_path / "x.png"), "--output", str(tmp_path / "out"), "--landmarks"]
    for name, content in [("short.json", json.dumps({"x.png": [[1, 2]] * 67})),
                          ("nan.json", json.dumps({"x.png": [[1, 2]] * 4 + [[float("nan"), 1]]})),
                          ("flat.json", json.dumps({"x.png": [1, 2, 3]})),
                          ("list.json", json.dumps([[1, 2]] * 68)),
                          ("bad.json", "{not json")]:
        (tmp_path / name).write_text(content)
        err = _cli_error(capsys, args + [str(tmp_path / name)])
        assert name in err
        if name in ("short.json", "flat.json"):
            assert "expected (68, 2) dlib points or (5, 2) points" in err
    err = _cli_error(capsys, args + [str(tmp_path / "none.json")])
    assert "none.json: cannot read landmarks" in err
    (tmp_path / "other.json").write_text(json.dumps({"y.png": template_68().tolist()}))
    rc = run_cli(align_cli.main, args + [str(tmp_path / "other.json")])
    err = capsys.readouterr().err
    assert rc == 2 and f"skipped {tmp_path / 'x.png'}: no entry in the landmarks" in err
    assert err.strip().splitlines()[-1] == "error: no face aligned from 1 file(s)"


def test_unreadable_image_is_skipped_and_listed(tmp_path, capsys):
    image, lm = random_case(8, 160, 160, 12, (80, 70))
    Image.fromarray(image).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "lm.json").write_text(json.dumps({"good.png": lm.tolist(), "bad.png": lm.tolist()}))
    rc = run_cli(align_cli.main, ["--images", str(tmp_path), "--output", str(tmp_path / "out"),
                              "--landmarks", str(tmp_path / "lm.json"), "--size", "32", "--transform-size", "64"])
    err = capsys.readouterr().err
    assert rc == 0 and sorted(os.listdir(tmp_path / "out")) == [MANIFEST, "good.png"]
    assert f"skipped {tmp_path / 'bad.png'}: not a readable image" in err


def test_align_face_rejects_bad_arrays_and_landmarks():
    image, lm = random_case(9, 120, 120, 10, (60, 50))
    with pytest.raises(InputError, match=r"expected a uint8 \(H, W\)"):
        align.align_face(image.astype(np.float32), lm, 32, 64)
    with pytest.raises(InputError, match=r"expected a uint8"):
        align.align_face(image[..., :2], lm, 32, 64)
    with pytest.raises(InputError, match=r"expected \(68, 2\) dlib points or \(5, 2\) points.*got shape \(3, 2\)"):
        align.align_face(image, lm[:3], 32, 64)
    with pytest.raises(InputError, match="non-finite"):
        align.align_face(image, np.where(np.arange(68)[:, None] == 40, np.inf, lm), 32, 64)
    with pytest.raises(InputError, match="coincide"):
        align.align_face(image, np.full((5, 2), 30.0), 32, 64)
    with pytest.raises(InputError, match="outside the 120x120"):
        align.align_face(image, lm + 1000, 32, 64)
    with pytest.raises(InputError, match="at most the transform size"):
        align.align_face(image, lm, 128, 64)
    with pytest.raises(CheckpointError, match="no such shape predictor"):
        align.detect_landmarks(image, "/nonexistent/shape_predictor.dat")


def test_same_stem_twice_is_an_error(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.new("RGB", (32, 32)).save(tmp_path / sub / "x.png")
    with pytest.raises(InputError, match="would both be written as x.png"):
        align.align_files([str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png")],
                          RunFolder(str(tmp_path / "out"), "align"), landmarks={"x.png": template_68()}, progress=False)


def test_rerun_replaces_the_previous_run_only_with_overwrite(tmp_path, capsys):
    """Aligning into a previous run's folder: refused without --overwrite; with it the old faces go (exactly the
    files the manifest lists), other files stay."""
    a, lm_a = random_case(10, 160, 160, 12, (80, 70))
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(a).save(tmp_path / "b.png")
    (tmp_path / "lm.json").write_text(json.dumps({"a.png": lm_a.tolist(), "b.png": lm_a.tolist()}))
    out = tmp_path / "out"
    args = ["--output", str(out), "--landmarks", str(tmp_path / "lm.json"), "--size", "32", "--transform-size", "64"]
    assert run_cli(align_cli.main, ["--images", str(tmp_path / "a.png"), str(tmp_path / "b.png"), *args]) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    err = _cli_error(capsys, ["--images", str(tmp_path / "a.png"), *args])
    assert "holds a previous run (2 files" in err and "--overwrite" in err
    assert run_cli(align_cli.main, ["--images", str(tmp_path / "a.png"), *args, "--overwrite"]) == 0
    assert sorted(os.listdir(out)) == ["a.png", MANIFEST, "notes.txt"]


def _encoder_size_face(image, predictor_path, size):
    return align.align_face(image, align.detect_landmarks(image, predictor_path)[0], size, size)


def test_read_image_applies_the_exif_orientation(tmp_path):
    """The one image reader shows a photo as displayed: PNG and JPEG files stored turned (orientations 3, 6, 8)."""
    yy, xx = np.mgrid[:40, :60]
    upright = np.stack([xx * 4, yy * 6, 255 - xx * 4], axis=-1).astype(np.uint8)
    turn_back = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}
    for orientation in (3, 6, 8):
        save_rotated(tmp_path / f"r{orientation}.png", upright, orientation)
        np.testing.assert_array_equal(read_image(str(tmp_path / f"r{orientation}.png")), upright)
        save_rotated(tmp_path / f"r{orientation}.jpg", upright, orientation)
        stored = Image.open(tmp_path / f"r{orientation}.jpg")  # lossy: compare with its own decoded pixels, turned
        assert stored.size == ((60, 40) if orientation == 3 else (40, 60))  # (W, H): turned by 6 and 8
        np.testing.assert_array_equal(read_image(str(tmp_path / f"r{orientation}.jpg")),
                                      np.asarray(stored.convert("RGB").transpose(turn_back[orientation])))


def test_invert_align_option_aligns_at_the_encoder_size(predictor_path, drawn_photos, encoder_dir, tmp_path, capsys):
    """`ffclip invert --align PREDICTOR`: each photo's largest face FFHQ-aligned at the encoder's input size (e4e's
    inference) before inversion, a photo stored rotated with an EXIF orientation tag as displayed; photos without a
    face are listed and skipped."""
    photos, one, _ = drawn_photos
    image = np.asarray(Image.open(photos / "one.png"))
    save_rotated(photos / "turned.png", image, orientation=8)
    out = tmp_path / "codes.npy"
    rc = run_cli(invert_main, ["--encoder", encoder_dir, "--images", str(photos / "one.png"),
                               str(photos / "turned.png"), str(photos / "plain.png"), "--output", str(out),
                               "--align", predictor_path])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"skipped {photos / 'plain.png'}: no face found" in err
    editor = Editor.from_pretrained(encoder_dir)
    aligned = _encoder_size_face(image, predictor_path, max(editor.input_size))
    codes = np.load(out)
    assert codes.shape[0] == 2 and json.loads((tmp_path / "codes.json").read_text())[1].endswith("turned.png")
    # the same aligned pixels through the same jitted program (one padded batch of 8 both): the same bits
    np.testing.assert_array_equal(codes, np.repeat(editor.invert([aligned]), 2, axis=0))


def test_studio_align_option(predictor_path, drawn_photos, encoder_dir, tmp_path):
    """The studio engine's photo reader with --align: an uploaded photo's largest face aligned at the encoder's input
    size, as invert --align does, a photo stored rotated with an EXIF tag as displayed; no face is a message."""
    photos, _, _ = drawn_photos
    studio = Engine(Editor.from_pretrained(encoder_dir, align=predictor_path))
    image = np.asarray(Image.open(photos / "one.png"))
    want = _encoder_size_face(image, predictor_path, 32)
    np.testing.assert_array_equal(studio.read_photo(str(photos / "one.png")), want)
    save_rotated(tmp_path / "turned.jpg", image, orientation=6)
    turned = np.asarray(Image.open(tmp_path / "turned.jpg").transpose(Image.Transpose.ROTATE_270))  # JPEG's pixels
    np.testing.assert_array_equal(studio.read_photo(str(tmp_path / "turned.jpg")),
                                  _encoder_size_face(turned, predictor_path, 32))
    with pytest.raises(InputError, match="no face found"):
        studio.read_photo(str(photos / "plain.png"))
