"""What a training run writes into ``models/<variant>/`` when it ends: the float32 inference
copy of the network as ``model.keras``, the validation and test predictions
(``predictions.npz``) and scores (``metrics.json``), the confusion matrix and training curves,
and ``config.json`` last (its presence means the outputs are complete; the file names and
readers are :class:`~ensemble_fer.models.variant_dir.VariantDir`'s).
"""

from __future__ import annotations

import keras
import numpy as np

from ensemble_fer import artifacts, metrics
from ensemble_fer.errors import InputError
from ensemble_fer.models import networks
from ensemble_fer.models.forward import predict_outputs
from ensemble_fer.models.variant_dir import VariantDir
from ensemble_fer.training.resume import _save_keras_atomic
from ensemble_fer.training.schedule import PHASE_FROZEN


def inference_copy(model, build_args: dict) -> keras.Model:
    """The model to save: float32, uncompiled, whatever policy it was trained in.

    A fresh network of the same architecture (built under the float32 policy) takes the
    trained weights -- variables are float32 under the mixed policies too -- so ``model.keras``
    runs anywhere and carries no optimizer state.
    """
    copy = networks.build_network(weights=None, **build_args)
    copy.set_weights(model.get_weights())
    return copy


def write_variant_outputs(folder: VariantDir, model, run, label_set, store, counts, variant, pretrained, aux,
                          teacher_info, device, wall_seconds) -> str:
    """Write the finished (or time-limited) run's ``models/<variant>/``: ``model.keras``, the
    validation and test predictions and scores, the figures, and ``config.json`` last (its
    presence means the outputs are complete). ``run``: the training run (its state, config,
    splits, class weights); ``model``: its :func:`inference_copy`. Returns which epoch's weights
    ``model.keras`` holds, in words."""
    state, train_config = run.run_state.state, run.config
    classes = list(label_set.classes)
    config = {"variant": variant, "block": train_config.block, "bovw": train_config.bovw,
              "labels": label_set.to_json()}
    if aux is not None:
        config["aux"] = {**aux.describe(), "loss_weight": train_config.aux_loss_weight,
                         "positives": {name: dict(zip(aux.names, split.aux.sum(axis=0).astype(int).tolist()))
                                       for name, split in run.splits.items()}}
    _save_keras_atomic(model, folder.model_path)

    predictions, scores = _predict_splits(model, config, run, aux, classes)
    folder.write_predictions(predictions)
    folder.write_metrics(scores)

    cm_split = "test" if "test" in scores else "val"
    metrics.plot_confusion_matrix(scores[cm_split]["confusion_matrix"], classes, folder.confusion_matrix_path,
                                  title=f"{variant}: {cm_split} (n = {scores[cm_split]['n']})")
    history = {column: [row.get(column) for row in state["history"]]
               for column in ("phase", "loss", "val_loss", "accuracy", "val_accuracy")}
    metrics.plot_training_curves(history, folder.curves_path, title=variant)

    stopping = state["early_stopping"] or {}
    best_epoch = stopping.get("best_epoch", -1) + 1
    kept_last = run.phases[state["phase_index"]].keeps_last_epoch(state["phase_epochs"])
    kept_epoch = state["epoch"] if kept_last else best_epoch
    config.update({
        "feature_store": store.describe(),
        "args": state["args"],
        "versions": artifacts.package_versions(),
        "model": {"n_params": int(model.count_params()), "inputs": sorted(t.name for t in model.inputs),
                  "image_size": train_config.image_size, "pretrained_block": bool(pretrained)},
        "training": {
            "complete": bool(state["complete"]), "stopped": state["stopped"],
            "epochs_run": state["epoch"], "phases": state["phases_done"] + (
                [] if state["complete"] else [{"name": state["phases"][state["phase_index"]],
                                               "epochs": state["phase_epochs"], "unfinished": True}]),
            "best_epoch": best_epoch, "best_val_loss": stopping.get("best"), "kept_epoch": kept_epoch,
            "class_weights": run.class_weights, "training_seconds": state["seconds"],
            "wall_seconds_last_call": round(wall_seconds, 2), "device": device,
        },
        "data": counts,
        **({"teacher": teacher_info} if teacher_info is not None else {}),
        "figures": {"confusion_matrix": cm_split},
    })
    folder.write_config(config)   # last: its presence means complete outputs
    return (f"epoch {kept_epoch}, the last of its cosine schedule" if kept_last
            else f"epoch {kept_epoch}, the lowest val loss")


def _predict_splits(model, config: dict, run, aux, classes: list[str]) -> tuple[dict, dict]:
    """The model's predictions of the val and test rows (``predictions.npz``'s arrays) and their
    scores (``metrics.json``); a diverged training (NaN or inf) is refused naming the rates."""
    state, train_config = run.run_state.state, run.config
    predictions, scores = {}, {}
    for split in ("val", "test"):
        if split not in run.splits:
            continue
        data = run.splits[split]
        outputs = predict_outputs(model, config, data.images, data.bovw, 256)
        proba = outputs[networks.PROBABILITIES_OUTPUT]
        if not np.isfinite(proba).all():
            # The arguments made training diverge (a learning rate too high): a failed run of a
            # grid search, not a bug. Checked here, before the metrics refuse the NaN.
            row = int(np.flatnonzero(~np.isfinite(proba).all(axis=1))[0])
            rates = f"lr={train_config.lr!r}" + (f", frozen_lr={train_config.frozen_lr!r}"
                                                 if PHASE_FROZEN in state["phases"] else "")
            raise InputError(f"lr: training diverged with {rates}: the {split} probabilities of row {row} "
                             f"are NaN or inf; train with a smaller learning rate")
        predictions[split] = {"ids": data.ids.astype(str), "y": data.y.astype(np.int64), "proba": proba,
                              "face_found": data.face_found}
        if aux is not None:
            from ensemble_fer.training.aux_targets import aux_metrics

            aux_proba = outputs[networks.AUX_OUTPUT]
            predictions[split].update(aux_proba=aux_proba, aux_y=data.aux.astype(np.int64))
            scores.setdefault("aux", {})[split] = aux_metrics(data.aux, aux_proba, aux.names)
        scores[split] = metrics.classification_metrics(data.y, proba, classes)
        found = data.face_found
        scores[f"{split}_face_found"] = (metrics.classification_metrics(data.y[found], proba[found], classes)
                                         if found.any() else None)
    return predictions, scores
