"""Faces with dlib: detection, 68 landmarks, and the one place a face is cropped.

dlib objects never leave this module: a face box is a plain tuple
``(left, top, right, bottom)`` in pixels (right and bottom inclusive, as dlib's rectangles),
and landmarks are a float32 array of shape (68, 2) holding (x, y). The HOG detector is built
into dlib; the 68-landmark predictor and the MMOD detector are files of the
``face_recognition_models`` package, an optional extra (``pip install 'ensemble_fer[landmarks]'``,
:data:`MODELS_EXTRA`): default prediction (HOG detection, image-only networks) does not need it,
feature extraction and ``--detector mmod`` do, and say so in one line when it is missing. Each
model is loaded on first use, never at import, and once per process.

A picture's faces become model inputs in two steps, used by every stage (prediction, video,
Grad-CAM, evaluation on photos, class-folder datasets of whole frames):
:func:`picture_faces` finds them (a 48x48 picture is a FER2013 face crop itself, box
:data:`WHOLE_FRAME`, no detection), and :func:`crop_face` turns a box into the 48x48
grayscale crop framed like FER2013.
"""

from __future__ import annotations

import functools
import importlib.util
import typing

import numpy as np

from ensemble_fer.errors import InputError
from ensemble_fer.features.image_io import to_gray

DETECTORS = ("hog", "mmod")
CROP_SIZE = 48

UPSAMPLE_AUTO = "auto"
"""Detect on the photo as it is, and again on the photo doubled unless every face found is
large; see :func:`detect_scored_faces`. The default for photos and video frames."""
MAX_UPSAMPLE = 4
"""Most doublings allowed: 4 already makes a photo 256 times larger (faces down to ~5 px)."""
DETECTION_BYTES_PER_PIXEL = 16
"""Memory dlib's detection takes per pixel of the doubled photo, roughly: the doubled gray
image, its scaled pyramid and the HOG planes of every level."""

UPSAMPLE_FAST = "fast"
"""The fast model's search (:data:`FAST_SEARCH`): ``auto``'s two passes on smaller copies of the
photo, giving up its smallest faces; see :func:`detect_scored_faces`. The default of the shipped
fast model (:func:`ensemble_fer.release.default_upsample`)."""

UPSAMPLE_MODES = (UPSAMPLE_AUTO, UPSAMPLE_FAST)


class TwoPass(typing.NamedTuple):
    """A two-pass face search (:func:`search_faces`): detect on the photo resized by ``first``;
    those faces are the result when there is at least one and every one is at least ``accept``
    times the smallest face that pass can show (``SMALLEST_FACE_UNDOUBLED / first``); else
    detect on the photo resized by ``second``."""

    first: float
    second: float
    accept: float


AUTO_SEARCH = TwoPass(1.0, 2.0, 2.0)
"""``upsample="auto"``: the photo as it is, then doubled unless every face is 146 px or more."""

FAST_SEARCH = TwoPass(0.6, 1.6, 0.0)
"""``upsample="fast"``: the photo at 0.6 (a third of the work of the photo as it is; it shows
faces from about 122 px), and any face found there ends the search (a portrait or a selfie);
else the photo at 1.6 (about 2/3 of the work of the doubled photo; boxes from about 46 px).
Chosen on recall and time in benchmarks/bench_detect.py (benchmarks/RESULTS.md, session 11):
at 1.75 it finds 3 more of the 43 ground-truth faces but leaves ``--model fast`` only about
2.0-2.1x quicker than the release on those photos; at 1.5 it finds 8 fewer."""

FAST_SEARCH_GIVES_UP = (
    "with --model fast faces are searched with --upsample fast unless told, which finds 35 of the 43 "
    "faces (37-109 px) of dlib's ground-truth photos where auto finds all 43: it misses 7 of the 22 "
    "faces of 37 px (it searches the photo at 1.6, not doubled) and a 91 px face beside two larger ones "
    "(a face of ~122 px or more ends its search); measured ~6x quicker end to end than release 0.9 "
    "on those photos and ~5x on a 640x480 portrait, one core (2.3-2.7x against the lighter release 0.7)")
"""What ``--model fast``'s default search gives up, in numbers (benchmarks/RESULTS.md, sessions 11
and 21)."""

