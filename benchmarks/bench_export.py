"""TFLite export of the release networks: size, PublicTest accuracy and crops/s against Keras.

    python benchmarks/bench_export.py [--store features/fer2013] [--split val] [--rows 1024] [--out DIR]
        [--formats float32 float16 int8 onnx]

1. The model (``--model``, default the shipped release) is exported with
   ``ensemble_fer.inference.export.export_model`` to float32, float16 and int8 TFLite, and to ONNX when
   tf2onnx is installed.
2. Accuracy: every crop of the store's PublicTest split (``features/fer2013``'s ``val``, the
   FER2013 ``test`` folder, 3,589 crops), features recomputed by the predictor; the
   ensemble's accuracy and each member's, for Keras and each format.
3. Speed: ``Predictor.predict_features`` (networks only, features given) on ``--rows`` crops,
   batch 256, median of 3 after a warm-up; crops per second.

Only reads the store; writes the export under --out (default: a temporary folder).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", type=Path, default=REPO / "features" / "fer2013")
    p.add_argument("--split", default="val")
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--out", type=Path)
    p.add_argument("--model", type=Path, help="ensemble.json or variant folder (default: the shipped release)")
    p.add_argument("--formats", nargs="+", help="formats to measure (default: float32 float16 int8, and onnx "
                                                  "when tf2onnx is installed)")
    args = p.parse_args(argv)

    from ensemble_fer import tf_startup

    tf_startup.start_quietly()
    import numpy as np

    from ensemble_fer import artifacts
    from ensemble_fer.inference import export
    from ensemble_fer.inference.loading import load_predictor
    from ensemble_fer.release import default_model

    work = Path(tempfile.mkdtemp(prefix="bench_export_"))
    ensemble_json = args.model or default_model()
    out = args.out or work / "export"
    started = time.time()
    import importlib.util

    formats = tuple(args.formats or export.FORMATS + ((export.ONNX,) if importlib.util.find_spec("tf2onnx") else ()))
    report = export.export_model(ensemble_json, out, formats, force=True, say=lambda m: None)
    export_s = time.time() - started

    split = artifacts.load_npz(args.store / f"{args.split}.npz")
    crops = split["images"]
    labels = split["labels"].astype(int)
    keras = load_predictor(ensemble_json)
    features = keras.analyse(crops)
    inputs = {"images": features["images"], "landmarks": features["landmarks"], "bovw_rows": features["bovw"]}
    y = np.array([keras.classes.index(c) for c in np.array(
        ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"])[labels]])

    rows = []
    predictors = {"keras": keras, **{f: load_predictor(out / f) for f in formats}}
    sizes = {"keras": sum((m / "model.keras").stat().st_size for m in keras.member_folders)}
    sizes.update({f: report["formats"][f]["total_bytes"] for f in formats})
    timing = {k: v[:args.rows] for k, v in inputs.items()}
    for name, predictor in predictors.items():
        members = predictor.member_probas(**inputs)
        accuracy = float(np.mean(predictor.combine(members).argmax(1) == y))
        member_acc = [float(np.mean(m.argmax(1) == y)) for m in members]
        predictor.predict_features(**{k: v[:256] for k, v in timing.items()})     # warm-up
        times = []
        for _ in range(3):
            t = time.perf_counter()
            predictor.predict_features(**timing, batch_size=256)
            times.append(time.perf_counter() - t)
        rows.append((name, sizes[name], accuracy, member_acc, args.rows / statistics.median(times)))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"export of {len(keras.members)} members x {len(formats)} formats: {export_s:.0f} s; {len(y)} crops of {args.store}/{args.split}")
    print(f"| model | size (MB) | PublicTest accuracy | members ({', '.join(keras.members)}) | crops/s |")
    print("| --- | ---: | ---: | --- | ---: |")
    for name, size, accuracy, member_acc, speed in rows:
        print(f"| {name} | {size / 1e6:.1f} | {accuracy:.2%} | {' / '.join(f'{a:.1%}' for a in member_acc)} "
              f"| {speed:.0f} |")
    for f in formats:
        entry = report["formats"][f]
        print(f"{f}: max |p - p_keras| on the check crops {entry['max_abs_diff_vs_keras']:.5f}, "
              f"same top class {entry['same_top_class']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
