"""A data check: are the held-out crops as sharp as the training crops?

Sharpness is the variance of the Laplacian (the usual focus measure; FER2013's original crops
have a median of about 2,100 in every split). A split much sharper or softer than training
is a sign of a damaged copy (an earlier copy of FER2013 had every training crop blurred) or of
data unlike what the model learnt from. The feature store records each split's median in its
manifest and the extraction stage warns; nothing is ever altered to make the splits match.
"""

from __future__ import annotations

import numpy as np

MAX_RATIO = 4.0
"""A held-out split whose median is more than this many times sharper or softer than training
gets a warning."""
SAMPLE = 1000
"""Crops per split measured (the median of 1,000 is stable to a few percent)."""


def laplacian_variance(images: np.ndarray) -> np.ndarray:
    """Per-image variance of the Laplacian: the usual focus measure (high = sharp)."""
    import cv2

    images = np.asarray(images)
    return np.array([cv2.Laplacian(image, cv2.CV_64F).var() for image in images.reshape(-1, *images.shape[-2:])])


def compare_splits(images: dict[str, np.ndarray], seed: int = 0) -> dict:
    """Each split's median Laplacian variance (over a seeded sample of :data:`SAMPLE` crops) and
    a warning for every held-out split more than :data:`MAX_RATIO` times sharper or softer than
    ``train``."""
    rng = np.random.default_rng(seed)
    medians = {}
    for split, crops in images.items():
        crops = np.asarray(crops)
        pick = rng.choice(len(crops), min(SAMPLE, len(crops)), replace=False) if len(crops) else []
        medians[split] = round(float(np.median(laplacian_variance(crops[pick]))), 2) if len(crops) else None
    warnings = []
    train = medians.get("train")
    for split, median in medians.items():
        if split == "train" or not train or not median:
            continue
        ratio = median / train
        if ratio > MAX_RATIO or ratio < 1 / MAX_RATIO:
            warnings.append(f"the {split} crops are {ratio if ratio > 1 else 1 / ratio:.1f}x "
                            f"{'sharper' if ratio > 1 else 'softer'} than the training crops (median Laplacian "
                            f"variance {median:g} vs {train:g}): check that both come from the same source")
    return {"median_laplacian_variance": medians, "max_ratio": MAX_RATIO, "warnings": warnings}
