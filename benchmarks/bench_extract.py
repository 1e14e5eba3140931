"""Feature extraction on 48x48 crops: CPU cost per crop and how often each detector fires.

    python benchmarks/bench_extract.py [--data ../shared/data/fer2013] [--n 500]

1. CPU milliseconds per crop (process time, so other jobs on the machine do not inflate it)
   of `analyse_crops` with each detector, and the projected wall time of the full FER2013
   (35,887 crops) on 2 cores (`pipelines.extract_features` runs one such process per core;
   reading the JPEGs costs about 0.3 ms per image on top).
2. Per detector setting, the share of crops with 0, 1 and 2+ faces, wall ms per crop, and the
   mean box (in the 48x48 frame) of single detections.
"""

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from ensemble_fer.features import bovw
from ensemble_fer.features import datasets  # noqa: E402

FER2013_IMAGES = 35_887


def cpu_cost(crops):
    for detector in ("none", "hog", "mmod"):
        config = bovw.ExtractorConfig(detector=detector)
        n = len(crops) if detector != "mmod" else min(len(crops), 100)
        bovw.analyse_crops(crops[:2], config)  # load the dlib models first
        t = time.process_time()
        bovw.analyse_crops(crops[:n], config)
        ms = (time.process_time() - t) / n * 1000
        minutes = FER2013_IMAGES * ms / 1000 / 2 / 60
        print(f"detector {detector:5}: {ms:6.2f} CPU-ms per crop -> full FER2013 on 2 cores ~{minutes:5.1f} min "
              f"(n={n})", flush=True)


def hit_rates(crops):
    for detector, upsample, pad in (("hog", 1, 0), ("hog", 1, 12), ("hog", 2, 12), ("mmod", 1, 0), ("mmod", 1, 12)):
        config = bovw.ExtractorConfig(detector=detector, upsample=upsample, pad=pad)
        sample = crops if detector == "hog" else crops[:300]
        t = time.perf_counter()
        found = [bovw.locate_faces_in_crop(c, config) for c in sample]
        ms = (time.perf_counter() - t) / len(sample) * 1000
        counts = np.array([len(f) for f in found])
        single = np.array([f[0] for f in found if len(f) == 1]).reshape(-1, 4)
        box = single.mean(0).round(1).tolist() if len(single) else None
        print(f"{detector:5} upsample={upsample} pad={pad:2}: none {np.mean(counts == 0):6.1%}  "
              f"one {np.mean(counts == 1):6.1%}  several {np.mean(counts > 1):5.1%}  {ms:6.1f} ms/crop  "
              f"mean single box {box}  (n={len(sample)})", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "sample")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--split", default="train", help="train or val (FER2013 PublicTest)")
    p.add_argument("--rates-only", action="store_true", help="skip the CPU-cost part")
    args = p.parse_args()
    records = datasets.open_dataset(args.data).splits[args.split]
    rng = np.random.default_rng(0)
    records = [records[i] for i in rng.choice(len(records), min(args.n, len(records)), replace=False)]
    crops = np.stack([datasets.load_image(r) for r in records])
    print(f"{args.data} {args.split}: {len(crops)} crops (seeded sample)", flush=True)
    if not args.rates_only:
        cpu_cost(crops)
    hit_rates(crops)


if __name__ == "__main__":
    main()
