"""The shipped release model: which files make one, where an installed package finds it.

Two places hold a release:

* ``models/release/`` in a clone: the working copy that training and ``fit_ensemble`` write
  (with its figures, predictions and logs);
* ``ensemble_fer/release/`` inside an installed wheel: a copy of that folder made at build
  time (``setup.py`` runs :func:`copy_release` from its ``build_py`` step), holding only the
  files prediction needs, so that ``pip install`` gives a package that predicts offline from
  any directory.

:func:`default_model` prefers the packaged copy and falls back to the working copy, so an
editable install in a clone (which has no packaged copy) keeps using ``models/release``.

This module imports only the standard library and :mod:`ensemble_fer.errors`: ``setup.py``
loads it by file path while the package's dependencies may not be installed yet.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

try:
    from ensemble_fer.errors import InputError, MissingInputError
except ImportError:     # loaded by path from setup.py in an isolated build, where the package is not importable
    InputError, MissingInputError = ValueError, FileNotFoundError

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED = PACKAGE_DIR / "release"
"""The release inside an installed wheel."""

WORKING_COPY = PACKAGE_DIR.parent / "models" / "release"
"""The release in a clone of the repository."""

ENVIRONMENT_VARIABLE = "ENSEMBLE_FER_RELEASE"
"""Set at build time to package another folder than ``models/release`` (tests, forks)."""

# What prediction reads from a variant folder (inference.load_predictor): the network
# (Keras, or a TFLite export) and its config. Figures, predictions.npz, histories and logs
# stay in the working copy: they would multiply the wheel's size for nothing.
MODEL_FILES = ("model.keras", "model.tflite", "model.onnx")
VARIANT_FILES = ("config.json",) + MODEL_FILES
TOP_FILES = ("ensemble.json", "README.md")


def is_model_folder(folder) -> bool:
    """Whether ``folder`` holds a loadable model: an ``ensemble.json`` or a variant's ``config.json``."""
    folder = Path(folder)
    return (folder / "ensemble.json").is_file() or (folder / "config.json").is_file()


def default_model() -> Path:
    """The release to load when no model is named: the packaged copy, else the working copy."""
    for folder in (PACKAGED, WORKING_COPY):
        if is_model_folder(folder):
            return folder
    raise MissingInputError(
        f"{WORKING_COPY}: no release model here (and none packaged in {PACKAGED}). Train one "
        f"(ensemble-fer extract, ensemble-fer train --block cnn5 --bovw, optionally ensemble-fer fit-ensemble) "
        f"and pass it with --model PATH (a variant folder or an ensemble.json), or put it in {WORKING_COPY}")


def release_files(source) -> list[str]:
    """The files (relative paths, sorted) that make the release in ``source``: the
    ``ensemble.json`` and model card, and each member's config and network; or, for a single
    variant, its config and network. Raises :class:`~ensemble_fer.errors.MissingInputError`
    naming what is missing (:class:`~ensemble_fer.errors.InputError` for an unreadable
    ``ensemble.json``)."""
    source = Path(source)
    if (source / "ensemble.json").is_file():
        try:
            data = json.loads((source / "ensemble.json").read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{source / 'ensemble.json'}: not valid JSON ({exc})") from None
        entries = data.get("members", []) if isinstance(data, dict) else []
        members = [entry["path"] for entry in entries if isinstance(entry, dict) and "path" in entry]
        if not members:
            raise MissingInputError(f"{source / 'ensemble.json'}: lists no members")
    elif (source / "config.json").is_file():
        members = ["."]
    else:
        raise MissingInputError(f"{source}: no ensemble.json or config.json: not a model folder")
    files = {name for name in TOP_FILES if (source / name).is_file()}
    for member in members:
        folder = (source / member).resolve()
        if source.resolve() not in folder.parents and folder != source.resolve():
            # A member outside the folder would not travel with it.
            raise MissingInputError(f"{source}: member {member!r} lies outside the release folder")
        if not (folder / "config.json").is_file():
            raise MissingInputError(f"{folder / 'config.json'}: file not found (member of {source})")
        found = [name for name in MODEL_FILES if (folder / name).is_file()]
        if not found:
            raise MissingInputError(f"{folder}: no {' or '.join(MODEL_FILES)} (member of {source})")
        for name in ("config.json", *found):
            files.add((Path(member) / name).as_posix().removeprefix("./"))
    return sorted(files)


def copy_release(source, target) -> list[str]:
    """Copy the release files of ``source`` into ``target`` (emptied first); returns them."""
    source, target = Path(source), Path(target)
    files = release_files(source)
    if target.exists():
        shutil.rmtree(target)
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, target / name)
    return files
