"""Stage 2: train one variant (image block and/or BOVW input) on a feature store.

    python -m pipelines.train_variant --block NAME|none [--bovw] [--features DIR] [--labels fer7]
        [--weights default|none|PATH] [--image-size N] [--epochs-frozen 5] [--epochs 50]
        [--batch-size 64] [--lr 1e-3] [--class-weight none|balanced] [--label-smoothing 0]
        [--augment/--no-augment] [--augment-strength 1] [--mixup 0] [--bovw-units 1024,256]
        [--patience 10] [--seed 0] [--out DIR] [--resume] [--force] [--max-minutes M]
        [--precision auto|float32|mixed_float16|mixed_bfloat16]
        [--aux-targets CSV [--aux-loss-weight 1.0]]

Inputs: a feature store (default features/sample, made by `python -m pipelines.extract_features`
from the bundled sample). Outputs: models/<variant>/ with model.keras, config.json,
history.csv, curves.png, predictions.npz, metrics.json, confusion_matrix.png (see
docs/ARCHITECTURE.md); the schedule is described in ensemble_fer/training/train.py. With
--aux-targets the model has a second output, `aux` (see ensemble_fer/training/aux_targets.py), and
predictions.npz / metrics.json / config.json carry its targets, probabilities and scores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ensemble_fer.errors import InputError

from .cli_errors import reports_errors

REPO = Path(__file__).resolve().parent.parent


def add_variant_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments that name a variant and its data (shared with pipelines.search_hparams)."""
    from ensemble_fer.models import blocks

    p.add_argument("--block", required=True, choices=blocks.list_blocks() + ["none"],
                   help="image block; 'none' with --bovw for the BOVW-only network")
    p.add_argument("--bovw", action="store_true", help="add the BOVW (landmarks + HOG) input")
    p.add_argument("--features", type=Path, default=REPO / "features" / "sample",
                   help="feature store folder (default: features/sample)")
    p.add_argument("--labels", default="fer7",
                   help="label set: fer7, valence3 or a comma-separated subset such as happy,sad,neutral")


def _units(text: str) -> list[int]:
    try:
        units = [int(u) for u in text.split(",")]
    except ValueError:
        units = []
    if not units or min(units) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer sizes >= 1 such as 1024,256; got {text!r}")
    return units


