"""An ensemble's members as fitting sees them: each variant's config and saved predictions
(read through :class:`~ensemble_fer.models.variant_dir.VariantDir`; never its model), and the
checks that they can be combined: one feature store, one label set, the same val/test rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ensemble_fer.errors import InputError
from ensemble_fer.labels import label_set_from_json
from ensemble_fer.models.variant_dir import PREDICTIONS, VariantDir


def _say_nothing(*args, **kwargs):
    pass


@dataclass
class MemberPredictions:
    """A trained variant's saved predictions: ``splits[split]`` holds ids, y, proba, face_found."""

    name: str
    folder: Path
    config: dict
    splits: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def read_member(folder, say=_say_nothing) -> MemberPredictions:
    """A variant's config and checked predictions (finite probabilities whose rows sum to 1)."""
    variant = VariantDir(folder)
    config = variant.read_config()
    splits = variant.read_predictions(len(config["labels"]["classes"]), say=say)
    return MemberPredictions(variant.name, variant.path, config, splits)


def check_members(members: list[MemberPredictions], stores_checked_later: bool = False) -> list[str]:
    """Refuse members that cannot be combined; returns the splits they all have.

    ``stores_checked_later``: members whose records of one extractor's store name different
    manifests pass here, because each will be checked against one store by running it
    (``fit_ensemble --tta N``: :func:`ensemble_fer.ensemble.fit.check_store_of`)."""
    if not members:
        raise InputError("no members to combine")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise InputError(f"two members share a folder name ({names}); rename one")
    first = members[0]
    ref_store, ref_labels = first.config["feature_store"], first.config["labels"]
    for member in members[1:]:
        store = member.config["feature_store"]
        for key in ("config_hash",) if stores_checked_later else ("config_hash", "manifest_hash"):
            if store.get(key) != ref_store.get(key):
                hint = "" if key == "config_hash" else (
                    "; if both stores hold the same images, --tta N checks each member against one store")
                raise InputError(
                    f"{member.folder}: trained on feature store {store.get('path')} ({key} {store.get(key)}) but "
                    f"{first.folder} on {ref_store.get('path')} ({key} {ref_store.get(key)}); members of an "
                    f"ensemble must share one store (choose members with --variants, or retrain){hint}")
        if label_set_from_json(member.config["labels"]) != label_set_from_json(ref_labels):
            raise InputError(f"{member.folder}: label set {member.config['labels']['name']!r} "
                             f"{member.config['labels']['classes']} differs from {first.folder}'s "
                             f"{ref_labels['name']!r} {ref_labels['classes']}; members must share one")
        for split in ("val", "test"):
            if (split in member.splits) != (split in first.splits):
                has, lacks = (member, first) if split in member.splits else (first, member)
                raise InputError(f"{lacks.folder}: has no {split} predictions but {has.folder} has; members "
                                 f"must be scored on the same splits")
            if split not in member.splits:
                continue
            ours, theirs = member.splits[split], first.splits[split]
            if len(ours["ids"]) != len(theirs["ids"]) or not np.array_equal(ours["ids"], theirs["ids"]):
                if len(ours["ids"]) == len(theirs["ids"]) and set(ours["ids"]) == set(theirs["ids"]):
                    detail = "the same ids in another order"
                else:
                    extra = sorted(set(ours["ids"]) - set(theirs["ids"]))
                    lacking = sorted(set(theirs["ids"]) - set(ours["ids"]))
                    detail = (f"{len(ours['ids'])} vs {len(theirs['ids'])} rows; "
                              f"{len(extra)} ids only here{f' (e.g. {extra[0]})' if extra else ''}, "
                              f"{len(lacking)} missing{f' (e.g. {lacking[0]})' if lacking else ''}")
                raise InputError(f"{member.folder / PREDICTIONS}: {split} ids do not line up with "
                                 f"{first.folder}'s ({detail}); members must be scored on the same rows")
            if not np.array_equal(ours["y"], theirs["y"]):
                row = int(np.flatnonzero(ours["y"] != theirs["y"])[0])
                raise InputError(f"{member.folder / PREDICTIONS}: {split}_y differs from {first.folder}'s "
                                 f"at id {ours['ids'][row]}; members must share labels")
    return [split for split in ("val", "test") if split in first.splits]
