"""Training one variant: the loop over the phases of a run, and the outputs of ``models/<variant>/``.

Where the parts are: the configuration (:mod:`ensemble_fer.training.config`), the rows and the
``tf.data`` pipelines (:mod:`~ensemble_fer.training.data`), the phases and the frozen ->
fine-tune switch (:mod:`~ensemble_fer.training.schedule`), the checkpoints and the callbacks
that make a run resumable (:mod:`~ensemble_fer.training.resume`), what the end of a run writes
(:mod:`~ensemble_fer.training.variant_outputs`).

Outputs (see docs/ARCHITECTURE.md): ``model.keras`` (the last phase's best epoch, or its last for
a cosine phase run to its end),
``config.json`` (written last: its presence means the variant is complete), ``history.csv``
(rewritten after every epoch, with a ``phase`` column), ``curves.png``, ``predictions.npz``,
``metrics.json``, ``confusion_matrix.png`` -- every file written atomically -- and ``.run/``
(see :mod:`~ensemble_fer.training.resume`).

Public API::

    train(store, config: TrainConfig, *, out=None, resume=False, ...) -> Path
    train_variant(store, block=None, bovw=False, *, out=None, ..., **config_fields) -> Path

The folder is written and read through :class:`ensemble_fer.models.variant_dir.VariantDir`;
loading a trained variant and predicting with it are :func:`ensemble_fer.models.variant_dir.load_variant`
and :mod:`ensemble_fer.models.forward`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ensemble_fer import artifacts
from ensemble_fer.features.feature_store import FeatureStore
from ensemble_fer.labels import get_label_set
from ensemble_fer.models import networks
from ensemble_fer.models.variant_dir import VariantDir
from ensemble_fer.training.cached_trunk import discard_kept
from ensemble_fer.training.config import MAX_MINUTES, TrainConfig
from ensemble_fer.training.variant_outputs import inference_copy, write_variant_outputs
from ensemble_fer.training.data import balanced_class_weights, eval_dataset, load_splits, train_dataset
from ensemble_fer.training.resume import (RunState, check_out, check_out_kind, clean_after_kill,
                                          load_checkpoint, new_state, phase_callbacks, remove)
from ensemble_fer.training.schedule import (PHASE_FINETUNE, PHASE_FROZEN, auto_precision, describe_plan, enter_phase,
                                            has_pretrained_weights, plan_phases)


def train_variant(store, block: str | None = None, bovw: bool = False, *, out=None, resume: bool = False,
                  force: bool = False, max_minutes: float | None = None, progress: bool = True,
                  callbacks: Sequence = (), **config) -> Path:
    """:func:`train` with the configuration as keywords: ``config`` holds the other fields of
    :class:`~ensemble_fer.training.config.TrainConfig` (``epochs=1, lr=0.01, ...``)."""
    return train(store, TrainConfig.from_arguments(block=block, bovw=bovw, **config), out=out, resume=resume, force=force,
                 max_minutes=max_minutes, progress=progress, callbacks=callbacks)


def train(store, config: TrainConfig, *, out=None, resume: bool = False, force: bool = False,
          max_minutes: float | None = None, progress: bool = True, callbacks: Sequence = ()) -> Path:
    """Train one variant on a feature store and write its folder; returns the folder.

    Parameters
    ----------
    store : FeatureStore or path
        The feature store (``features/<name>``) to train on.
    config : TrainConfig
        What makes the model (network, data, schedule, seed); see its fields.
    out : path, optional
        Output folder; default ``models/<variant>`` in the current directory.
    resume : bool
        Continue the run in ``out`` from its last checkpoint (a new run when there is none);
        refused when the configuration differs other than in ``epochs`` (see
        :func:`ensemble_fer.training.config.resumable`). A finished run stopped by its epoch
        limit continues when ``epochs`` is larger.
    force : bool
        Replace an existing variant in ``out``.
    max_minutes : float, optional
        Wall-clock budget of this call: no epoch starts that would be expected to end after
        it. The outputs are written from the best epoch so far; ``resume`` continues later.
    progress : bool
        Print progress bars and phase headers.
    callbacks : sequence of keras.callbacks.Callback
        Extra callbacks, run after the built-in ones in every phase (e.g. the pruner of a
        hyperparameter search).
    """
    started = time.time()
    max_minutes = MAX_MINUTES("max_minutes", max_minutes)
    say = print if progress else (lambda *args, **kwargs: None)
    label_set = get_label_set(config.labels)
    variant = networks.variant_name(config.block, config.bovw)
    if not isinstance(store, FeatureStore):
        store = FeatureStore(store)
    out = Path(out) if out is not None else Path("models") / variant
    # before --force is looked at: replacing a folder that holds the training data would delete it
    artifacts.check_apart(out, {"--features": store.path, "--aux-targets": config.aux_targets,
                                "--teacher": config.teacher}, output_name="--out")
    check_out_kind(out, resume=resume, force=force)     # before the store is read (seconds)
    folder = VariantDir(out)
    check_training_memory(config)
    gpus = tf.config.list_physical_devices("GPU")
    policy = config.precision if config.precision != "auto" else auto_precision(bool(gpus))
    # The saved args: the configuration, then the run's (config.RUN_ARGS).
    args = {**config.to_json(), "max_minutes": max_minutes, "features": str(store.path),
            "feature_store": {"config_hash": store.config_hash, "manifest_hash": store.manifest_hash},
            "out": str(out), "progress": bool(progress), "precision_policy": policy, "teacher_sha256": None}
    teacher, splits, counts, aux = _read_inputs(config, store, label_set, args, say)
    # One run at a time writes a folder: locked before the folder is looked at, so two runs
    # into one --out cannot both decide it is free (a second stops at once, naming the first).
    with artifacts.output_lock(out):
        state, stale = check_out(out, args, resume=resume, force=force, say=say, store=store)
        out.mkdir(parents=True, exist_ok=True)
        artifacts.mark_output(out)      # a variant's folder: a later --force may clear its outputs
        clean_after_kill(out, state)
        finished = _finished(state, config, folder, out, say)
        if finished == "written":
            return out
        finish_only = finished == "trained"

        teacher_info = None if teacher is None else _distill_targets(teacher, splits, store, config, args, say)
        pretrained = has_pretrained_weights(config)
        phases = plan_phases(pretrained, config)
        note = describe_plan(phases, config.block)
        if note:
            say(note)
        class_weights = (balanced_class_weights(splits["train"].y, label_set.n_classes)
                         if config.class_weight == "balanced" else None)
        build_args = _build_args(config, label_set, splits, aux)

        run, final, strategy = _train_network(
            config, policy, gpus, splits, label_set, phases, build_args, class_weights, folder, out, state, stale,
            args, finish_only, say=say, started=started, max_minutes=max_minutes, progress=progress, callbacks=callbacks)

        kept = write_variant_outputs(
            folder, final, run, label_set, store, counts, variant, pretrained, aux, teacher_info,
            {"precision": policy, "gpus": len(gpus), "strategy": type(strategy).__name__,
             "replicas": int(strategy.num_replicas_in_sync)},
            time.time() - started)
        say(f"wrote {out} (model.keras: the weights of {kept})")
    return out


def _read_inputs(config: TrainConfig, store: FeatureStore, label_set, args: dict, say) -> tuple:
    """What the run reads, each checked before the output folder is looked at: the teacher
    (its fingerprint into ``args``), the rows of the store and the auxiliary targets.
    Returns ``(teacher or None, splits, counts, aux targets or None)``."""
    teacher = None
    if config.teacher is not None:
        from ensemble_fer.training import distill

        teacher, args["teacher_sha256"] = distill.load_teacher(config.teacher, label_set)
    say(f"loading the rows of {store.path}")
    splits, counts = load_splits(store, label_set)
    aux = None
    if config.aux_targets is not None:
        from ensemble_fer.training.aux_targets import read_aux_targets

        aux = read_aux_targets(config.aux_targets).attach(store, splits)
    return teacher, splits, counts, aux


def _distill_targets(teacher, splits, store, config: TrainConfig, args: dict, say) -> dict:
    """The teacher's probabilities of the training rows as their soft targets (once the run is
    known to train: a teacher pass costs minutes); the ``teacher`` entry of ``config.json``."""
    from ensemble_fer.training import distill

    train_rows = splits["train"]
    if config.teacher_views == 1:
        proba = distill.teacher_probabilities(teacher, args["teacher_sha256"], train_rows, store, say)
        targets = train_rows.soft = distill.soften(proba, config.distill_temperature)
    else:
        train_rows.views = distill.teacher_views(teacher, args["teacher_sha256"], train_rows, store,
                                                 config.teacher_views, config.bovw, say)
        targets = train_rows.views.soft = distill.soften(train_rows.views.soft, config.distill_temperature)
    return distill.describe(teacher, args["teacher_sha256"], targets, train_rows.y, config.distill_weight,
                            config.teacher_views, config.distill_temperature)


def _train_network(config: TrainConfig, policy: str, gpus, splits, label_set, phases, build_args: dict,
                   class_weights, folder: VariantDir, out: Path, state, stale, args: dict, finish_only: bool, *, say,
                   started: float, max_minutes, progress: bool, callbacks) -> tuple:
    """Build the network (or load the checkpoint to resume), train it through its phases
    under ``policy`` and the distribution strategy, and return ``(run, inference copy,
    strategy)``; the global precision policy is restored whatever happens."""
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    from ensemble_fer.distribute import choose_strategy

    strategy = choose_strategy(gpus)     # TF_CONFIG workers, several GPUs, or the default
    try:
        keras.utils.set_random_seed(config.seed)
        say(f"building the network ({config.block or 'no image block'}{' + BOVW' if config.bovw else ''}); "
            f"{len(splits['train'].y):,} training rows")
        with strategy.scope():
            if state is None:
                # Built before the old outputs go, so that unavailable weights change nothing.
                model = networks.build_network(weights=config.weights, **build_args)
                remove(out, stale)
                state = new_state(args, phases)
            else:
                model = load_checkpoint(out, state)
                state["args"] = args
        run = _Run(model=model, config=config, splits=splits, n_classes=label_set.n_classes, phases=phases,
                   run_state=RunState(folder, state), strategy=strategy, class_weights=class_weights, say=say,
                   started=started, max_minutes=max_minutes, progress=progress, extra_callbacks=list(callbacks))
        if not finish_only:
            run.train()
        else:
            run.restore_kept_weights(phases[state["phase_index"]])
        keras.mixed_precision.set_global_policy("float32")
        final = inference_copy(run.model, build_args)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    return run, final, strategy


def _finished(state, config: TrainConfig, folder: VariantDir, out: Path, say) -> str | None:
    """Whether the run in ``folder`` has nothing left to train: ``"written"`` (complete, outputs
    written: nothing to do), ``"trained"`` (training finished but the run stopped before its
    outputs were all written) or None. A run stopped by its epoch limit is not finished when
    ``config.epochs`` is larger."""
    if state is None or not state["complete"] or (
            state["stopped"] != "early stopping" and state["args"]["epochs"] < config.epochs):
        return None
    if folder.config_path.is_file():
        say(f"{out}: the run is already complete (stopped by {state['stopped']} after {state['epoch']} "
            f"epochs); nothing to resume")
        return "written"
    say(f"{out}: the run finished training; writing its outputs")
    return "trained"


def _build_args(config: TrainConfig, label_set, splits, aux) -> dict:
    """The keywords of :func:`~ensemble_fer.models.networks.build_network` for this run (also
    what the inference copy is rebuilt with)."""
    build_args = dict(block=config.block, bovw=config.bovw, n_classes=label_set.n_classes,
                      image_size=config.image_size, dropout=config.dropout, bovw_units=list(config.bovw_units),
                      dense_units=config.dense_units, n_aux=len(aux.names) if aux is not None else 0)
    if config.bovw:
        # Statistics of the training rows only: validation and test must not leak into the model.
        build_args["bovw_mean"], build_args["bovw_var"] = networks.bovw_statistics(splits["train"].bovw)
    return build_args


ACTIVATION_BYTES_FACTOR = 32
"""Training memory per byte of an input batch, roughly: the activations of the first layers
(several times the input each) and their gradients. Used only to refuse what cannot fit."""


def check_training_memory(config: TrainConfig) -> None:
    """Refuse, before anything is built, a batch of images that would not fit in memory."""
    if config.block is None:
        return
    from ensemble_fer import memory
    from ensemble_fer.models.blocks import get_block_spec
    size, batch = config.image_size, config.batch_size
    needed = batch * size * size * get_block_spec(config.block).channels * 4 * ACTIVATION_BYTES_FACTOR
    memory.check_fits(needed, f"training {config.block} at image_size {size} with batch_size {batch}")


class _Run:
    """One call of :func:`train`: runs the remaining phases, checkpointing every epoch."""

    def __init__(self, *, model, config: TrainConfig, splits, n_classes, phases, run_state: RunState, strategy,
                 class_weights, say, started, max_minutes, progress, extra_callbacks):
        self.model, self.config, self.splits, self.n_classes = model, config, splits, n_classes
        self.phases, self.run_state, self.strategy = phases, run_state, strategy
        self.class_weights, self.say, self.started = class_weights, say, started
        self.max_minutes, self.progress, self.extra_callbacks = max_minutes, progress, extra_callbacks
        self.budget_hit = False
        self.has_aux = splits["train"].aux is not None
        self._cache = None   # (cut, split network, train cache, val cache) of the cached phases

    def train(self) -> None:
        config, state = self.config, self.run_state.state
        val = eval_dataset(self.splits["val"], config.block, config.bovw, self.n_classes, config.batch_size)
        # Mid-phase, the checkpoint's optimizer (moments, learning rate) carries on; at the
        # start of a phase it is replaced by the phase's own.
        resumed = state["phase_epochs"] > 0
        if state["complete"]:
            # A finished run continued with more epochs: its last phase goes on.
            state.update(complete=False, stopped=None)
            state["phases_done"].pop()
            resumed = True
        while True:
            phase = self.phases[state["phase_index"]]
            phase_end = state["phase_start_epoch"] + phase.max_epochs
            early = False
            if state["epoch"] < phase_end:
                cut = self._cached_cut(phase)
                if cut is _NOT_CACHED:
                    fit_model, phase_val = self.model, val
                    train, steps = train_dataset(self.splits["train"], config.block, config.bovw, self.n_classes,
                                                 config.batch_size, config.seed, state["epoch"], phase_end,
                                                 config.augment_config, self.class_weights, config.mixup,
                                                 config.distill_weight)
                    if not resumed:
                        enter_phase(self.model, phase, config, steps, self.strategy, self.has_aux)
                else:
                    if not resumed:
                        # Trainable flags first: they decide what the cut's bottom may hold.
                        enter_phase(self.model, phase, config, math.ceil(len(self.splits["train"]) /
                                                                         config.batch_size),
                                    self.strategy, self.has_aux)
                    fit_model, train, steps, phase_val = self._cached_phase(cut, state["epoch"], phase_end)
                lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                trainable = int(sum(np.prod(w.shape) for w in self.model.trainable_weights))
                self.say(f"phase {phase.name}: epochs {state['epoch'] + 1}-{phase_end} at most, "
                         f"{phase.optimizer} lr {lr:g}, {trainable:,} trainable parameters"
                         + ("" if cut is _NOT_CACHED else
                            f", on cached trunk outputs ({config.cached_views} view(s) per crop)"))
                callbacks = phase_callbacks(self, phase, resumed)
                # a terminal gets Keras's bar per batch; a log one line per epoch, and an early
                # estimate of the epoch's length so that a long first epoch is not silence
                attached = sys.stdout.isatty()
                verbose = (1 if attached else 2) if self.progress else 0
                estimate = [_EpochEstimate(self.say, steps)] if self.progress and not attached else []
                fit_model.fit(train, validation_data=phase_val, epochs=phase_end, initial_epoch=state["epoch"],
                               steps_per_epoch=steps, shuffle=False,
                               # with aux targets the class weights are sample weights (train_dataset)
                               class_weight=None if self.has_aux else self.class_weights,
                               callbacks=callbacks + estimate + self.extra_callbacks, verbose=verbose)
                early = callbacks[-1].stopping.stopped_epoch > 0
            else:
                self.restore_kept_weights(phase)   # the phase ended just before an interruption
            resumed = False
            if not (early or state["epoch"] >= phase_end):
                break   # stopped inside the phase by the time budget or an extra callback
            state["phases_done"].append({"name": phase.name, "epochs": state["phase_epochs"],
                                         "early_stopping": early})
            if state["phase_index"] + 1 == len(self.phases):
                state.update(complete=True, stopped="early stopping" if early else "epochs")
                self.run_state.save()
                # Also when this sitting ran no cached phase: an earlier sitting's may have kept one.
                discard_kept(self.run_state.folder.run_dir)
                return
            # The next phase starts from this phase's best weights (restored by EarlyStopping).
            state["phase_index"] += 1
            state.update(phase_start_epoch=state["epoch"], phase_epochs=0, early_stopping=None, reduce_lr=None,
                         best_weights=None)
            self.run_state.checkpoint(self.model, self.phases[state["phase_index"]].name)
            if self.budget_hit:
                break
        state["stopped"] = "time budget" if self.budget_hit else "callback"
        self.run_state.save()
        why = f"the time budget of {self.max_minutes:g} min is used up" if self.budget_hit else "a callback stopped it"
        self.say(f"stopped: {why}; the outputs hold the best epoch so far, and resume continues the run")

    def restore_kept_weights(self, phase) -> None:
        """Give the model the weights ``phase`` ends on, for a phase whose last epoch ran in an
        earlier call: EarlyStopping had restored its best weights in memory then, but the
        checkpoint loaded since holds the last epoch's (which a cosine phase run to its end keeps)."""
        state = self.run_state.state
        if state["best_weights"] and not phase.keeps_last_epoch(state["phase_epochs"]):
            self.model.set_weights(self.run_state.best_weights())

    def _cached_cut(self, phase: dict):
        """Where a phase trains on cached trunk outputs: None (after the pooled block: the frozen
        phase), a block layer (``finetune_from``: the finetune phase), or ``_NOT_CACHED``."""
        config = self.config
        if config.block is None or self.has_aux:
            return _NOT_CACHED
        if phase.name == PHASE_FROZEN:
            return None
        if phase.name == PHASE_FINETUNE and config.finetune_from is not None:
            return config.finetune_from
        return _NOT_CACHED

    def _cached_phase(self, cut, first_epoch: int, last_epoch: int):
        """The model that trains on the cache (the network's top, compiled with the network's
        optimizer), its training and validation batches."""
        from ensemble_fer.training import cached_trunk
        from ensemble_fer.training.schedule import compile_network

        config = self.config
        # The frozen phase of a run that fine-tunes from a layer pools the finetune phase's cache
        # (the rest of the block is cheap) instead of running the bottom twice.
        cache_cut = config.finetune_from if cut is None else cut
        split = cached_trunk.split_network(self.model, config.block, cut, config.bovw)
        if self._cache is None or self._cache[0] != cache_cut:
            self._cache = None   # free the previous cache first
            source = split if cache_cut == cut else cached_trunk.split_network(
                self.model, config.block, cache_cut, config.bovw)
            started = time.time()
            self.say(f"caching the frozen trunk's outputs ({'pooled block' if cache_cut is None else 'input of ' + cache_cut}) "
                     f"for {len(self.splits['train']):,} training crops x {config.cached_views} view(s) "
                     f"and {len(self.splits['val']):,} validation crops ...")
            # Kept on disk as it is computed: a resumed run reads it back instead of computing it
            # again; removed when the run completes.
            keep_in = self.run_state.folder.run_dir / cached_trunk.TRUNK_CACHE_DIR
            self._cache = (cache_cut, source,
                           cached_trunk.cache_split(source.bottom, self.splits["train"], config.cached_views,
                                                    config.bovw, self.say, keep_in=keep_in),
                           cached_trunk.cache_split(source.bottom, self.splits["val"], 1, config.bovw, self.say,
                                                    keep_in=keep_in))
            self.say(f"cached in {time.time() - started:.0f} s "
                     f"({self._cache[2].features.nbytes / 2**30:.2f} GiB for training)")
        _, source, train_cache, val_cache = self._cache
        if cache_cut != cut:
            self.say(f"pooling the cache of {cache_cut} for the frozen phase ...")
            train_cache, val_cache = (cached_trunk.pooled_from(source.rest, c, say=self.say, what=name)
                                      for c, name in ((train_cache, "train"), (val_cache, "val")))
        optimizer = self.model.optimizer
        if not optimizer.built:
            # On the network's own variables (the same set as the top's): the checkpoint of the
            # network then holds this optimizer's state in the network's order.
            optimizer.build(self.model.trainable_variables)
        compile_network(split.top, optimizer, config, self.has_aux)
        train, steps = cached_trunk.train_dataset(train_cache, self.n_classes, config.batch_size, config.seed,
                                                  first_epoch, last_epoch, config.distill_weight)
        return split.top, train, steps, cached_trunk.eval_dataset(val_cache, self.n_classes, config.batch_size)


_NOT_CACHED = object()


class _EpochEstimate(keras.callbacks.Callback):
    """For logs (no terminal, so no per-batch bar): one line early in the first epoch of a
    phase, once a tenth of its batches (at least 5) or 15 s have passed, with the epoch's
    expected length from the batches so far (the first batch, which builds the graph, left
    out of the rate)."""

    def __init__(self, say, steps: int, seconds: float = 15.0):
        super().__init__()
        self.say, self.steps, self.seconds = say, int(steps), seconds
        self.said = False

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.started, self.first_done = epoch, time.monotonic(), None

    def on_train_batch_end(self, batch, logs=None):
        if self.said:
            return
        now = time.monotonic()
        if self.first_done is None:
            self.first_done = now
            return
        done = batch + 1
        if done >= self.steps or not (done >= max(5, self.steps // 10) or now - self.started >= self.seconds):
            return
        per_batch = (now - self.first_done) / (done - 1)
        left = per_batch * (self.steps - done)
        self.say(f"epoch {self.epoch + 1}: {done}/{self.steps} batches in {now - self.started:.0f} s; about "
                 f"{left:.0f} s left in this epoch ({per_batch * self.steps:.0f} s per epoch)")
        self.said = True