# The smallest face box each detector reports on an image that is not doubled (pixels, box
# side): HOG scans an 80x80 window over an image pyramid in steps of 6/5 and its smallest
# boxes are 73 px wide; MMOD's are 80 px (measured on dlib's test photos,
# benchmarks/bench_detect.py). Doubling the image shows faces down to half these sides.
SMALLEST_FACE_UNDOUBLED = {"hog": 73, "mmod": 80}

Box = tuple[int, int, int, int]

WHOLE_FRAME: Box = (0, 0, CROP_SIZE - 1, CROP_SIZE - 1)
"""The box of a picture that is already a 48x48 face crop."""


def parse_upsample(text) -> int | str:
    """An upsampling setting from text (``--upsample``): ``auto``, ``fast`` or a whole number
    of doublings in [0, MAX_UPSAMPLE]; ``InputError`` naming what is allowed otherwise."""
    try:
        value = int(text)
    except ValueError:
        if text in UPSAMPLE_MODES:
            return text
        value = None
    if value is None or not 0 <= value <= MAX_UPSAMPLE:
        raise InputError(f"must be {' or '.join(UPSAMPLE_MODES)} or an int in [0, {MAX_UPSAMPLE}] "
                         f"(each doubles the photo before detection); got {text!r}")
    return value


# Built once per process: dlib deserialises the detector on every construction (~0.26 s, more
# than the detection of a 48x48 crop or a photo's faces).
@functools.lru_cache(maxsize=None)
def _hog_detector():
    import dlib

    return dlib.get_frontal_face_detector()


MODELS_PACKAGE = "face_recognition_models"
MODELS_EXTRA = "pip install 'ensemble_fer[landmarks]'"
"""How to install the landmark predictor and the MMOD detector (the package ``MODELS_PACKAGE``)."""


def require_model_files(what: str) -> None:
    """Raise :class:`InputError` now, naming ``what`` needs them and how to install them, when
    the landmark and MMOD model files are not installed (cheap: nothing is imported)."""
    if importlib.util.find_spec(MODELS_PACKAGE) is None:
        raise InputError(f"{what} needs dlib's landmark and MMOD model files, an optional extra: {MODELS_EXTRA} "
                         f"({MODELS_PACKAGE}, about 100 MB); prediction with the default HOG detector does not "
                         f"need them")


def _model_files():
    require_model_files("this step (68 landmarks or the MMOD detector)")
    import face_recognition_models

    return face_recognition_models


@functools.lru_cache(maxsize=None)
def _mmod_detector():
    import dlib

    return dlib.cnn_face_detection_model_v1(_model_files().cnn_face_detector_model_location())


@functools.lru_cache(maxsize=None)
def _shape_predictor():
    import dlib

    return dlib.shape_predictor(_model_files().pose_predictor_model_location())


def detect_faces(image: np.ndarray, detector: str = "hog", upsample: int | str = 1,
                 threshold: float = 0.0) -> list[Box]:
    """Boxes of the faces in ``image`` (uint8 grayscale or RGB), largest first.

    ``detector`` is ``hog`` (dlib's HOG + linear SVM: fast, frontal faces) or ``mmod``
    (dlib's CNN: slower, more poses). ``upsample`` doubles the image that many times first,
    to find faces smaller than about 80 pixels (1: down to about 40), or is ``"auto"``
    (:data:`UPSAMPLE_AUTO`, see :func:`detect_scored_faces`). ``threshold`` shifts the HOG
    detector's decision threshold (negative finds more, less certain faces); MMOD ignores it.
    """
    return [box for box, _ in detect_scored_faces(image, detector, upsample, threshold)]


def detect_scored_faces(image: np.ndarray, detector: str = "hog", upsample: int | str = 1,
                        threshold: float = 0.0) -> list[tuple[Box, float]]:
    """:func:`detect_faces` with each box's detection score: ``[(box, score), ...]``, largest first.

    The score is the detector's own confidence: for ``hog`` the SVM margin (0 at the decision
    threshold, above about 1 for clear frontal faces), for ``mmod`` the CNN's output (above
    about 0.5 for clear faces). Scores of the two detectors are not on one scale.

    ``upsample="auto"`` detects on the image as it is first (about a quarter of the work of
    the doubled image). When every face found is at least twice the smallest face that pass
    can report (:data:`SMALLEST_FACE_UNDOUBLED`: 146 px for HOG), those faces are the result:
    any face only the doubled image shows would be less than half the size of each of them.
    Otherwise (no face, or a smaller one) the result is that of ``upsample=1``. So a portrait
    costs one cheap pass, a group photo of small faces gets the full search, and what ``auto``
    can miss is a face under ~73 px beside faces all 146 px or more.

    ``upsample="fast"`` (:data:`FAST_SEARCH`) trades the smallest faces for time: a pass on
    the photo at 0.6 that stops at any face (so what it misses is a face under ~122 px beside
    one of ~122 px or more), else one on the photo at 1.6 (boxes from ~46 px: of the 37 px
    faces that ``auto`` finds, about a third are given up). Boxes are in the photo's own pixels.
    """
    check_detection(detector, upsample)
    check_detection_memory(np.shape(image), upsample, "image")
    if upsample in UPSAMPLE_MODES:
        return search_faces(image, AUTO_SEARCH if upsample == UPSAMPLE_AUTO else FAST_SEARCH, detector, threshold)
    return _detect(_as_dlib_image(image), detector, upsample, threshold)


