"""Is a Gaussian blur of sigma 3 the right way to make PublicTest crops look like training ones?

Why: the training split of ../shared/data/fer2013 is blurred and PublicTest is not; the
extractor blurs held-out crops by the sigma that matches the median Laplacian variance
(``ensemble_fer/sharpness.py``, 3.0 here). Two checks of that choice:

1. Spectrum: the radially averaged power spectrum of the training crops divided by that of
   the PublicTest crops is |H(f)|^2 of whatever degraded the training split (both splits are
   random draws of the same faces). Each candidate degradation of the PublicTest crops is
   scored by its RMS distance (dB) to that ratio, at low (1-8 cycles per crop) and high
   (9-24) frequencies.
2. Accuracy: a trained image-only variant scores the PublicTest crops under each candidate.

    python benchmarks/blur_match_probe.py --data ../shared/data/fer2013 --model models/release/vgg_fast_32px
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ensemble_fer.sharpness import blur  # noqa: E402

SIDE = 48


def read(files) -> np.ndarray:
    return np.stack([cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files])


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    return np.stack([cv2.imdecode(cv2.imencode(".jpg", i, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], 0)
                     for i in images])


def radial_power(images: np.ndarray) -> np.ndarray:
    """Mean power per integer radius (cycles per crop, 0..24), Hann-windowed."""
    window = np.outer(np.hanning(SIDE), np.hanning(SIDE))
    x = images.astype(np.float64)
    x -= x.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(x * window)) ** 2).mean(axis=0)
    fy, fx = np.meshgrid(np.fft.fftfreq(SIDE), np.fft.fftfreq(SIDE), indexing="ij")
    radius = np.rint(np.hypot(fx, fy) * SIDE).astype(int)
    return np.array([power[radius == k].mean() for k in range(SIDE // 2 + 1)])


def candidates(test: np.ndarray) -> dict[str, np.ndarray]:
    out = {"as given (sharp)": test}
    for sigma in (2.0, 2.5, 2.75, 3.0, 3.25, 3.5):
        out[f"blur {sigma}"] = blur(test, sigma)
    out["blur 3.25 + JPEG q95"] = jpeg(blur(test, 3.25), 95)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="FER2013 folder with train/ and test/")
    p.add_argument("--model", type=Path, help="an image-only variant folder to score each candidate with")
    p.add_argument("--n", type=int, default=3000, help="crops per split for the spectra")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    train_files = sorted(args.data.glob("train/*/*.jpg"))
    test_files = sorted(args.data.glob("test/*/*.jpg"))
    if not train_files or not test_files:
        print(f"error: {args.data}: expected train/<emotion>/*.jpg and test/<emotion>/*.jpg", file=sys.stderr)
        return 2
    pick = lambda files: [files[i] for i in rng.choice(len(files), min(args.n, len(files)), replace=False)]
    train, test_sample = read(pick(train_files)), read(pick(test_files))
    reference = radial_power(test_sample)
    target = 10 * np.log10(radial_power(train) / reference)

    model = config = classes = None
    if args.model is not None:
        from ensemble_fer import training

        model, config = training.load_variant(args.model)
        if config["bovw"]:
            print(f"error: {args.model}: needs an image-only variant (this one has the BOVW input)", file=sys.stderr)
            return 2
        classes = list(config["labels"]["classes"])
        test_all = read(test_files)
        y = np.array([classes.index(f.parent.name) for f in test_files])
        scored = candidates(test_all)

    print(f"| PublicTest crops | spectrum error, 1-8 cycles (dB) | 9-24 cycles (dB) |"
          + (f" `{args.model.name}` accuracy (n={len(test_files)}) |" if model is not None else ""))
    print("| --- | ---: | ---: |" + (" ---: |" if model is not None else ""))
    for name, images in candidates(test_sample).items():
        error = 10 * np.log10(radial_power(images) / reference) - target
        low, high = (float(np.sqrt(np.mean(error[a:b] ** 2))) for a, b in ((1, 9), (9, 25)))
        row = f"| {name} | {low:.2f} | {high:.2f} |"
        if model is not None:
            proba = training.predict_proba(model, config, scored[name])
            row += f" {np.mean(proba.argmax(axis=1) == y):.2%} |"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
