"""Per block: parameters, forward MACs and training throughput on this machine.

Throughput: images/s of forward+backward+update (Adam, sparse categorical cross-entropy) on
random data, batch 64, at the block's default input size, for
``Input -> spec.preprocessing() -> block -> GlobalAveragePooling2D -> Dense(7, softmax)``,
measured after warm-up steps (which include the graph tracing). Reported: the median step
(``img/s``) and the fastest step (``best``), images per second of this process' CPU time
(``img/cpu-s``: all cores' time summed, so on an idle 2-core machine img/s is at most twice it),
and the 1-minute load average after the block: other processes sharing the CPU slow the
wall-clock figures down, much less the CPU-time one. Big blocks run a few steps
only: the timed steps stop after ``--max-seconds`` (at least ``--min-steps`` steps).

    python benchmarks/bench_blocks.py                        # every registered block
    python benchmarks/bench_blocks.py --blocks vgg_fast cnn5 --steps 20
    python benchmarks/bench_blocks.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from ensemble_fer.models import blocks  # noqa: E402


def count_macs(model: keras.Model) -> int:
    """Multiply-adds of one forward pass per image: Conv2D, (Depthwise/Separable)Conv2D, Dense
    (nested models included); batch norm, activations and pooling are not counted."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += count_macs(layer)
            continue
        if isinstance(layer, keras.layers.SeparableConv2D):
            out = layer.output.shape
            total += int(np.prod(out[1:3])) * (int(np.prod(layer.depthwise_kernel.shape))
                                               + int(np.prod(layer.pointwise_kernel.shape)))
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            out = layer.output.shape  # (None, h, w, c)
            kernel = layer.kernel.shape  # (kh, kw, cin, cout) or (kh, kw, cin, mult)
            total += int(np.prod(out[1:3])) * int(np.prod(kernel))
        elif isinstance(layer, keras.layers.Dense):
            out = layer.output.shape
            positions = int(np.prod(out[1:-1])) if len(out) > 2 else 1
            total += positions * int(np.prod(layer.kernel.shape))
    return total


def bench_block(name: str, batch: int, warmup: int, steps: int, min_steps: int,
                max_seconds: float, jit_compile) -> dict:
    spec = blocks.get_block_spec(name)
    size = spec.default_size
    block = blocks.create_block(name, weights=None, image_size=size)
    inputs = keras.Input(spec.input_shape(size), name="image")
    x = inputs
    for layer in spec.preprocessing():
        x = layer(x)
    x = block(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(7, activation="softmax", name="classes")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="sparse_categorical_crossentropy", jit_compile=jit_compile)

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(batch, *spec.input_shape(size))).astype("float32")
    labels = rng.integers(0, 7, size=(batch,)).astype("int32")
    images, labels = tf.constant(images), tf.constant(labels)

    t0 = time.perf_counter()
    for _ in range(warmup):
        model.train_on_batch(images, labels)
    warmup_s = time.perf_counter() - t0

    times, cpu_times = [], []
    t_start = time.perf_counter()
    while len(times) < steps:
        t, c = time.perf_counter(), time.process_time()
        model.train_on_batch(images, labels)
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
        if len(times) >= min_steps and time.perf_counter() - t_start > max_seconds:
            break
    step_s = float(np.median(times))
    return {
        "block": name,
        "input": list(spec.input_shape(size)),
        "params": int(block.count_params()),
        "trainable_params": int(sum(int(np.prod(w.shape)) for w in block.trainable_weights)),
        "macs_per_image": count_macs(block),
        "batch": batch,
        "warmup_steps": warmup,
        "warmup_s": round(warmup_s, 2),
        "timed_steps": len(times),
        "step_s_median": round(step_s, 4),
        "images_per_s": round(batch / step_s, 1),
        "images_per_s_best": round(batch / float(np.min(times)), 1),
        "cpu_s_per_step": round(float(np.median(cpu_times)), 4),
        "images_per_cpu_s": round(batch / float(np.median(cpu_times)), 1),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "jit_compile": bool(model.jit_compile),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", nargs="+", default=None,
                        help=f"blocks to measure (default: all of {blocks.list_blocks()})")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed steps at most")
    parser.add_argument("--min-steps", type=int, default=3, help="timed steps at least")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="stop timing a block after this long (once --min-steps are done)")
    parser.add_argument("--jit", choices=("auto", "on", "off"), default="auto",
                        help="jit_compile of model.compile (XLA)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)

    names = args.blocks or blocks.list_blocks()
    jit = {"auto": "auto", "on": True, "off": False}[args.jit]
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "loadavg_1min_before": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(machine))
    header = (f"{'block':22s} {'input':>11s} {'params':>12s} {'MACs/img':>10s} "
              f"{'img/s':>8s} {'best':>8s} {'img/cpu-s':>9s} {'step s':>8s} {'steps':>5s} {'warmup s':>8s} {'load':>5s}")
    print(header)
    results = []
    for name in names:
        r = bench_block(name, args.batch, args.warmup, args.steps, args.min_steps,
                        args.max_seconds, jit)
        results.append(r)
        print(f"{r['block']:22s} {'x'.join(map(str, r['input'])):>11s} {r['params']:>12,d} "
              f"{r['macs_per_image'] / 1e6:>9.1f}M {r['images_per_s']:>8.1f} "
              f"{r['images_per_s_best']:>8.1f} {r['images_per_cpu_s']:>9.1f} "
              f"{r['step_s_median']:>8.3f} {r['timed_steps']:>5d} {r['warmup_s']:>8.1f} "
              f"{r['loadavg_1min_after']:>5.2f}",
              flush=True)
        keras.backend.clear_session()
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "args": vars(args) | {
            "json": str(args.json)}, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
