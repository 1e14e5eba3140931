"""``predict --workers N``: photos decoded and their faces found in worker processes while the
network runs in the main one (``ensemble_fer.features.workers``, ``prediction_run.photos_in_order``).

Real photos (dlib's test photos, the dog photo, a corrupt JPEG), real dlib and the shipped
fast model. The rows, their order, the errors and the pictures must be those of --workers 1;
the workers must not load TensorFlow and must not outlive the run (Ctrl-C, kill -9). No
timings here: benchmarks/bench_folder_workers.py measures the speed.

The functions the workers run in these tests are this module's (a spawned worker imports
it), so it imports nothing heavy at the top.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TEST_DATA
from ensemble_fer.features.workers import ordered_map

PHOTOS = TEST_DATA / "photos"
HEAVY = ("tensorflow", "keras", "ai_edge_litert", "tflite_runtime", "onnxruntime")
"""What a worker must never import: the network's libraries (seconds of start-up, and memory, per worker)."""


# ----------------------------------------------------------------------------- what the workers run

def _slow_first(x):
    time.sleep(0.5 if x == 0 else 0.0)      # the first item finishes last
    return x * x


def _fails_on_three(x):
    if x == 3:
        raise ValueError(f"item {x}")
    return x


def _faces_and_heavy_modules(path):
    from ensemble_fer.inference.prediction_run import photo_faces

    return photo_faces(path, "hog", "fast"), sorted(name for name in HEAVY if name in sys.modules)


# ----------------------------------------------------------------------------- the pool

def test_results_come_in_input_order_and_items_are_read_only_a_little_ahead():
    read = []

    def items():
        for k in range(12):
            read.append(k)
            yield k

    taken = []
    with ordered_map(_slow_first, items(), workers=2, look_ahead=3) as results:
        for result in results:
            # look_ahead items at first, then one more as each result is handed over
            assert len(read) == min(12, 3 + len(taken) + 1)
            taken.append(result)
    assert taken == [k * k for k in range(12)]


def test_an_error_in_a_worker_is_raised_where_its_result_is_taken():
    taken = []
    with pytest.raises(ValueError, match="item 3"):
        with ordered_map(_fails_on_three, range(8), workers=2) as results:
            for result in results:
                taken.append(result)
    assert taken == [0, 1, 2]


def test_workers_find_the_faces_of_this_process_and_load_no_network_library():
    from ensemble_fer.inference.prediction_run import photo_faces

    paths = [PHOTOS / "2008_002506.jpg", PHOTOS / "dogs.jpg"]
    with ordered_map(_faces_and_heavy_modules, paths, workers=2) as results:
        found = list(results)
    for path, (faces, heavy) in zip(paths, found):
        assert heavy == [], f"a worker imported {heavy}"
        boxes, scores, crops = faces
        here = photo_faces(path, "hog", "fast")
        assert (boxes, scores) == here[:2]
        assert all(isinstance(v, int) for box in boxes for v in box) and all(type(s) is float for s in scores)
        assert all(a.dtype == np.uint8 and a.shape == (48, 48) and np.array_equal(a, b) for a, b in zip(crops, here[2]))
    assert found[0][0][0] and found[1][0][0] == []       # faces; none in the dog photo


# ----------------------------------------------------------------------------- the command line

def _photo_folder(root: Path, copies: int = 1) -> Path:
    """The bundled photos (5 with faces, the dog photo) ``copies`` times, and a corrupt JPEG."""
    folder = root / "photos"
    folder.mkdir()
    for k in range(copies):
        for photo in sorted(PHOTOS.glob("*.jpg")):
            shutil.copy(photo, folder / (f"{photo.stem}_{k}{photo.suffix}" if copies > 1 else photo.name))
    (folder / "broken.jpg").write_bytes((PHOTOS / "2008_002506.jpg").read_bytes()[:2500])
    return folder


