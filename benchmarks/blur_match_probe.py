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

from ensemble_fer import datasets  # noqa: E402
from ensemble_fer.sharpness import blur  # noqa: E402
from pipelines.cli_errors import reports_errors  # noqa: E402

SIDE = datasets.IMAGE_SIZE


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


@reports_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="FER2013 (folders or CSV) with train and PublicTest")
    p.add_argument("--model", type=Path, help="an image-only variant folder to score each candidate with")
    p.add_argument("--n", type=int, default=3000, help="crops per split for the spectra")
    args = p.parse_args(argv)

    splits = datasets.open_dataset(args.data).splits
    if not splits.get("train") or not splits.get("val"):
        raise ValueError(f"{args.data}: needs a train and a val (PublicTest) split")
    rng = np.random.default_rng(0)
    pick = lambda records: rng.choice(len(records), min(args.n, len(records)), replace=False)
    load = lambda records: np.stack([datasets.load_image(r) for r in records])
    train = load([splits["train"][i] for i in pick(splits["train"])])
    val = load(splits["val"])
    val_sample = val[pick(val)]
    reference = radial_power(val_sample)
    target = 10 * np.log10(radial_power(train) / reference)

    model = None
    if args.model is not None:
        from ensemble_fer import training
        from ensemble_fer.labels import label_set_from_json

        model, config = training.load_variant(args.model)
        if config["bovw"]:
            raise ValueError(f"{args.model}: needs an image-only variant (this one has the BOVW input)")
        y = label_set_from_json(config["labels"]).encode([r.label for r in splits["val"]])
        scored = {name: images[y >= 0] for name, images in candidates(val).items()}
        y = y[y >= 0]

    print(f"| PublicTest crops | spectrum error, 1-8 cycles (dB) | 9-24 cycles (dB) |"
          + (f" `{args.model.name}` accuracy (n={len(y)}) |" if model is not None else ""))
    print("| --- | ---: | ---: |" + (" ---: |" if model is not None else ""))
    for name, images in candidates(val_sample).items():
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
