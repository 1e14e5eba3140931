"""Emotion labels: the canonical FER2013 codes, folder-name aliases and label sets.

Every dataset reader turns its labels into the canonical FER2013 challenge codes
(0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral). A *label set*
then maps those codes onto the classes a model is trained on: ``fer7`` (all seven),
a subset such as ``happy,sad,neutral,surprise``, or a regrouping such as ``valence3``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ensemble_fer.errors import InputError

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""Canonical emotion names, indexed by their FER2013 challenge code."""

# CK+ and other datasets carry "contempt", which FER2013 lacks. It has a code of its own
# so that a label set (valence3) can use it; fer7 leaves it out.
CONTEMPT = 7
ALL_CODES = {name: code for code, name in enumerate(EMOTIONS)} | {"contempt": CONTEMPT}

_ALIASES = {
    "anger": "angry", "angry": "angry", "mad": "angry",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear",
    "happy": "happy", "happiness": "happy", "joy": "happy",
    "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise",
    "neutral": "neutral", "neutrality": "neutral", "calm": "neutral",
    "contempt": "contempt",
}


def code_for_name(name: str) -> int:
    """The canonical code of an emotion name or alias, matched case-insensitively.

    Raises ``KeyError`` for a name that is not an emotion.
    """
    key = name.strip().lower()
    if key not in _ALIASES:
        raise KeyError(name)
    return ALL_CODES[_ALIASES[key]]


@dataclass(frozen=True)
class LabelSet:
    """A mapping from canonical codes to the classes a model predicts.

    ``groups[i]`` holds the canonical codes that make class ``i``; codes in no group
    are left out of training and evaluation (and counted as such).
    """

    name: str
    classes: tuple[str, ...]
    groups: tuple[tuple[int, ...], ...]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def encode(self, codes) -> np.ndarray:
        """Class indices for canonical codes; -1 where a code is outside the set."""
        codes = np.asarray(codes)
        lookup = np.full(max(ALL_CODES.values()) + 1, -1, dtype=np.int64)
        for index, group in enumerate(self.groups):
            lookup[list(group)] = index
        out = np.full(codes.shape, -1, dtype=np.int64)
        valid = (codes >= 0) & (codes < lookup.size)
        out[valid] = lookup[codes[valid]]
        return out

    def to_json(self) -> dict:
        return {"name": self.name, "classes": list(self.classes),
                "groups": [list(g) for g in self.groups]}


_BUILTIN = {
    "fer7": LabelSet("fer7", EMOTIONS, tuple((code,) for code in range(len(EMOTIONS)))),
    "valence3": LabelSet(
        "valence3",
        ("positive", "negative", "surprise"),
        ((ALL_CODES["happy"],),
         (ALL_CODES["angry"], ALL_CODES["disgust"], ALL_CODES["fear"], ALL_CODES["sad"], CONTEMPT),
         (ALL_CODES["surprise"],)),
    ),
}


def get_label_set(spec: str = "fer7") -> LabelSet:
    """``fer7``, ``valence3`` or a comma-separated list of emotion names (a subset)."""
    if spec in _BUILTIN:
        return _BUILTIN[spec]
    names = [part for part in (p.strip() for p in spec.split(",")) if part]
    if len(names) < 2:
        raise InputError(
            f"labels must be one of {sorted(_BUILTIN)} or a comma-separated list of at least "
            f"two emotions from {list(ALL_CODES)}; got {spec!r}")
    codes = []
    for name in names:
        try:
            codes.append(code_for_name(name))
        except KeyError:
            raise InputError(f"labels: unknown emotion {name!r} in {spec!r}; "
                             f"allowed: {list(ALL_CODES)}") from None
    if len(set(codes)) != len(codes):
        raise InputError(f"labels: an emotion is listed twice in {spec!r}")
    classes = tuple(EMOTIONS[c] if c < len(EMOTIONS) else "contempt" for c in codes)
    return LabelSet(",".join(classes), classes, tuple((c,) for c in codes))


def label_set_from_json(data: dict, where=None) -> LabelSet:
    """The label set of :meth:`LabelSet.to_json`'s dict, checked: ``name`` a string, ``classes``
    at least two distinct names, ``groups`` one list of emotion codes per class. Anything else
    is an :class:`InputError` naming ``where`` (the file) when given."""
    prefix = f"{where}: " if where is not None else ""
    ok = (isinstance(data, dict) and isinstance(data.get("name"), str)
          and isinstance(data.get("classes"), (list, tuple)) and len(data["classes"]) >= 2
          and all(isinstance(c, str) for c in data["classes"]) and len(set(data["classes"])) == len(data["classes"])
          and isinstance(data.get("groups"), (list, tuple)) and len(data["groups"]) == len(data["classes"])
          and all(isinstance(g, (list, tuple)) and g and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                                     for c in g) for g in data["groups"]))
    if not ok:
        raise InputError(f"{prefix}labels must be an object with name (a string), classes (two or more names) and "
                         f"groups (a list of emotion codes per class); got {str(data)[:120]}")
    return LabelSet(data["name"], tuple(data["classes"]), tuple(tuple(g) for g in data["groups"]))
