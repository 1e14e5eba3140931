"""Resuming a run: the ``.run/`` folder of a variant, its state, and the callbacks that keep it.

``.run/`` holds what ``resume`` needs: the full model with its optimizer state after the last
epoch, the best weights of the current phase, ``state.json`` (the run's ``args``, the
phase it is in, the epoch, the history, the early-stopping and plateau counters) and, for a
run on cached trunk outputs, those outputs until the run completes
(:class:`~ensemble_fer.training.cached_trunk.ViewStore`). It is kept
after the run so that a finished run can be continued with more epochs, and can be deleted
when that is not wanted. A resumed run is bit-identical to an uninterrupted one (same
machine): the data order, the augmentation and the dropout masks are functions of (seed,
epoch, step) (:mod:`ensemble_fer.training.data`, :class:`_DropoutSeeds`), and the optimizer and
the early-stopping / plateau counters are in the checkpoint. What a killed run (``kill -9``)
left half-written is removed by the next run in the same folder.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import keras
import numpy as np

from ensemble_fer import artifacts
from ensemble_fer.errors import InputError, MissingInputError
from ensemble_fer.models import networks
from ensemble_fer.models.variant_dir import OUTPUT_FILES, RUN_DIR, STATE, VariantDir
from ensemble_fer.training.cached_trunk import TRUNK_CACHE_DIR
from ensemble_fer.training.config import TrainConfig, resumable

HISTORY_COLUMNS = ("epoch", "phase", "phase_epoch", "loss", "accuracy", "val_loss",
                   "val_accuracy", "learning_rate", "seconds")


VARIANT_SIGNS = ((artifacts.OUTPUT_MARKER,), (f"{RUN_DIR}/",), ("model.keras", "config.json"))
"""What marks a variant's folder: the output marker, a run's state folder, or (variants made
before the marker) a network with its config."""


def check_out_kind(out: Path, *, resume: bool, force: bool) -> None:
    """The checks of :func:`check_out` that need nothing but the folder and the flags: run first,
    before the feature store is read, and again under the output lock.

    Refuses ``resume`` with ``force``, a file ``out``, and a folder that holds something and is
    no variant's (no marker, no ``.run/``, no ``model.keras`` with ``config.json``, as variants made
    before the marker have): a user's own, never trained into nor cleared."""
    if resume and force:
        raise InputError("resume and force: choose one (resume continues the run in out, force replaces it)")
    artifacts.check_own_folder(out, argument="out", kind="a variant's folder", signs=VARIANT_SIGNS)


def check_out(out: Path, args: dict, *, resume: bool, force: bool, say, store=None) -> tuple[dict | None, list]:
    """Check the output folder before training a run of saved ``args`` (see ``train.train``).

    Returns the saved state to resume from (None for a new run) and the old outputs a new
    run replaces (removed only once the new network is built). ``store``: the run's
    :class:`~ensemble_fer.features.feature_store.FeatureStore`; a run that recorded it under
    another name of the same store (the manifest file's hash, before store identities were
    by content) resumes on it.
    """
    check_out_kind(out, resume=resume, force=force)
    folder = VariantDir(out)
    existing = [name for name in OUTPUT_FILES if (out / name).exists()]
    if resume:
        if not folder.state_path.is_file():
            if existing:
                raise InputError(f"resume: {out} holds a variant but no checkpoint to resume from "
                                 f"({RUN_DIR}/{STATE}); pass --force to replace it")
            say(f"{out}: nothing to resume; starting a new run")
            # A run killed before its first state leaves only half-written files in .run/.
            return None, [RUN_DIR] if folder.run_dir.exists() else []
        state = folder.read_state()
        # Read back the way it was written, so that arguments added since take the values the
        # run was made with.
        saved = {**state["args"], **TrainConfig.from_json(state["args"], where=str(folder.state_path)).to_json()}
        if store is not None and store.is_store_of(saved.get("feature_store") or {}):
            saved["feature_store"] = args["feature_store"]
        differ = sorted(k for k in set(saved) | set(args) if not resumable(k) and saved.get(k) != args.get(k))
        if differ:
            detail = "; ".join(f"{k} was {saved.get(k)!r}, now {args.get(k)!r}" for k in differ[:4])
            raise InputError(f"resume: the run in {out} was made with other arguments ({detail}); rerun with "
                             f"the same arguments to resume it, or pass --force to start over")
        if args["lr_schedule"] == "cosine" and saved["epochs"] != args["epochs"]:
            raise InputError(f"epochs: the run in {out} decays its learning rate over {saved['epochs']} "
                             f"epochs (lr_schedule 'cosine'); resume it with epochs={saved['epochs']}, "
                             f"received {args['epochs']}")
        return state, []
    if existing or folder.run_dir.exists():
        if not force:
            what = ", ".join(existing) or f"{RUN_DIR}/ (an interrupted run)"
            raise InputError(f"out: {out} already holds a variant ({what}); pass --force to replace it "
                             f"or --resume to continue it")
        return None, existing + [RUN_DIR]
    return None, []


