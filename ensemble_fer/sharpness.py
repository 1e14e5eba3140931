"""Matching the sharpness of what a model sees to what it was trained on.

The FER2013 copy this project is developed on has soft training crops (their Laplacian
variance is about 6, as after a Gaussian blur of sigma ~3) and sharp PublicTest crops
(about 2,000). A network cannot use detail it never saw in training, and HOG of a sharp
crop differs from HOG of a soft one, so every crop that is not training data (validation,
test, photos at prediction time) is blurred to the training crops' sharpness. On data whose
splits are alike (the original FER2013, CK+) the estimate is 0 and nothing is blurred.
Measured effect: benchmarks/RESULTS.md ("Sharpness matching").
"""

from __future__ import annotations

import numpy as np

# Below this ratio of sharpness (held-out / train medians) the splits count as alike.
ALIKE_RATIO = 4.0
SIGMAS = np.round(np.arange(0.5, 6.01, 0.25), 2)


def laplacian_variance(images: np.ndarray) -> np.ndarray:
    """Per-image variance of the Laplacian: the usual focus measure (high = sharp)."""
    import cv2

    images = np.asarray(images)
    return np.array([cv2.Laplacian(image, cv2.CV_64F).var() for image in images.reshape(-1, *images.shape[-2:])])


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of every crop (uint8 in, uint8 out); a no-op for sigma 0."""
    if not sigma:
        return images
    import cv2

    images = np.asarray(images)
    out = np.stack([cv2.GaussianBlur(image, (0, 0), sigma) for image in images.reshape(-1, *images.shape[-2:])])
    return out.reshape(images.shape)


def estimate_blur_sigma(train: np.ndarray, held_out: np.ndarray, max_images: int = 1000, seed: int = 0) -> float:
    """The Gaussian sigma that brings ``held_out`` crops to the median sharpness of ``train``
    (0.0 when the two are alike)."""
    rng = np.random.default_rng(seed)
    pick = lambda a: a[rng.choice(len(a), min(max_images, len(a)), replace=False)]
    train, held_out = pick(np.asarray(train)), pick(np.asarray(held_out))
    target = np.median(laplacian_variance(train))
    if np.median(laplacian_variance(held_out)) < ALIKE_RATIO * target:
        return 0.0
    errors = [abs(np.log(np.median(laplacian_variance(blur(held_out, s))) + 1e-9) - np.log(target + 1e-9))
              for s in SIGMAS]
    return float(SIGMAS[int(np.argmin(errors))])
