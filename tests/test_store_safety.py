"""Issue 13, the data side: a user's data is never lost or mixed up by extraction.

Concurrent runs, --force, stale features, unreadable folders, 16-bit and non-image files,
kill -9, and the one-line errors of the CLI. Real processes and files throughout; the only
thing simulated is a permission error for root (see test_unreadable_*).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SAMPLE, sample_crops, write_fer_csv
from ensemble_fer import artifacts
from ensemble_fer.features import bovw, datasets, feature_store, image_io
from ensemble_fer.errors import DatasetError
from ensemble_fer.errors import InputError
from ensemble_fer.features.feature_store import FeatureStore, FeatureStoreError
from pipelines import cli_errors, extract_features

NONE = bovw.ExtractorConfig(detector="none")


def _child(code: str, *args) -> subprocess.Popen:
    """A Python child in the repo running ``code``; returns once it printed 'ready'."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = child.stdout.readline().strip()
    assert line == "ready", line
    return child


def _class_folders(root: Path, classes=("happy", "sad")) -> Path:
    for emotion in classes:
        shutil.copytree(SAMPLE / "train" / emotion, root / emotion)
    return root


def _extract(data_dir, out, **kwargs):
    kwargs = {"n_jobs": 1, "progress": False, "chunk_size": 32, **kwargs}
    return feature_store.extract(datasets.open_dataset(data_dir), out, kwargs.pop("config", NONE), **kwargs)


