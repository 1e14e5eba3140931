"""The output primitives every stage uses: the lock on an output, replace-only-when-complete,
and cleaning what a killed process left behind. Real processes, real files, no Keras."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ensemble_fer import artifacts
from ensemble_fer.errors import InputError, MissingInputError


def _holder(code: str) -> subprocess.Popen:
    """A child process running ``code`` that prints 'ready' once it holds what it takes."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    return child


def _lock_holder(out) -> subprocess.Popen:
    """Another process holding the lock of ``out`` (for a minute, or until killed)."""
    return _holder(f"""
        import time
        from ensemble_fer import artifacts
        with artifacts.output_lock({str(out)!r}):
            print("ready", flush=True)
            time.sleep(60)
    """)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_second_lock_in_this_process_is_refused_at_once(tmp_path):
    out = tmp_path / "store"
    with artifacts.output_lock(out) as lock:
        assert lock.read_text().strip() == str(os.getpid())
        with pytest.raises(InputError, match=rf"store: another run \(pid {os.getpid()}\) is writing it"):
            with artifacts.output_lock(out):
                pass
    assert not lock.exists()  # released and removed
    with artifacts.output_lock(out):  # free again
        pass


def test_a_lock_held_by_another_process_names_its_pid(tmp_path):
    out = tmp_path / "model.json"
    child = _lock_holder(out)
    try:
        with pytest.raises(InputError, match=rf"model.json: another run \(pid {child.pid}\)"):
            with artifacts.output_lock(out):
                pass
    finally:
        child.kill()
        child.wait()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    out = tmp_path / "store"
    child = _lock_holder(out)
    child.send_signal(signal.SIGKILL)
    child.wait()
    lock = tmp_path / "store.lock"
    assert lock.read_text().strip() == str(child.pid)  # left behind by kill -9
    with artifacts.output_lock(out):
        assert lock.read_text().strip() == str(os.getpid())
    assert not lock.exists()


def test_replacing_refuses_an_existing_output_before_any_work(tmp_path):
    out = tmp_path / "store"
    out.mkdir()
    (out / "a.npz").write_text("old")
    artifacts.mark_output(out)      # an earlier result (a user's folder gets another message)
    ran = []
    with pytest.raises(InputError, match=r"store: exists; pass --force to replace it"):
        with artifacts.replacing(out):
            ran.append(True)
    assert not ran and (out / "a.npz").read_text() == "old"


def test_replacing_a_folder_swaps_in_the_new_one_only_when_complete(tmp_path):
    out = tmp_path / "store"
    with artifacts.replacing(out) as tmp:      # the old result, made here as a stage makes it
        tmp.mkdir()
        (tmp / "old.txt").write_text("old")
    with artifacts.replacing(out, force=True) as tmp:
        assert tmp.parent == tmp_path and tmp.name == f".store.tmp-{os.getpid()}"
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
        assert (out / "old.txt").read_text() == "old"  # the old result is intact while building
    assert sorted(p.name for p in out.iterdir()) == [artifacts.OUTPUT_MARKER, "new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # nothing left beside it


@pytest.mark.parametrize("failure", [RuntimeError("crash"), KeyboardInterrupt()])
def test_a_failed_build_leaves_the_old_result_untouched(tmp_path, failure):
    folder, file = tmp_path / "store", tmp_path / "ensemble.json"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    artifacts.mark_output(folder)               # an output of this package, so --force may replace it
    file.write_text("old")
    for out in (folder, file):
        with pytest.raises(type(failure)):
            with artifacts.replacing(out, force=True) as tmp:
                if out is folder:
                    tmp.mkdir()
                    (tmp / "half.txt").write_text("half")
                else:
                    tmp.write_text("half")
                raise failure
    assert (folder / "old.txt").read_text() == "old" and file.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ensemble.json", "store"]


def test_a_stage_writes_only_into_a_folder_of_its_kind(tmp_path):
    """check_own_folder: a missing, empty or only-marked folder, or one showing a sign of the
    kind (all of a sign's names), passes; a file and a user's folder are refused, naming the
    argument, the folder and the signs looked for."""
    signs = (("search.json",), ("model.keras", "config.json"), ("runs/",))
    check = lambda folder: artifacts.check_own_folder(folder, argument="--out", kind="a test folder", signs=signs)
    check(tmp_path / "missing")
    for name, files in [("empty", []), ("marked", [artifacts.OUTPUT_MARKER]), ("search", ["search.json"]),
                        ("variant", ["model.keras", "config.json", "notes.txt"])]:
        (tmp_path / name).mkdir()
        for file in files:
            (tmp_path / name / file).write_text("")
        check(tmp_path / name)
    (tmp_path / "runs_folder" / "runs").mkdir(parents=True)
    check(tmp_path / "runs_folder")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"^--out: must be a folder; received .*notes.txt, which is a file$"):
        check(tmp_path / "notes.txt")
    for files in (["config.json"], ["runs"], [artifacts.OUTPUT_MARKER, "notes.txt"]):
        mine = tmp_path / f"mine{len(files)}{files[0]}"
        mine.mkdir()
        for file in files:
            (mine / file).write_text("mine")     # "runs" a file, not the folder the sign names
        with pytest.raises(InputError, match=rf"^--out: .*{mine.name} holds files and is not a test folder \(no "
                                             rf"search.json, model.keras and config.json or runs/\): "
                                             rf"choose another --out$"):
            check(mine)


