"""CPU cost of feature extraction per 48x48 crop, per detector, on one core.

    python benchmarks/bench_extract.py [--data ../shared/data/fer2013] [--n 500]

Prints CPU milliseconds per crop (process time, so other jobs on the machine do not inflate
it) for `analyse_crops` with each detector, and the projected wall time of the full FER2013
(35,887 crops) on 2 cores. `python -m pipelines.extract_features` runs one such process per
core with joblib; reading the JPEGs costs about 0.3 ms per image on top.
"""

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from ensemble_fer import bovw, datasets  # noqa: E402

FER2013_IMAGES = 35_887


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "sample")
    p.add_argument("--n", type=int, default=500)
    args = p.parse_args()
    records = datasets.open_dataset(args.data).splits["train"]
    rng = np.random.default_rng(0)
    records = [records[i] for i in rng.choice(len(records), min(args.n, len(records)), replace=False)]
    crops = np.stack([datasets.load_image(r) for r in records])
    for detector in ("none", "hog", "mmod"):
        config = bovw.ExtractorConfig(detector=detector, blur_sigma=0.0)
        n = len(crops) if detector != "mmod" else min(len(crops), 100)
        bovw.analyse_crops(crops[:2], config, training=True)  # load the dlib models first
        t = time.process_time()
        bovw.analyse_crops(crops[:n], config, training=True)
        ms = (time.process_time() - t) / n * 1000
        minutes = FER2013_IMAGES * ms / 1000 / 2 / 60
        print(f"detector {detector:5}: {ms:6.2f} CPU-ms per crop -> full FER2013 on 2 cores ~{minutes:5.1f} min "
              f"(n={n})", flush=True)


if __name__ == "__main__":
    main()