def build_parser() -> argparse.ArgumentParser:
    from ensemble_fer.models import blocks
    from ensemble_fer.models import networks
    from ensemble_fer.training import train as training
    p = argparse.ArgumentParser(prog="python -m pipelines.train_variant", description=__doc__.split("\n")[0])
    add_variant_arguments(p)
    p.add_argument("--weights", default="default",
                   help="block weights: default (pretrained where the block has them), none, or a file path")
    p.add_argument("--image-size", type=int, help="side the 48 px crops are resized to (default: the block's)")
    p.add_argument("--epochs-frozen", type=int, default=5,
                   help="epochs with the pretrained block frozen (Adam); skipped without pretrained weights")
    p.add_argument("--epochs", type=int, default=50, help="most epochs of the fine-tuning / from-scratch phase")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3,
                   help="learning rate of fine-tuning (SGD Nesterov) or of training from scratch")
    p.add_argument("--frozen-lr", type=float, default=1e-3, help="Adam learning rate of the frozen phase")
    p.add_argument("--scratch-optimizer", choices=training.SCRATCH_OPTIMIZERS, default="adam",
                   help="optimiser when there are no pretrained weights (default adam)")
    p.add_argument("--class-weight", choices=training.CLASS_WEIGHTS, default="none")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="random affine augmentation of training images with their landmarks (default on)")
    p.add_argument("--augment-strength", type=float, default=1.0,
                   help="multiplies the augmentation ranges (rotation 10 deg, shear 10 deg, zoom 0.1); "
                        "default 1, the paper's")
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="blend each training row with another (images, BOVW and labels alike) by a "
                        "Beta(ALPHA, ALPHA) weight; 0 (default) is off, 0.2 is usual")
    p.add_argument("--augment-shift", type=float, default=0.0, metavar="PX",
                   help="largest random translation in pixels (random crops); default 0")
    p.add_argument("--random-erase", type=float, default=0.0, metavar="P",
                   help="probability of erasing a random rectangle of each training image; default 0")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="decoupled weight decay (w -= lr * wd * w each step); default 0")
    p.add_argument("--patience", type=int, default=10, help="early-stopping patience in epochs (val_loss)")
    p.add_argument("--lr-schedule", choices=training.LR_SCHEDULES, default="plateau",
                   help="plateau: drop the rate when val_loss stalls (the paper's); cosine: decay it to ~0 over "
                        "--epochs (best for a fixed time budget)")
    p.add_argument("--lr-patience", type=int, default=4, help="epochs without val_loss gain before the rate drops")
    p.add_argument("--lr-factor", type=float, default=0.5, help="factor of each learning-rate drop")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--bovw-units", type=_units, default=list(networks.BOVW_UNITS), metavar="N,N",
                   help="dense layer sizes of the BOVW branch (default "
                        f"{','.join(map(str, networks.BOVW_UNITS))})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=training.PRECISIONS, default="auto",
                   help="auto (default): mixed_float16 on a GPU; on the CPU mixed_bfloat16 where it has "
                        "native bfloat16 (avx512_bf16 / amx_bf16), else float32")
    p.add_argument("--aux-targets", type=Path, metavar="CSV",
                   help="per-image 0/1 targets (image,<target>,...; e.g. action units): adds a multi-label "
                        "sigmoid output 'aux' beside the emotion softmax")
    p.add_argument("--aux-loss-weight", type=float, default=1.0,
                   help="weight of the auxiliary binary cross-entropy (the emotion loss has 1; default 1)")
    p.add_argument("--out", type=Path, help="output folder (default: models/<variant>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--force", action="store_true", help="replace an existing variant in --out")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget; --resume continues later")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _augment_config(args):
    from ensemble_fer.training.augment import AugmentConfig

    given = {"--augment-strength": (args.augment_strength, 1.0), "--augment-shift": (args.augment_shift, 0.0),
             "--random-erase": (args.random_erase, 0.0)}
    for flag, (value, default) in given.items():
        if value != default and not args.augment:
            raise InputError(f"{flag} {value} has no effect with --no-augment")
    try:
        return AugmentConfig(strength=args.augment_strength, shift=args.augment_shift, erase=args.random_erase)
    except InputError as exc:
        # AugmentConfig names its field first ("shift must be ...", "zoom * strength must be ...").
        field = str(exc).split()[0]
        flag = {"shift": "--augment-shift", "erase": "--random-erase"}.get(field, "--augment-strength")
        raise InputError(f"{flag}: {exc}") from None


@reports_errors
def main(argv=None) -> int:
    from ensemble_fer.models import networks
    from ensemble_fer.training import train as training
    args = build_parser().parse_args(argv)
    augment_config = _augment_config(args)
    if args.bovw_units != list(networks.BOVW_UNITS) and not args.bovw:
        raise InputError(f"--bovw-units {','.join(map(str, args.bovw_units))} has no effect without --bovw")
    block = None if args.block == "none" else args.block
    out = args.out or REPO / "models" / networks.variant_name(block, args.bovw)
    training.train_variant(
        args.features, block=block, bovw=args.bovw, out=out, labels=args.labels, weights=args.weights,
        image_size=args.image_size, epochs_frozen=args.epochs_frozen, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, frozen_lr=args.frozen_lr,
        scratch_optimizer=args.scratch_optimizer, class_weight=args.class_weight,
        label_smoothing=args.label_smoothing, augment=args.augment, augment_config=augment_config,
        mixup=args.mixup, weight_decay=args.weight_decay, patience=args.patience,
        lr_schedule=args.lr_schedule, lr_patience=args.lr_patience, lr_factor=args.lr_factor,
        dropout=args.dropout, bovw_units=args.bovw_units, seed=args.seed,
        precision=args.precision, aux_targets=args.aux_targets, aux_loss_weight=args.aux_loss_weight,
        resume=args.resume, force=args.force, max_minutes=args.max_minutes,
        progress=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
