"""Face detection: recall and time per ``upsample`` setting, on photos with ground-truth faces.

    taskset -c 0 python benchmarks/bench_detect.py [--photos DIR] [--detectors hog[,mmod]]
        [--upsample 0,1,auto] [--repeats 5] [--searches] [--mmod-repeats 1]

The photos are dlib's PASCAL VOC test photos with 68-landmark ground truth (imglab XML files
beside them: every ``<box>`` is a face). Default folder ``../shared/data/photos`` (9 photos,
43 faces), else ``tests/data/photos`` (the 5 bundled ones). A ground-truth face counts as found
when its centre lies inside a detected box; a detected box that holds no ground-truth centre
is an extra (an unlabelled face or a false detection). Also timed: the 640x480 one-face photo
of ``bench_predict.py``. Times are the median (fastest) of ``--repeats`` runs, in ms, with
dlib on one thread; run it under ``taskset`` to keep it on one core. Both wall time and CPU
time (``time.process_time``) are given: on a loaded machine the CPU time is the steadier one.

``--searches`` adds a second table, every detector option that exists here without a download
(the choice of ``upsample="fast"``, issue 25): dlib HOG at upsample 0 on the photo resized by
0.5-2 (boxes mapped back to the photo), the two-pass searches (``auto`` = scales 1 then 2,
``fast`` and its neighbours), dlib MMOD at upsample 0 / 1 / auto (``--mmod-repeats``: seconds a
photo), and the OpenCV LBP frontal-face cascade that scikit-image bundles, run by
``skimage.feature.Cascade``. OpenCV's Haar cascades are listed as absent when the installed
OpenCV has none (opencv-python-headless 5.x ships no ``cv2.data`` XML files and no
``cv2.CascadeClassifier``); OpenCV's YuNet (``cv2.FaceDetectorYN``) needs a model download.
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
    result, wall, fastest, _ = timed_cpu(fn, repeats)
    return result, wall, fastest


def timed_cpu(fn, repeats: int) -> tuple[object, float, float, float]:
    """:func:`timed` plus the median CPU time (``time.process_time``) of the calls, in ms."""
    fn()
    seconds, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return result, 1000 * statistics.median(seconds), 1000 * min(seconds), 1000 * statistics.median(cpu)


def contains(box, point) -> bool:
    left, top, right, bottom = box
    return left <= point[0] <= right and top <= point[1] <= bottom


def main(argv=None) -> int:
    from bench_predict import one_face_photo

    from ensemble_fer.features import faces
    from ensemble_fer.features.image_io import read_image_file, to_gray
    from ensemble_fer.features.faces import parse_upsample

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--photos", type=Path, default=SHARED_PHOTOS if SHARED_PHOTOS.is_dir() else BUNDLED_PHOTOS)
    p.add_argument("--detectors", default="hog", help="comma-separated: hog, mmod (mmod takes seconds a photo)")
    p.add_argument("--upsample", default="0,1,auto", help="comma-separated upsample settings")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--searches", action="store_true",
                   help="also the table of every detector option installed here (resized photos, two-pass "
                        "searches, MMOD, the LBP cascade)")
    p.add_argument("--mmod-repeats", type=int, default=1, help="repeats of the MMOD rows of --searches (0: no MMOD rows)")
    args = p.parse_args(argv)
    settings = [parse_upsample(s) for s in args.upsample.split(",")]
    truth = ground_truth(args.photos)
    with tempfile.TemporaryDirectory() as tmp:
        portrait = to_gray(read_image_file(one_face_photo(Path(tmp) / "one_face.jpg")))
    photos = {name: to_gray(read_image_file(args.photos / name)) for name in truth}
    n_faces = sum(len(boxes) for boxes in truth.values())
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, pinned to {cpus}, load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}; {args.photos}: "
          f"{len(photos)} photos, {n_faces} faces; median (fastest) of {args.repeats} repeats")
    print("| detector | upsample | faces found | extras | smallest box, px | ms a photo, median | "
          "one-face 640x480 photo, ms | its box, px | CPU ms a photo | one-face CPU ms |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for detector in args.detectors.split(","):
        for upsample in settings:
            row = measure(lambda image: faces.detect_faces(image, detector, upsample), photos, truth, portrait,
                          args.repeats)
            print(f"| {detector} | {upsample} | {row['found']}/{n_faces} | {row['extras']} | {row['smallest']} | "
                  f"{row['wall']:.1f} | {row['one_wall']:.1f} ({row['one_fastest']:.1f}) | {row['side']} | "
                  f"{row['cpu']:.1f} | {row['one_cpu']:.1f} |")
    if args.searches:
        print()
        print_searches(photos, truth, portrait, args.repeats, args.mmod_repeats)
    return 0


def measure(detect, photos: dict, truth: dict, portrait, repeats: int) -> dict:
    """Recall, extras and times of ``detect(gray image) -> boxes`` on the ground-truth photos
    and on the one-face photo (times in ms: means over the photos of each one's median)."""
    found = extras = 0
    sides, walls, cpus = [], [], []
    for name, image in photos.items():
        boxes, median_ms, _, cpu_ms = timed_cpu(lambda: detect(image), repeats)
        walls.append(median_ms)
        cpus.append(cpu_ms)
        centres = [(left + w / 2, top + h / 2) for left, top, w, h in truth[name]]
        found += sum(any(contains(box, c) for box in boxes) for c in centres)
        extras += sum(not any(contains(box, c) for c in centres) for box in boxes)
        sides += [box[2] - box[0] + 1 for box in boxes]
    boxes, one_wall, one_fastest, one_cpu = timed_cpu(lambda: detect(portrait), repeats)
    return {"found": found, "extras": extras, "smallest": min(sides, default="-"),
            "wall": statistics.mean(walls), "cpu": statistics.mean(cpus),
            "one_wall": one_wall, "one_fastest": one_fastest, "one_cpu": one_cpu,
            "one_found": len(boxes), "side": boxes[0][2] - boxes[0][0] + 1 if boxes else "-"}


def lbp_cascade():
    """scikit-image's copy of OpenCV's LBP frontal-face cascade, as ``detect(gray) -> boxes``
    (24 px window, scale step 1.2, faces from 24 px), or None when it is not installed."""
    try:
        from skimage import data
        from skimage.feature import Cascade
    except ImportError:
        return None
    cascade = Cascade(data.lbp_frontal_face_cascade_filename())

    def detect(gray):
        found = cascade.detect_multi_scale(img=gray, scale_factor=1.2, step_ratio=1, min_size=(24, 24),
                                           max_size=gray.shape[:2])
        return [(d["c"], d["r"], d["c"] + d["width"] - 1, d["r"] + d["height"] - 1) for d in found]

    return detect


def absent_detectors() -> list[str]:
    """Detectors asked for by issue 25 that this installation cannot run without a download."""
    import cv2

    notes = []
    haar = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or "/nonexistent")
    if not hasattr(cv2, "CascadeClassifier") or not list(haar.glob("haarcascade_frontalface_*.xml")):
        notes.append(f"OpenCV {cv2.__version__} Haar cascades: absent (cv2.CascadeClassifier "
                     f"{'present' if hasattr(cv2, 'CascadeClassifier') else 'absent'}, no haarcascade_frontalface_*.xml "
                     f"in cv2.data)")
    if hasattr(cv2, "FaceDetectorYN"):
        notes.append("OpenCV YuNet (cv2.FaceDetectorYN): present, but needs its ONNX model, a download")
    return notes