def test_force_replaces_only_a_folder_this_package_wrote(tmp_path):
    """A user's folder given as an output by mistake is refused even with --force, before any
    work; an empty folder and one marked as an output are replaced."""
    mine = tmp_path / "Pictures"
    mine.mkdir()
    (mine / "holiday.jpg").write_text("a user's photo")
    ran = []
    for replace in (lambda: artifacts.replacing(mine, force=True), lambda: artifacts.replacing(mine),
                    lambda: artifacts.replacing_together([tmp_path / "r.json", mine], force=True),
                    lambda: artifacts.replacing_together([tmp_path / "r.json", mine])):
        with pytest.raises(InputError, match=r"Pictures: is a folder ensemble_fer did not write \(it has no "
                                             r"\.ensemble_fer-output\); --force replaces only its own outputs"):
            with replace() as building:
                ran.append(building)
    # swapped in by a journal (predict's pictures): refused before any move
    built = tmp_path / ".Pictures.partial"
    built.mkdir()
    with pytest.raises(InputError, match="did not write"):
        artifacts.swap_in_together({mine: built})
    assert not ran and (mine / "holiday.jpg").read_text() == "a user's photo" and built.is_dir()
    for folder, made in ((tmp_path / "empty", lambda f: None), (mine, artifacts.mark_output)):
        folder.mkdir(exist_ok=True)
        made(folder)
        with artifacts.replacing(folder, force=True) as tmp:
            tmp.mkdir()
            (tmp / "new.txt").write_text("new")
        assert sorted(p.name for p in folder.iterdir()) == [artifacts.OUTPUT_MARKER, "new.txt"]
    # a folder result never replaces a file (export --out notes.txt --force), nor the reverse
    notes = tmp_path / "notes.txt"
    notes.write_text("a user's notes")
    with pytest.raises(InputError, match=r"notes.txt: is a file and the new result a folder; it is not replaced"):
        with artifacts.replacing(notes, force=True) as tmp:
            tmp.mkdir()
    assert notes.read_text() == "a user's notes"
    # a file is an output's own path, replaced as before
    (tmp_path / "r.json").write_text("old")
    with artifacts.replacing(tmp_path / "r.json", force=True) as tmp:
        tmp.write_text("new")
    assert (tmp_path / "r.json").read_text() == "new"


def test_outputs_of_one_run_must_be_apart(tmp_path):
    res = tmp_path / "res"
    for outputs, message in (({"--csv": res / "e.csv", "--annotate": res}, "--annotate .*res: contains --csv"),
                             ({"--annotate": res, "--gradcam": res}, "--gradcam .*res: is --annotate"),
                             ({"--out": res, "--json": res / "x" / "r.json"}, "--json .*r.json: lies inside --out")):
        with pytest.raises(InputError, match=message + ".*must be apart"):
            artifacts.check_outputs_apart(outputs)
    artifacts.check_outputs_apart({"--csv": tmp_path / "e.csv", "--annotate": res, "--gradcam": None})
    assert not res.exists()


def test_replacing_a_file_and_making_a_new_output(tmp_path):
    file = tmp_path / "ensemble.json"
    with artifacts.replacing(file) as tmp:  # nothing there yet: no --force needed
        tmp.write_text("first")
    with artifacts.replacing(file, force=True) as tmp:
        tmp.write_text("second")
    assert file.read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ensemble.json"]


def test_temporaries_of_dead_processes_are_cleaned_and_live_ones_kept(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".store.tmp-{dead}").mkdir()                       # a half-built folder
    (tmp_path / f".store.tmp-{dead}" / "train.npz").write_text("half")
    (tmp_path / f".a.json.tmp-{dead}-x1y2.tmp").write_text("half")   # an atomic_path temporary
    (tmp_path / f".gone.old-{dead}").mkdir()                         # killed between the swap's renames
    (tmp_path / f".gone.old-{dead}" / "keep.txt").write_text("old result")
    (tmp_path / "kept").mkdir()
    (tmp_path / f".kept.old-{dead}").mkdir()                         # swap finished, old not yet deleted
    live = tmp_path / f".other.tmp-{os.getpid()}"
    live.mkdir()
    removed = artifacts.clean_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".store.tmp-{dead}", f".a.json.tmp-{dead}-x1y2.tmp",
                                                      f".kept.old-{dead}"])
    assert (tmp_path / "gone" / "keep.txt").read_text() == "old result"  # put back, never deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["gone", "kept", live.name])


def test_atomic_write_killed_mid_write_is_cleaned_on_the_next_run(tmp_path):
    target = tmp_path / "big.npz"
    child = _holder(f"""
        import time
        from ensemble_fer import artifacts
        with artifacts.atomic_path({str(target)!r}) as tmp:
            tmp.write_text("half")
            print("ready", flush=True)
            time.sleep(60)
    """)
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".big.npz.tmp-{child.pid}-")
    with artifacts.replacing(tmp_path / "other") as tmp:  # any later stage writing here cleans it
        tmp.write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_missing_and_bad_files_are_input_errors(tmp_path):
    with pytest.raises(MissingInputError, match="nope.json: file not found"):
        artifacts.read_json(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError):  # still what callers that predate InputError catch
        artifacts.load_npz(tmp_path / "nope.npz")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="bad.json: not valid JSON"):
        artifacts.read_json(tmp_path / "bad.json")
