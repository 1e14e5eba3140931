"""The EmoNet "bag of visual words" (BOVW) vector of a 48x48 face crop.

Column order (2728 float32 values), also given by
:meth:`BOVWExtractor.get_feature_names_out`:

* 0..135: the 68 dlib landmarks flattened as x0, y0, x1, y1, ... in 48x48 pixel coordinates;
* 136..2727: the sliding-window HOG of :mod:`ensemble_fer.features.hog` (windows y-then-x, step 6;
  inside each window its 8x8 cells row-major; 8 orientation bins innermost).

Landmarks are predicted inside the face the detector finds in the crop, or inside the whole
frame when it finds none (FER2013 crops are faces already, so the frame is a fair box).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ensemble_fer.features import faces, hog
from ensemble_fer.errors import InputError
from ensemble_fer.features.landmarks import N_LANDMARKS

IMAGE_SIZE = 48
N_LANDMARK_VALUES = 2 * N_LANDMARKS
BOVW_SIZE = N_LANDMARK_VALUES + hog.HOG_SIZE
DETECTORS = ("mmod", "hog", "none")


@dataclass(frozen=True)
class ExtractorConfig:
    """Everything that decides the features; its hash guards resumes and model/data pairing."""

    detector: str = "hog"
    upsample: int = 1
    """Times the crop is doubled before detection (dlib finds no face under ~80 pixels)."""
    pad: int = 12
    """Border (replicated) added around the crop before detection, so a face that fills the
    frame has the context the detectors were trained with."""
    blank_std: float = 3.0
    """Crops whose pixel standard deviation is below this are near-blank (no face at all)."""
    hog_window: int = hog.WINDOW
    hog_step: int = hog.STEP
    hog_orientations: int = hog.ORIENTATIONS
    hog_cell: int = hog.CELL

    def __post_init__(self):
        if self.detector not in DETECTORS:
            raise InputError(f"detector must be one of {DETECTORS}; got {self.detector!r}")
        if self.upsample < 0 or self.pad < 0:
            raise InputError(f"upsample and pad must be >= 0; got {self.upsample}, {self.pad}")

    def to_json(self) -> dict:
        return asdict(self)

    def differences(self, other: "ExtractorConfig") -> dict:
        """``{field: (this value, other's value)}`` of the fields where the two configs differ."""
        ours, theirs = self.to_json(), other.to_json()
        return {k: (v, theirs[k]) for k, v in ours.items() if theirs[k] != v}

    @classmethod
    def from_json(cls, data: dict, where) -> "ExtractorConfig":
        """The config recorded in a feature store or beside a model; ``where`` names the file.

        Stores and models made while the training split of FER2013 was blurred recorded a
        ``blur_sigma`` and blurred every held-out crop (and photo) to match: they describe
        data that no longer exists and are refused. A recorded 0 (nothing blurred) is accepted.
        """
        if not isinstance(data, dict):
            raise InputError(f"{where}: the extractor config must be a JSON object; got {str(data)[:80]}")
        data = dict(data)
        blur_sigma = data.pop("blur_sigma", 0.0)
        if blur_sigma is not None and (isinstance(blur_sigma, bool) or not isinstance(blur_sigma, (int, float))):
            raise InputError(f"{where}: extractor blur_sigma must be a number; got {blur_sigma!r}")
        for f in fields(cls):       # the type of each field's default: str, int or float
            value, kind = data.get(f.name, f.default), type(f.default)
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
                raise InputError(f"{where}: extractor {f.name} must be {'a number' if kind is float else kind.__name__}"
                                 f"; got {value!r}")
        if blur_sigma is None or blur_sigma > 0:
            raise InputError(f"{where}: made with blur_sigma {blur_sigma} (held-out crops blurred to match a "
                             f"blurred training copy); this version never alters inputs: re-extract the features "
                             f"(python -m pipelines.extract_features --force) and retrain the model")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InputError(f"{where}: the extractor config is not one this code knows ({exc})") from None


def assemble_bovw(landmarks: np.ndarray, hog_values: np.ndarray) -> np.ndarray:
    """Concatenate (N, 68, 2) landmarks and (N, 2592) HOG into (N, 2728) BOVW vectors."""
    landmarks = np.asarray(landmarks, dtype=np.float32)
    hog_values = np.asarray(hog_values, dtype=np.float32)
    return np.concatenate([landmarks.reshape(len(landmarks), -1), hog_values], axis=1)


def locate_faces_in_crop(image: np.ndarray, config: ExtractorConfig) -> list[faces.Box]:
    """Face boxes in a 48x48 crop, in the crop's coordinates (clipped to the frame)."""
    if config.detector == "none":
        return []
    import cv2

    p = config.pad
    padded = cv2.copyMakeBorder(image, p, p, p, p, cv2.BORDER_REPLICATE) if p else image
    boxes = faces.detect_faces(padded, detector=config.detector, upsample=config.upsample)
    top = IMAGE_SIZE - 1
    return [(min(max(l - p, 0), top), min(max(t - p, 0), top), min(max(r - p, 0), top), min(max(b - p, 0), top))
            for l, t, r, b in boxes]


def analyse_crops(images: np.ndarray, config: ExtractorConfig) -> dict[str, np.ndarray]:
    """Detection, landmarks, HOG and BOVW for a batch of 48x48 uint8 crops.

    Every crop is analysed as given (no input is altered to look like the training data).
    Returns ``images`` (N, 48, 48): the crops as the model sees them, ``landmarks``
    (N, 68, 2), ``hog`` (N, 2592), ``bovw`` (N, 2728), ``n_faces`` (N,) (-1 when no detector
    runs), ``boxes`` (N, 4) (the box landmarks were predicted in) and ``blank`` (N,) bool.
    """
    images = check_crops(images)
    n = len(images)
    landmarks = np.empty((n, N_LANDMARKS, 2), dtype=np.float32)
    n_faces = np.full(n, -1, dtype=np.int16)
    boxes = np.empty((n, 4), dtype=np.int16)
    for i, image in enumerate(images):
        found = locate_faces_in_crop(image, config)
        if config.detector != "none":
            n_faces[i] = len(found)
        box = found[0] if found else faces.WHOLE_FRAME
        boxes[i] = box
        landmarks[i] = faces.face_landmarks(image, box)
    hog_values = hog.sliding_hog(images) if n else np.empty((0, hog.HOG_SIZE), np.float32)
    blank = images.reshape(n, -1).std(axis=1) < config.blank_std
    return {"images": images, "landmarks": landmarks, "hog": hog_values, "bovw": assemble_bovw(landmarks, hog_values),
            "n_faces": n_faces, "boxes": boxes, "blank": blank}


def check_crops(images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise InputError(f"images must be 48x48 crops, shape (N, 48, 48); got shape {images.shape}")
    if images.dtype != np.uint8:
        raise InputError(f"images must be uint8 grayscale; got dtype {images.dtype}")
    return images


def feature_names() -> list[str]:
    names = [f"landmark{i}_{axis}" for i in range(N_LANDMARKS) for axis in ("x", "y")]
    for wy in range(0, IMAGE_SIZE, hog.STEP):
        for wx in range(0, IMAGE_SIZE, hog.STEP):
            cells_y = min(hog.WINDOW, IMAGE_SIZE - wy) // hog.CELL
            cells_x = min(hog.WINDOW, IMAGE_SIZE - wx) // hog.CELL
            names += [f"hog_y{wy}_x{wx}_cell{cy}{cx}_o{o}"
                      for cy in range(cells_y) for cx in range(cells_x) for o in range(hog.ORIENTATIONS)]
    return names


class BOVWExtractor(TransformerMixin, BaseEstimator):
    """scikit-learn transformer: 48x48 uint8 crops (N, 48, 48) -> BOVW vectors (N, 2728).

    Nothing is learnt; ``fit`` checks the input and records the output width so that the
    transformer composes in a ``Pipeline`` (e.g. before a ``StandardScaler`` and a classifier).
    """

    def __init__(self, detector: str = "hog", upsample: int = 1, pad: int = 12):
        self.detector = detector
        self.upsample = upsample
        self.pad = pad

    def _config(self) -> ExtractorConfig:
        return ExtractorConfig(detector=self.detector, upsample=self.upsample, pad=self.pad)

    def fit(self, X, y=None):
        self._config()  # validates the parameters
        check_crops(X)
        self.n_features_out_ = BOVW_SIZE
        return self

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "n_features_out_")
        return analyse_crops(X, self._config())["bovw"]

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return np.array(feature_names(), dtype=object)
