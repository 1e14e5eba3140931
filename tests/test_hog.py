"""The vectorised sliding-window HOG against the per-window scikit-image reference."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.feature

from conftest import sample_crops
from ensemble_fer.features import hog
from ensemble_fer.features.hog import HOG_SIZE, sliding_hog, sliding_hog_reference

TOL = 1e-6


@pytest.fixture(scope="module")
def crops():
    images, _ = sample_crops(24)
    assert images.shape[1:] == (48, 48) and images.dtype == np.uint8
    return images


@pytest.fixture(scope="module")
def reference(crops):
    return np.stack([sliding_hog_reference(image) for image in crops])


def test_geometry_constants():
    assert (hog.WINDOW, hog.STEP, hog.ORIENTATIONS, hog.CELL, hog.IMAGE_SIZE) == (24, 6, 8, 8, 48)
    assert HOG_SIZE == 2592


def test_reference_skips_windows_without_a_cell():
    # The 6-pixel windows at the right/bottom border hold no 8x8 cell: scikit-image
    # refuses them, and the reference leaves them out (18 x 18 cells remain).
    with pytest.raises(ValueError):
        skimage.feature.hog(np.zeros((24, 6)), orientations=8, pixels_per_cell=(8, 8), cells_per_block=(1, 1))
    assert sliding_hog_reference(np.zeros((48, 48), np.uint8)).shape == (HOG_SIZE,)


def test_matches_reference_on_real_images(crops, reference):
    assert reference.shape == (len(crops), HOG_SIZE)
    assert np.abs(reference).max() > 0.1  # real structure, not an all-zero descriptor
    np.testing.assert_allclose(sliding_hog(crops), reference, rtol=0, atol=TOL)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_reference_on_float_images(crops, dtype):
    # Scaled to [0, 1]: float32 input is differentiated in float32 by scikit-image.
    images = crops[:6].astype(dtype) / dtype(255)
    expected = np.stack([sliding_hog_reference(image) for image in images])
    np.testing.assert_allclose(sliding_hog(images), expected, rtol=0, atol=TOL)


def _ramp(dy, dx):
    y, x = np.mgrid[0:48, 0:48]
    return np.clip(100 + dy * y + dx * x, 0, 255).astype(np.uint8)


SYNTHETIC = {
    "flat": np.full((48, 48), 117, np.uint8),
    "zeros": np.zeros((48, 48), np.uint8),
    # Gradients exactly on bin edges (0, 45, 90, 135 degrees, and 180 which wraps to 0),
    # where the bin comparisons must be scikit-image's.
    "ramp_right": _ramp(0, 2),
    "ramp_left": _ramp(0, -2),
    "ramp_down": _ramp(3, 0),
    "ramp_up": _ramp(-3, 0),
    "diagonal": _ramp(2, 2),
    "antidiagonal": _ramp(2, -2),
    "checkerboard": (np.indices((48, 48)).sum(axis=0) % 2 * 255).astype(np.uint8),
    "stripes": (np.arange(48) % 3 * 120).astype(np.uint8)[None, :].repeat(48, axis=0),
}


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_matches_reference_on_synthetic_images(name):
    image = SYNTHETIC[name]
    np.testing.assert_allclose(sliding_hog(image), sliding_hog_reference(image), rtol=0, atol=TOL)


def test_flat_image_gives_zeros():
    assert not sliding_hog(SYNTHETIC["flat"]).any()


@pytest.mark.parametrize("seed", range(3))
def test_matches_reference_on_noise(seed):
    rng = np.random.default_rng(seed)
    for image in (
        rng.integers(0, 256, (48, 48)).astype(np.uint8),
        rng.standard_normal((48, 48)),
        rng.standard_normal((48, 48)).astype(np.float32),
    ):
        np.testing.assert_allclose(sliding_hog(image), sliding_hog_reference(image), rtol=0, atol=TOL)


def test_shapes_and_dtype(crops):
    single = sliding_hog(crops[0])
    assert single.shape == (HOG_SIZE,) and single.dtype == np.float32
    batch = sliding_hog(crops)
    assert batch.shape == (len(crops), HOG_SIZE) and batch.dtype == np.float32
    assert sliding_hog(crops[:0]).shape == (0, HOG_SIZE)
    assert sliding_hog(crops[0].tolist()).shape == (HOG_SIZE,)  # array-like input


def test_batch_equals_single(crops):
    batch = sliding_hog(crops)
    for image, row in zip(crops, batch):
        np.testing.assert_array_equal(sliding_hog(image), row)


@pytest.mark.parametrize("chunk_size", [1, 5, 1000])
def test_chunking_does_not_change_values(crops, chunk_size):
    np.testing.assert_array_equal(sliding_hog(crops, chunk_size=chunk_size), sliding_hog(crops))


@pytest.mark.parametrize(
    "shape", [(48,), (47, 48), (48, 49), (2, 48, 47), (2, 1, 48, 48), (48, 48, 1), ()]
)
def test_bad_shapes_raise(shape):
    with pytest.raises(ValueError, match=r"images must have shape .*got shape"):
        sliding_hog(np.zeros(shape, np.uint8))


def test_reference_bad_shape_raises():
    with pytest.raises(ValueError, match=r"image must have shape \(48, 48\); got shape \(2, 48, 48\)"):
        sliding_hog_reference(np.zeros((2, 48, 48)))


def test_bad_values_dtype_and_chunk_size_raise(crops):
    with pytest.raises(ValueError, match="dtype"):
        sliding_hog(np.zeros((48, 48), complex))
    with pytest.raises(ValueError, match="dtype"):
        sliding_hog(np.full((48, 48), "a"))
    with pytest.raises(ValueError, match="finite"):
        sliding_hog(np.full((48, 48), np.nan))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            sliding_hog(crops, chunk_size=bad)
