"""How often each dlib detector finds exactly one face in FER2013 48x48 crops.

    python benchmarks/detector_hit_rate.py [--data ../shared/data/fer2013] [--n 400]

Prints, per detector setting, the share of crops with 0, 1 and 2+ faces, ms per crop on one
core, and the mean box (in the 48x48 frame) of single detections.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from ensemble_fer import bovw, datasets


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "sample")
    p.add_argument("--n", type=int, default=400)
    args = p.parse_args()
    records = datasets.open_dataset(args.data).splits["train"]
    rng = np.random.default_rng(0)
    records = [records[i] for i in rng.choice(len(records), min(args.n, len(records)), replace=False)]
    crops = [datasets.load_image(r) for r in records]
    for detector, upsample, pad in (("hog", 1, 0), ("hog", 1, 12), ("hog", 2, 12), ("mmod", 1, 0), ("mmod", 1, 12)):
        config = bovw.ExtractorConfig(detector=detector, upsample=upsample, pad=pad)
        t = time.perf_counter()
        found = [bovw.locate_faces_in_crop(c, config) for c in crops]
        ms = (time.perf_counter() - t) / len(crops) * 1000
        counts = np.array([len(f) for f in found])
        single = np.array([f[0] for f in found if len(f) == 1]).reshape(-1, 4)
        box = single.mean(0).round(1).tolist() if len(single) else None
        print(f"{detector:5} upsample={upsample} pad={pad:2}: none {np.mean(counts == 0):6.1%}  one {np.mean(counts == 1):6.1%}"
              f"  several {np.mean(counts > 1):5.1%}  {ms:6.1f} ms/crop  mean single box {box}", flush=True)


if __name__ == "__main__":
    main()
