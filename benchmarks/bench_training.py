"""Training throughput of the variants, and whether the augmenting input pipeline keeps up.

Three measurements, all at batch 64 (``--batch``) on this machine:

1. **training step**: images/s of ``fit`` (forward + backward + Adam update, categorical
   cross-entropy) of the full network of ``networks.build_network`` -- every compact block
   with and without the BOVW input, and the BOVW-only network -- fed from batches already
   in memory (``tf.data`` cache), after a warm-up ``fit`` that pays the tracing;
2. **input pipeline alone**: images/s of one epoch of ``training.train_dataset`` (the
   pipeline ``train_variant`` uses), with augmentation (warp + landmarks + HOG + BOVW in
   ``tf.numpy_function``, parallel map, prefetch) and without, consumed by an empty loop;
3. **training epoch with the real pipeline**: images/s of ``fit`` fed by the augmenting
   pipeline versus by cached batches, for ``--pipeline-blocks``; the ratio is the cost of
   augmentation during training (on a 2-core CPU the pipeline competes with the model for
   the same cores, so it shows up here even though it is prefetched).

Every figure is given per wall-clock second and per CPU second of this process (all its
threads; ``img/cpu-s``). On a shared machine the second is much steadier, and the ratio of the
pipeline's CPU cost per image to the training step's is the share of the CPU augmentation takes.

The training rows are the sample store's (features/sample; made here in a temporary folder
with ``--detector none`` if absent), tiled to ``--rows`` rows.

    python benchmarks/bench_training.py
    python benchmarks/bench_training.py --blocks cnn5 vgg_fast --steps 10 --json /tmp/bench_training.json
    python benchmarks/bench_training.py --features features/fer2013 --blocks vgg_fast --parts steps \
        --no-bovw-only --batch 128 --precision float32 mixed_bfloat16 --image-size 32 [--xla]

``--precision``, ``--image-size`` and ``--xla`` apply to the training-step timings: the choices
``train_variant`` offers (``--precision``, ``--image-size``) and one it does not (XLA, which
Keras leaves off on CPU-only machines), so that each is measured before it is recommended.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from ensemble_fer.models import blocks, networks
from ensemble_fer.training import data as training  # noqa: E402
from ensemble_fer.features.augment import AugmentConfig  # noqa: E402
from ensemble_fer.features.feature_store import FeatureStore  # noqa: E402
from ensemble_fer.labels import get_label_set  # noqa: E402

N_CLASSES = 7


def sample_train_split(features: Path | None, rows: int) -> training.SplitData:
    """The sample store's training rows, tiled to ``rows`` rows."""
    if features is None:
        features = REPO / "features" / "sample"
        if not (features / "manifest.json").is_file():
            from pipelines import extract_features

            features = Path(tempfile.mkdtemp(prefix="bench_training_")) / "sample"
            code = extract_features.main(["--out", str(features), "--detector", "none", "--quiet"])
            if code:
                raise SystemExit(code)
    splits, _ = training.load_splits(FeatureStore(features), get_label_set("fer7"))
    train = splits["train"]
    repeat = -(-rows // len(train))
    tile = lambda a: np.concatenate([a] * repeat)[:rows]  # noqa: E731
    return training.SplitData("train", tile(train.ids), tile(train.y), tile(train.images),
                              tile(train.landmarks), tile(train.bovw), tile(train.face_found))


def compiled_network(block, use_bovw, train, precision="float32", image_size=None, jit_compile=False):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        model = networks.build_network(block, use_bovw, N_CLASSES, weights=None,
                                       image_size=image_size if block else None,
                                       bovw_adapt_data=train.bovw if use_bovw else None)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.CategoricalCrossentropy(),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")], jit_compile=jit_compile)
    return model


def cached_batches(train, block, use_bovw, batch):
    """Batches in memory, in the pipeline's element format: what the model alone costs."""
    ds, steps = training.train_dataset(train, block, use_bovw, N_CLASSES, batch, 0, 0, 1, None)
    return ds.cache().repeat(), steps


def timed_fit(model, dataset, steps) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process, all threads) of ``steps`` training steps."""
    t, c = time.perf_counter(), time.process_time()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
    return time.perf_counter() - t, time.process_time() - c


def bench_step(block, use_bovw, train, batch, warmup, steps, precision="float32", image_size=None,
               jit_compile=False) -> dict:
    model = compiled_network(block, use_bovw, train, precision, image_size, jit_compile)
    ds, _ = cached_batches(train, block, use_bovw, batch)
    warm, _ = timed_fit(model, ds, warmup)     # tracing + first steps
    seconds, cpu = timed_fit(model, ds, steps)
    result = {"variant": networks.variant_name(block, use_bovw), "params": int(model.count_params()),
              "batch": batch, "precision": precision, "image_size": image_size,
              "jit_compile": jit_compile, "timed_steps": steps, "warmup_s": round(warm, 2),
              "step_s": round(seconds / steps, 4), "images_per_s": round(steps * batch / seconds, 1),
              "images_per_cpu_s": round(steps * batch / cpu, 1), "loadavg_1min": round(os.getloadavg()[0], 2)}
    keras.backend.clear_session()
    return result


def bench_pipeline(train, batch, augment: bool, block="cnn5", use_bovw=True) -> dict:
    config = AugmentConfig() if augment else None
    ds, steps = training.train_dataset(train, block, use_bovw, N_CLASSES, batch, 0, 0, 2, config)
    iterator = iter(ds)
    for _ in range(steps):      # epoch 0: warm-up (thread pool, first numpy_function calls)
        next(iterator)
    t, c = time.perf_counter(), time.process_time()
    n = 0
    for _ in range(steps):      # epoch 1, timed
        x, y = next(iterator)
        n += int(y.shape[0])
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    return {"augment": augment, "rows": n, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1),
            "images_per_cpu_s": round(n / cpu, 1), "loadavg_1min": round(os.getloadavg()[0], 2)}


def bench_epoch_with_pipeline(block, use_bovw, train, batch, warmup, repeats) -> dict:
    """fit over one epoch fed by the augmenting pipeline vs by cached batches.

    The two are interleaved (cached, augmented, cached, augmented, ...) and the best time of
    each kept, so that a change of load on a shared machine hits both alike.
    """
    model = compiled_network(block, use_bovw, train)
    cached, steps = cached_batches(train, block, use_bovw, batch)
    live, _ = training.train_dataset(train, block, use_bovw, N_CLASSES, batch, 0, 0, 1, AugmentConfig())
    timed_fit(model, cached, warmup)
    timed_fit(model, cached, steps)         # fills the cache
    timed_fit(model, live, 1)               # starts the pipeline's threads
    cached_s, live_s = [], []
    for _ in range(repeats):
        cached_s.append(timed_fit(model, cached, steps))
        live_s.append(timed_fit(model, live, steps))
    n = len(train)
    wall = [min(t[0] for t in times) for times in (cached_s, live_s)]
    cpu = [min(t[1] for t in times) for times in (cached_s, live_s)]
    result = {"variant": networks.variant_name(block, use_bovw), "rows": n, "repeats": repeats,
              "cached_images_per_s": round(n / wall[0], 1), "augmented_images_per_s": round(n / wall[1], 1),
              "augmented_over_cached_time": round(wall[1] / wall[0], 2),
              "cached_images_per_cpu_s": round(n / cpu[0], 1), "augmented_images_per_cpu_s": round(n / cpu[1], 1),
              "augmented_over_cached_cpu": round(cpu[1] / cpu[0], 2),
              "loadavg_1min": round(os.getloadavg()[0], 2)}
    keras.backend.clear_session()
    return result


def main(argv=None) -> int:
    compact = [b for b in blocks.list_blocks() if not blocks.get_block_spec(b).pretrained]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, help="feature store (default: features/sample)")
    parser.add_argument("--blocks", nargs="+", default=compact, help=f"blocks to time (default: {compact})")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", nargs="+", default=["float32"],
                        choices=("float32", "mixed_bfloat16", "mixed_float16"),
                        help="Keras dtype policies to time the training step under")
    parser.add_argument("--image-size", type=int, help="resize the 48 px crops to this side (training step only)")
    parser.add_argument("--xla", action="store_true",
                        help="compile the training step with XLA (Keras jit_compile; off by default on a CPU)")
    parser.add_argument("--no-bovw-only", dest="bovw_only", action="store_false",
                        help="skip the BOVW-only network in the step timings")
    parser.add_argument("--rows", type=int, default=2048, help="training rows (the sample tiled)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (tracing)")
    parser.add_argument("--steps", type=int, default=15, help="timed training steps per variant")
    parser.add_argument("--pipeline-blocks", nargs="*", default=["cnn5", "vgg_fast"],
                        help="blocks (+BOVW) whose training epoch is timed with the augmenting pipeline")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats of the epoch comparison")
    parser.add_argument("--parts", nargs="+", choices=("pipeline", "steps", "epochs"),
                        default=["pipeline", "steps", "epochs"], help="what to measure (default: all)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "tensorflow": tf.__version__, "keras": keras.__version__,
               "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
               "loadavg_1min_before": round(os.getloadavg()[0], 2)}
    print(json.dumps(machine), flush=True)
    train = sample_train_split(args.features, args.rows)
    keras.utils.set_random_seed(0)

    pipeline, steps, epochs = [], [], []
    if "pipeline" in args.parts:
        print("\ninput pipeline alone (one epoch of training.train_dataset, cnn5+bovw inputs)")
        pipeline = [bench_pipeline(train, args.batch, augment) for augment in (True, False)]
        for r in pipeline:
            print(f"  augment={r['augment']!s:5s} {r['images_per_s']:>9.1f} img/s {r['images_per_cpu_s']:>9.1f} "
                  f"img/cpu-s ({r['rows']} rows in {r['seconds']} s, load {r['loadavg_1min']})", flush=True)

    if "steps" in args.parts:
        print(f"\ntraining step, batch {args.batch}, cached batches, image size {args.image_size or 'default'}"
              f"{', XLA' if args.xla else ''}")
        print(f"  {'variant':18s} {'precision':14s} {'params':>11s} {'img/s':>8s} {'img/cpu-s':>9s} {'step s':>8s} {'warmup s':>9s} "
              f"{'load':>5s}")
        variants = [(b, bovw) for b in args.blocks for bovw in (False, True)] + [(None, True)] * args.bovw_only
        for (block, use_bovw), precision in ((v, p) for v in variants for p in args.precision):
            r = bench_step(block, use_bovw, train, args.batch, args.warmup, args.steps, precision, args.image_size,
                           args.xla)
            steps.append(r)
            print(f"  {r['variant']:18s} {precision:14s} {r['params']:>11,d} {r['images_per_s']:>8.1f} {r['images_per_cpu_s']:>9.1f} "
                  f"{r['step_s']:>8.3f} {r['warmup_s']:>9.1f} {r['loadavg_1min']:>5.2f}", flush=True)

    if "epochs" in args.parts:
        print(f"\ntraining epoch ({len(train)} rows): augmenting pipeline vs cached batches")
        for block in args.pipeline_blocks:
            r = bench_epoch_with_pipeline(block, True, train, args.batch, args.warmup, args.repeats)
            epochs.append(r)
            print(f"  {r['variant']:18s} cached {r['cached_images_per_s']:>7.1f} img/s "
                  f"({r['cached_images_per_cpu_s']:.1f} img/cpu-s), augmented "
                  f"{r['augmented_images_per_s']:>7.1f} img/s ({r['augmented_images_per_cpu_s']:.1f} img/cpu-s); "
                  f"augmented/cached: wall "
                  f"{r['augmented_over_cached_time']}, cpu {r['augmented_over_cached_cpu']} (load {r['loadavg_1min']})",
                  flush=True)

    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "args": {k: str(v) for k, v in vars(args).items()},
                                         "pipeline": pipeline, "steps": steps, "epochs": epochs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
