"""Speed of the sliding-window HOG (vectorised vs the per-window scikit-image reference)
and of ``augment_batch``, on real 48x48 FER2013 crops, on one core.

    python benchmarks/bench_hog.py [--data data/sample/train] [--n 300]

Prints images/s for each, the speed-up, and the largest difference between the two HOG
implementations on the timed images. Each timing is the best of a few repeats, which
filters out (most of) the noise of other processes on a shared machine.
"""

from __future__ import annotations

import os

# One core: keep BLAS/OpenMP from using more (set before numpy is imported).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ensemble_fer.features.augment import AugmentConfig, augment_batch  # noqa: E402
from ensemble_fer.features.hog import sliding_hog, sliding_hog_reference  # noqa: E402


def load_crops(root: Path, n: int) -> np.ndarray:
    """Up to n grayscale crops from <root>/<emotion>/*.jpg, spread over the classes."""
    files = sorted(root.glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no <emotion>/*.jpg images under {root}")
    files = files[:: max(1, len(files) // n)][:n]
    return np.stack([np.asarray(Image.open(f).convert("L")) for f in files])


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "sample" / "train",
                        help="folder of <emotion>/*.jpg 48x48 crops (default: the bundled sample)")
    parser.add_argument("--n", type=int, default=300, help="images to time (default 300)")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (default 5)")
    args = parser.parse_args(argv)

    images = load_crops(args.data, args.n)
    n = len(images)
    print(f"{n} images from {args.data}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; numpy {np.__version__}")

    reference = np.stack([sliding_hog_reference(image) for image in images])  # also a warm-up
    vectorised = sliding_hog(images)
    # Interleaved repeats, so that both implementations see the same load; the
    # speed-up is taken per repeat (median reported) as well as from the best times.
    n_single = min(n, 50)
    times = {"reference": [], "batch": [], "single": []}
    ratios = []
    for _ in range(args.repeats):
        times["reference"].append(best_time(lambda: [sliding_hog_reference(image) for image in images], 1) / n)
        times["batch"].append(best_time(lambda: sliding_hog(images), 3) / n)
        times["single"].append(best_time(lambda: [sliding_hog(image) for image in images[:n_single]], 3) / n_single)
        ratios.append((times["reference"][-1] / times["batch"][-1], times["reference"][-1] / times["single"][-1]))
    best = {key: min(values) for key, values in times.items()}
    median_batch, median_single = np.median(ratios, axis=0)

    print(f"sliding_hog_reference (64 skimage.feature.hog calls/image): {1 / best['reference']:8.0f} images/s")
    print(f"sliding_hog, one call for all {n} images:                   {1 / best['batch']:8.0f} images/s"
          f"  speed-up x{best['reference'] / best['batch']:.0f} (best times), x{median_batch:.0f} (median of "
          f"{args.repeats} interleaved repeats)")
    print(f"sliding_hog, one call per image:                            {1 / best['single']:8.0f} images/s"
          f"  speed-up x{best['reference'] / best['single']:.0f} (best times), x{median_single:.0f} (median)")
    print(f"max |vectorised - reference| over the {n} images = {np.abs(vectorised - reference).max():.2e}")

    rng = np.random.default_rng(0)
    landmarks = rng.uniform(5, 42, (n, 68, 2)).astype(np.float32)  # cost does not depend on values
    augment_batch(images[:32], landmarks[:32], rng)
    for batch_size in (32, 256):
        batches = [(images[i : i + batch_size], landmarks[i : i + batch_size]) for i in range(0, n, batch_size)]
        t_augment = best_time(lambda: [augment_batch(x, lm, rng, AugmentConfig()) for x, lm in batches],
                              args.repeats)
        print(f"augment_batch (warp + landmarks + HOG + BOVW), batches of {batch_size:3d}: "
              f"{n / t_augment:7.0f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