def search_faces(image: np.ndarray, search: TwoPass, detector: str = "hog",
                 threshold: float = 0.0) -> list[tuple[Box, float]]:
    """The faces a :class:`TwoPass` search finds (:func:`detect_resized` at ``search.first``,
    and at ``search.second`` unless the first pass's faces are accepted), in the photo's pixels.
    ``upsample="auto"`` is :data:`AUTO_SEARCH`, ``"fast"`` is :data:`FAST_SEARCH`."""
    found = detect_resized(image, search.first, detector, threshold)
    large = search.accept * SMALLEST_FACE_UNDOUBLED[detector] / search.first
    if found and all(min(right - left, bottom - top) + 1 >= large for (left, top, right, bottom), _ in found):
        return found
    return detect_resized(image, search.second, detector, threshold)


def check_detection(detector, upsample) -> None:
    """``detector`` is one of :data:`DETECTORS`; ``upsample`` is one of :data:`UPSAMPLE_MODES`
    or an int in ``[0, MAX_UPSAMPLE]``."""
    if detector not in DETECTORS:
        raise InputError(f"detector must be one of {DETECTORS}; got {detector!r}")
    if detector == "mmod":
        require_model_files("detector='mmod' (dlib's CNN face detector)")
    if isinstance(upsample, str) and upsample in UPSAMPLE_MODES:
        return
    if (isinstance(upsample, bool) or not isinstance(upsample, (int, np.integer)) or upsample < 0
            or upsample > MAX_UPSAMPLE):
        raise InputError(f"upsample must be {UPSAMPLE_AUTO!r}, {UPSAMPLE_FAST!r} or an int in [0, {MAX_UPSAMPLE}]; "
                         f"got {upsample!r}")


def check_detection_memory(shape, upsample, where) -> None:
    """Refuse (:class:`InputError` naming ``where``) a detection on a picture of ``shape`` at
    ``upsample`` that would need more memory than the machine has available."""
    from ensemble_fer import memory

    if upsample in UPSAMPLE_MODES:
        # a two-pass search's largest pass: the doubled photo for auto, the photo at 1.6 for fast
        search = AUTO_SEARCH if upsample == UPSAMPLE_AUTO else FAST_SEARCH
        scale = max(search.first, search.second)
        what = f"face detection at upsample {upsample} ({shape[1]}x{shape[0]} px resized by {scale:g})"
    else:
        scale = 2 ** int(upsample)
        what = (f"face detection at upsample {int(upsample)} ({shape[1]}x{shape[0]} px doubled "
                f"{int(upsample)} times)")
    needed = int(shape[0] * shape[1] * scale ** 2 * DETECTION_BYTES_PER_PIXEL)
    memory.check_fits(needed, f"{where}: {what}")


def detect_resized(image: np.ndarray, scale: float, detector: str = "hog",
                   threshold: float = 0.0) -> list[tuple[Box, float]]:
    """:func:`detect_scored_faces` at ``upsample=0`` on ``image`` resized by ``scale`` (> 0),
    boxes in ``image``'s own pixels. Scale 1 is the image as it is and 2 is dlib's own doubling
    (``upsample=1``, so that ``auto`` keeps its exact boxes); other scales resize with OpenCV
    (area averaging down, bilinear up). The work grows with ``scale ** 2``; the smallest face
    found is about ``SMALLEST_FACE_UNDOUBLED[detector] / scale`` pixels."""
    check_detection(detector, 0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)) or not scale > 0:
        raise InputError(f"scale must be a number > 0; got {scale!r}")
    image = _as_dlib_image(image)
    if scale in (1.0, 2.0):
        return _detect(image, detector, int(scale) - 1, threshold)
    import cv2

    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    sx, sy = size[0] / width, size[1] / height
    # right and bottom are inclusive: map the pixel edges (right + 1), then step back one pixel
    return [((round(left / sx), round(top / sy), round((right + 1) / sx) - 1, round((bottom + 1) / sy) - 1), score)
            for (left, top, right, bottom), score in _detect(resized, detector, 0, threshold)]


