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
docs/ARCHITECTURE.md); the schedule is described in ensemble_fer/training/schedule.py. With
--aux-targets the model has a second output, `aux` (see ensemble_fer/training/aux_targets.py), and
predictions.npz / metrics.json / config.json carry its targets, probabilities and scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ensemble_fer import paths
from ensemble_fer.errors import InputError

from .cli_errors import CommandLineParser, reports_errors
from .cli_numbers import MAX_MINUTES, float_in

if TYPE_CHECKING:
    from ensemble_fer.training.config import TrainConfig


VARIANT_FIELDS = ("block", "bovw", "labels")
"""The fields that name a variant and its data: shared with pipelines.search_hparams, where a
grid may not vary them."""


def _flag(f) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _dest(f) -> str:
    return _flag(f).lstrip("-").replace("-", "_")


def _cli_fields(cls):
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def add_field_option(p: argparse.ArgumentParser, f, **overrides) -> None:
    """The option of a dataclass field, from its metadata (ensemble_fer.training.config.CLI_KEYS)."""
    from ensemble_fer.training.config import Int, Number, OneOf

    meta = f.metadata
    if "nested" in meta:
        for inner in _cli_fields(meta["nested"]):
            add_field_option(p, inner)
        return
    kwargs = {"default": f.default, "help": meta.get("help")}
    if isinstance(f.default, bool):
        kwargs["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
    else:
        parse = meta.get("parse", type(f.default) if isinstance(f.default, (int, float)) else None)
        if parse is not None:
            kwargs["type"] = parse
        if parse is not None and isinstance(meta.get("check"), (Int, Number)):
            # checked as parsed, with its range in --help
            kwargs["type"] = _ranged(parse, meta["check"], _flag(f))
            kwargs["help"] = f"{meta.get('help') or _flag(f).lstrip('-')} ({meta['check'].allowed})"
        if isinstance(meta.get("check"), OneOf):
            kwargs["choices"] = meta["check"].choices
        if "metavar" in meta:
            kwargs["metavar"] = meta["metavar"]
    p.add_argument(_flag(f), **{**kwargs, **overrides})


def _ranged(parse, check, flag):
    """An argparse type: ``parse`` the text, then the field's own range ``check``."""
    def value(text):
        try:
            return check(flag, parse(text))
        except (ValueError, InputError) as exc:
            reason = str(exc) if isinstance(exc, InputError) else f"must be a number {check.allowed}; got {text!r}"
            raise argparse.ArgumentTypeError(reason) from None

    value.__name__ = getattr(parse, "__name__", "value")
    return value


def add_variant_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments that name a variant and its data (shared with pipelines.search_hparams)."""
    from ensemble_fer.models.blocks import list_blocks
    from ensemble_fer.training.config import TrainConfig

    fields = TrainConfig.__dataclass_fields__
    add_field_option(p, fields["block"], required=True, choices=list_blocks() + ["none"])
    add_field_option(p, fields["bovw"])
    p.add_argument("--features", type=Path, default=paths.features_dir("sample"),
                   help="feature store folder (default: features/sample in the current folder, what extract "
                        "writes there by default)")
    add_field_option(p, fields["labels"])


def build_parser() -> argparse.ArgumentParser:
    from ensemble_fer.training.config import TrainConfig

    p = CommandLineParser(prog="python -m pipelines.train_variant", description=__doc__.split("\n")[0])
    add_variant_arguments(p)
    for f in _cli_fields(TrainConfig):
        if f.name not in VARIANT_FIELDS:
            add_field_option(p, f)
    p.add_argument("--out", type=Path, help="output folder (default: models/<variant> in the current folder)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--force", action="store_true", help="replace an existing variant in --out")
    p.add_argument("--max-minutes", type=float_in(0, MAX_MINUTES), metavar="M",
                   help=f"wall-clock budget, in (0, {MAX_MINUTES:g}]; --resume continues later")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _nested(args, cls, enabled: tuple[str, str]):
    """The ``cls`` (a nested config) of the parsed options; ``enabled``: the switch it needs, and
    its flag, to refuse options given without it."""
    name, off = enabled
    cli = _cli_fields(cls)
    for f in cli:
        value = getattr(args, _dest(f))
        if value != f.default and not getattr(args, name):
            raise InputError(f"{_flag(f)} {value} has no effect with {off}")
    try:
        return cls(**{f.name: getattr(args, _dest(f)) for f in cli})
    except InputError as exc:
        # The config names its fields first ("shift must be ...", "zoom * strength must be ..."):
        # the message then names the option of the first of them that has one.
        named = str(exc).partition(" must ")[0].split()
        flag = next((_flag(f) for word in named for f in cli if f.name == word), None)
        raise InputError(f"{flag}: {exc}" if flag else str(exc)) from None


def config_from_args(args) -> TrainConfig:
    """The training configuration of parsed options."""
    from ensemble_fer.training.config import TrainConfig

    values = {}
    for f in _cli_fields(TrainConfig):
        if "nested" in f.metadata:
            values[f.name] = _nested(args, f.metadata["nested"], ("augment", "--no-augment"))
        else:
            values[f.name] = getattr(args, _dest(f))
    units = TrainConfig.__dataclass_fields__["bovw_units"]
    if tuple(args.bovw_units) != tuple(units.default) and not args.bovw:
        raise InputError(f"--bovw-units {','.join(map(str, args.bovw_units))} has no effect without --bovw")
    values["block"] = None if args.block == "none" else args.block
    return TrainConfig(**values)


def check_store_first(argv) -> None:
    """The feature store (``--features``, or its default) is opened before the full parser is
    built: the parser lists the blocks, which imports TensorFlow (10-25 s), and a wrong path
    should answer at once. Anything this light pre-parse cannot read is left to the parser."""
    from ensemble_fer.features.feature_store import FeatureStore

    class PreParser(argparse.ArgumentParser):
        def error(self, message):       # silent: the full parser reports it
            raise ValueError(message)

    pre = PreParser(add_help=False)
    pre.add_argument("--features", type=Path, default=paths.features_dir("sample"))
    pre.add_argument("-h", "--help", action="store_true")
    try:
        known, _ = pre.parse_known_args(argv)
    except ValueError:
        return
    if not known.help:
        FeatureStore(known.features)


@reports_errors
def main(argv=None) -> int:
    check_store_first(argv)
    from ensemble_fer.models import networks
    from ensemble_fer.training import train as training

    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    out = args.out or paths.models_dir() / networks.variant_name(config.block, config.bovw)
    training.train(args.features, config, out=out, resume=args.resume, force=args.force,
                   max_minutes=args.max_minutes, progress=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
