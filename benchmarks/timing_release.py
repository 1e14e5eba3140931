"""A loadable copy of release 0.2's networks, for timing and export measurements only.

Release 0.2 (``models/release`` until the repaired-data release replaces it) was made with
the removed blur workaround (``blur_sigma`` 3 in its extractor config) and an ensemble file of
format 1, both of which this version refuses. For speed and export comparisons what matters
is the networks, so this writes a copy with ``blur_sigma`` set to 0 in the members' configs and
an ensemble file of the current format with the release's own weights. Its inputs must then
be blurred by the caller (sigma 3) to reproduce the release's accuracy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RELEASE = REPO / "models" / "release"
BLUR_SIGMA = 3.0


def timing_release(dest: Path, source: Path = RELEASE) -> Path:
    """Write the copy into ``dest`` (replaced) and return its ``ensemble.json``."""
    from ensemble_fer import artifacts
    from ensemble_fer.inference import ENSEMBLE_VERSION, MEMBER_FILES

    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    data = json.loads((source / "ensemble.json").read_text())
    for entry in data["members"]:
        member = dest / entry["path"]
        member.mkdir(parents=True)
        shutil.copy2(source / entry["path"] / "model.keras", member / "model.keras")
        config = json.loads((source / entry["path"] / "config.json").read_text())
        config["feature_store"]["extractor"]["blur_sigma"] = 0.0
        (member / "config.json").write_text(json.dumps(config, indent=2))
        for key, name in MEMBER_FILES.items():
            entry[key] = artifacts.sha256_file(member / name)
    data["extractor"]["blur_sigma"] = 0.0
    data["version"] = ENSEMBLE_VERSION
    (dest / "ensemble.json").write_text(json.dumps(data, indent=2))
    return dest / "ensemble.json"