def clean_after_kill(out: Path, state: dict | None) -> None:
    """Remove what a killed run (``kill -9``) left in ``out``: the temporaries of its atomic writes
    and, in ``.run/``, every file its state does not name (half-written or superseded checkpoints).

    A new run replaces ``.run/`` whole (see :func:`check_out`)."""
    artifacts.clean_stale_temporaries(out)
    if state is None:
        return
    # The trunk cache (cached_trunk.ViewStore) cleans its own temporaries when it is opened.
    keep = {STATE, state["checkpoint"], state["best_weights"], TRUNK_CACHE_DIR}
    run_dir = VariantDir(out).run_dir
    remove(run_dir, [p.name for p in run_dir.iterdir() if p.name not in keep])


def remove(out: Path, names: list[str]) -> None:
    for name in names:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def new_state(args: dict, phases: list) -> dict:
    return {"args": args, "phases": [p.name for p in phases], "phase_index": 0,
            "phase_start_epoch": 0, "phase_epochs": 0, "epoch": 0, "phases_done": [], "history": [],
            "seconds": 0.0, "checkpoint": None, "best_weights": None, "early_stopping": None,
            "reduce_lr": None, "complete": False, "stopped": None}


def load_checkpoint(out: Path, state: dict) -> keras.Model:
    from ensemble_fer.models import blocks  # noqa: F401  registers the custom preprocessing layers

    folder = VariantDir(out)
    path = folder.run_dir / str(state["checkpoint"])
    if not state["checkpoint"] or not path.is_file():
        raise MissingInputError(f"{path}: the checkpoint named in {folder.state_path} is missing; "
                                f"pass --force to start over")
    # compile=True restores the optimizer with its state (momentum, Adam moments, step count).
    return keras.models.load_model(path, compile=True, safe_mode=True)


class RunState:
    """``state.json`` of a run in ``folder`` (``state``, a JSON dict) and the checkpoint files it names."""

    def __init__(self, folder: VariantDir, state: dict):
        self.folder, self.state = folder, state

    def path(self, name) -> Path | None:
        return None if name is None else self.folder.run_dir / name

    def best_weights(self) -> list[np.ndarray] | None:
        """The best weights of the current phase so far, if saved."""
        path = self.path(self.state["best_weights"])
        return load_weights_npz(path) if path else None

    def checkpoint(self, model, phase: str, best_weights=None) -> None:
        """Save the model with its optimizer, the best weights if given, then the state.

        File names carry the epoch and the state is written last, so an interruption at any
        point leaves a state whose files all exist.
        """
        run_dir = self.folder.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        epoch = self.state["epoch"]
        old = {self.state["checkpoint"], self.state["best_weights"]}
        name = f"{phase}-{epoch:04d}.keras"
        _save_keras_atomic(model, run_dir / name)
        self.state["checkpoint"] = name
        if best_weights is not None:
            best = f"best-{epoch:04d}.npz"
            with artifacts.atomic_path(run_dir / best) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, *best_weights)   # uncompressed: fast enough for a ResNet-50 per epoch
            self.state["best_weights"] = best
        self.save()
        for stale in old - {self.state["checkpoint"], self.state["best_weights"], None}:
            (run_dir / stale).unlink(missing_ok=True)

    def save(self) -> None:
        self.folder.write_state(self.state)
        if self.state["history"]:
            write_history(self.folder.history_path, self.state["history"])