# ------------------------------------------------------------------ 1. one run per output
def test_a_second_run_into_the_same_store_stops_at_once_naming_the_first(tmp_path, capsys):
    out = tmp_path / "store"
    first = _child("""
        import sys
        from ensemble_fer.features import bovw, datasets, feature_store
        real = bovw.analyse_crops
        def paused(images, config):
            if not paused.done:
                paused.done = True
                print("ready", flush=True)
                sys.stdin.readline()        # hold here, mid-extraction, until the test says go
            return real(images, config)
        paused.done = False
        bovw.analyse_crops = paused
        feature_store.extract(datasets.open_dataset("data/sample"), sys.argv[1], bovw.ExtractorConfig(detector="hog"),
                              n_jobs=1, limit=12, progress=False)
    """, out)
    try:
        started = time.time()
        code = extract_features.main(["--out", str(out), "--detector", "none", "--limit", "12", "--force",
                                      "--quiet", "--n-jobs", "1"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and time.time() - started < 30   # no waiting for the first run
        assert err.count("\n") == 0 and f"another run (pid {first.pid}) is writing it" in err and str(out) in err
        first.stdin.write("go\n")
        first.stdin.flush()
        assert first.wait(timeout=120) == 0
    finally:
        first.kill()
        first.wait()
    store = FeatureStore(out)
    assert store.manifest["config"]["detector"] == "hog"
    assert (store.load("val")["n_faces"] >= 0).all()     # rows written by the hog run, as the manifest says


# ------------------------------------------------------------------ 2. --force replaces only when complete
@pytest.mark.parametrize("where", ["chunks", "merge"])
def test_force_that_crashes_leaves_the_old_store_whole(tmp_path, monkeypatch, where):
    data = _class_folders(tmp_path / "data")
    out = tmp_path / "store"
    _extract(data, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_analyse, real_merge = bovw.analyse_crops, feature_store._merge_split
    calls = {"n": 0}

    def crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return (real_analyse if where == "chunks" else real_merge)(*args, **kwargs)

    if where == "chunks":
        monkeypatch.setattr(bovw, "analyse_crops", crash)
    else:
        monkeypatch.setattr(feature_store, "_merge_split", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _extract(data, out, filter="paper", force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".partial"} == before
    assert FeatureStore(out).manifest["filter"] == "blank"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "store"]   # no half-built store beside it
    monkeypatch.setattr(bovw, "analyse_crops", real_analyse)
    monkeypatch.setattr(feature_store, "_merge_split", real_merge)
    assert _extract(data, out, filter="paper", force=True)["filter"] == "paper"
    assert not (out / ".partial").exists() and FeatureStore(out).manifest["filter"] == "paper"


# ------------------------------------------------------------------ 4. content, not names
def test_replacing_the_pictures_under_the_same_names_is_noticed(tmp_path):
    data = _class_folders(tmp_path / "data")
    out = tmp_path / "store"
    _extract(data, out)
    assert _extract(data, out)["up_to_date"]
    fingerprint = datasets.record_fingerprint(datasets.open_dataset(data).splits["train"])
    others = sorted((SAMPLE / "train" / "angry").glob("*.jpg"))
    replaced = dict(zip(sorted(f"happy/{f.name}" for f in (data / "happy").glob("*.jpg")), others))
    for name, source in replaced.items():
        (data / name).write_bytes(source.read_bytes())
    assert datasets.record_fingerprint(datasets.open_dataset(data).splits["train"]) != fingerprint
    with pytest.raises(FeatureStoreError, match="other images under the same names.*pass --force"):
        _extract(data, out)
    _extract(data, out, force=True)
    store = FeatureStore(out)
    checked = 0
    for split in store.splits:
        arrays = store.load(split)
        for row, name in enumerate(arrays["ids"]):
            if name in replaced:
                np.testing.assert_array_equal(arrays["images"][row], image_io.read_image_file(replaced[name]))
                checked += 1
    assert checked == len(replaced) == 40


def test_record_fingerprint_keys_on_size_and_mtime(tmp_path):
    data = _class_folders(tmp_path / "data", ("happy",))
    records = datasets.open_dataset(data).splits["train"]
    assert datasets.record_fingerprint(records) == datasets.record_fingerprint(records)
    path = records[0].path
    st = path.stat()
    path.write_bytes(path.read_bytes() + b"\0")       # other bytes, same name, same mtime
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = datasets.record_fingerprint(records)
    path.write_bytes(path.read_bytes()[:-1])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))   # same size, touched
    assert len({datasets.record_fingerprint(records), changed,
                datasets.record_fingerprint(datasets.open_dataset(data).splits["train"][1:])}) == 3


# ------------------------------------------------------------------ 5. unreadable folders
def _unlistable(monkeypatch, folder: Path):
    """Make ``folder`` unlistable. The tests run as root, for whom chmod 000 changes nothing,
    so os.scandir (what every folder listing of datasets.py, and Path.rglob, goes through)
    raises the PermissionError an ordinary user would get."""
    real = os.scandir

    def scandir(path="."):
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_an_unreadable_class_folder_is_an_error_not_a_missing_class(tmp_path, monkeypatch, capsys):
    data = _class_folders(tmp_path / "data", ("happy", "sad", "angry"))
    _unlistable(monkeypatch, data / "sad")
    with pytest.raises(DatasetError, match=r"sad: cannot list this folder \(Permission denied\)"):
        datasets.open_dataset(data)
    assert extract_features.main(["--data", str(data), "--out", str(tmp_path / "s"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{data / 'sad'}: cannot list this folder" in err


def test_an_unreadable_dataset_root_is_one_line(tmp_path, monkeypatch, capsys):
    data = _class_folders(tmp_path / "data", ("happy",))
    _unlistable(monkeypatch, data)
    assert extract_features.main(["--data", str(data), "--out", str(tmp_path / "s"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {data}: cannot list this folder (Permission denied); check its permissions"


# ------------------------------------------------------------------ 7. 16-bit, float, bad and non-image files
def test_16_bit_and_float_images_are_scaled_not_saturated(tmp_path):
    from PIL import Image

    crops, _ = sample_crops(3)
    Image.fromarray(crops[0].astype(np.uint16) * 257).save(tmp_path / "deep.png")
    Image.fromarray(crops[1].astype(np.float32) / 255).save(tmp_path / "float.tiff")
    Image.fromarray(crops[2].astype(np.float32)).save(tmp_path / "float255.tiff")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    np.testing.assert_array_equal(image_io.read_image_file(tmp_path / "deep.png"), crops[0])
    np.testing.assert_array_equal(image_io.read_image_file(tmp_path / "float.tiff"), crops[1])
    np.testing.assert_array_equal(image_io.read_image_file(tmp_path / "float255.tiff"), crops[2])
    np.testing.assert_array_equal(image_io.to_gray(crops[0].astype(np.uint16) * 257), crops[0])
    Image.fromarray(np.full((8, 8), -3.0, np.float32)).save(tmp_path / "negative.tiff")
    with pytest.raises(DatasetError, match=r"negative.tiff: floating-point image values must be in 0..1 or 0..255"):
        image_io.read_image_file(tmp_path / "negative.tiff")


def test_every_bad_file_is_reported_and_non_images_are_skipped_and_counted(tmp_path, capsys):
    from PIL import Image

    data = _class_folders(tmp_path / "data")
    (data / "happy" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not an image")
    (data / "sad" / "README.txt").write_text("sad faces from the sample")
    deep = sorted((data / "sad").glob("*.jpg"))[0]
    Image.fromarray(image_io.read_image_file(deep).astype(np.uint16) * 257).save(data / "sad" / "deep.png")
    out = tmp_path / "s"
    assert extract_features.main(["--data", str(data), "--out", str(out), "--detector", "none", "--quiet",
                                  "--n-jobs", "1"]) == 0
    assert "skipped 2 files that are not images (README.txt, Thumbs.db)" in capsys.readouterr().out
    store = FeatureStore(out)
    assert store.manifest["dataset"]["skipped_non_images"] == {"count": 2,
                                                               "files": ["happy/Thumbs.db", "sad/README.txt"]}
    arrays = {s: store.load(s) for s in store.splits}
    row = {(s, i): k for s in arrays for k, i in enumerate(arrays[s]["ids"])}
    split, k = next((s, k) for (s, i), k in row.items() if i == "sad/deep.png")
    np.testing.assert_array_equal(arrays[split]["images"][k], image_io.read_image_file(deep))

    for name in ("a.jpg", "b.png", "c.jpg"):
        (data / "happy" / name).write_bytes(b"\x89PNG broken")
    assert extract_features.main(["--data", str(data), "--out", str(tmp_path / "s2"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "3 images cannot be read" in err
    assert all(f"{data / 'happy' / n}: not a readable image" in err for n in ("a.jpg", "b.png", "c.jpg"))
    for i in range(12):
        (data / "sad" / f"bad{i:02d}.jpg").write_bytes(b"nope")
    assert extract_features.main(["--data", str(data), "--out", str(tmp_path / "s3"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    listing = tmp_path / "s3.unreadable.txt"
    assert err.count("\n") == 0 and "15 images cannot be read" in err and f"5 more, all listed in {listing}" in err
    assert len(listing.read_text().splitlines()) == 15 and not (tmp_path / "s3").exists()


# ------------------------------------------------------------------ 10. kill -9
def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_kill_9_leaves_no_workers_and_the_next_run_cleans_up_and_resumes(tmp_path):
    data = _class_folders(tmp_path / "data", ("happy",))
    out = tmp_path / "store"
    victim = _child("""
        import sys, time
        from ensemble_fer import artifacts
        from ensemble_fer.features import bovw, datasets, feature_store
        real, calls = artifacts.save_npz, []
        def save_slowly(path, **arrays):
            calls.append(path)
            if len(calls) == 2:             # killed while writing the second chunk
                with artifacts.atomic_path(path) as tmp:
                    tmp.write_bytes(b"half a chunk")
                    print("ready", flush=True)
                    time.sleep(600)
            real(path, **arrays)
        feature_store.artifacts.save_npz = save_slowly
        feature_store.extract(datasets.open_dataset(sys.argv[1]), sys.argv[2], bovw.ExtractorConfig(detector="none"),
                              n_jobs=2, chunk_size=16, progress=False)
    """, data, out)
    workers = _descendants(victim.pid)
    assert any("loky" in Path(f"/proc/{p}/cmdline").read_text() for p in workers)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    deadline = time.time() + 15
    while any(_running(p) for p in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not [p for p in workers if _running(p)]            # loky workers (and their trackers) are gone
    assert list((out / ".partial").glob(f".*.tmp-{victim.pid}-*"))   # what kill -9 left behind
    assert (tmp_path / "store.lock").read_text().strip() == str(victim.pid)

    manifest = _extract(data, out, chunk_size=16)             # takes the lock over, cleans, resumes
    assert manifest["timing"]["chunks_resumed"] == 1
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp-" in p.name or p.name.endswith(".lock")]
    assert leftovers == []
    whole = _extract(data, tmp_path / "whole", chunk_size=16)
    for split in whole["splits"]:
        a, b = FeatureStore(out).load(split), FeatureStore(tmp_path / "whole").load(split)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ------------------------------------------------------------------ 13. one-line errors instead of tracebacks
def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert extract_features.main(["--out", str(target), "--detector", "none", "--limit", "5", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {target}: exists and is not a folder; the output of extraction is a folder " \
                  f"(give a new path or an existing feature store)"
    assert target.read_text() == "mine"


def test_out_that_holds_something_else_is_not_written_into(tmp_path, capsys):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    assert extract_features.main(["--out", str(out), "--detector", "none", "--limit", "5", "--quiet"]) == 2
    assert "exists and is not a feature store" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]


def test_csv_with_a_bom_is_read_and_utf16_is_named(tmp_path, capsys):
    crops, _ = sample_crops(2)
    plain = write_fer_csv(tmp_path / "plain.csv", [(0, crops[0], "Training"), (3, crops[1], "PublicTest")])
    text = plain.read_text()
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    bom = datasets.open_dataset(tmp_path / "bom.csv")
    np.testing.assert_array_equal(datasets.load_image(bom.splits["val"][0]), crops[1])
    for name, data in (("utf16.csv", text.encode("utf-16")), ("utf16le.csv", text.encode("utf-16-le"))):
        (tmp_path / name).write_bytes(data)
        assert extract_features.main(["--data", str(tmp_path / name), "--out", str(tmp_path / "o"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {tmp_path / name}: the CSV is encoded as UTF-16") and err.count("\n") == 0
        assert "save it as UTF-8" in err
    (tmp_path / "latin1.csv").write_bytes(text.replace("emotion", "émotion", 1).encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin1.csv: not UTF-8 text \(found byte 0xe9"):
        datasets.open_dataset(tmp_path / "latin1.csv")


def test_too_few_images_per_class_for_a_holdout_says_what_to_change(tmp_path, capsys):
    names = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    for emotion in names:
        (tmp_path / "data" / emotion).mkdir(parents=True)
        for f in sorted((SAMPLE / "train" / emotion).glob("*.jpg"))[:3]:
            shutil.copy(f, tmp_path / "data" / emotion / f.name)
    assert extract_features.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "s"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {tmp_path / 'data'}: 21 training images in 7 classes and no validation split; holding "
                   f"out 10% (3 images) cannot give each of the 7 classes a validation image: add a val/ folder "
                   f"with images of every class, or use at least 61 training images")


# ------------------------------------------------------------------ 14. only InputError is a user error
def test_cli_reports_input_errors_and_lets_bugs_show_their_traceback(capsys):
    def failing(exc):
        @cli_errors.reports_errors
        def main(argv=None):
            raise exc
        return main

    assert failing(InputError("data.csv: bad"))() == 2
    assert capsys.readouterr().err == "error: data.csv: bad\n"
    for bug in (KeyError("detector"), RuntimeError("shape mismatch"), TypeError("x")):
        with pytest.raises(type(bug)):
            failing(bug)()

    @cli_errors.reports_errors
    def numpy_bug(argv=None):
        return np.zeros(-1)                    # a ValueError raised inside numpy: a bug, not input

    with pytest.raises(ValueError, match="negative dimensions"):
        numpy_bug()

    @cli_errors.reports_errors
    def missing(argv=None):
        from ensemble_fer import metrics  # a MissingInputError

        metrics.read_history_csv("/nonexistent/history.csv")

    assert missing() == 2
    assert capsys.readouterr().err == "error: /nonexistent/history.csv: file not found\n"