def _detect(image: np.ndarray, detector: str, upsample: int, threshold: float) -> list[tuple[Box, float]]:
    if detector == "hog":
        rects, scores, _ = _hog_detector().run(image, upsample, threshold)
    else:
        found = _mmod_detector()(image, upsample)
        rects, scores = [d.rect for d in found], [d.confidence for d in found]
    scored = [((r.left(), r.top(), r.right(), r.bottom()), float(score)) for r, score in zip(rects, scores)]
    return sorted(scored, key=lambda item: (item[0][2] - item[0][0]) * (item[0][3] - item[0][1]), reverse=True)


def picture_faces(image: np.ndarray, detector: str = "hog",
                  upsample: int | str = UPSAMPLE_AUTO) -> list[tuple[Box, float | None]]:
    """The faces of a picture as prediction classifies them: ``[(box, detection score), ...]``,
    largest first (:func:`detect_scored_faces`; ``upsample="auto"`` unless told). A 48x48
    picture is taken to be a FER2013 face crop itself: no detection runs, its one face is
    :data:`WHOLE_FRAME` with score ``None``."""
    if np.shape(image)[:2] == (CROP_SIZE, CROP_SIZE):
        return [(WHOLE_FRAME, None)]
    return detect_scored_faces(image, detector, upsample)


def picture_crops(image: np.ndarray, detector: str = "hog", upsample: int | str = UPSAMPLE_AUTO
                  ) -> tuple[list[Box], list[float | None], list[np.ndarray]]:
    """``(boxes, detection scores, 48x48 crops)`` of a grayscale picture's faces, largest
    first (:func:`picture_faces`, then :func:`crop_face` of each): all that prediction needs of
    a picture before its network runs. Plain tuples, floats and arrays, so that they can be
    made in a worker process (``predict --workers``)."""
    found = picture_faces(image, detector, upsample)
    return [box for box, _ in found], [score for _, score in found], [crop_face(image, box) for box, _ in found]


def face_landmarks(image: np.ndarray, box: Box) -> np.ndarray:
    """The 68 iBUG landmarks (x, y) of the face in ``box``, as float32 (68, 2)."""
    import dlib

    left, top, right, bottom = (int(v) for v in box)
    shape = _shape_predictor()(_as_dlib_image(image), dlib.rectangle(left, top, right, bottom))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


# FER2013's crops show a little more than dlib's face box: where dlib finds a face in one of
# its 48x48 crops, the box spans 39-43 pixels (benchmarks/bench_extract.py). So a box found
# in a photo is grown by this factor (about its centre) before cropping, so that faces from
# photos are framed like the training faces.
FER_FRAMING = 1.2


def crop_face(image: np.ndarray, box: Box, size: int = CROP_SIZE, framing: float = FER_FRAMING) -> np.ndarray:
    """A ``size`` x ``size`` uint8 grayscale crop around ``box`` with FER2013's framing.

    Parts of the grown box outside the image are filled by replicating the border. A picture
    that is already ``size`` x ``size`` with the whole frame as box (see :func:`picture_faces`)
    is its own crop: it is framed like FER2013 already.
    """
    import cv2

    gray = to_gray(image)
    left, top, right, bottom = box
    if gray.shape == (size, size) and (left, top, right, bottom) == (0, 0, size - 1, size - 1):
        return gray
    cx, cy = (left + right + 1) / 2.0, (top + bottom + 1) / 2.0
    half = max(right - left + 1, bottom - top + 1) * framing / 2.0
    # One affine warp does the crop, the scaling and the border fill together.
    scale = size / (2.0 * half)
    matrix = np.array([[scale, 0.0, (half - cx) * scale], [0.0, scale, (half - cy) * scale]])
    return cv2.warpAffine(gray, matrix, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def _as_dlib_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InputError(f"image must be uint8; got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3):
        raise InputError(f"image must be (H, W) or (H, W, 3); got shape {image.shape}")
    return np.ascontiguousarray(image)
