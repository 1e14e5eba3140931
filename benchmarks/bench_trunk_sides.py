"""Input side of a pretrained trunk: frozen-feature accuracy after a fixed short budget, and what
each way of training costs per epoch (issue 24, item 4).

    python benchmarks/bench_trunk_sides.py --features features/fer2013 --block faceres_mobilenet \\
        --sides 96 112 128 160 --n-train 6000 --cuts conv_dw_4 conv_dw_7 conv_dw_12

For each side: the frozen block's pooled outputs of ``--n-train`` seeded training crops (and
their mirror images) and of every validation crop are cached (``cached_trunk``, the frozen
phase's own code), and the network's head trains on them for ``--epochs`` epochs (Adam 1e-3,
batch 64: the frozen phase of ``train_variant``); the best validation accuracy is reported.
Cost, per side: milliseconds a crop of caching (one forward pass of the frozen block), and of
one training step (batch 64, SGD Nesterov) of the whole network and of the network cut before
each of ``--cuts`` (the layers before frozen, their output cached), as CPU-minutes per epoch of
the 28,709 training crops. Wall time and process CPU time are both printed: under load from
other processes wall time is inflated, CPU time much less.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

N_TRAIN_FULL = 28709


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--features", default="features/fer2013")
    p.add_argument("--block", default="faceres_mobilenet")
    p.add_argument("--sides", type=int, nargs="+", default=[96, 112, 128, 160])
    p.add_argument("--n-train", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--cuts", nargs="*", default=["conv_dw_4", "conv_dw_7", "conv_dw_12"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON file for the rows")
    args = p.parse_args(argv)

    import keras
    import tensorflow as tf

    from ensemble_fer.features.feature_store import FeatureStore
    from ensemble_fer.labels import get_label_set
    from ensemble_fer.models import networks
    from ensemble_fer.training import cached_trunk
    from ensemble_fer.training.data import load_splits
    from ensemble_fer.training.config import TrainConfig
    from ensemble_fer.training.schedule import compile_network

    splits, _ = load_splits(FeatureStore(args.features), get_label_set("fer7"))
    train, val = splits["train"], splits["val"]
    rows = np.sort(np.random.default_rng(args.seed).choice(len(train), args.n_train, replace=False))
    sub = type(train)(train.name, train.ids[rows], train.y[rows], train.images[rows], train.landmarks[rows],
                      train.bovw[rows], train.face_found[rows])
    results = []
    for side in args.sides:
        # Each side's models and traced functions go before the next's: without this the process
        # grew by ~3 GB a side (9 GB at the third side of efficientnet_lite0, session 13).
        keras.backend.clear_session(free_memory=True)
        keras.utils.set_random_seed(args.seed)
        model = networks.build_network(args.block, False, 7, image_size=side, dropout=0.5)
        split = cached_trunk.split_network(model, args.block, None, False)
        wall, cpu = time.time(), time.process_time()
        train_cache = cached_trunk.cache_split(split.bottom, sub, 2, False, None)
        cache_wall = (time.time() - wall) / (2 * len(sub))
        cache_cpu = (time.process_time() - cpu) / (2 * len(sub))
        val_cache = cached_trunk.cache_split(split.bottom, val, 1, False, None)
        networks.get_block(model, args.block).trainable = False
        config = TrainConfig(block=args.block, image_size=side)
        compile_network(split.top, keras.optimizers.Adam(1e-3), config, False)
        ds, steps = cached_trunk.train_dataset(train_cache, 7, 64, args.seed, 0, args.epochs)
        history = split.top.fit(ds, steps_per_epoch=steps, epochs=args.epochs, verbose=0,
                                validation_data=cached_trunk.eval_dataset(val_cache, 7, 256))
        best = max(history.history["val_accuracy"])
        row = {"side": side, "n_train": len(sub), "views": 2, "epochs": args.epochs,
               "frozen_val_accuracy": round(float(best), 4),
               "cache_ms_per_crop_wall": round(cache_wall * 1000, 2), "cache_ms_per_crop_cpu": round(cache_cpu * 1000, 2)}

        x = np.random.default_rng(1).integers(0, 255, (256, 48, 48, 1), dtype=np.uint8)
        y = np.eye(7, dtype=np.float32)[np.random.default_rng(2).integers(0, 7, 256)]
        for cut in [None] + list(args.cuts):
            keras.utils.set_random_seed(args.seed)
            net = networks.build_network(args.block, False, 7, image_size=side, weights=None)
            if cut is None:
                fit_model, inputs = net, {"image": x}
            else:
                s = cached_trunk.split_network(net, args.block, cut, False)
                for layer in s.frozen_layers:
                    layer.trainable = False
                inputs = {cached_trunk.FEATURES_INPUT: keras.ops.convert_to_numpy(s.bottom(tf.constant(x)))}
                fit_model = s.top
            fit_model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9, nesterov=True),
                              loss="categorical_crossentropy")
            fit_model.fit(inputs, y, batch_size=64, epochs=1, verbose=0)   # warm-up (tracing)
            wall, cpu = time.time(), time.process_time()
            fit_model.fit(inputs, y, batch_size=64, epochs=1, verbose=0)
            per_crop_wall = (time.time() - wall) / len(x)
            per_crop_cpu = (time.process_time() - cpu) / len(x)
            key = "whole" if cut is None else cut
            row[f"train_min_per_epoch_{key}_wall"] = round(per_crop_wall * N_TRAIN_FULL / 60, 1)
            row[f"train_cpu_min_per_epoch_{key}"] = round(per_crop_cpu * N_TRAIN_FULL / 60, 1)
        print(json.dumps(row), flush=True)
        results.append(row)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
