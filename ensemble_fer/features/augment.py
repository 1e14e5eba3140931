"""Training-time (and test-time) augmentation of the two model inputs together.

A model sees a face twice: as the 48x48 image, and through the 2728-d BOVW vector
(68 landmarks, then the sliding-window HOG of the image). Augmenting only the image
would make the two disagree, so here ONE affine transform per image moves the image
(``cv2.warpAffine``), the SAME transform moves its landmarks, and the HOG is
recomputed from the transformed image.

Coordinates are pixel coordinates as dlib and OpenCV use them: pixel ``(x, y)`` is
centred on the integer point ``(x, y)``, so a 48-pixel-wide image spans x = 0 .. 47,
its centre is (23.5, 23.5), and a horizontal flip maps x to ``47 - x``. OpenCV's
``warpAffine`` samples ``dst(p) = src(M^-1 p)`` in exactly these coordinates, so a
landmark at ``p`` moves to ``M p``.

Everything is plain numpy with an explicit random generator, so that it runs inside
``tf.numpy_function`` in a ``tf.data`` pipeline or in a Python generator, and a seed
reproduces a batch exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ensemble_fer.features.bovw import assemble_bovw
from ensemble_fer.errors import InputError
from ensemble_fer.features.hog import IMAGE_SIZE, sliding_hog
from ensemble_fer.features.landmarks import FLIP_PERMUTATION, N_LANDMARKS

__all__ = [
    "AugmentConfig",
    "TTA_VIEWS",
    "affine_matrix",
    "random_affine",
    "augment_batch",
    "transform_batch",
    "warp_images",
    "tta_views",
    "tta_images",
    "tta_view",
    "tta_image",
    "check_tta",
]

_CENTRE = (IMAGE_SIZE - 1) / 2.0  # 23.5: the image centre in pixel-centre coordinates


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transform applied to each training image.

    Parameters
    ----------
    rotation_deg : float, default=10
        Largest rotation, in degrees; the angle is uniform in [-r, r].
    shear_deg : float, default=10
        Largest horizontal shear, as an angle in degrees (the unit of Keras'
        ``shear_range``): vertical lines lean by an angle uniform in [-s, s], i.e.
        ``x += tan(angle) * (y - 23.5)``. Below 90.
    zoom : float, default=0.1
        Largest relative change of scale; the (isotropic) scale factor is uniform in
        [1 - z, 1 + z], > 1 enlarging the face. Below 1.
    horizontal_flip : bool, default=True
        Mirror each image with probability 1/2.
    strength : float, default=1
        Multiplies ``rotation_deg``, ``shear_deg`` and ``zoom`` (not the flip), to
        tune the amount of augmentation with one number; 0 leaves only the flip.
    shift : float, default=0
        Largest translation in pixels, uniform in [-s, s] along each axis: the random
        40-44 px crops of the from-scratch FER2013 recipes, without losing the frame size.
    erase : float, default=0
        Probability of random erasing (Zhong et al., AAAI 2020): a rectangle of 2-25% of
        the image, aspect ratio 0.3-3.3, filled with uniform noise, drawn after the
        transform (landmarks stay, the HOG is computed from the erased image).
    """

    # The metadata makes the options of pipelines.train_variant (see training.config.CLI_KEYS).
    rotation_deg: float = field(default=10.0, metadata={"cli": False})
    shear_deg: float = field(default=10.0, metadata={"cli": False})
    zoom: float = field(default=0.1, metadata={"cli": False})
    horizontal_flip: bool = field(default=True, metadata={"cli": False})
    strength: float = field(default=1.0, metadata={
        "flag": "--augment-strength",
        "help": "multiplies the augmentation ranges (rotation 10 deg, shear 10 deg, zoom 0.1); default 1, the paper's"})
    shift: float = field(default=0.0, metadata={
        "flag": "--augment-shift", "metavar": "PX",
        "help": "largest random translation in pixels (random crops); default 0"})
    erase: float = field(default=0.0, metadata={
        "flag": "--random-erase", "metavar": "P",
        "help": "probability of erasing a random rectangle of each training image; default 0"})

    def __post_init__(self):
        for name in ("rotation_deg", "shear_deg", "zoom", "strength", "shift", "erase"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise InputError(f"{name} must be a number; got {value!r}")
            if not np.isfinite(value) or value < 0:
                raise InputError(f"{name} must be a finite number >= 0; got {value!r}")
        if not isinstance(self.horizontal_flip, (bool, np.bool_)):
            raise InputError(f"horizontal_flip must be True or False; got {self.horizontal_flip!r}")
        # The limits apply to the ranges actually used, i.e. after scaling by strength.
        if self.shear_deg * self.strength >= 90:
            raise InputError(
                "shear_deg * strength must be below 90 (degrees); "
                f"got {self.shear_deg} * {self.strength}"
            )
        if self.zoom * self.strength >= 1:
            raise InputError(
                f"zoom * strength must be below 1; got {self.zoom} * {self.strength}"
            )
        if self.shift >= IMAGE_SIZE / 2:
            raise InputError(f"shift must be below {IMAGE_SIZE // 2} (pixels); got {self.shift}")
        if self.erase > 1:
            raise InputError(f"erase must be a probability in [0, 1]; got {self.erase}")


def affine_matrix(rotation_deg=0.0, shear_deg=0.0, scale=1.0, flip=False) -> np.ndarray:
    """The (2, 3) matrix of a transform about the centre of a 48x48 image.

    The point ``p`` (pixel coordinates, see the module docstring) goes to
    ``M[:, :2] @ p + M[:, 2]``: first mirrored (``x -> 47 - x``) if ``flip``, then
    scaled by ``scale``, sheared (vertical lines leaning by ``shear_deg``) and rotated
    by ``rotation_deg`` (counter-clockwise as displayed, OpenCV's convention), all
    about the centre (23.5, 23.5). This is the matrix to give ``cv2.warpAffine``.
    """
    return _affine_matrices(
        np.array([rotation_deg], float), np.array([shear_deg], float), np.array([scale], float),
        np.array([flip], bool),
    )[0]


def _affine_matrices(rotation_deg, shear_deg, scale, flip) -> np.ndarray:
    """(n, 2, 3) matrices of :func:`affine_matrix` for arrays of n parameters."""
    theta = np.deg2rad(rotation_deg)
    cos, sin = np.cos(theta), np.sin(theta)
    tan = np.tan(np.deg2rad(shear_deg))
    mirror = np.where(flip, -1.0, 1.0)
    # linear = scale * rotation @ shear @ mirror, with (in image coordinates, y down,
    # so that a positive angle turns counter-clockwise on screen as in
    # cv2.getRotationMatrix2D) rotation = [[cos, sin], [-sin, cos]],
    # shear = [[1, tan], [0, 1]] and mirror = [[+-1, 0], [0, 1]].
    linear = np.empty((len(theta), 2, 2))
    linear[:, 0, 0] = cos * mirror
    linear[:, 0, 1] = cos * tan + sin
    linear[:, 1, 0] = -sin * mirror
    linear[:, 1, 1] = -sin * tan + cos
    linear *= np.asarray(scale, float)[:, None, None]
    # p -> linear (p - c) + c, c the centre.
    centre = np.array([_CENTRE, _CENTRE])
    offset = centre - linear @ centre
    return np.concatenate([linear, offset[:, :, None]], axis=2)


def _draw(rng, n, config):
    """Random transforms for n images: (n, 2, 3) matrices and (n,) flip flags.

    All four numbers are drawn for every image whatever the config, so that changing
    one range does not reshuffle the others for a given seed.
    """
    u = rng.uniform(-1.0, 1.0, size=(n, 3))
    flips = rng.random(n) < 0.5
    if not config.horizontal_flip:
        flips[:] = False
    s = config.strength
    matrices = _affine_matrices(
        rotation_deg=u[:, 0] * (config.rotation_deg * s),
        shear_deg=u[:, 1] * (config.shear_deg * s),
        scale=1.0 + u[:, 2] * (config.zoom * s),
        flip=flips,
    )
    if config.shift:
        # Drawn after the others, so that configs without a shift keep their random stream.
        matrices[:, :, 2] += rng.uniform(-config.shift, config.shift, size=(n, 2))
    return matrices, flips


def _erase(images, rng, probability):
    """Random erasing in place: each image, with ``probability``, gets one rectangle of
    2-25% of its area (aspect 0.3-3.3, log-uniform) filled with uniform noise."""
    n = len(images)
    hit = rng.random(n) < probability
    area = rng.uniform(0.02, 0.25, n) * IMAGE_SIZE * IMAGE_SIZE
    aspect = np.exp(rng.uniform(np.log(0.3), np.log(1 / 0.3), n))
    h = np.clip(np.round(np.sqrt(area * aspect)), 1, IMAGE_SIZE).astype(int)
    w = np.clip(np.round(np.sqrt(area / aspect)), 1, IMAGE_SIZE).astype(int)
    top = (rng.random(n) * (IMAGE_SIZE - h + 1)).astype(int)
    left = (rng.random(n) * (IMAGE_SIZE - w + 1)).astype(int)
    noise = rng.integers(0, 256, size=images.shape, dtype=np.uint8)
    for i in np.flatnonzero(hit):
        images[i, top[i]:top[i] + h[i], left[i]:left[i] + w[i]] = noise[i, top[i]:top[i] + h[i], left[i]:left[i] + w[i]]
    return images


def _check_rng(rng) -> np.random.Generator:
    if isinstance(rng, bool):
        raise InputError(f"rng must be a numpy Generator, an int seed or None; got {rng!r}")
    if rng is None or isinstance(rng, (int, np.integer, np.random.Generator)):
        return np.random.default_rng(rng)  # a Generator is returned as is
    raise InputError(f"rng must be a numpy Generator, an int seed or None; got {rng!r}")


def _check_config(config) -> AugmentConfig:
    if config is None:
        return AugmentConfig()
    if not isinstance(config, AugmentConfig):
        raise InputError(f"config must be an AugmentConfig or None; got {config!r}")
    return config


def random_affine(rng, config: AugmentConfig | None = None) -> tuple[np.ndarray, bool]:
    """One random transform about the image centre.

    Parameters
    ----------
    rng : numpy.random.Generator, int or None
        Source of randomness (an int seeds a new generator).
    config : AugmentConfig, optional
        The ranges; the defaults of :class:`AugmentConfig` if None.

    Returns
    -------
    matrix : ndarray of shape (2, 3)
        For ``cv2.warpAffine``; includes the mirroring when ``flip`` is True.
    flip : bool
        Whether the transform mirrors the image, in which case the landmarks must
        also be renumbered with :data:`~ensemble_fer.features.landmarks.FLIP_PERMUTATION`.
    """
    matrices, flips = _draw(_check_rng(rng), 1, _check_config(config))
    return matrices[0], bool(flips[0])


def _check_images(images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise InputError(
            f"images must have shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}); got shape {images.shape}"
        )
    if images.dtype != np.uint8:
        raise InputError(f"images must be uint8; got dtype {images.dtype}")
    return images


def _check_batch(images, landmarks):
    images = _check_images(images)
    landmarks = np.asarray(landmarks)
    if landmarks.shape != (len(images), N_LANDMARKS, 2):
        raise InputError(
            f"landmarks must have shape (N, {N_LANDMARKS}, 2) with N = {len(images)} "
            f"(the number of images); got shape {landmarks.shape}"
        )
    if landmarks.dtype.kind not in "iuf":
        raise InputError(f"landmarks must hold numbers; got dtype {landmarks.dtype}")
    return images, landmarks


def warp_images(images, matrices) -> np.ndarray:
    """``images`` uint8 (N, 48, 48) through the forward affine ``matrices`` (N, 2, 3): bilinear
    resampling, the border replicated (the image half of :func:`transform_batch`)."""
    out = np.empty_like(images)
    for i in range(len(images)):
        out[i] = cv2.warpAffine(images[i], matrices[i], (IMAGE_SIZE, IMAGE_SIZE), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
    return out


def transform_batch(images, landmarks, matrices, flips):
    """Apply given transforms to images and landmarks, and rebuild the BOVW.

    The deterministic core of :func:`augment_batch` and :func:`tta_views`.

    Parameters
    ----------
    images : uint8 array of shape (N, 48, 48)
    landmarks : array of shape (N, 68, 2)
        (x, y) pixel coordinates of each image's points.
    matrices : array of shape (N, 2, 3) or (2, 3)
        Forward transforms (image to result), as for ``cv2.warpAffine``; one matrix
        is used for every image.
    flips : bool or bool array of shape (N,)
        Which matrices mirror the image (then the points are renumbered).

    Returns
    -------
    images : uint8 (N, 48, 48)
        Bilinear resampling, the border replicated.
    landmarks : float32 (N, 68, 2)
    bovw : float32 (N, 2728)
        Landmarks flattened (x0, y0, x1, y1, ...), then ``sliding_hog`` of the new
        image.
    """
    images, landmarks = _check_batch(images, landmarks)
    n = len(images)
    matrices = np.asarray(matrices, dtype=np.float64)
    if matrices.shape == (2, 3):
        matrices = np.broadcast_to(matrices, (n, 2, 3))
    if matrices.shape != (n, 2, 3):
        raise InputError(f"matrices must have shape (2, 3) or ({n}, 2, 3); got shape {matrices.shape}")
    flips = np.broadcast_to(np.asarray(flips, dtype=bool), (n,))

    out_images = warp_images(images, matrices)
    # p -> A p + t for every point (row vectors: p A^T), in float64, stored as float32.
    points = np.matmul(landmarks.astype(np.float64), matrices[:, :, :2].transpose(0, 2, 1))
    points += matrices[:, None, :, 2]
    # A mirrored face has its points in each other's slots (the left eye where the
    # right one belongs...): renumber them.
    points[flips] = points[flips][:, FLIP_PERMUTATION]
    out_landmarks = points.astype(np.float32)

    bovw = assemble_bovw(out_landmarks, sliding_hog(out_images))
    return out_images, out_landmarks, bovw


def augment_batch(images, landmarks, rng, config: AugmentConfig | None = None):
    """Randomly transform each image together with its landmarks; recompute the BOVW.

    Parameters
    ----------
    images : uint8 array of shape (N, 48, 48)
        Grayscale face crops.
    landmarks : array of shape (N, 68, 2)
        (x, y) pixel coordinates of each image's 68 points (transformed as given:
        NaN stays NaN).
    rng : numpy.random.Generator, int or None
        Source of randomness; pass the same Generator on every call of an epoch (an
        int seed makes the call reproducible on its own).
    config : AugmentConfig, optional
        The ranges; the defaults of :class:`AugmentConfig` if None.

    Returns
    -------
    images : uint8 (N, 48, 48)
    landmarks : float32 (N, 68, 2)
    bovw : float32 (N, 2728)
        The new landmarks flattened (x0, y0, x1, y1, ...) followed by the 2592-value
        sliding-window HOG of the new image.
    """
    images, landmarks = _check_batch(images, landmarks)
    rng, config = _check_rng(rng), _check_config(config)
    matrices, flips = _draw(rng, len(images), config)
    if not config.erase:
        return transform_batch(images, landmarks, matrices, flips)
    images, landmarks, _ = transform_batch(images, landmarks, matrices, flips)
    images = _erase(images, rng, config.erase)
    return images, landmarks, assemble_bovw(landmarks, sliding_hog(images))


TTA_VIEWS = (
    # (rotation_deg, scale, flip)
    (0.0, 1.0, False),
    (0.0, 1.0, True),
    (-5.0, 1.0, False),
    (-5.0, 1.0, True),
    (5.0, 1.0, False),
    (5.0, 1.0, True),
    (0.0, 1.05, False),
    (0.0, 1.05, True),
    (0.0, 0.95, False),
    (0.0, 0.95, True),
)
"""The fixed test-time views, in order: identity, flip, then small rotations and zooms
each without and with the flip."""

MAX_TTA = len(TTA_VIEWS)
"""Most test-time views; ``tta = 0`` means none (the images as they are)."""


def _is_view_count(value, low: int) -> bool:
    """An int (not a bool) from ``low`` to :data:`MAX_TTA`."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and low <= value <= MAX_TTA


def check_tta(tta, where: str = "tta") -> int:
    """``tta`` as an int from 0 (no views) to :data:`MAX_TTA`; ``where`` names it in the error."""
    if not _is_view_count(tta, 0):
        raise InputError(f"{where} must be an integer from 0 (none) to {MAX_TTA} views; got {tta!r}")
    return int(tta)


def _check_n_views(n_views) -> None:
    if not _is_view_count(n_views, 1):
        raise InputError(f"n_views must be an integer from 1 to {MAX_TTA}; got {n_views!r}")


def tta_views(images, landmarks, n_views: int):
    """Deterministic views of a batch for test-time augmentation.

    View 0 is the batch itself (resampled through the identity, which leaves the
    images unchanged), view 1 its mirror image, then the views of :data:`TTA_VIEWS`.

    Parameters
    ----------
    images : uint8 array of shape (N, 48, 48)
    landmarks : array of shape (N, 68, 2)
    n_views : int
        Number of views, 1 to ``len(TTA_VIEWS)`` (10).

    Returns
    -------
    list of ``n_views`` tuples ``(images, landmarks, bovw)``
        Each as returned by :func:`augment_batch`.
    """
    _check_n_views(n_views)
    images, landmarks = _check_batch(images, landmarks)
    return [tta_view(images, landmarks, index) for index in range(n_views)]


def tta_images(images, n_views: int) -> list[np.ndarray]:
    """The images of :func:`tta_views` alone, for models without a BOVW input: the same views,
    without the landmarks and HOG that only a BOVW input needs (which cost far more than the
    warps)."""
    images = _check_images(images)
    _check_n_views(n_views)
    return [tta_image(images, index) for index in range(n_views)]


def _check_view_index(index) -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < MAX_TTA:
        raise InputError(f"index must be an integer from 0 to {MAX_TTA - 1}; got {index!r}")
    return int(index)


def tta_view(images, landmarks, index: int):
    """View ``index`` of :func:`tta_views` alone, ``(images, landmarks, bovw)``: for a caller that
    needs only some views (a resumed cache computes only the ones it lacks)."""
    rotation_deg, scale, flip = TTA_VIEWS[_check_view_index(index)]
    images, landmarks = _check_batch(images, landmarks)
    return transform_batch(images, landmarks, affine_matrix(rotation_deg=rotation_deg, scale=scale, flip=flip), flip)


def tta_image(images, index: int) -> np.ndarray:
    """The images of :func:`tta_view` alone (no landmarks or HOG)."""
    rotation_deg, scale, flip = TTA_VIEWS[_check_view_index(index)]
    images = _check_images(images)
    return warp_images(images, np.broadcast_to(affine_matrix(rotation_deg=rotation_deg, scale=scale, flip=flip),
                                               (len(images), 2, 3)))


VIEW_CHUNK = 512
"""Rows whose test-time views are made and predicted together (bounds the views' memory)."""


def predict_views(models, images, landmarks, bovw_rows, tta: int, n_classes: int,
                  batch_size: int = 256) -> np.ndarray:
    """Each model's probabilities of the rows, averaged over ``tta`` test-time views (0: the
    rows as given), shape (n_models, N, n_classes).

    ``models`` is a sequence of ``(inputs, predict)``: the input names a model takes
    (``"image"``, ``"bovw"``) and ``predict(images, bovw, batch_size)`` returning (n, n_classes).
    The views of each chunk of :data:`VIEW_CHUNK` rows are made once for every model. With a
    BOVW model the views move the landmarks too and the BOVW vectors are recomputed, so
    ``landmarks`` is needed; with image-only models only the images are warped.
    """
    needs_bovw = any("bovw" in inputs for inputs, _ in models)
    n = len(images) if images is not None else len(bovw_rows) if bovw_rows is not None else 0
    out = np.empty((len(models), n, n_classes))
    for start in range(0, n, VIEW_CHUNK):
        rows = slice(start, min(start + VIEW_CHUNK, n))
        if tta and not needs_bovw:
            view_images, view_bovw = np.concatenate(tta_images(images[rows], tta)), None
        elif tta:
            views = tta_views(images[rows], landmarks[rows], tta)
            view_images = np.concatenate([np.asarray(v[0], dtype=np.uint8) for v in views])
            view_bovw = np.concatenate([np.asarray(v[2], dtype=np.float32) for v in views])
        else:
            view_images = None if images is None else images[rows]
            view_bovw = None if bovw_rows is None else bovw_rows[rows]
        n_rows = rows.stop - rows.start
        for m, (inputs, predict) in enumerate(models):
            proba = predict(view_images if "image" in inputs else None,
                            view_bovw if "bovw" in inputs else None, batch_size)
            # views are stacked view-major: (n_views * n_rows) -> (n_views, n_rows)
            out[m, rows] = proba.reshape(-1, n_rows, n_classes).mean(axis=0)
    return out
