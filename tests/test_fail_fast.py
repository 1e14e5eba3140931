"""A user error answers before any heavy library loads: each stage checks what it was given
(paths, folders, videos, arguments) before TensorFlow starts (10-25 s on a small machine).

Each case runs the stage's ``main`` in a fresh interpreter and reports, once it has returned,
whether TensorFlow was imported: a timing bound would be flaky on a loaded machine, the
module table is not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

PROBE = ("import json, sys\n"
         "from pipelines import console\n"
         "code = console.main(json.loads(sys.argv[1]))\n"
         "print(json.dumps({'code': code, 'tensorflow': 'tensorflow' in sys.modules}))\n")


def _run_stage(argv, cwd):
    # this source tree, whatever the interpreter has installed
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", PROBE, json.dumps([str(a) for a in argv])], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


def _layout(tmp_path: Path) -> dict[str, Path]:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a picture")
    broken_video = tmp_path / "broken.mp4"
    broken_video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    broken_photo = tmp_path / "broken.jpg"
    broken_photo.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"epochs": [1]}))
    return {"missing": tmp_path / "missing", "empty": empty, "broken_video": broken_video,
            "broken_photo": broken_photo, "grid": grid}


CASES = {
    "predict, a wrong path": (["predict", "{missing}.jpg"], "{missing}.jpg: no such file or folder"),
    "predict, a folder with no images": (["predict", "{empty}"], "{empty}: no image files to read"),
    "predict, a broken video": (["predict", "{broken_video}"], "{broken_video}:"),
    "predict, a broken photo": (["predict", "{broken_photo}"], "{broken_photo}:"),
    "predict, a wrong model path": (["predict", str(REPO / "tests" / "data" / "photos" / "2008_002470.jpg"),
                                     "--model", "{missing}"], "{missing}: no such file or folder"),
    "extract, a wrong --data": (["extract", "--data", "{missing}"], "{missing}: no such file or folder"),
    "evaluate, a wrong --data": (["evaluate", "--data", "{missing}"], "{missing}: no such file or folder"),
    "evaluate, a wrong --model": (["evaluate", "--model", "{missing}"], "{missing}: no such file or folder"),
    "train, a wrong --features": (["train", "--block", "cnn5", "--features", "{missing}"],
                                  "{missing}: not a feature store"),
    "search, a wrong --features": (["search", "--block", "cnn5", "--grid", "{grid}", "--features", "{missing}"],
                                   "{missing}: not a feature store"),
    "export, a wrong --model": (["export", "--model", "{missing}", "--out", "{missing}-out"],
                                "{missing}: no such file or folder"),
    "fit-ensemble, a wrong --models": (["fit-ensemble", "--models", "{missing}"], "{missing}: no such folder"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_errors_answer_before_tensorflow_loads(case, tmp_path):
    layout = _layout(tmp_path)
    argv, message = CASES[case]
    argv = [a.format(**layout) for a in argv]
    result, stderr = _run_stage(argv, tmp_path)
    assert result["code"] == 2, stderr
    lines = stderr.strip().splitlines()
    assert lines and all(line.startswith(("error:", str(tmp_path))) for line in lines), stderr
    assert message.format(**layout) in stderr, stderr
    assert not result["tensorflow"], f"{case}: TensorFlow was imported before the error"
