"""FFHQ face alignment of raw photos, the crop e4e and the FFHQ StyleGAN2 expect (NVlabs/ffhq-dataset
`recreate_aligned_images`, e4e's `scripts/align_faces_parallel.py`). The command line is `ffclip align`
(`ffclip_jax/cli/align.py`).

Faces come from dlib's HOG frontal face detector and 68 landmarks with dlib's `shape_predictor_68_face_landmarks.dat`
(download it yourself from http://dlib.net/files/shape_predictor_68_face_landmarks.dat.bz2 and bunzip2 it; dlib comes
with `pip install 'ffclip-jax[align]'`), or from a landmarks JSON file instead (no dlib needed):

    {"photo.jpg": [[x, y], ...],                        68 dlib points or 5 points (one face)
     "group.png": [[[x, y], ...], [[x, y], ...]]}       several faces, the first is aligned without all_faces

keyed by the path as given or by the file name. Coordinates are pixels of the image as displayed (EXIF orientation
applied), x to the right, y down, pixel centres at integers (dlib's convention). The 5 points are, in this order: the
centre of the eye on the image's left (the subject's right eye, dlib 36-41), the centre of the eye on the image's
right (dlib 42-47), the mouth corner on the image's left (dlib 48), the one on the image's right (dlib 54), the nose
tip (dlib 30; not used by the alignment). InsightFace/RetinaFace order their 5 points (eye, eye, nose, mouth, mouth):
reorder those with [0, 1, 3, 4, 2].

The defaults reproduce FFHQ (1024 output from a 4096 QUAD transform); e4e's own script uses size 256, transform
size 256 (`align_for_encoder`, what the Editor's `align` does).

    from ffclip_jax.align import align_face, align_images
    aligned = align_face(uint8_image, landmarks, output_size=256)      # (256, 256, 3) uint8
    aligned, skipped = align_images(uint8_images, "shape_predictor_68_face_landmarks.dat", size=256)
"""
from __future__ import annotations

import functools
import json
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
import scipy.ndimage
from PIL import Image
from tqdm import tqdm

from ffclip_jax.errors import CheckpointError, ConfigError, InputError
from ffclip_jax.inputs import read_image, to_rgb
from ffclip_jax.outputs import RunFolder

PREDICTOR_URL = "http://dlib.net/files/shape_predictor_68_face_landmarks.dat.bz2"
LANDMARK_SHAPES = "(68, 2) dlib points or (5, 2) points [eye, eye, mouth corner, mouth corner, nose]"


# --------------------------------------------------------------------------------------------------------- geometry

