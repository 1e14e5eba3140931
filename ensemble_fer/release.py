"""The shipped models: which files make one, where an installed package finds it, and what
``--model`` names.

Two models are shipped (:data:`SHIPPED`): ``release``, the ensemble (the default everywhere),
and ``fast``, one image-only network exported to TFLite int8 (a member of the release, or a
student distilled from it: ``models/fast/README.md`` says which). Two places hold each:

* ``models/<name>/`` in a clone: the working copy that training, ``fit_ensemble`` and
  ``export`` write (with its figures, predictions and logs);
* ``ensemble_fer/<name>/`` inside an installed wheel: a copy of that folder made at build
  time (``setup.py`` runs :func:`copy_release` from its ``build_py`` step), holding only the
  files prediction needs, so that ``pip install`` gives a package that predicts offline from
  any directory.

:func:`shipped_model` prefers the packaged copy and falls back to the working copy, so an
editable install in a clone (which has no packaged copy) keeps using ``models/<name>``.
:func:`resolve_model` turns a ``--model`` value (None, a shipped name or a path) into a path.

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

SHIPPED = {"release": "the ensemble (default): the most accurate",
           "fast": "one image-only network, TFLite int8: the fastest"}
"""The models a package ships, by the name ``--model`` takes."""

PACKAGE_DIR = Path(__file__).resolve().parent
SEARCH_PATH = (PACKAGE_DIR, PACKAGE_DIR.parent / "models")
"""Where a shipped model ``<name>/`` is looked for, in order: inside an installed wheel, then
in a clone of the repository (the working copy)."""

ENVIRONMENT_VARIABLES = {"release": "ENSEMBLE_FER_RELEASE", "fast": "ENSEMBLE_FER_FAST"}
"""Set at build time to package another folder than ``models/<name>`` (tests, forks)."""

# What prediction reads from a variant folder (inference.load_predictor): the network
# (Keras, or a TFLite export) and its config. Figures, predictions.npz, histories and logs
# stay in the working copy: they would multiply the wheel's size for nothing.
MODEL_FILES = ("model.keras", "model.tflite", "model.onnx")
VARIANT_FILES = ("config.json",) + MODEL_FILES
TOP_FILES = ("ensemble.json", "export.json", "README.md")   # export.json: the marker of an exported model
TRUNK_LICENCE = "TRUNK_LICENSE"
"""The licence of a member's pretrained trunk: its fine-tuned weights are a copy of the
trunk's, whose licence (MIT, Apache-2.0) asks that its notice travel with every copy."""


def is_model_folder(folder) -> bool:
    """Whether ``folder`` holds a loadable model: an ``ensemble.json`` or a variant's ``config.json``."""
    folder = Path(folder)
    return (folder / "ensemble.json").is_file() or (folder / "config.json").is_file()


def shipped_model(name: str = "release") -> Path:
    """The shipped model ``name`` (see :data:`SHIPPED`): the packaged copy, else the working copy."""
    if name not in SHIPPED:
        raise InputError(f"model: the shipped models are {sorted(SHIPPED)}; received {name!r}")
    for root in SEARCH_PATH:
        if is_model_folder(root / name):
            return root / name
    working, packaged = SEARCH_PATH[-1] / name, SEARCH_PATH[0] / name
    if name == "release":
        raise MissingInputError(
            f"{working}: no release model here (and none packaged in {packaged}). Train one (ensemble-fer extract, "
            f"ensemble-fer train --block cnn5 --bovw, optionally ensemble-fer fit-ensemble; or python -m "
            f"pipelines.train_variant) and pass it with --model PATH (a variant folder or an ensemble.json), "
            f"or put it in {working}")
    raise MissingInputError(
        f"{working}: no {name!r} model here (and none packaged in {packaged}); this installation does not ship "
        f"it: use the default model, or pass --model PATH")


def default_model() -> Path:
    """The release to load when no model is named: the packaged copy, else the working copy."""
    return shipped_model("release")


MODEL_HELP = ("a trained variant folder, an ensemble.json, a format folder of an export, or a shipped model: "
              "release (default) or fast")
"""The help of every stage's ``--model``."""


def resolve_model(value=None) -> Path:
    """The model a ``--model`` value means: None for the release, a shipped name
    (:data:`SHIPPED`: ``release``, ``fast``) unless a file or folder of that name exists here,
    else the path itself (checked when it loads)."""
    if value is None:
        return default_model()
    path = Path(value)
    if str(value) in SHIPPED and not path.exists():
        return shipped_model(str(value))
    if not path.exists() and len(path.parts) == 1:
        # a bare name that is neither a file here nor a shipped model: most often a typo of one
        import difflib

        close = difflib.get_close_matches(str(value), SHIPPED, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise MissingInputError(f"--model {value}: no such file or folder, and not a shipped model; {hint}"
                                f"the shipped models are {', '.join(SHIPPED)}")
    return path


DEFAULT_UPSAMPLE = {"release": "auto", "fast": "fast"}
"""The face search (:mod:`ensemble_fer.features.faces` ``upsample`` mode) each shipped model
predicts with unless told: the fast model's is the quicker ``fast`` search, which gives up the
smallest faces (see ``faces.UPSAMPLE_FAST``); every other model keeps ``auto``."""


def default_upsample(model) -> str:
    """The ``upsample`` a model predicts with unless told (:data:`DEFAULT_UPSAMPLE`): the
    shipped fast model's folder (by name or by path, packaged or working copy) gets
    ``"fast"``, any other model ``"auto"``."""
    try:
        folder = Path(model).resolve()
    except (TypeError, OSError):
        return DEFAULT_UPSAMPLE["release"]
    for name, upsample in DEFAULT_UPSAMPLE.items():
        if any(folder == (root / name).resolve() for root in SEARCH_PATH):
            return upsample
    return DEFAULT_UPSAMPLE["release"]


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
        licence = [TRUNK_LICENCE] if (folder / TRUNK_LICENCE).is_file() else []
        for name in ("config.json", *found, *licence):
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
