"""The training schedule: numeric precision, the phases of a run, and the frozen -> fine-tune switch.

Phases
------
* **frozen** (only when the block starts from pretrained weights, and ``epochs_frozen > 0``):
  the block is frozen (``block.trainable = False``, which in Keras 3 also runs its batch-norm
  layers in inference mode, so their moving statistics stay those of the pretraining) and only
  the new layers learn, with Adam (``frozen_lr``, 1e-3) for ``epochs_frozen`` epochs. This
  protects the pretrained filters from the large gradients of a randomly initialised head.
* **finetune**: everything trainable, SGD with Nesterov momentum 0.9 at ``lr`` (the paper's
  fine-tuning), up to ``epochs`` epochs, ReduceLROnPlateau and EarlyStopping on ``val_loss``.
* **scratch** replaces both when there are no pretrained weights (a compact block, the
  BOVW-only network or ``weights=None``): there is nothing to protect, so the whole network
  trains from the start, with Adam at ``lr`` by default (``scratch_optimizer="sgd"`` gives the
  finetune optimiser instead). Adam because SGD at the fine-tuning rate of 1e-3 is far too
  slow for randomly initialised layers, and it needs no per-block learning-rate search.
  ReduceLROnPlateau and EarlyStopping as in finetune.

``lr_schedule="cosine"`` replaces ReduceLROnPlateau in the finetune / scratch phase by a cosine
decay of the rate, per step, from ``lr`` to 1% of it at the last of ``epochs`` epochs. For a
fixed budget (``epochs`` chosen to fill ``max_minutes``) a rate that reaches ~0 exactly when
the budget ends beats waiting for plateaus, which a short run hardly sees (Li, Yumer & Ramanan,
"Budgeted training", ICLR 2020). The decay is part of the optimizer, so ``resume`` continues it;
``epochs`` then cannot change on resume.

Every phase ends on the weights of its best epoch (lowest ``val_loss``), and the next phase
starts from them; except that a cosine phase which runs all its epochs ends on its last one
(:meth:`Phase.keeps_last_epoch`). :func:`plan_phases` decides the phases; :func:`enter_phase` is the switch
between them (which layers train, the optimizer, the compile).
"""

from __future__ import annotations

import dataclasses

from pathlib import Path

import keras

from ensemble_fer.errors import InputError
from ensemble_fer.models import networks
from ensemble_fer.models.blocks import get_block_spec
from ensemble_fer.training.config import TrainConfig

