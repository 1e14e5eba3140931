"""Facial expressions in photos: every face found, cropped like FER2013, classified.

::

    from ensemble_fer import EmotionRecognizer

    recognizer = EmotionRecognizer.load()                  # models/release (or a path)
    for face in recognizer.predict("party.jpg"):
        print(face.box, face.emotion, face.scores["happy"])
    results = recognizer.predict_many(paths, batch_size=64)   # one list of faces per photo

How a photo becomes results
---------------------------
1. The input (a path, or a uint8 array: grayscale (H, W), RGB or RGBA (H, W, 3|4), any size;
   ``color="bgr"`` for arrays from OpenCV, which are BGR or BGRA) is turned into grayscale once, by :func:`ensemble_fer.features.image_io.to_gray` (ITU-R 601 luma,
   alpha dropped). Detection and cropping both work on that gray image, so a photo given as
   RGB, RGBA or grayscale gives the same faces and the same scores.
2. Faces are found by dlib (:func:`ensemble_fer.features.faces.detect_faces`; HOG detector by default,
   ``detector="mmod"`` for the CNN one; ``upsample="auto"``: the photo as it is, then doubled
   unless every face found is large), largest first. An input that is already 48x48 is taken to be a face crop itself (FER2013 style):
   no detection runs and its one face has the whole frame as box ``(0, 0, 47, 47)``
   (:func:`ensemble_fer.features.faces.picture_faces`).
3. Each face is cropped with FER2013's framing to 48x48 (:func:`ensemble_fer.features.faces.crop_face`).
4. The crops of *all* faces of all photos go through the model together, ``batch_size``
   crops at a time (:meth:`EmotionRecognizer.predict_many`); the model's predictor computes
   the BOVW features with the extractor settings the model was trained with, and applies
   the ensemble weights (:func:`ensemble_fer.inference.loading.load_predictor`).

Steps 1-3 need no model (:func:`ensemble_fer.features.faces.picture_crops`), so they can run
elsewhere: :meth:`EmotionRecognizer.iter_classify` takes their results and runs step 4
(``predict --workers N`` finds faces in worker processes while the network runs here).

Nothing heavy happens at import or in :meth:`EmotionRecognizer.load` (which only checks the
model's files): TensorFlow and the Keras model load on the first prediction, dlib's detector
on the first photo.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ensemble_fer import release
from ensemble_fer.errors import InputError
from ensemble_fer.features import faces
from ensemble_fer.features.datasets import IMAGE_SIZE
from ensemble_fer.features.image_io import read_image_file, to_gray

COLOR_ORDERS = ("rgb", "bgr")

Box = faces.Box


@dataclass(frozen=True)
class FaceResult:
    """One face: its box in the photo, the winning emotion, and every class's probability.

    ``box`` is ``(left, top, right, bottom)`` in pixels (right and bottom inclusive, dlib's
    convention); ``scores`` maps each class name to its probability, in the model's class
    order (see :attr:`EmotionRecognizer.classes`), summing to 1. ``detection_score`` is the
    face detector's confidence in the box (see :func:`ensemble_fer.features.faces.detect_scored_faces`;
    HOG and MMOD scores are on different scales), ``None`` for an input taken as a face crop.
    ``blank`` flags a near-blank crop (all black, all white).
    """

    box: Box
    emotion: str
    scores: dict[str, float] = field(hash=False)
    detection_score: float | None = None
    blank: bool = False
    """The crop is near-blank (pixel standard deviation under the model's ``blank_std``, as
    extraction flags such crops): there is no face to read, whatever ``emotion`` says."""

    @property
    def top_emotion(self) -> tuple[str, float]:
        """``(emotion, probability)`` of the most likely class, e.g. ``("happy", 0.82)``."""
        return self.emotion, self.scores[self.emotion]


class EmotionRecognizer:
    """A trained model (one variant or a weighted ensemble) plus dlib's face detector.

    Make one with :meth:`load`. ``detector`` (``"hog"`` or ``"mmod"``) and ``upsample`` set the
    face detection. ``upsample`` is how many times the photo is doubled before detection (1
    finds faces down to about 40 pixels, 0 only those above about 75 pixels but is about 4
    times faster), or ``"auto"`` (the default): 0 first, and 1 unless every face found is
    twice that size (:func:`ensemble_fer.features.faces.detect_scored_faces`).
    """

    def __init__(self, predictor, *, detector: str = "hog", upsample: int | str = faces.UPSAMPLE_AUTO,
                 source: Path | None = None):
        faces.check_detection(detector, upsample)
        self._predictor = predictor
        self.detector = detector
        self.upsample = upsample if isinstance(upsample, str) else int(upsample)
        self.source = source if source is not None else getattr(predictor, "source", None)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path=None, *, detector: str = "hog",
             upsample: int | str | None = None) -> "EmotionRecognizer":
        """Load a model: a trained variant folder, an ``ensemble.json``, a folder holding one,
        or one format's folder of a TFLite export (``ensemble-fer export``); ``None`` for the
        release model, ``"fast"`` for the shipped fast one (see :func:`ensemble_fer.release.resolve_model`).
        ``upsample=None`` is the model's own search (:func:`ensemble_fer.release.default_upsample`):
        ``"fast"`` for the shipped fast model, ``"auto"`` for any other."""
        from ensemble_fer.inference.loading import load_predictor

        faces.check_detection(detector, faces.UPSAMPLE_AUTO if upsample is None else upsample)  # before the files
        resolved = release.resolve_model(path)
        if upsample is None:
            upsample = release.default_upsample(resolved)
        return cls(load_predictor(resolved), detector=detector, upsample=upsample, source=resolved)

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, in the order of :attr:`FaceResult.scores`."""
        return tuple(self._predictor.classes)

    def fingerprint(self) -> str:
        """The SHA-256 of what decides the model's predictions (:meth:`Predictor.fingerprint`)."""
        return self._predictor.fingerprint()

    def __repr__(self) -> str:
        return (f"EmotionRecognizer(source={str(self.source)!r}, classes={list(self.classes)}, "
                f"detector={self.detector!r}, upsample={self.upsample!r})")

    # ------------------------------------------------------------------ faces
    def locate_faces(self, image, color: str = "rgb") -> list[Box]:
        """Boxes of the faces the recognizer would classify, largest first (see the module doc)."""
        return self._faces(self._gray(image, color))[0]

    def face_crop(self, image, face, color: str = "rgb") -> np.ndarray:
        """The 48x48 uint8 grayscale crop of ``face`` (a :class:`FaceResult` or a box), framed
        like FER2013."""
        return faces.crop_face(self._gray(image, color), _box_of(face))

    # ------------------------------------------------------------------ prediction
    def predict(self, image, tta: int | None = None, color: str = "rgb") -> list[FaceResult]:
        """Every face in ``image`` (a path or an array) with its emotion; ``[]`` when none.

        ``tta``: test-time views averaged by the predictor (None: the model's own, 2 for the
        release; 0: none).
        ``color``: channel order of a colour array, ``"rgb"`` (PIL, imageio, matplotlib) or
        ``"bgr"`` (OpenCV's ``cv2.imread`` and ``VideoCapture``); files are always read right.
        """
        return self.predict_many([image], tta=tta, color=color)[0]

    def predict_many(self, images: Iterable, batch_size: int = 64, tta: int | None = None,
                     color: str = "rgb") -> list[list[FaceResult]]:
        """:meth:`predict` for many photos (paths or arrays, or one stacked array such as
        (N, 48, 48) crops), one result list per input, in order.

        The faces of all photos are classified together, ``batch_size`` crops per batch.
        """
        return list(self.iter_predict(images, batch_size=batch_size, tta=tta, color=color))

    def iter_predict(self, images: Iterable, batch_size: int = 64, tta: int | None = None,
                     color: str = "rgb") -> Iterator[list[FaceResult]]:
        """Lazy :meth:`predict_many`: yields each input's faces, in input order, as soon as
        the batch holding them has run. It reads ``images`` only as far as it needs to fill a
        batch, so any number of photos can stream through it."""
        _check_batch_size(batch_size)
        check_color(color)
        if isinstance(images, np.ndarray) and (images.ndim == 4 or (images.ndim == 3 and images.shape[-1] > 4)):
            images = iter(images)               # a stack of images: (N, H, W) or (N, H, W, C)
        elif isinstance(images, (str, os.PathLike, np.ndarray)):
            raise TypeError("predict_many takes a list (or a stacked array) of images or paths; "
                            "use predict for one image")
        yield from self.iter_classify((self._faces(self._gray(image, color)) for image in images),
                                      batch_size=batch_size, tta=tta)

    def iter_classify(self, found: Iterable[tuple[list[Box], list, list[np.ndarray]]], batch_size: int = 64,
                      tta: int | None = None) -> Iterator[list[FaceResult]]:
        """:meth:`iter_predict` for faces found already: ``found`` gives, per picture,
        ``(boxes, detection scores, 48x48 crops)`` as :func:`ensemble_fer.features.faces.picture_crops`
        makes them, in this process or in a worker process (``predict --workers``). Yields
        each picture's faces, in order, as soon as the batch holding them has run."""
        _check_batch_size(batch_size)
        tta = self._predictor.resolve_tta(tta)      # a bad value fails before any photo is read
        pending: deque = deque()        # (box, detection score, blank) of the inputs not yielded yet, in order
        crops: list[np.ndarray] = []    # crops of their faces not classified yet
        proba: list[np.ndarray] = []    # rows of their faces classified already
        for boxes, scores, face_crops in found:
            blank_std = self._predictor.extractor_config.blank_std
            pending.append([(box, score, float(crop.std()) < blank_std)
                            for box, score, crop in zip(boxes, scores, face_crops)])
            crops.extend(face_crops)
            while len(crops) >= batch_size:     # full batches only: the rest waits for more faces
                proba.extend(self._predict_proba(np.stack(crops[:batch_size]), tta))
                del crops[:batch_size]
                yield from self._ready(pending, proba)
        if crops:
            proba.extend(self._predict_proba(np.stack(crops), tta))
        yield from self._ready(pending, proba)

    def _ready(self, pending: deque, proba: list) -> Iterator[list[FaceResult]]:
        """Yield (and drop) the leading inputs whose faces are all classified."""
        while pending and len(pending[0]) <= len(proba):
            boxes = pending.popleft()
            yield [self._result(box, score, proba[k], blank) for k, (box, score, blank) in enumerate(boxes)]
            del proba[:len(boxes)]

    def _predict_proba(self, crops: np.ndarray, tta: int) -> np.ndarray:
        proba = np.asarray(self._predictor.predict_proba(crops, tta=tta), dtype=np.float64)
        if proba.shape != (len(crops), len(self.classes)):
            raise RuntimeError(f"the predictor returned shape {proba.shape} for {len(crops)} crops "
                               f"and {len(self.classes)} classes")
        return proba

    def _result(self, box: Box, detection_score, proba: np.ndarray, blank: bool = False) -> FaceResult:
        classes = self.classes
        scores = {name: float(p) for name, p in zip(classes, proba)}
        return FaceResult(box=tuple(int(v) for v in box), emotion=classes[int(np.argmax(proba))], scores=scores,
                          detection_score=None if detection_score is None else float(detection_score),
                          blank=bool(blank))

    # ------------------------------------------------------------------ Grad-CAM
    def grad_cam(self, image, face, emotion: str | None = None, color: str = "rgb") -> np.ndarray:
        """Grad-CAM heat map of the whole model, float32 (48, 48) in [0, 1], over the face's crop.

        ``face`` is a :class:`FaceResult` (or a box) of ``image``; ``emotion`` defaults to the
        face's predicted one. Each member with an image branch gets its Grad-CAM map (see
        :mod:`ensemble_fer.inference.gradcam`); the maps are averaged with the weights that member
        contributes to the ensemble's probability of ``emotion``: ensemble weight times the
        member's own probability of it. The ensemble's probability is that same weighted sum,
        so a member that speaks for the emotion shapes the map as much as it shapes the score.
        BOVW-only members have no image map and are left out; a model with no image branch
        at all raises :class:`~ensemble_fer.errors.InputError`.
        """
        from ensemble_fer.inference import gradcam
        if emotion is None:
            if not isinstance(face, FaceResult):
                raise InputError("emotion: give the emotion to explain when face is a box")
            emotion = face.emotion
        if emotion not in self.classes:
            raise InputError(f"emotion {emotion!r} is not one of the model's classes {list(self.classes)}")
        explained = self.gradcam_models()
        class_index = self.classes.index(emotion)
        # The crop as the model sees it and its features, from the predictor's own extraction.
        features = self._predictor.analyse(self.face_crop(image, face, color)[None])
        member_proba = self._predictor.member_probas(features["images"], features["landmarks"],
                                                     features["bovw"])[:, 0, class_index]
        total = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float64)
        weight_sum = 0.0
        for index, model in explained.items():
            weight = float(self._predictor.weights[index]) * float(member_proba[index])
            vector = features["bovw"][0] if "bovw" in gradcam.input_names(model) else None
            total += weight * gradcam.grad_cam(model, features["images"][0], vector, class_index)
            weight_sum += weight
        if weight_sum <= 0:
            return np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
        total /= weight_sum
        peak = float(total.max())
        return (total / peak if peak > 0 else total).astype(np.float32)

    def gradcam_models(self) -> dict:
        """The Keras networks :meth:`grad_cam` explains, by member index (loaded on first use):
        every member with an image branch. :class:`~ensemble_fer.errors.InputError` when there is none."""
        if getattr(self, "_gradcam_models", None) is None:
            from ensemble_fer.models.variant_dir import VariantDir
            variants = {index: VariantDir(folder) for index, folder in enumerate(self._predictor.member_folders)}
            variants = {index: v for index, v in variants.items() if v.read_config().get("block") is not None}
            if not variants:
                raise InputError(f"{self.source}: Grad-CAM needs an image branch, and no member of this model "
                                 f"has one (BOVW-only: {list(self._predictor.members)})")
            if any(not variant.model_path.is_file() for variant in variants.values()):
                raise InputError(_export_gradcam_message(self.source))
            self._gradcam_models = {index: variant.load_model() for index, variant in variants.items()}
        return self._gradcam_models

    # ------------------------------------------------------------------ helpers
    def _gray(self, image, color: str = "rgb") -> np.ndarray:
        check_color(color)
        if isinstance(image, (str, os.PathLike)):
            return to_gray(read_image_file(image))      # decoded as RGB whatever ``color`` says
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise InputError(f"image must be a uint8 array or a path; got an array of dtype {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        if color == "bgr" and image.ndim == 3 and image.shape[2] in (3, 4):
            image = image[..., 2::-1]                     # BGR(A) -> RGB; alpha is dropped anyway
        return to_gray(image)

    def _faces(self, gray: np.ndarray) -> tuple[list[Box], list, list[np.ndarray]]:
        """Boxes, detection scores and crops of the faces of a gray image."""
        return faces.picture_crops(gray, detector=self.detector, upsample=self.upsample)


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be an int >= 1; got {batch_size!r}")


def check_color(color) -> None:
    if color not in COLOR_ORDERS:
        raise InputError(f"color must be one of {COLOR_ORDERS} (the channel order of colour arrays); got {color!r}")


def _box_of(face) -> Box:
    box = face.box if isinstance(face, FaceResult) else face
    box = tuple(int(v) for v in box)
    if len(box) != 4:
        raise InputError(f"face must be a FaceResult or a (left, top, right, bottom) box; got {face!r}")
    return box


def _export_gradcam_message(source) -> str:
    """Why an export (the shipped fast model is one) has no Grad-CAM, and what to use instead:
    the maps are gradients of the Keras network, and a TFLite or ONNX file keeps no gradients;
    the Keras network it was made from is not shipped with it (the fast model's would add 5 MB
    to a 1.3 MB model whose point is its size)."""
    from ensemble_fer.models.variant_dir import EXPORT_FILE, export_origin

    marker, origin, recorded = export_origin(source) if source is not None else ({}, None, "")
    name = (origin.parent.name if origin.suffix == ".json" else origin.name) if origin else "a Keras model"
    what = f"{name} as {marker.get('precision', 'TFLite/ONNX')}"
    if origin is not None and origin.exists():
        instead = f"use --model {origin} (the Keras model it was exported from)"
    else:   # a shipped export records the build machine's path (models/fast: see its README.md)
        instead = ("use the default model (the release ensemble, whose members are Keras networks), or --model "
                   f"PATH of the Keras variant it was exported from{recorded}")
    return (f"{source}: Grad-CAM needs a Keras network's gradients, and this is an exported model ({what}, "
            f"{EXPORT_FILE}) that keeps none; {instead}")
