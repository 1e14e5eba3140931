"""Prediction latency and throughput on one CPU core.

    taskset -c 0 python benchmarks/bench_predict.py [--model PATH|release|fast] [--repeats 30]
        [--upsample auto,1,0|default] [--photos DIR] [--no-throughput] [--versus MODEL]

1. Latency: a 640x480 photo with one face (the right-hand face of dlib's test photo
   2008_002506.jpg, its third of the photo scaled to 480 px high and padded grey to 640 px wide,
   saved as JPEG) -> ``EmotionRecognizer.predict(path)``: decode, gray, HOG detection, crop,
   BOVW features, network. Median over ``--repeats`` after a warm-up, per ``upsample``, with a
   per-stage breakdown; the network stage is also timed with Keras ``predict_on_batch`` for
   reference (what ``model.predict``'s per-call set-up costs for one face).
   ``--upsample default`` is the model's own search (``fast`` for the shipped fast model,
   ``auto`` for the others: ``ensemble_fer.release.default_upsample``). Times are wall time
   and, beside it, CPU time (``time.process_time``, the steadier one on a loaded machine).
2. Multi-face photos (``--photos DIR``, e.g. ``../shared/data/photos``: the photos its imglab
   XML files list, as in ``bench_detect.py``):
   ``EmotionRecognizer.predict(path)`` per photo, per ``upsample``, the mean over the photos of
   each photo's median wall and CPU ms, and the faces found.
   ``--versus MODEL`` also times ``--model`` against MODEL, each with its own default search,
   their calls alternating photo by photo (so that a change of load on a shared machine hits
   both alike): per photo the median of ``--repeats`` rounds, the mean over the photos, and the
   speed-up (MODEL's time / ``--model``'s), on the one-face photo and on ``--photos``.
3. Throughput: every 48x48 crop of data/sample (385 files) through ``predict_many``
   (batch 64), read from disk; images per second, median of 3 runs (``--no-throughput``: skip).

TensorFlow is limited to one intra-op and one inter-op thread; run it under ``taskset -c 0``
so that dlib and OpenCV stay on one core too. Without ``--model`` it uses models/release when
present, else trains a throwaway cnn5+bovw variant on the sample for one epoch (a compact
variant: timings do not depend on how well it is trained).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]     # this checkout's package, not another installed copy
PHOTO = REPO / "tests" / "data" / "photos" / "2008_002506.jpg"
SAMPLE = REPO / "data" / "sample"


def one_face_photo(path: Path) -> Path:
    """Write the 640x480 one-face benchmark photo (JPEG) to ``path``."""
    import cv2

    from ensemble_fer.inference.annotate import write_image
    from ensemble_fer.features.image_io import read_image_file

    image = read_image_file(PHOTO)[:, 300:500]          # the right-hand face only
    scale = 480 / image.shape[0]
    image = cv2.resize(image, (round(image.shape[1] * scale), 480), interpolation=cv2.INTER_AREA)
    pad = 640 - image.shape[1]
    image = cv2.copyMakeBorder(image, 0, 0, pad // 2, pad - pad // 2, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    return write_image(path, image)


class Ms(float):
    """Median milliseconds, printed with the fastest repeat: ``median (min)``. On a busy
    machine the minimum is the better estimate of the uncontended cost. ``cpu`` is the median
    CPU time (``time.process_time``) of the same calls."""

    fastest: float
    cpu: float = float("nan")

    def __format__(self, spec):
        return f"{float(self):{spec}} ({self.fastest:{spec}})"


def timed(fn, repeats: int) -> tuple[Ms, object]:
    """Milliseconds of ``fn()`` over ``repeats`` calls (after one warm-up call)."""
    result = fn()
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    ms = Ms(statistics.median(times) * 1000)
    ms.fastest = min(times) * 1000
    ms.cpu = statistics.median(cpu) * 1000
    return ms, result


def default_model(workdir: Path) -> Path:
    from ensemble_fer import release
    from ensemble_fer.errors import MissingInputError

    try:
        return release.default_model()
    except MissingInputError:
        pass
    from pipelines import extract_features, train_variant

    print("no --model and no models/release: training a throwaway cnn5+bovw for one epoch ...", file=sys.stderr)
    store = workdir / "features"
    assert extract_features.main(["--data", str(SAMPLE), "--out", str(store), "--detector", "none",
                                  "--quiet", "--n-jobs", "1"]) == 0
    out = workdir / "cnn5+bovw"
    assert train_variant.main(["--block", "cnn5", "--bovw", "--features", str(store), "--out", str(out),
                               "--epochs", "1", "--no-augment", "--quiet"]) == 0
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="variant folder or ensemble.json (default: see above)")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--upsample", default="auto,1,0",
                   help="comma-separated upsample settings to time (default: the model's own)")
    p.add_argument("--photos", type=Path, help="also time the photos of this folder that its imglab XML lists "
                                               "(the multi-face ground-truth photos)")
    p.add_argument("--no-throughput", action="store_true", help="skip the folder of 48x48 crops")
    p.add_argument("--versus", metavar="MODEL", help="also time --model against this model, calls alternating")
    args = p.parse_args(argv)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    from ensemble_fer import EmotionRecognizer
    from ensemble_fer.features import faces
    from ensemble_fer.models.variant_dir import load_variant
    from ensemble_fer.features.image_io import read_image_file, to_gray
    from ensemble_fer.features.faces import parse_upsample

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_path = args.model or default_model(tmp)
        base = EmotionRecognizer.load(model_path)
        predictor = base._predictor
        photo = one_face_photo(tmp / "one_face_640x480.jpg")
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else "?"
        print(f"model {model_path} ({predictor.kind}: {', '.join(predictor.members)})")
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"pinned to {sorted(cpus) if cpus != '?' else cpus}, load average "
              f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}; TF threads 1/1")
        print(f"photo: {photo.name}, {args.repeats} repeats, ms as median (min)")

        image = read_image_file(photo)
        gray = to_gray(image)
        settings = [base.upsample if u == "default" else parse_upsample(u) for u in args.upsample.split(",")]
        for upsample in settings:
            recognizer = EmotionRecognizer(predictor, detector="hog", upsample=upsample)
            total, result = timed(lambda: recognizer.predict(photo), args.repeats)
            assert len(result) == 1, f"expected one face, found {len(result)}"
            box = result[0].box
            stages = {
                "read": timed(lambda: read_image_file(photo), args.repeats)[0],
                "gray": timed(lambda: to_gray(image), args.repeats)[0],
                "detect": timed(lambda: faces.detect_faces(gray, "hog", upsample), args.repeats)[0],
                "crop": timed(lambda: faces.crop_face(gray, box), args.repeats)[0],
            }
            crop = faces.crop_face(gray, box)[None]
            stages["features"], features = timed(lambda: predictor.analyse(crop), args.repeats)
            stages["network"] = timed(lambda: predictor.predict_features(
                features["images"], features["landmarks"], features["bovw"]), args.repeats)[0]
            breakdown = ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
            print(f"upsample {upsample}: photo -> result {total:.1f} ms, CPU {total.cpu:.1f} ms  ({breakdown}; "
                  f"CPU detect {stages['detect'].cpu:.1f}, features {stages['features'].cpu:.1f}, network "
                  f"{stages['network'].cpu:.1f})")

        multi = []
        if args.photos:
            from bench_detect import ground_truth

            multi = [args.photos / name for name in sorted(ground_truth(args.photos))]
            time_photos(predictor, multi, settings, args.repeats)
        if args.versus:
            versus = EmotionRecognizer.load(args.versus)
            print(f"--versus {args.versus}: {versus.source} (upsample {versus.upsample}) against {model_path} "
                  f"(upsample {base.upsample}), calls alternating, median of {args.repeats} rounds a photo")
            for label, photos in (("one-face 640x480 photo", [photo]), (f"{len(multi)} photos", multi)):
                if photos:
                    compare(base, versus, photos, args.repeats, label)
        if args.no_throughput:
            return 0

        # the network stage with predict_on_batch instead of model.predict, for reference
        ms = Ms(0.0)
        ms.fastest = 0.0
        keras_members = [folder for folder in predictor.member_folders if (folder / "model.keras").is_file()]
        for folder in keras_members:
            model, config = load_variant(folder)
            inputs = {}
            if config["block"] is not None:
                inputs["image"] = features["images"][..., None]
            if config["bovw"]:
                inputs["bovw"] = features["bovw"]
            member_ms = timed(lambda: model.predict_on_batch(inputs), args.repeats)[0]
            fastest = ms.fastest + member_ms.fastest
            ms = Ms(ms + member_ms)
            ms.fastest = fastest
        if keras_members:
            print(f"network stage with Keras predict_on_batch instead: {ms:.1f} ms")

        files = sorted(f for f in SAMPLE.rglob("*") if f.suffix.lower() in (".jpg", ".png"))
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            results = base.predict_many(files, batch_size=64)
            runs.append(time.perf_counter() - start)
        assert all(len(r) == 1 for r in results)
        seconds = statistics.median(runs)
        print(f"folder of 48x48 crops: {len(files)} files in {seconds:.2f} s = {len(files) / seconds:.0f} images/s "
              f"(predict_many, batch 64, median of 3)")
    return 0


def compare(model, versus, photos: list, repeats: int, label: str) -> None:
    """Print ``versus``'s and ``model``'s predict time on ``photos`` (each photo's median over
    ``repeats`` rounds of one call each, alternating; mean over the photos) and the speed-up."""
    times = {"model": {}, "versus": {}}
    for recognizer in (model, versus):
        recognizer.predict(photos[0])       # warm-up
    found = {"model": 0, "versus": 0}
    for round_ in range(repeats):
        for k, photo in enumerate(photos):
            for name, recognizer in (("versus", versus), ("model", model)):
                start, start_cpu = time.perf_counter(), time.process_time()
                result = recognizer.predict(photo)
                times[name].setdefault(k, []).append((time.perf_counter() - start, time.process_time() - start_cpu))
                found[name] += len(result) if round_ == 0 else 0

    def mean_ms(name, column):
        return 1000 * statistics.mean(statistics.median(t[column] for t in runs) for runs in times[name].values())

    wall = {name: mean_ms(name, 0) for name in times}
    cpu = {name: mean_ms(name, 1) for name in times}
    print(f"{label}: versus {wall['versus']:.1f} ms (CPU {cpu['versus']:.1f}), {found['versus']} faces; model "
          f"{wall['model']:.1f} ms (CPU {cpu['model']:.1f}), {found['model']} faces; speed-up "
          f"{wall['versus'] / wall['model']:.2f}x wall, {cpu['versus'] / cpu['model']:.2f}x CPU")


def time_photos(predictor, photos: list, settings: list, repeats: int) -> None:
    """Per ``upsample``: ``predict(path)`` on each photo, the mean of its median wall and CPU ms."""
    from ensemble_fer import EmotionRecognizer

    for upsample in settings:
        recognizer = EmotionRecognizer(predictor, detector="hog", upsample=upsample)
        walls, cpus, found = [], [], 0
        for photo in photos:
            ms, result = timed(lambda: recognizer.predict(photo), repeats)
            walls.append(float(ms))
            cpus.append(ms.cpu)
            found += len(result)
        print(f"upsample {upsample}: {len(photos)} photos, {found} faces found; photo -> result "
              f"{statistics.mean(walls):.1f} ms, CPU {statistics.mean(cpus):.1f} ms a photo (mean of medians)")


if __name__ == "__main__":
    sys.exit(main())