PHASE_FROZEN = "frozen"
PHASE_FINETUNE = "finetune"
PHASE_SCRATCH = "scratch"


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of a run (:func:`plan_phases`); ``state.json`` records only its ``name``."""

    name: str            # PHASE_FROZEN, PHASE_FINETUNE or PHASE_SCRATCH
    optimizer: str       # "adam" or "sgd_nesterov"
    lr: float
    max_epochs: int
    reduce_lr: bool      # ReduceLROnPlateau
    cosine: bool         # cosine decay over the phase

    def keeps_last_epoch(self, epochs_done: int) -> bool:
        """Whether the phase, after ``epochs_done`` of its epochs, ends on the last epoch's weights
        rather than on those of its lowest ``val_loss``.

        A cosine phase run to its end has annealed its rate to ~0, which is the point of the
        schedule, and keeping that epoch picks nothing on the validation split that the
        results are reported on. Lowest ``val_loss`` was the rule for every phase until 0.11:
        with label smoothing the loss turns up while accuracy still rises, and on the 120-epoch
        VGG it kept epoch 83 (66.70% val) where epoch 120 scored 67.54%
        (``benchmarks/RESULTS.md``, session 23). A cosine phase cut short by early stopping or
        by the time budget keeps its best epoch, as a plateau phase always does.
        """
        return self.cosine and epochs_done >= self.max_epochs


COSINE_FLOOR = 0.01
"""The cosine schedule ends at this fraction of ``lr``."""

MOMENTUM = 0.9
"""SGD momentum of the finetune phase (Nesterov)."""


def cpu_has_native_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes in bfloat16 natively (AVX512-BF16 or AMX-BF16 in its flags).

    Without them TensorFlow emulates bfloat16 and trains 7-11x slower than in float32
    (measured on an AVX2-only EPYC, issue 12), where with them it is ~1.4x faster."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def auto_precision(gpu: bool) -> str:
    """``--precision auto``: mixed_float16 on a GPU; on the CPU mixed_bfloat16 where the CPU has
    native bfloat16, float32 otherwise."""
    if gpu:
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_has_native_bfloat16() else "float32"


def has_pretrained_weights(config: TrainConfig) -> bool:
    """Whether the block starts from pretrained weights (which the frozen phase protects)."""
    if config.block is None or config.weights is None:
        return False
    if config.weights != "default":
        return True   # a named weight set or a file
    return get_block_spec(config.block).default_weights is not None


def plan_phases(pretrained: bool, config: TrainConfig) -> list[Phase]:
    """The :class:`Phase` s of a run, in order."""
    trainable = {"lr": config.lr, "max_epochs": config.epochs, "reduce_lr": config.lr_schedule == "plateau",
                 "cosine": config.lr_schedule == "cosine"}
    if not pretrained:
        optimizer = "adam" if config.scratch_optimizer == "adam" else "sgd_nesterov"
        return [Phase(PHASE_SCRATCH, optimizer, **trainable)]
    phases = []
    if config.epochs_frozen > 0:
        phases.append(Phase(PHASE_FROZEN, "adam", lr=config.frozen_lr, max_epochs=config.epochs_frozen,
                            reduce_lr=False, cosine=False))
    return phases + [Phase(PHASE_FINETUNE, "sgd_nesterov", **trainable)]


def describe_plan(phases: list[Phase], block: str | None) -> str | None:
    """Why a run has no frozen phase, for the progress output (None when it has one)."""
    first = phases[0]
    if first.name == PHASE_SCRATCH:
        why = "there is no image block" if block is None else f"block {block!r} starts from random weights"
        return (f"No frozen phase: {why}, so there are no pretrained weights to protect; the whole network "
                f"trains from the start with {first.optimizer} (lr {first.lr:g}).")
    if first.name == PHASE_FINETUNE:
        return "No frozen phase (epochs_frozen=0): the pretrained block is fine-tuned from the first epoch."
    return None


def enter_phase(model: keras.Model, phase: Phase, config: TrainConfig, steps_per_epoch: int, strategy,
                has_aux: bool) -> None:
    """The switch into a phase: freeze or unfreeze the block, a new optimizer, compile.

    The only place that sets ``trainable``: the block is frozen in the frozen phase and
    trainable otherwise, except its layers before ``config.finetune_from``, which stay frozen
    in the finetune phase too; the rest of the network always trains.
    """
    lr = phase.lr
    if phase.cosine:
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps_per_epoch * phase.max_epochs,
                                                    alpha=COSINE_FLOOR)
    with strategy.scope():
        if config.block is not None:
            block = networks.get_block(model, config.block)
            block.trainable = phase.name != PHASE_FROZEN
            if phase.name == PHASE_FINETUNE and config.finetune_from is not None:
                for layer in frozen_block_layers(block, config.finetune_from):
                    layer.trainable = False
        # Keras decays weights decoupled from the gradient (w -= lr * weight_decay * w), as AdamW.
        decay = config.weight_decay or None
        if phase.optimizer == "adam":
            optimizer = keras.optimizers.Adam(learning_rate=lr, weight_decay=decay)
        else:
            optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=MOMENTUM, nesterov=True,
                                             weight_decay=decay)
        # Compile after changing `trainable`: Keras fixes the trained variables at compile time.
        compile_network(model, optimizer, config, has_aux)


def frozen_block_layers(block: keras.Model, first_trainable: str) -> list:
    """The layers of ``block`` before ``first_trainable`` (an ``InputError`` if it has none of that name)."""
    names = [layer.name for layer in block.layers]
    if first_trainable not in names:
        raise InputError(f"finetune_from: block {block.name!r} has no layer {first_trainable!r}; its layers "
                         f"with weights: {[l.name for l in block.layers if l.weights][:40]}")
    return block.layers[:names.index(first_trainable)]


def compile_network(model: keras.Model, optimizer, config: TrainConfig, has_aux: bool) -> None:
    """Compile ``model`` (the network, or a cached phase's top of it) with the run's losses and metrics."""
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
    accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
    if not has_aux:
        model.compile(optimizer=optimizer, loss=loss, metrics=[accuracy])
        return
    p, aux = networks.PROBABILITIES_OUTPUT, networks.AUX_OUTPUT
    model.compile(
        optimizer=optimizer, loss={p: loss, aux: keras.losses.BinaryCrossentropy()},
        loss_weights={p: 1.0, aux: config.aux_loss_weight},
        metrics={p: [accuracy], aux: [keras.metrics.BinaryAccuracy(name="accuracy"),
                                      keras.metrics.AUC(name="auc", multi_label=True)]})
