"""Augmentation: the image and its landmarks move together; the landmark scheme's mirror."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import sample_crops
from ensemble_fer.features import faces
from ensemble_fer.features.augment import (
    MAX_TTA,
    TTA_VIEWS,
    check_tta,
    AugmentConfig,
    affine_matrix,
    augment_batch,
    random_affine,
    transform_batch,
    tta_image,
    tta_images,
    tta_view,
    tta_views,
)
from ensemble_fer.features.hog import HOG_SIZE, sliding_hog
from ensemble_fer.features.landmarks import FLIP_PERMUTATION, GROUPS, N_LANDMARKS, named_groups

NO_CHANGE = AugmentConfig(rotation_deg=0, shear_deg=0, zoom=0, horizontal_flip=False)


# ---------------------------------------------------------------------------- landmarks


def test_groups_partition_the_68_points():
    indices = [i for index in GROUPS.values() for i in index]
    assert indices == list(range(N_LANDMARKS))
    assert (GROUPS["right_eye"], GROUPS["left_eye"]) == (range(36, 42), range(42, 48))


def test_flip_permutation_is_an_involution():
    assert sorted(FLIP_PERMUTATION) == list(range(N_LANDMARKS))
    np.testing.assert_array_equal(FLIP_PERMUTATION[FLIP_PERMUTATION], np.arange(N_LANDMARKS))


def test_flip_permutation_swaps_sides_and_keeps_the_axis():
    p = FLIP_PERMUTATION
    for right, left in [("right_eye", "left_eye"), ("right_eyebrow", "left_eyebrow")]:
        assert set(p[list(GROUPS[right])]) == set(GROUPS[left])
        assert set(p[list(GROUPS[left])]) == set(GROUPS[right])
    # Corners to corners, lids to lids.
    assert [p[i] for i in (36, 37, 38, 39, 40, 41)] == [45, 44, 43, 42, 47, 46]
    assert (p[0], p[8], p[16], p[48], p[54], p[57], p[62], p[66]) == (16, 8, 0, 54, 48, 57, 62, 66)
    assert list(p[27:31]) == [27, 28, 29, 30]  # nose bridge, on the symmetry axis
    for name in ("jaw", "nose_tip", "outer_lips", "inner_lips"):
        assert set(p[list(GROUPS[name])]) == set(GROUPS[name])


def test_flip_permutation_agrees_with_dlib_on_mirrored_faces():
    # dlib's predictor on a mirrored face finds (nearly) the mirror of its points on the
    # face, renumbered by the permutation. Swapping a pair of lid or lip points (a
    # plausible slip) makes some point miss by 11 px or more here; correct is ~5.
    images, _ = sample_crops(24)
    size, box = 192, (8, 8, 183, 183)  # upscaled: dlib's predictor wants a larger face
    misses = []
    for image in images:
        big = cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC)
        points = faces.face_landmarks(big, box)
        on_mirror = faces.face_landmarks(np.ascontiguousarray(big[:, ::-1]), box)
        mirrored = points.copy()
        mirrored[:, 0] = size - 1 - mirrored[:, 0]
        misses.append(np.linalg.norm(mirrored[FLIP_PERMUTATION] - on_mirror, axis=1))
    assert np.mean(misses, axis=0).max() < 8.0


def test_named_groups():
    points = np.arange(N_LANDMARKS * 2, dtype=float).reshape(N_LANDMARKS, 2)
    groups = named_groups(points)
    assert list(groups) == list(GROUPS)
    np.testing.assert_array_equal(groups["left_eye"], points[42:48])
    assert groups["jaw"].shape == (17, 2) and groups["inner_lips"].shape == (8, 2)
    groups["jaw"][:] = -1  # a copy: the caller's points are untouched
    assert points.min() == 0
    assert named_groups(np.zeros((5, N_LANDMARKS, 2)))["nose_tip"].shape == (5, 5, 2)
    with pytest.raises(ValueError, match=r"points must have shape \(68, 2\).*got shape \(67, 2\)"):
        named_groups(np.zeros((67, 2)))


# ------------------------------------------------------------ image and landmarks agree

# A few landmarks get a 5x5 dot whose grey level names the landmark; the rest lie
# elsewhere without a dot. Positions are asymmetric, so a mirror cannot map the dots
# onto themselves, and well inside the frame.
DOTS = {17: (8, 10), 26: (40, 13), 36: (11, 20), 45: (37, 22), 30: (24, 27), 48: (14, 35),
        54: (33, 36), 8: (25, 41)}
LEVEL = {index: 60 + 25 * k for k, index in enumerate(sorted(DOTS))}


def dotted_face():
    image = np.zeros((48, 48), np.uint8)
    points = np.full((N_LANDMARKS, 2), 23.5, np.float32)
    for index, (x, y) in DOTS.items():
        image[y - 2 : y + 3, x - 2 : x + 3] = LEVEL[index]
        points[index] = (x, y)
    return image, points


def assert_dots_follow_landmarks(image, points, flipped):
    """Each dot is where its landmark now is: in slot i for no flip, in the mirror slot
    FLIP_PERMUTATION[i] after a flip (slot j holds the point that was FLIP_PERMUTATION[j])."""
    found = 0
    for slot in range(N_LANDMARKS):
        source = FLIP_PERMUTATION[slot] if flipped else slot
        if source not in DOTS:
            continue
        x, y = points[slot]
        cx, cy = int(round(x)), int(round(y))
        # The centre of a dot keeps its level through any small warp (bilinear inside
        # a constant plateau)...
        assert abs(int(image[cy, cx]) - LEVEL[source]) <= 1, (slot, source, image[cy, cx])
        # ...and the plateau's centroid is the landmark, to a fraction of a pixel (a
        # landmark off by one pixel, e.g. a flip to 48 - x, fails here).
        ys, xs = np.mgrid[cy - 4 : cy + 5, cx - 4 : cx + 5]
        window = image[cy - 4 : cy + 5, cx - 4 : cx + 5].astype(int)
        on_dot = np.abs(window - LEVEL[source]) <= 2
        assert abs(xs[on_dot].mean() - x) < 0.5 and abs(ys[on_dot].mean() - y) < 0.5, (slot, x, y)
        found += 1
    assert found == len(DOTS)


@pytest.mark.parametrize(
    "rotation_deg, shear_deg, scale, flip",
    [(0, 0, 1, False), (0, 0, 1, True), (12, 0, 1, False), (-12, 0, 1, True),
     (0, 8, 1, False), (0, 0, 1.1, False), (7, -6, 0.92, True)],
)
def test_dots_move_with_their_landmarks(rotation_deg, shear_deg, scale, flip):
    image, points = dotted_face()
    matrix = affine_matrix(rotation_deg, shear_deg, scale, flip)
    new_images, new_points, _ = transform_batch(image[None], points[None], matrix, flip)
    assert_dots_follow_landmarks(new_images[0], new_points[0], flip)


def test_dots_follow_landmarks_through_random_augmentation():
    image, points = dotted_face()
    n = 16
    config = AugmentConfig(rotation_deg=12, shear_deg=8, zoom=0.08)
    new_images, new_points, _ = augment_batch(np.repeat(image[None], n, 0), np.repeat(points[None], n, 0),
                                              np.random.default_rng(3), config)
    # Which images were flipped is not returned: a flipped dotted face has the dot of
    # point 45 (not 36) in slot 36.
    x, y = np.round(new_points[:, 36]).astype(int).T
    flipped = new_images[np.arange(n), y, x] == LEVEL[45]
    assert 0 < sum(flipped) < n  # both kinds occur with this seed
    for i in range(n):
        assert_dots_follow_landmarks(new_images[i], new_points[i], flipped[i])


def test_flip_mirrors_pixels_exactly():
    images, _ = sample_crops(6)
    points = np.random.default_rng(0).uniform(0, 47, (len(images), N_LANDMARKS, 2)).astype(np.float32)
    out_images, out_points, _ = transform_batch(images, points, affine_matrix(flip=True), True)
    np.testing.assert_array_equal(out_images, images[:, :, ::-1])
    expected = points.copy()
    expected[..., 0] = 47 - expected[..., 0]
    np.testing.assert_allclose(out_points, expected[:, FLIP_PERMUTATION], atol=1e-5)


def test_affine_matrix_composition():
    # Mirror first, then scale, shear and rotate, about the centre c: p -> L (p - c) + c.
    t, sh, scale = np.deg2rad(30), np.deg2rad(10), 1.1
    rotation = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    shear = np.array([[1, np.tan(sh)], [0, 1]])
    linear = scale * rotation @ shear @ np.diag([-1.0, 1.0])
    c = np.array([23.5, 23.5])
    expected = np.hstack([linear, (c - linear @ c)[:, None]])
    np.testing.assert_allclose(affine_matrix(30, 10, 1.1, True), expected, atol=1e-12)


def test_rotation_matches_opencv_convention():
    np.testing.assert_allclose(affine_matrix(rotation_deg=9, scale=1.07),
                               cv2.getRotationMatrix2D((23.5, 23.5), 9, 1.07), atol=1e-12)
    np.testing.assert_allclose(affine_matrix(), [[1, 0, 0], [0, 1, 0]], atol=0)


# ---------------------------------------------------------------- augment_batch contract


@pytest.fixture(scope="module")
def batch():
    images, _ = sample_crops(12)
    points = np.random.default_rng(1).uniform(4, 43, (len(images), N_LANDMARKS, 2)).astype(np.float32)
    return images, points


def test_no_change_config_gives_back_the_input(batch):
    images, points = batch
    for config in (NO_CHANGE, AugmentConfig(strength=0, horizontal_flip=False)):
        out_images, out_points, bovw = augment_batch(images, points, 0, config)
        np.testing.assert_array_equal(out_images, images)
        np.testing.assert_array_equal(out_points, points)
        np.testing.assert_array_equal(bovw[:, 136:], sliding_hog(images))


def test_outputs_and_bovw_layout(batch):
    images, points = batch
    out_images, out_points, bovw = augment_batch(images, points, 5)
    assert out_images.shape == images.shape and out_images.dtype == np.uint8
    assert out_points.shape == points.shape and out_points.dtype == np.float32
    assert bovw.shape == (len(images), 136 + HOG_SIZE) and bovw.dtype == np.float32
    # x0, y0, x1, y1, ... then the HOG of the image actually returned.
    np.testing.assert_array_equal(bovw[:, 0:136:2], out_points[..., 0])
    np.testing.assert_array_equal(bovw[:, 1:136:2], out_points[..., 1])
    np.testing.assert_array_equal(bovw[:, 136:], sliding_hog(out_images))
    assert not np.array_equal(out_images, images)  # it did augment


def test_same_seed_same_batch(batch):
    images, points = batch
    first = augment_batch(images, points, np.random.default_rng(42))
    again = augment_batch(images, points, np.random.default_rng(42))
    other = augment_batch(images, points, np.random.default_rng(43))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    # One generator over an epoch gives a new transform on every call.
    rng = np.random.default_rng(42)
    assert not np.array_equal(augment_batch(images, points, rng)[0], augment_batch(images, points, rng)[0])


def test_random_affine():
    matrix, flip = random_affine(np.random.default_rng(0))
    assert matrix.shape == (2, 3) and isinstance(flip, bool)
    draws = [random_affine(np.random.default_rng(seed)) for seed in range(200)]
    assert 70 < sum(f for _, f in draws) < 130  # half of the images are mirrored
    assert not any(random_affine(seed, AugmentConfig(horizontal_flip=False))[1] for seed in range(50))
    # A mirrored matrix has a negative determinant; scale 1 +- 0.1 bounds it otherwise.
    for m, f in draws:
        det = np.linalg.det(m[:, :2])
        assert (det < 0) == f and 0.9**2 - 1e-9 <= abs(det) <= 1.1**2 + 1e-9
    # The centre stays put (the transform is about the image centre).
    for m, _ in draws[:20]:
        np.testing.assert_allclose(m[:, :2] @ [23.5, 23.5] + m[:, 2], [23.5, 23.5], atol=1e-9)


def test_strength_scales_the_ranges():
    weak, _ = random_affine(7, AugmentConfig(strength=0.1, horizontal_flip=False))
    strong, _ = random_affine(7, AugmentConfig(strength=1.0, horizontal_flip=False))
    identity = affine_matrix()
    assert 0 < np.abs(weak - identity).max() < np.abs(strong - identity).max()


def test_tta_views(batch):
    images, points = batch
    views = tta_views(images, points, 4)
    assert len(views) == 4 and len(TTA_VIEWS) == 10
    np.testing.assert_array_equal(views[0][0], images)
    np.testing.assert_array_equal(views[0][1], points)
    np.testing.assert_array_equal(views[1][0], images[:, :, ::-1])
    np.testing.assert_array_equal(views[1][1][:, 36, 0], 47 - points[:, 45, 0])
    assert not np.array_equal(views[2][0], images)
    for out_images, out_points, bovw in views:
        np.testing.assert_array_equal(bovw[:, 136:], sliding_hog(out_images))
    # Deterministic.
    np.testing.assert_array_equal(tta_views(images, points, 3)[2][2], views[2][2])
    for bad in (0, 11, 2.0, True):
        with pytest.raises(ValueError, match="n_views"):
            tta_views(images, points, bad)
        with pytest.raises(ValueError, match="n_views"):
            tta_images(images, bad)


def test_tta_images_are_the_images_of_tta_views(batch):
    images, points = batch
    views = tta_views(images, points, MAX_TTA)
    only_images = tta_images(images, MAX_TTA)
    assert len(only_images) == MAX_TTA == len(TTA_VIEWS)
    for view, image_view in zip(views, only_images):
        np.testing.assert_array_equal(image_view, view[0])
    with pytest.raises(ValueError, match="images must be uint8"):
        tta_images(images.astype(np.float32), 2)


def test_one_view_alone_is_that_view_of_all(batch):
    images, points = batch
    views = tta_views(images, points, MAX_TTA)
    for index in (0, 3, MAX_TTA - 1):
        alone = tta_view(images, points, index)
        for part, expected in zip(alone, views[index]):
            np.testing.assert_array_equal(part, expected)
        np.testing.assert_array_equal(tta_image(images, index), views[index][0])
    for bad in (-1, MAX_TTA, 1.0, True):
        with pytest.raises(ValueError, match="index must be an integer from 0 to 9"):
            tta_view(images, points, bad)
        with pytest.raises(ValueError, match="index must be an integer from 0 to 9"):
            tta_image(images, bad)


def test_check_tta_names_where_the_value_came_from():
    assert check_tta(0) == 0 and check_tta(np.int64(MAX_TTA)) == MAX_TTA
    for bad in (-1, MAX_TTA + 1, 2.0, True, None):
        with pytest.raises(ValueError, match=r"^--tta must be an integer from 0 \(none\) to 10 views; got "):
            check_tta(bad, where="--tta")


@pytest.mark.parametrize(
    "kwargs, match",
    [({"rotation_deg": -1}, "rotation_deg"), ({"zoom": 1.0}, "zoom"), ({"zoom": 0.5, "strength": 2}, "zoom"),
     ({"shear_deg": 90}, "shear_deg"), ({"strength": float("nan")}, "strength"),
     ({"horizontal_flip": "yes"}, "horizontal_flip"), ({"rotation_deg": "10"}, "rotation_deg")],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AugmentConfig(**kwargs)


def test_input_validation(batch):
    images, points = batch
    with pytest.raises(ValueError, match="images must be uint8"):
        augment_batch(images.astype(np.float32), points, 0)
    with pytest.raises(ValueError, match=r"images must have shape \(N, 48, 48\)"):
        augment_batch(images[0], points[0], 0)
    with pytest.raises(ValueError, match=r"landmarks must have shape \(N, 68, 2\) with N = 12"):
        augment_batch(images, points[:5], 0)
    with pytest.raises(ValueError, match="rng"):
        augment_batch(images, points, "seed")
    with pytest.raises(ValueError, match="config"):
        augment_batch(images, points, 0, {"zoom": 0.1})
    with pytest.raises(ValueError, match="matrices"):
        transform_batch(images, points, np.eye(3), False)


def test_refused_values_are_input_errors(batch):
    """A bad value is the user's (InputError, one line, exit 2 from the CLIs), not a bug."""
    from ensemble_fer.errors import InputError

    images, points = batch
    with pytest.raises(InputError, match="zoom"):
        AugmentConfig(zoom=1.0)
    with pytest.raises(InputError, match="images must be uint8"):
        augment_batch(images.astype(np.float32), points, 0)
    with pytest.raises(InputError, match="n_views"):
        tta_views(images, points, 0)