def _predict(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.predict", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=_env())


def _env() -> dict:
    # this source tree, whatever the interpreter has installed
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def test_two_workers_write_the_csv_errors_and_pictures_of_one(tmp_path):
    photos = _photo_folder(tmp_path)
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        run = _predict(photos, "--model", "fast", "--workers", workers, "--batch-size", 2, "--csv", out / "faces.csv",
                       "--annotate", out / "annotated", "--quiet")
        assert run.returncode == 0, run.stderr[-3000:]
        runs[workers] = (out, run.stderr)
    (one, err_one), (two, err_two) = runs[1], runs[2]
    assert (two / "faces.csv").read_bytes() == (one / "faces.csv").read_bytes()
    assert err_two == err_one and err_one.startswith(f"{photos / 'broken.jpg'}: not a readable image (")
    rows = (one / "faces.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows if ",no_face," in row] == [str(photos / "dogs.jpg")]
    assert [row.split(",")[0] for row in rows if ",error," in row] == [str(photos / "broken.jpg")]
    pictures = sorted(p.name for p in (one / "annotated").glob("[!.]*"))
    assert pictures == sorted(p.name for p in (two / "annotated").glob("[!.]*")) and len(pictures) == 6
    for name in pictures:
        assert (two / "annotated" / name).read_bytes() == (one / "annotated" / name).read_bytes(), name


def _assert_gone(pids, seconds: float = 15.0) -> None:
    """Every pid of ``pids`` exits within ``seconds``; one that does not is killed (this test
    started it), then reported."""
    from test_store_safety import _running

    deadline = time.time() + seconds
    while any(_running(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    left = [p for p in pids if _running(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running {seconds:g} s later: {left}"


def _start_and_wait_for_rows(photos: Path, out: Path, rows: int) -> tuple[subprocess.Popen, list[int]]:
    """``predict --workers 2`` on ``photos`` in its own process group, once ``rows`` rows are
    written: the process and its descendants (the workers and multiprocessing's tracker).
    Its stderr goes to ``out`` + ``.stderr``: a file, not a pipe, which a lingering worker
    would hold open."""
    partial = out.with_name(out.name + ".partial")
    with open(out.with_name(out.name + ".stderr"), "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "pipelines.predict", str(photos), "--model", "fast",
                                    "--workers", "2", "--batch-size", "1", "--csv", str(out), "--quiet"], cwd=REPO,
                                   env=_env(), stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                                   # a shell starts background jobs with SIGINT ignored, and Python then
                                   # installs no KeyboardInterrupt handler: give the child the default
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if partial.exists() and partial.read_text().count("\n") >= rows + 1:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be stopped"
    from test_store_safety import _descendants

    workers = _descendants(process.pid)
    assert len(workers) >= 2, workers
    return process, workers


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_ctrl_c_ends_the_workers_and_resume_gives_the_rows_of_one_worker(tmp_path):
    photos = _photo_folder(tmp_path, copies=4)
    reference = tmp_path / "one.csv"
    assert _predict(photos, "--model", "fast", "--csv", reference, "--quiet").returncode == 0
    out = tmp_path / "faces.csv"
    process, workers = _start_and_wait_for_rows(photos, out, rows=4)
    os.killpg(process.pid, signal.SIGINT)       # Ctrl-C in a terminal: the whole group gets it
    process.wait(timeout=120)
    stderr = (tmp_path / "faces.csv.stderr").read_text()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr     # the workers took no KeyboardInterrupt of their own
    _assert_gone(workers)
    resumed = _predict(photos, "--model", "fast", "--workers", "2", "--csv", out, "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert out.read_text().splitlines() == reference.read_text().splitlines()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_kill_9_leaves_no_workers(tmp_path):
    photos = _photo_folder(tmp_path, copies=4)
    process, workers = _start_and_wait_for_rows(photos, tmp_path / "faces.csv", rows=2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    _assert_gone(workers)
