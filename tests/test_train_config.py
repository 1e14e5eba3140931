"""The training configuration without training: validation, the CLI made from it, config.json round
trips (old release runs included), the resume comparison and the phase plan. No Keras model is built."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from ensemble_fer.errors import InputError
from ensemble_fer.training import resume
from ensemble_fer.features.augment import AugmentConfig
from ensemble_fer.training.config import FIELDS, RUN_ARGS, TrainConfig, resumable
from ensemble_fer.training.schedule import (PHASE_FINETUNE, PHASE_FROZEN, PHASE_SCRATCH, Phase,
                                            cpu_has_native_bfloat16, describe_plan, has_pretrained_weights,
                                            plan_phases)
from pipelines import train_variant as cli
from tests.conftest import REPO

RELEASE_CONFIG = REPO / "models" / "release" / "vgg_fast_40px_seed3" / "config.json"


# ------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"block": "resnet9000"}, "block must be one of ["),
    ({"block": None}, "block=None with bovw=False"),
    ({"block": None, "bovw": True, "image_size": 64}, "image_size: only meaningful with an image block"),
    ({"image_size": 16}, "image_size: block 'cnn5' needs images of at least 32 px (default 48); received 16"),
    ({"image_size": 40.0}, "image_size: must be None or an int >= 32 for block 'cnn5'; received 40.0"),
    ({"labels": "happy,grumpy"}, "unknown emotion 'grumpy'"),
    ({"weights": 3}, "weights must be 'default', None, 'none', a named weight set or a file path; received 3"),
    ({"epochs_frozen": -1}, "epochs_frozen must be an int >= 0; received -1"),
    ({"epochs": 0}, "epochs must be an int in [1, 100000]; received 0"),
    ({"batch_size": 2.0}, "batch_size must be an int in [1, 4096]; received 2.0"),
    ({"patience": True}, "patience must be an int >= 1; received True"),
    ({"lr_patience": 0}, "lr_patience must be an int >= 1; received 0"),
    ({"lr": 0}, "lr must be a number in (0.0, 10.0]; received 0"),
    ({"lr": 10.5}, "lr must be a number in (0.0, 10.0]; received 10.5"),
    ({"frozen_lr": math.nan}, "frozen_lr must be a number in (0.0, 10.0]; received nan"),
    ({"min_lr": -1e-6}, "min_lr must be a number in [0.0, 10.0]; received -1e-06"),
    ({"lr_factor": 1.0}, "lr_factor must be a number in (0.0, 1.0); received 1.0"),
    ({"label_smoothing": 1.0}, "label_smoothing must be a number in [0.0, 1.0); received 1.0"),
    ({"mixup": -0.2}, "mixup must be a number in [0.0, inf); received -0.2"),
    ({"weight_decay": 1}, "weight_decay must be a number in [0.0, 1.0); received 1"),
    ({"dropout": "0.5"}, "dropout must be a number in [0.0, 1.0); received '0.5'"),
    ({"aux_loss_weight": 0}, "aux_loss_weight must be a number in (0.0, inf); received 0"),
    ({"class_weight": "auto"}, "class_weight must be one of ('none', 'balanced') or None; received 'auto'"),
    ({"scratch_optimizer": "rmsprop"}, "scratch_optimizer must be one of ('adam', 'sgd'); received 'rmsprop'"),
    ({"lr_schedule": "step"}, "lr_schedule must be one of ('plateau', 'cosine'); received 'step'"),
    ({"precision": "float16"}, "precision must be one of ('auto', 'float32', 'mixed_float16', 'mixed_bfloat16')"),
    ({"bovw_units": "1024"}, "bovw_units must be a sequence of ints >= 1"),
    ({"dense_units": -1}, "dense_units must be an int >= 0; received -1"),
    ({"seed": 2**32}, "seed must be an int in [0, 4294967295] (2**32 - 1); received 4294967296"),
    ({"aux_targets": 3}, "aux_targets must be None or the path of a CSV file; received 3"),
    ({"augment_config": {"zoom": 0.1, "tilt": 3}}, "augment_config: unknown keys ['tilt']"),
    ({"augment_config": 0.5}, "augment_config must be an AugmentConfig or None; received 0.5"),
])
def test_each_field_refuses_what_it_does_not_allow(kwargs, message):
    with pytest.raises(InputError) as error:
        TrainConfig(**{"block": "cnn5", **kwargs})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_values_are_normalised_and_the_config_is_frozen():
    config = TrainConfig(block="cnn5", weights="none", class_weight=None, lr=1, seed=True + 1, bovw_units=[8])
    assert config.weights is None and config.class_weight == "none" and config.image_size == 48
    assert isinstance(config.lr, float) and config.seed == 2 and config.bovw_units == (8,)
    assert config.augment_config == AugmentConfig()
    assert TrainConfig(block="cnn5", augment=False, augment_config=AugmentConfig(shift=2)).augment_config is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 0.1
    # replace() checks again: what a grid search does with each combination
    assert dataclasses.replace(config, lr=0.01).lr == 0.01
    with pytest.raises(InputError, match="lr must be a number"):
        dataclasses.replace(config, lr=-1)


def test_from_arguments_names_unknown_arguments_and_returns_json():
    with pytest.raises(InputError, match=r"learning_rate: not an argument of train_variant; allowed: \['augment'"):
        TrainConfig.from_arguments(block="cnn5", learning_rate=0.1)
    resolved = TrainConfig.from_arguments(block=None, bovw=True, bovw_units=(8, 4)).to_json()
    assert resolved["bovw_units"] == [8, 4] and resolved["image_size"] is None
    assert json.loads(json.dumps(resolved)) == resolved


def test_train_variant_refuses_an_unknown_keyword_naming_it():
    # train_variant builds its configuration through from_arguments: a typo is an InputError
    # naming the argument, before any store is read (it was a TypeError of the dataclass)
    from ensemble_fer.training.train import train_variant

    with pytest.raises(InputError, match=r"^learning_rate: not an argument of train_variant; allowed: "):
        train_variant("no-such-store", "cnn5", learning_rate=0.1)


# ------------------------------------------------------------------------------------------
# the CLI made from the fields
# ------------------------------------------------------------------------------------------

def _options(parser):
    return {action.dest: action for action in parser._actions}


def test_every_field_has_an_option_with_the_field_default():
    parser = cli.build_parser()
    options = _options(parser)
    no_option = {"min_lr", "dense_units", "augment_config"}   # augment_config: through its own fields
    assert {name for name in FIELDS if name not in options} == no_option
    defaults = TrainConfig(block="cnn5")
    for name in set(FIELDS) - no_option - {"block", "image_size"}:
        assert options[name].default == getattr(defaults, name), name
    for flag, field in (("augment_strength", "strength"), ("augment_shift", "shift"), ("random_erase", "erase")):
        assert options[flag].default == getattr(AugmentConfig(), field)
    assert options["block"].required and "none" in options["block"].choices
    assert options["lr_schedule"].choices == ("plateau", "cosine")
    assert options["mixup"].metavar == "ALPHA" and options["bovw_units"].metavar == "N,N"
    assert options["augment"].option_strings == ["--augment", "--no-augment"]
    assert options["bovw"].option_strings == ["--bovw"] and options["bovw"].default is False


def test_parsed_defaults_are_the_config_defaults():
    args = cli.build_parser().parse_args(["--block", "cnn5"])
    assert cli.config_from_args(args) == TrainConfig(block="cnn5")
    args = cli.build_parser().parse_args(["--block", "none", "--bovw"])
    assert cli.config_from_args(args) == TrainConfig(block=None, bovw=True)


def test_parsed_options_reach_the_config():
    args = cli.build_parser().parse_args([
        "--block", "vgg_fast", "--image-size", "40", "--weights", "none", "--epochs", "24", "--batch-size", "128",
        "--lr", "0.02", "--scratch-optimizer", "sgd", "--class-weight", "balanced", "--label-smoothing", "0.1",
        "--augment-shift", "4", "--random-erase", "0.25", "--mixup", "0.2", "--weight-decay", "0.005",
        "--patience", "24", "--lr-schedule", "cosine", "--seed", "7", "--precision", "float32"])
    config = cli.config_from_args(args)
    assert (config.block, config.image_size, config.weights, config.epochs, config.batch_size) == (
        "vgg_fast", 40, None, 24, 128)
    assert (config.lr, config.scratch_optimizer, config.class_weight, config.label_smoothing) == (
        0.02, "sgd", "balanced", 0.1)
    assert config.augment_config == AugmentConfig(shift=4.0, erase=0.25)
    assert (config.mixup, config.weight_decay, config.patience, config.lr_schedule, config.seed, config.precision) == (
        0.2, 0.005, 24, "cosine", 7, "float32")


@pytest.mark.parametrize("argv, message", [
    (["--augment-strength", "10"], "--augment-strength: shear_deg * strength must be below 90"),
    (["--augment-shift", "30"], "--augment-shift: shift must be below 24"),
    (["--random-erase", "2"], "--random-erase: erase must be a probability in [0, 1]"),
    (["--random-erase", "0.5", "--no-augment"], "--random-erase 0.5 has no effect with --no-augment"),
    (["--bovw-units", "64"], "--bovw-units 64 has no effect without --bovw"),
])
def test_cli_only_refusals_name_the_option(argv, message):
    args = cli.build_parser().parse_args(["--block", "cnn5", *argv])
    with pytest.raises(InputError) as error:
        cli.config_from_args(args)
    assert str(error.value).startswith(message)


# ------------------------------------------------------------------------------------------
# config.json
# ------------------------------------------------------------------------------------------

def test_json_round_trip():
    config = TrainConfig(block="cnn5", lr=0.01, bovw_units=(64, 32), augment_config=AugmentConfig(shift=2))
    saved = json.loads(json.dumps({**config.to_json(), "out": "models/x", "precision_policy": "float32"}))
    assert TrainConfig.from_json(saved) == config
    assert TrainConfig.from_json(TrainConfig(block=None, bovw=True, augment=False).to_json()).augment_config is None


def test_the_release_config_reads_back_as_it_was_trained():
    saved = json.loads(RELEASE_CONFIG.read_text())["args"]
    config = TrainConfig.from_json(saved, where=str(RELEASE_CONFIG))
    assert (config.block, config.image_size, config.epochs, config.lr, config.lr_schedule) == (
        "vgg_fast", 40, 60, 0.02, "cosine")
    assert config.augment_config == AugmentConfig(shift=4.0, erase=0.1) and config.dropout == 0.3
    # Nothing is lost or changed: the saved args are the config's plus the run's, less the
    # fields added after it was trained (they read back with the value it was made with).
    added_since = {"finetune_from", "cached_views", "teacher_views", "distill_temperature"}
    assert set(config.to_json()) - set(saved) == added_since and config.teacher is None
    assert config.finetune_from is None and config.cached_views == 2      # the cache came later (issue 24)
    assert config.teacher_views == 1 and config.distill_temperature == 1.0   # and views, T (issue 25)
    assert {**{k: v for k, v in config.to_json().items() if k not in added_since},
            **{k: saved[k] for k in RUN_ARGS if k in saved}} == saved


def test_a_run_saved_before_a_field_existed_reads_with_the_value_it_was_made_with():
    saved = TrainConfig(block="cnn5", lr_schedule="plateau").to_json()
    for name in ("aux_targets", "aux_loss_weight", "lr_schedule", "mixup", "weight_decay"):
        del saved[name]
    del saved["augment_config"]["erase"]        # augment_config gained fields too: their defaults
    assert TrainConfig.from_json(saved) == TrainConfig(block="cnn5")


def test_unknown_and_missing_saved_keys_are_refused():
    saved = TrainConfig(block="cnn5").to_json()
    with pytest.raises(InputError, match=r"state.json: unknown training arguments \['tilt'\]"):
        TrainConfig.from_json({**saved, "tilt": 3}, where="state.json")
    del saved["lr"]
    with pytest.raises(InputError, match="config.json: no 'lr'; not the arguments of a training run"):
        TrainConfig.from_json(saved, where="config.json")


def test_what_resume_may_change():
    assert resumable("epochs") and resumable("max_minutes") and resumable("out") and resumable("progress")
    assert not resumable("lr") and not resumable("augment_config") and not resumable("feature_store")
    assert not resumable("precision_policy")


def _run_args(config, **run):
    return {**config.to_json(), "max_minutes": None, "features": "features/sample",
            "feature_store": {"config_hash": "a", "manifest_hash": "b"}, "out": "m", "progress": False,
            "precision_policy": "float32", **run}


def test_resume_compares_the_saved_args_read_back(tmp_path):
    out = tmp_path / "m"
    (out / ".run").mkdir(parents=True)
    config = TrainConfig(block=None, bovw=True)
    old = _run_args(config, out="elsewhere", max_minutes=5.0)
    for name in ("mixup", "weight_decay"):      # saved before these existed
        del old[name]
    (out / ".run" / "state.json").write_text(json.dumps({"args": old, "complete": False}))

    args = _run_args(dataclasses.replace(config, epochs=80))
    state, stale = resume.check_out(out, args, resume=True, force=False, say=print)
    assert state["args"] == old and stale == []
    with pytest.raises(InputError, match=r"lr was 0.001, now 0.01\); rerun with the same arguments"):
        resume.check_out(out, _run_args(dataclasses.replace(config, lr=0.01)), resume=True, force=False, say=print)
    with pytest.raises(InputError, match="mixup was 0.0, now 0.2"):
        resume.check_out(out, _run_args(dataclasses.replace(config, mixup=0.2)), resume=True, force=False, say=print)
    with pytest.raises(InputError, match="precision_policy was 'float32', now 'mixed_bfloat16'"):
        resume.check_out(out, _run_args(config, precision_policy="mixed_bfloat16"), resume=True, force=False,
                         say=print)


def test_a_cosine_run_resumes_only_with_its_epochs(tmp_path):
    out = tmp_path / "m"
    (out / ".run").mkdir(parents=True)
    config = TrainConfig(block=None, bovw=True, lr_schedule="cosine", epochs=3)
    (out / ".run" / "state.json").write_text(json.dumps({"args": _run_args(config)}))
    with pytest.raises(InputError, match="decays its learning rate over 3 epochs .* resume it with epochs=3"):
        resume.check_out(out, _run_args(dataclasses.replace(config, epochs=4)), resume=True, force=False, say=print)


# ------------------------------------------------------------------------------------------
# the phase plan
# ------------------------------------------------------------------------------------------

def test_pretrained_weights_bring_a_frozen_then_a_finetune_phase():
    config = TrainConfig(block="cnn5", epochs_frozen=3, epochs=20, lr=0.05, frozen_lr=2e-3)
    frozen, finetune = plan_phases(True, config)
    assert frozen == Phase(name=PHASE_FROZEN, optimizer="adam", lr=2e-3, max_epochs=3, reduce_lr=False,
                           cosine=False)
    assert finetune == Phase(name=PHASE_FINETUNE, optimizer="sgd_nesterov", lr=0.05, max_epochs=20,
                             reduce_lr=True, cosine=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        frozen.lr = 1.0     # a plan is read, never edited
    assert describe_plan([frozen, finetune], "cnn5") is None
    [only] = plan_phases(True, dataclasses.replace(config, epochs_frozen=0))
    assert only.name == PHASE_FINETUNE
    assert "epochs_frozen=0" in describe_plan([only], "cnn5")


def test_without_pretrained_weights_one_scratch_phase():
    [phase] = plan_phases(False, TrainConfig(block="cnn5", lr_schedule="cosine"))
    assert phase == Phase(name=PHASE_SCRATCH, optimizer="adam", lr=1e-3, max_epochs=50, reduce_lr=False,
                          cosine=True)
    [phase] = plan_phases(False, TrainConfig(block=None, bovw=True, scratch_optimizer="sgd"))
    assert phase.optimizer == "sgd_nesterov" and phase.reduce_lr and not phase.cosine
    assert "there is no image block" in describe_plan([phase], None)
    assert "block 'cnn5' starts from random weights" in describe_plan([phase], "cnn5")


def test_which_blocks_start_pretrained():
    assert not has_pretrained_weights(TrainConfig(block=None, bovw=True))
    assert not has_pretrained_weights(TrainConfig(block="cnn5"))                 # no default weights
    assert has_pretrained_weights(TrainConfig(block="cnn5", weights="cnn5.weights.h5"))
    assert has_pretrained_weights(TrainConfig(block="resnet50"))
    assert not has_pretrained_weights(TrainConfig(block="resnet50", weights="none"))


def test_native_bfloat16_is_read_from_the_cpu_flags():
    assert cpu_has_native_bfloat16("processor: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bfloat16("flags : amx_bf16 amx_tile\n")
    assert not cpu_has_native_bfloat16("flags : fpu avx2 avx512f\n")
