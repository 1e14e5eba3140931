"""How much of a 48x48 crop survives a round trip through a smaller side.

Why: the training split of ../shared/data/fer2013 is blurred (Gaussian sigma ~3, see
``ensemble_fer/sharpness.py``), and the extractor blurs the other splits to match. A blurred
image has almost no detail above a low spatial frequency, so a network can look at it at a
smaller side for a fraction of the convolution cost without losing anything. This measures
it: each crop is shrunk with area averaging, enlarged back to 48 bilinearly, and the RMS
difference from the original (grey levels, 0-255) is reported, median over the crops.

    python benchmarks/resolution_probe.py --data ../shared/data/fer2013 --n 500
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

SIDES = (40, 32, 24, 16)


def round_trip_rms(images: np.ndarray, side: int) -> float:
    errors = []
    for image in images.astype(np.float32):
        small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
        back = cv2.resize(small, image.shape[::-1], interpolation=cv2.INTER_LINEAR)
        errors.append(float(np.sqrt(np.mean((image - back) ** 2))))
    return float(np.median(errors))


@reports_errors
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "fer2013",
                        help="FER2013 folder release (train/<emotion>/*.jpg, test/<emotion>/*.jpg)")
    parser.add_argument("--n", type=int, default=500, help="random crops per split")
    parser.add_argument("--sigma", type=float, default=3.0, help="blur applied to the sharp split's copy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    records = datasets.open_dataset(args.data).splits
    splits = {}
    for name, split in (("train", "train"), ("test", "val")):   # the folder release's test/ is PublicTest
        if not records.get(split):
            raise ValueError(f"{args.data}: no {split} split")
        chosen = rng.choice(len(records[split]), size=min(args.n, len(records[split])), replace=False)
        splits[name] = np.stack([datasets.load_image(records[split][i]) for i in chosen])
    rows = {"train (as given: blurred)": splits["train"],
            "test (as given: sharp)": splits["test"],
            f"test blurred, sigma {args.sigma:g} (what the extractor does)": blur(splits["test"], args.sigma)}
    print(f"median RMS grey-level error of 48 -> side -> 48, {args.n} crops per split")
    print("| crops | " + " | ".join(f"{s} px" for s in SIDES) + " |")
    print("| --- |" + " ---: |" * len(SIDES))
    for name, images in rows.items():
        print(f"| {name} | " + " | ".join(f"{round_trip_rms(images, s):.2f}" for s in SIDES) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
