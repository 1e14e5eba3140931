"""Face detection: recall and time per ``upsample`` setting, on photos with ground-truth faces.

    taskset -c 0 python benchmarks/bench_detect.py [--photos DIR] [--detectors hog[,mmod]]
        [--upsample 0,1,auto] [--repeats 5]

The photos are dlib's PASCAL VOC test photos with 68-landmark ground truth (imglab XML files
beside them: every ``<box>`` is a face). Default folder ``../shared/data/photos`` (9 photos,
43 faces), else ``tests/data/photos`` (the 5 bundled ones). A ground-truth face counts as found
when its centre lies inside a detected box; a detected box that holds no ground-truth centre
is an extra (an unlabelled face or a false detection). Also timed: the 640x480 one-face photo
of ``bench_predict.py``. Times are the median (fastest) of ``--repeats`` runs, in ms, with
dlib on one thread; run it under ``taskset`` to keep it on one core.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

SHARED_PHOTOS = REPO.parent / "shared" / "data" / "photos"
BUNDLED_PHOTOS = REPO / "tests" / "data" / "photos"


def ground_truth(folder: Path) -> dict[str, list[tuple[int, int, int, int]]]:
    """``{file name: [(left, top, width, height), ...]}`` from every imglab XML in ``folder``."""
    faces_by_file = {}
    for xml in sorted(folder.glob("*.xml")):
        for image in ET.parse(xml).getroot().iter("image"):
            boxes = [tuple(int(box.get(k)) for k in ("left", "top", "width", "height")) for box in image.iter("box")]
            faces_by_file[image.get("file")] = boxes
    return {name: boxes for name, boxes in faces_by_file.items() if (folder / name).is_file()}


def timed(fn, repeats: int) -> tuple[object, float, float]:
    """``fn()``'s result, and the median and fastest of ``repeats`` timed calls after a warm-up, in ms."""
    fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return result, 1000 * statistics.median(seconds), 1000 * min(seconds)


def contains(box, point) -> bool:
    left, top, right, bottom = box
    return left <= point[0] <= right and top <= point[1] <= bottom


def main(argv=None) -> int:
    from bench_predict import one_face_photo

    from ensemble_fer.features import faces
    from ensemble_fer.features.datasets import read_image_file, to_gray
    from pipelines.predict import upsample_value

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--photos", type=Path, default=SHARED_PHOTOS if SHARED_PHOTOS.is_dir() else BUNDLED_PHOTOS)
    p.add_argument("--detectors", default="hog", help="comma-separated: hog, mmod (mmod takes seconds a photo)")
    p.add_argument("--upsample", default="0,1,auto", help="comma-separated upsample settings")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    settings = [upsample_value(s) for s in args.upsample.split(",")]
    truth = ground_truth(args.photos)
    with tempfile.TemporaryDirectory() as tmp:
        portrait = to_gray(read_image_file(one_face_photo(Path(tmp) / "one_face.jpg")))
    photos = {name: to_gray(read_image_file(args.photos / name)) for name in truth}
    n_faces = sum(len(boxes) for boxes in truth.values())
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {args.photos}: "
          f"{len(photos)} photos, {n_faces} faces; median (fastest) of {args.repeats} repeats")
    print("| detector | upsample | faces found | extras | smallest box, px | ms a photo, median | "
          "one-face 640x480 photo, ms | its box, px |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for detector in args.detectors.split(","):
        for upsample in settings:
            found = extras = 0
            sides, times = [], []
            for name, image in photos.items():
                boxes, median_ms, _ = timed(lambda: faces.detect_faces(image, detector, upsample), args.repeats)
                times.append(median_ms)
                centres = [(left + w / 2, top + h / 2) for left, top, w, h in truth[name]]
                found += sum(any(contains(box, c) for box in boxes) for c in centres)
                extras += sum(not any(contains(box, c) for c in centres) for box in boxes)
                sides += [box[2] - box[0] + 1 for box in boxes]
            boxes, median_ms, fastest_ms = timed(lambda: faces.detect_faces(portrait, detector, upsample), args.repeats)
            side = boxes[0][2] - boxes[0][0] + 1 if boxes else "-"
            print(f"| {detector} | {upsample} | {found}/{n_faces} | {extras} | {min(sides, default='-')} | "
                  f"{statistics.mean(times):.1f} | {median_ms:.1f} ({fastest_ms:.1f}) | {side} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