def doubled_by_opencv(gray) -> list:
    """HOG at upsample 0 on the photo doubled by OpenCV (bilinear) instead of by dlib, boxes
    halved back: whether dlib's own doubling costs more than the resize."""
    import cv2

    from ensemble_fer.features import faces

    doubled = cv2.resize(gray, (2 * gray.shape[1], 2 * gray.shape[0]), interpolation=cv2.INTER_LINEAR)
    return [(left // 2, top // 2, (right + 1) // 2 - 1, (bottom + 1) // 2 - 1)
            for left, top, right, bottom in faces.detect_faces(doubled, "hog", 0)]


def print_searches(photos, truth, portrait, repeats: int, mmod_repeats: int) -> None:
    from ensemble_fer.features import faces

    def boxes(scored):
        return [box for box, _ in scored]

    rows = [("hog", f"photo x{scale}, upsample 0", repeats,
             lambda image, scale=scale: boxes(faces.detect_resized(image, scale, "hog")))
            for scale in (0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 1.6, 1.75, 2.0)]
    rows.append(("hog", "photo x2 by OpenCV (bilinear), upsample 0", repeats, doubled_by_opencv))
    searches = {faces.AUTO_SEARCH: "auto", faces.FAST_SEARCH: "fast",
                faces.TwoPass(0.5, 1.0, 2.0): "auto on a half-size copy"}
    for search in [faces.TwoPass(first, second, 0.0) for first in (0.5, 0.6, 0.75) for second in (1.5, 1.6, 1.75, 2.0)] \
            + [faces.TwoPass(0.5, 2.0, 2.0), faces.TwoPass(1.0, 1.5, 2.0)]:
        searches.setdefault(search, "")
    for search, name in searches.items():
        rule = "any face" if search.accept == 0 else f"faces >= {search.accept:g}x the smallest it shows"
        rows.append(("hog", f"two passes: x{search.first:g} (stop at {rule}), then x{search.second:g}"
                     + (f" = {name}" if name else ""), repeats,
                     lambda image, search=search: boxes(faces.search_faces(image, search, "hog"))))
    for upsample in (0, 1, "auto") if mmod_repeats > 0 else ():
        rows.append(("mmod", f"upsample {upsample}", mmod_repeats,
                     lambda image, upsample=upsample: faces.detect_faces(image, "mmod", upsample)))
    lbp = lbp_cascade()
    if lbp is not None:
        rows.append(("LBP cascade (scikit-image)", "24 px window, step 1.2", repeats, lbp))
    n_faces = sum(len(boxes) for boxes in truth.values())
    print("| detector | search | faces found | extras | smallest box, px | CPU ms a photo | wall ms a photo | "
          "one-face CPU ms | one-face wall ms | its faces | its box, px |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for detector, search, n, detect in rows:
        row = measure(detect, photos, truth, portrait, n)
        print(f"| {detector} | {search} | {row['found']}/{n_faces} | {row['extras']} | {row['smallest']} | "
              f"{row['cpu']:.1f} | {row['wall']:.1f} | {row['one_cpu']:.1f} | {row['one_wall']:.1f} | "
              f"{row['one_found']} | {row['side']} |", flush=True)
    for note in absent_detectors():
        print(f"- {note}")


if __name__ == "__main__":
    raise SystemExit(main())
