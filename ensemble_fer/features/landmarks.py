"""The iBUG 300-W 68-point landmark scheme (the one dlib's shape predictor outputs).

Points are (x, y) pixel coordinates, point ``i`` having the same meaning on every face.
``left`` and ``right`` are the *subject's* (iBUG's convention): ``right_eye``
(points 36-41) is the eye that appears on the left of the image. face_recognition's
``face_landmarks`` uses the viewer's side instead (it calls points 36-41 ``left_eye``)
and names the jaw ``chin``; the other names are the same.

:data:`FLIP_PERMUTATION` is what a horizontal flip needs besides mirroring the
coordinates: after ``x -> width - 1 - x`` the subject's right eye is on the right of
the image, where point 42 (the left eye's inner corner) should be, so the points must
be renumbered.
"""

from __future__ import annotations

import numpy as np

__all__ = ["N_LANDMARKS", "GROUPS", "FLIP_PERMUTATION", "named_groups"]

N_LANDMARKS = 68
"""Number of points in the scheme."""

GROUPS = {
    "jaw": range(0, 17),
    "right_eyebrow": range(17, 22),
    "left_eyebrow": range(22, 27),
    "nose_bridge": range(27, 31),
    "nose_tip": range(31, 36),
    "right_eye": range(36, 42),
    "left_eye": range(42, 48),
    "outer_lips": range(48, 60),
    "inner_lips": range(60, 68),
}
"""Named groups of points -> their indices (left/right being the subject's)."""


def _flip_permutation() -> np.ndarray:
    """Index of each point's mirror image (the point it becomes after a flip)."""
    pairs = []
    # Contours that a mirror reverses: the jaw runs from the subject's right ear to the
    # left one, the nose tip from right nostril to left.
    pairs += zip(range(0, 17), range(16, -1, -1))
    pairs += zip(range(31, 36), range(35, 30, -1))
    # Right eyebrow 17 (outer end) .. 21 (inner end) <-> left eyebrow 26 (outer) .. 22.
    pairs += zip(range(17, 22), range(26, 21, -1))
    # Eyes, both numbered clockwise in the image from the corner on the image's left:
    # right eye: 36 outer corner, 37-38 upper lid, 39 inner corner, 40-41 lower lid;
    # left eye:  42 inner corner, 43-44 upper lid, 45 outer corner, 46-47 lower lid.
    pairs += zip((36, 37, 38, 39, 40, 41), (45, 44, 43, 42, 47, 46))
    # Lips, also clockwise from the mouth corner on the image's left (48, and 60 inside):
    # the upper lip reverses (48..54, 60..64) and so does the lower one (55..59, 65..67).
    pairs += zip(range(48, 55), range(54, 47, -1))
    pairs += zip(range(55, 60), range(59, 54, -1))
    pairs += zip(range(60, 65), range(64, 59, -1))
    pairs += zip(range(65, 68), range(67, 64, -1))
    # The nose bridge lies on the symmetry axis.
    pairs += zip(range(27, 31), range(27, 31))

    permutation = np.full(N_LANDMARKS, -1)
    for point, mirror in pairs:
        # Each pair is listed from both ends where it is symmetric, so it must agree.
        if permutation[point] not in (-1, mirror):
            raise RuntimeError(f"point {point} is paired twice")
        permutation[point] = mirror
        permutation[mirror] = point
    return permutation


FLIP_PERMUTATION = _flip_permutation()
"""Renumbering after a horizontal flip (an involution).

``flipped[FLIP_PERMUTATION]`` where ``flipped`` holds the mirrored coordinates puts
every point back in its own slot: slot 36 (right eye, outer corner) receives what was
point 45 (left eye, outer corner), which the mirror moved to where a right outer
corner belongs.
"""
FLIP_PERMUTATION.flags.writeable = False
assert sorted(FLIP_PERMUTATION) == list(range(N_LANDMARKS))


def named_groups(points) -> dict[str, np.ndarray]:
    """Split 68 landmarks into the named groups of :data:`GROUPS`.

    Parameters
    ----------
    points : array-like of shape (68, 2) or (..., 68, 2)
        Landmark coordinates (a leading batch axis is kept).

    Returns
    -------
    dict
        Group name -> array (a copy) of shape (k, 2) (or (..., k, 2)), in the order
        of :data:`GROUPS`.
    """
    points = np.asarray(points)
    if points.ndim < 2 or points.shape[-2:] != (N_LANDMARKS, 2):
        raise ValueError(
            f"points must have shape ({N_LANDMARKS}, 2) or (..., {N_LANDMARKS}, 2); "
            f"got shape {points.shape}"
        )
    return {name: points[..., index.start : index.stop, :].copy() for name, index in GROUPS.items()}