def phase_callbacks(run, phase: dict, resumed: bool) -> list:
    """The callbacks of one phase of ``run`` (``train._Run``): dropout seeds, early stopping,
    the plateau (when the phase has it), the time budget, and last the checkpointer. ``resumed``:
    the phase goes on from the saved state, whose counters the callbacks take up. Early stopping
    and the checkpointer keep and save ``run.model``, the whole network, also when the model
    that ``fit`` trains is a cached phase's top of it."""
    config, state = run.config, run.run_state.state
    # Asked at the end of fit, when the checkpointer has counted the phase's last epoch.
    stopping = _EarlyStopping(config.patience, network=run.model,
                              keep_last=lambda: phase.keeps_last_epoch(state["phase_epochs"]))
    reduce_lr = _ReduceLROnPlateau(config.lr_factor, config.lr_patience, config.min_lr) if phase.reduce_lr else None
    if resumed and state["early_stopping"]:
        stopping.load_state(state["early_stopping"], run.run_state.best_weights())
    if resumed and reduce_lr is not None and state["reduce_lr"]:
        reduce_lr.load_state(state["reduce_lr"])
    callbacks = [_DropoutSeeds(config.seed), stopping] + ([reduce_lr] if reduce_lr else [])
    if run.max_minutes is not None:
        callbacks.append(_TimeBudget(run, run.max_minutes * 60.0))
    # Last: it saves the state the callbacks before it have just updated.
    return callbacks + [_Checkpointer(run.run_state, phase.name, stopping, reduce_lr, network=run.model)]


class _DropoutSeeds(keras.callbacks.Callback):
    """Reseeds every random layer (dropout) at the start of each epoch from ``(seed, epoch, i)``.

    Keras keeps a dropout layer's random state in a SeedGenerator variable that ``model.save``
    leaves out, and a loaded checkpoint draws fresh seeds: a resumed run would drop other units
    than the run it continues. Reseeded per epoch (the counter then advances one per step), the
    masks of a step are a function of (seed, epoch, step), interrupted or not.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        states = [v for v in self.model.variables if v.name == "seed_generator_state"]
        for i, variable in enumerate(states):
            first = np.random.default_rng([self.seed, epoch, i]).integers(1, 2**31)
            variable.assign(np.array([first, 0], dtype=variable.dtype))


class _EarlyStopping(keras.callbacks.Callback):
    """Keras's EarlyStopping on ``val_loss`` (min_delta 0, best weights restored at the end,
    unless ``keep_last()`` says the phase keeps its last epoch), holding its state itself:
    ``state()`` / ``load_state()`` carry it across an interruption.

    Subclassing Keras's and setting its private ``wait`` / ``best`` / ``best_epoch`` does not
    survive Keras versions (3.3-3.5 reset them at the first epoch end of a ``fit``).
    """

    def __init__(self, patience: int, network=None, keep_last=None):
        super().__init__()
        self.patience, self.network = patience, network   # network: whose weights are kept (default: fit's)
        self.keep_last = keep_last or (lambda: False)
        self.wait, self.best, self.best_epoch, self.best_weights, self.stopped_epoch = 0, None, 0, None, 0

    def state(self) -> dict:
        return {"wait": self.wait, "best": self.best, "best_epoch": self.best_epoch}

    def load_state(self, saved: dict, best_weights=None) -> None:
        self.wait, self.best, self.best_epoch = int(saved["wait"]), saved["best"], int(saved["best_epoch"])
        self.best_weights = best_weights

    def on_epoch_end(self, epoch, logs=None):
        current = float(logs["val_loss"])
        self.wait += 1
        if self.best is None or current < self.best:
            self.wait, self.best, self.best_epoch = 0, current, epoch
            self.best_weights = (self.model if self.network is None else self.network).get_weights()
        elif self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights is not None and not self.keep_last():
            (self.model if self.network is None else self.network).set_weights(self.best_weights)


class _ReduceLROnPlateau(keras.callbacks.Callback):
    """Keras's ReduceLROnPlateau on ``val_loss`` (min_delta 1e-4, no cooldown), holding its state
    itself as :class:`_EarlyStopping` does; the rate it set is in the optimizer's checkpoint."""

    MIN_DELTA = 1e-4

    def __init__(self, factor: float, patience: int, min_lr: float):
        super().__init__()
        self.factor, self.patience, self.min_lr = factor, patience, min_lr
        self.wait, self.best = 0, None

    def state(self) -> dict:
        return {"wait": self.wait, "best": self.best}

    def load_state(self, saved: dict) -> None:
        # States saved before this class also hold Keras's cooldown_counter, always 0 here.
        self.wait, self.best = int(saved["wait"]), saved["best"]

    def on_epoch_end(self, epoch, logs=None):
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["learning_rate"] = lr   # the rate this epoch used, for the history row
        current = float(logs["val_loss"])
        if self.best is None or current + self.MIN_DELTA < self.best:
            self.wait, self.best = 0, current
            return
        self.wait += 1
        if self.wait >= self.patience and lr > np.float32(self.min_lr):
            self.model.optimizer.learning_rate = max(lr * self.factor, self.min_lr)
            self.wait = 0