def keypoints_from_68(points: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(68, 2) dlib points -> (eye_left, eye_right, mouth_left, mouth_right), each (2,) float64: the means of
    points 36-41 and 42-47, and points 48 and 54."""
    points = np.asarray(points, dtype=np.float64)
    return points[36:42].mean(axis=0), points[42:48].mean(axis=0), points[48], points[54]


def keypoints_from_5(points: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(5, 2) points [eye_left, eye_right, mouth_left, mouth_right, nose] -> the first four, each (2,) float64."""
    points = np.asarray(points, dtype=np.float64)
    return points[0], points[1], points[2], points[3]


def face_keypoints(landmarks, name: str = "landmarks") -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validated (68, 2) or (5, 2) landmarks -> (eye_left, eye_right, mouth_left, mouth_right), each (2,) float64."""
    try:
        points = np.asarray(landmarks, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected {LANDMARK_SHAPES}, got something that is not a numeric array") from None
    if points.shape not in ((68, 2), (5, 2)):
        raise InputError(f"{name}: expected {LANDMARK_SHAPES}, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise InputError(f"{name}: has non-finite values")
    return keypoints_from_68(points) if len(points) == 68 else keypoints_from_5(points)


def _rot90(v: np.ndarray) -> np.ndarray:
    """(2,) vector turned by +90 degrees in image coordinates (y down): (vx, vy) -> (-vy, vx)."""
    return np.array([-v[1], v[0]])


def ffhq_quad(eye_left, eye_right, mouth_left, mouth_right) -> Tuple[np.ndarray, float]:
    """FFHQ's oriented crop square: quad (4, 2) float64 corners [top-left, bottom-left, bottom-right, top-right] of the
    face frame, and qsize, its side length."""
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (mouth_left + mouth_right) * 0.5 - eye_avg
    x = eye_to_eye - _rot90(eye_to_mouth)
    x /= np.hypot(x[0], x[1])
    x *= max(np.hypot(eye_to_eye[0], eye_to_eye[1]) * 2.0, np.hypot(eye_to_mouth[0], eye_to_mouth[1]) * 1.8)
    y = _rot90(x)
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y]), np.hypot(x[0], x[1]) * 2


def _bounds(quad: np.ndarray) -> Tuple[int, int, int, int]:
    """Integer box (left, top, right, bottom) around a (4, 2) quad."""
    return (int(np.floor(quad[:, 0].min())), int(np.floor(quad[:, 1].min())),
            int(np.ceil(quad[:, 0].max())), int(np.ceil(quad[:, 1].max())))


def _blur_pad(img, pad: np.ndarray, qsize: float):
    """FFHQ's padding: reflect-pad the RGB PIL image by pad (left, top, right, bottom), blur towards the new edges and
    pull them to the median colour -> RGB PIL image."""
    arr = np.pad(np.asarray(img, dtype=np.float32), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
    h, w, _ = arr.shape
    cols = np.arange(w, dtype=np.float32)[None, :, None]
    rows = np.arange(h, dtype=np.float32)[:, None, None]
    # 1 on the outer edge of the padded image, 0 at the old image edge (below inside it); float64 as upstream, since
    # pad holds numpy int64s
    edge = np.maximum(1.0 - np.minimum(cols / pad[0], (w - 1 - cols) / pad[2]),
                      1.0 - np.minimum(rows / pad[1], (h - 1 - rows) / pad[3]))
    sigma = qsize * 0.02
    arr += (scipy.ndimage.gaussian_filter(arr, [sigma, sigma, 0]) - arr) * np.clip(edge * 3.0 + 1.0, 0.0, 1.0)
    arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(edge, 0.0, 1.0)
    return Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)))


def align_face(image, landmarks, output_size: int = 1024, transform_size: int = 4096,
               enable_padding: bool = True) -> np.ndarray:
    """FFHQ-align one face: image (H, W[, C]) uint8 array or PIL image (grayscale/RGBA -> RGB), landmarks (68, 2) dlib
    points or (5, 2) points (see the module docstring) -> (output_size, output_size, 3) uint8."""
    if not 0 < output_size <= transform_size:
        raise InputError(f"output size {output_size} must be positive and at most the transform size {transform_size}")
    img = Image.fromarray(to_rgb(image))
    width, height = img.size
    with np.errstate(divide="ignore", invalid="ignore"):
        quad, qsize = ffhq_quad(*face_keypoints(landmarks))
    if not (np.isfinite(quad).all() and qsize >= 2):
        raise InputError("landmarks: eyes and mouth (nearly) coincide, no face to align")

    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        img = img.resize((int(np.rint(img.width / shrink)), int(np.rint(img.height / shrink))),
                         Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink

    border = max(int(np.rint(qsize * 0.1)), 3)
    left, top, right, bottom = _bounds(quad)
    crop = (max(left - border, 0), max(top - border, 0), min(right + border, img.width),
            min(bottom + border, img.height))
    if crop[2] <= crop[0] or crop[3] <= crop[1]:
        raise InputError(f"landmarks: the face lies outside the {width}x{height} (WxH) image")
    if crop[2] - crop[0] < img.width or crop[3] - crop[1] < img.height:
        img = img.crop(crop)
        quad -= crop[0:2]

    left, top, right, bottom = _bounds(quad)
    pad = (max(border - left, 0), max(border - top, 0), max(right - img.width + border, 0),
           max(bottom - img.height + border, 0))
    if enable_padding and max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        img = _blur_pad(img, pad, qsize)
        quad += pad[:2]

    img = img.transform((transform_size, transform_size), Image.Transform.QUAD, tuple((quad + 0.5).ravel()),
                        Image.Resampling.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.Resampling.LANCZOS)
    return np.asarray(img)


# ------------------------------------------------------------------------------------------------------------ dlib

def _dlib():
    try:
        import dlib  # optional (the `align` extra), and slow to import: only for face detection
    except ImportError:
        raise ConfigError("face detection needs dlib: pip install 'ffclip-jax[align]' (or pass landmarks "
                          "with --landmarks)") from None
    return dlib


def load_predictor(path: str):
    """dlib.shape_predictor of a file (dlib's shape_predictor_68_face_landmarks.dat)."""
    dlib = _dlib()
    where = f"download {PREDICTOR_URL} and unpack it with bunzip2 (nothing is downloaded for you)"
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such shape predictor file; {where}")
    try:
        return dlib.shape_predictor(path)
    except RuntimeError as e:
        reason = (str(e).strip().splitlines() or ["unreadable"])[0]
        raise CheckpointError(f"{path}: not a dlib shape predictor ({reason}); {where}") from None


@functools.lru_cache(maxsize=1)
def _frontal_detector():
    return _dlib().get_frontal_face_detector()


def _face_rectangles(image: np.ndarray) -> list:
    """dlib.rectangles of the faces dlib's HOG detector finds in an (H, W, 3) uint8 image (upsampled once, as
    upstream)."""
    return list(_frontal_detector()(image, 1))


def detect_landmarks(image, predictor, all_faces: bool = False) -> List[np.ndarray]:
    """68 dlib landmarks (68, 2) float64 (x, y) of the largest face (by detection box area), or of all faces, largest
    first; [] when none is found. image: (H, W[, C]) uint8 or PIL; predictor: a path or a dlib.shape_predictor."""
    if isinstance(predictor, (str, os.PathLike)):
        predictor = load_predictor(os.fspath(predictor))
    rgb = to_rgb(image)
    faces = sorted(_face_rectangles(rgb), key=lambda r: r.width() * r.height(), reverse=True)
    found = []
    for rect in faces if all_faces else faces[:1]:
        shape = predictor(rgb, rect)
        if shape.num_parts != 68:
            raise CheckpointError(f"the shape predictor gives {shape.num_parts} points, expected 68 "
                                  f"(dlib's shape_predictor_68_face_landmarks.dat)")
        found.append(np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64))
    return found


def align_images(images: Sequence, predictor, size: int = 1024,
                 transform_size: int = 4096) -> Tuple[List[np.ndarray], List[int]]:
    """Detect and align the largest face of each image ((H, W[, C]) uint8 arrays or PIL images); predictor: a path or
    a loaded dlib.shape_predictor -> (aligned (size, size, 3) uint8 list, indices of the images without a face)."""
    if isinstance(predictor, (str, os.PathLike)):
        predictor = load_predictor(os.fspath(predictor))
    aligned, skipped = [], []
    for i, image in enumerate(images):
        img = to_rgb(image, f"image {i}")
        faces = detect_landmarks(img, predictor)
        if faces:
            aligned.append(align_face(img, faces[0], size, transform_size))
        else:
            skipped.append(i)
    return aligned, skipped


def align_for_encoder(images: Sequence, predictor, input_size) -> Tuple[List[np.ndarray], List[int]]:
    """`align_images` at an e4e encoder's input size (H, W) -> max(H, W) squares, QUAD transform at that size too,
    as e4e's own inference aligns photos (what `invert`, `edit` and the studio's --align do)."""
    size = max(input_size)
    return align_images(images, predictor, size, transform_size=size)


# ----------------------------------------------------------------------------------------------------------- files

def _faces_of(value, name: str) -> List[np.ndarray]:
    """[(68, 2) or (5, 2) float64 per face] of one landmarks entry: one face [[x, y], ...] or a list of faces."""
    try:
        arr = np.asarray(value, dtype=np.float64)
        faces = [arr] if arr.ndim == 2 else list(arr) if arr.ndim == 3 else []
    except (TypeError, ValueError):  # ragged: faces of 68 and of 5 points
        faces = list(value) if isinstance(value, (list, tuple)) else []
    if not faces:
        raise InputError(f"{name}: expected {LANDMARK_SHAPES}, or a list of such faces")
    for k, face in enumerate(faces):
        face_keypoints(face, name if len(faces) == 1 else f"{name} face {k}")
    return [np.asarray(face, dtype=np.float64) for face in faces]


def read_landmarks_json(path: str) -> Dict[str, List[np.ndarray]]:
    """{file name: [(68, 2) or (5, 2) float64 per face]} of a landmarks JSON file (format in the module docstring)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read landmarks ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a landmarks JSON file ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected an object {{\"photo.jpg\": [[x, y], ...]}}, got a {type(data).__name__}")
    return {key: _faces_of(value, f"{path}: {key}") for key, value in data.items()}


def _check_stems(files: Sequence[str]) -> None:
    seen: Dict[str, str] = {}
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in seen:
            raise InputError(f"{seen[stem]} and {path} would both be written as {stem}.png; rename one")
        seen[stem] = path


def align_files(files: Sequence[str], output: RunFolder, *, predictor=None, landmarks=None, size: int = 1024,
                transform_size: int = 4096, all_faces: bool = False,
                progress: bool = True) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Align the faces of image files into the run folder `output` as <stem>.png (<stem>_<k>.png for the k-th face,
    all_faces) with a shape predictor (path or dlib.shape_predictor) or landmarks (a JSON path or {file name:
    [faces]}) -> (written paths, [(file, reason skipped)]). The previous run in `output` is replaced once the
    predictor or landmarks are read; its manifest lists the faces written and the files skipped."""
    if (predictor is None) == (landmarks is None):
        raise ConfigError("give either a shape predictor or landmarks")
    if not 0 < size <= transform_size:
        raise ConfigError(f"--size {size} must be positive and at most --transform-size {transform_size}")
    _check_stems(files)
    if isinstance(predictor, (str, os.PathLike)):
        predictor = load_predictor(os.fspath(predictor))
    if isinstance(landmarks, (str, os.PathLike)):
        landmarks = read_landmarks_json(os.fspath(landmarks))
    elif landmarks is not None:
        landmarks = {key: _faces_of(value, f"landmarks of {key}") for key, value in landmarks.items()}
    output.begin()
    written, skipped = [], []
    for path in tqdm(files, desc="aligning", unit="img", disable=not progress):
        try:
            image = read_image(path)
        except InputError as e:
            skipped.append((path, str(e).replace(f"{path}: ", "", 1)))
            continue
        if predictor is not None:
            faces = detect_landmarks(image, predictor, all_faces)
        else:
            faces = landmarks.get(path, landmarks.get(os.path.basename(path)))
            if faces is None:
                skipped.append((path, "no entry in the landmarks"))
                continue
            faces = faces if all_faces else faces[:1]
        if not faces:
            skipped.append((path, "no face found"))
            continue
        stem = os.path.splitext(os.path.basename(path))[0]
        for k, face in enumerate(faces):
            try:
                aligned = align_face(image, face, size, transform_size)
            except InputError as e:
                skipped.append((path if k == 0 else f"{path} face {k}", str(e)))
                continue
            written.append(output.save_png(f"{stem}.png" if k == 0 else f"{stem}_{k}.png", aligned))
    output.commit(skipped=[{"file": path, "reason": reason} for path, reason in skipped])
    return written, skipped