class _TimeBudget(keras.callbacks.Callback):
    """Stop before an epoch that would be expected to end after the budget."""

    def __init__(self, run, seconds: float):
        # run: anything with ``started`` (time.time() of the call) and a ``budget_hit`` flag to set.
        super().__init__()
        self.run, self.seconds, self.longest = run, seconds, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        self.longest = max(self.longest, time.time() - self.epoch_started)
        if time.time() - self.run.started + self.longest > self.seconds:
            self.model.stop_training = True
            self.run.budget_hit = True


class _Checkpointer(keras.callbacks.Callback):
    """After every epoch: a history row, the best weights when they improved, the model with its
    optimizer, and the state -- an atomic, resumable ModelCheckpoint + CSVLogger."""

    def __init__(self, run_state: RunState, phase: str, stopping: _EarlyStopping, reduce_lr, network=None):
        super().__init__()
        self.run_state, self.phase, self.stopping, self.reduce_lr = run_state, phase, stopping, reduce_lr
        self.network = network   # the model saved (default: the one fit trains)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        state = self.run_state.state
        seconds = time.time() - self.epoch_started
        state["epoch"] = epoch + 1
        state["phase_epochs"] = epoch + 1 - state["phase_start_epoch"]
        state["seconds"] = round(state["seconds"] + seconds, 2)
        # ReduceLROnPlateau logs the rate this epoch used (before it may lower it).
        lr = logs.pop("learning_rate", None)
        if lr is None:
            lr = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        row = {"epoch": epoch + 1, "phase": self.phase, "phase_epoch": state["phase_epochs"],
               "learning_rate": float(lr), "seconds": round(seconds, 2)}
        # Two outputs: Keras prefixes the emotion metrics with the output name; the history
        # keeps the emotion-only column names (accuracy, val_accuracy) for them.
        prefix = networks.PROBABILITIES_OUTPUT + "_"
        for key in [k for k in logs if k.removeprefix("val_").startswith(prefix)]:
            val = "val_" if key.startswith("val_") else ""
            name = key.removeprefix("val_").removeprefix(prefix)
            logs[f"{val}{'accuracy' if name == 'accuracy' else 'emotion_' + name}"] = logs.pop(key)
        row.update({k: float(v) for k, v in logs.items()})
        state["history"].append(row)
        state["early_stopping"] = self.stopping.state()
        state["reduce_lr"] = self.reduce_lr.state() if self.reduce_lr is not None else None
        improved = self.stopping.best_epoch == epoch and self.stopping.best_weights is not None
        self.run_state.checkpoint(self.model if self.network is None else self.network, self.phase,
                                  self.stopping.best_weights if improved else None)


def load_weights_npz(path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def _save_keras_atomic(model, path: Path) -> None:
    with artifacts.atomic_path(path, suffix=".keras") as tmp:   # Keras insists on the .keras suffix
        model.save(tmp)


def write_history(path: Path, rows: list[dict]) -> None:
    columns = list(HISTORY_COLUMNS) + sorted({k for r in rows for k in r} - set(HISTORY_COLUMNS))
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join("" if row.get(c) is None else str(row[c]) for c in columns))
    with artifacts.atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")

