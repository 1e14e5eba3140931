"""Nothing lost, round two (issue 26): outputs that are inputs, locks before checks, one-unit
swaps, resume that checks it continues the same run, and one line (never a traceback) for
hostile files, full disks and out-of-range arguments. Real processes, files and models."""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, SAMPLE, TEST_DATA
from ensemble_fer import artifacts
from ensemble_fer.errors import InputError
from ensemble_fer.inference.prediction_run import list_inputs
from pipelines import export as export_cli
from pipelines import extract_features
from pipelines import predict as cli

PHOTOS = TEST_DATA / "photos"
FACES = PHOTOS / "2008_002470.jpg"
DOGS = PHOTOS / "dogs.jpg"


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=kwargs.pop("cwd", REPO), capture_output=True, text=True,
                          timeout=kwargs.pop("timeout", 600), **kwargs)


# ----------------------------------------------------------------- 1. an output that is an input
def test_extract_into_its_own_dataset_is_refused_even_with_force(tmp_path, capsys):
    data = tmp_path / "sample"
    shutil.copytree(SAMPLE, data)
    before = _tree(data)
    for out in (data, tmp_path, data / "train" / "features"):     # is, contains, lies inside
        assert extract_features.main(["--data", str(data), "--out", str(out), "--force", "--quiet"]) == 2
        err = _one_error_line(capsys)
        assert f"--out {out}:" in err and "apart from the inputs" in err and "--force" not in err.split(";")[0]
    link = tmp_path / "link"
    link.symlink_to(data)                                         # links resolved
    assert extract_features.main(["--data", str(data), "--out", str(link), "--force", "--quiet"]) == 2
    assert "is the dataset" in _one_error_line(capsys)
    assert _tree(data) == before


def test_extract_into_a_folder_of_the_user_s_is_refused_with_or_without_force(tmp_path, capsys):
    """A store replaces its folder whole when complete: a folder that is not a store (nor made
    by this package) is refused before any work, never emptied."""
    mine = tmp_path / "Documents"
    mine.mkdir()
    (mine / "thesis.txt").write_text("a user's file")
    for force, message in (([], "Documents: exists and is not a feature store (no manifest.json); choose another "
                                "--out"),
                           (["--force"], "Documents: is a folder ensemble_fer did not write")):
        assert extract_features.main(["--data", str(SAMPLE), "--out", str(mine), "--quiet", *force]) == 2
        assert message in _one_error_line(capsys)
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.txt"]


def test_predict_outputs_that_are_inputs_are_refused_and_never_read_back(tiny_variant, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(FACES, photos / "a.jpg")
    shutil.copy(DOGS, photos / "b.jpg")
    before = _tree(photos)
    model = ["--model", str(tiny_variant), "--quiet"]
    for args in ([str(photos), "--annotate", str(photos), "--force"],
                 [str(photos / "a.jpg"), "--csv", str(photos / "a.jpg"), "--force"],
                 [str(photos / "a.jpg"), "--gradcam", str(photos), "--force"],
                 [str(photos / "a.jpg"), "--csv", str(tmp_path / "x.csv"), "--annotate", str(tmp_path), "--force"]):
        assert cli.main(args + model) == 2, args
        assert "an output must be apart from the inputs" in _one_error_line(capsys)
    assert _tree(photos) == before
    # an output inside an input folder is allowed, but is not read back as input (twice: no ann/ann)
    for _ in range(2):
        assert cli.main([str(photos), "--recursive", "--annotate", str(photos / "ann"), "--csv",
                         str(photos / "rows.csv"), "--force"] + model) == 0
        assert sorted(r["path"] for r in _read_csv(photos / "rows.csv")
                      if r["face"] in ("", "0")) == [str(photos / "a.jpg"), str(photos / "b.jpg")]
    assert sorted(p.name for p in (photos / "ann").iterdir()) == [artifacts.OUTPUT_MARKER, "a.jpg", "b.jpg"]


def test_one_annotated_photo_is_decided_again_under_its_lock(tiny_variant, tmp_path, capsys, monkeypatch):
    """``--annotate out.jpg`` is checked when the command starts, but another run may write
    ``out.jpg`` while this one reads its photo: without --force that file is kept, not replaced."""
    from ensemble_fer.inference import prediction_run

    out = tmp_path / "out.jpg"
    checked = prediction_run.annotate_target

    def another_run_writes_it_after_the_check(args, files):
        target = checked(args, files)
        out.write_bytes(b"another run's picture")
        return target

    monkeypatch.setattr(prediction_run, "annotate_target", another_run_writes_it_after_the_check)
    assert cli.main([str(FACES), "--annotate", str(out), "--model", str(tiny_variant), "--quiet"]) == 2
    assert f"{out}: exists; pass --force to replace it" in _one_error_line(capsys)
    assert out.read_bytes() == b"another run's picture"
    assert cli.main([str(FACES), "--annotate", str(out), "--force", "--model", str(tiny_variant), "--quiet"]) == 0
    assert out.read_bytes()[:2] == b"\xff\xd8"          # replaced with --force: a JPEG


def test_export_into_the_model_folder_is_refused(tiny_variant, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_variant, model, ignore=shutil.ignore_patterns(".run"))
    before = _tree(model)
    for out in (model, model / "exports", tmp_path):
        assert export_cli.main(["--model", str(model), "--out", str(out), "--force", "--quiet"]) == 2
        assert f"--out {out}:" in _one_error_line(capsys)
    assert _tree(model) == before


# ----------------------------------------------------------------- 2, 3. locks before checks
def _together(commands) -> list[subprocess.CompletedProcess]:
    children = [subprocess.Popen([sys.executable, *c], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for c in commands]
    done = []
    for child in children:
        out, err = child.communicate(timeout=900)
        done.append(subprocess.CompletedProcess(child.args, child.returncode, out, err))
    return done


def test_a_predict_decides_about_its_csv_under_the_lock(tiny_variant, tmp_path, monkeypatch, capsys):
    """The race of two runs started together, made certain: while this run loads its model
    (after its early check found no CSV), another predict writes the CSV completely."""
    from ensemble_fer import EmotionRecognizer

    out = tmp_path / "rows.csv"
    load = EmotionRecognizer.load.__func__

    def load_while_another_run_writes(cls, *args, **kwargs):
        other = _run(["-m", "pipelines.predict", str(DOGS), "--model", str(tiny_variant), "--csv", str(out),
                      "--quiet"])
        assert other.returncode == 0, other.stderr[-2000:]
        return load(cls, *args, **kwargs)

    monkeypatch.setattr(EmotionRecognizer, "load", classmethod(load_while_another_run_writes))
    assert cli.main([str(FACES), "--model", str(tiny_variant), "--csv", str(out), "--quiet"]) == 2
    assert f"{out}: exists" in _one_error_line(capsys)
    assert [Path(r["path"]).name for r in _read_csv(out)] == ["dogs.jpg"]       # the other run's rows kept


def test_two_trainings_into_one_folder_do_not_both_write(sample_store, tmp_path):
    out = tmp_path / "bovw"
    runs = _together([["-m", "pipelines.train_variant", "--block", "none", "--bovw", "--features", str(sample_store),
                       "--out", str(out), "--epochs", "1", "--seed", str(seed), "--quiet"] for seed in (1, 2)])
    assert sorted(r.returncode for r in runs) == [0, 2], [r.stderr[-800:] for r in runs]
    loser = next(r for r in runs if r.returncode == 2)
    assert "another run (pid" in loser.stderr or "already holds a variant" in loser.stderr, loser.stderr
    winner_seed = 1 + [r.returncode for r in runs].index(0)
    assert json.loads((out / "config.json").read_text())["args"]["seed"] == winner_seed


# ----------------------------------------------------------------- 4. picture names unique per input and face
def test_pictures_of_inputs_with_one_stem_never_collide(tiny_variant, tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    image = Image.open(FACES)
    for suffix in ("png", "gif", "tif"):
        image.save(photos / f"x.{suffix}")
    shutil.copy(FACES, photos / "x_2.jpg")        # the name a collision would have taken
    assert cli.main([str(photos), "--model", str(tiny_variant), "--csv", str(tmp_path / "rows.csv"),
                     "--annotate", str(tmp_path / "ann"), "--gradcam", str(tmp_path / "cam"), "--quiet"]) == 0
    rows = [r for r in _read_csv(tmp_path / "rows.csv") if r["status"] == "ok"]
    assert len({r["path"] for r in rows}) == 4 and len(rows) >= 4
    assert len(list((tmp_path / "ann").glob("[!.]*"))) == 4
    assert len(list((tmp_path / "cam").glob("[!.]*"))) == len(rows)


# ----------------------------------------------------------------- 5. several files swapped in as one unit
KILL_MID_SWAP = """
import os, sys
from pathlib import Path
finals = {str(Path(p).absolute()) for p in sys.argv[1:4]}
real, moved = os.replace, []
def replace(src, dst):
    real(src, dst)
    if str(Path(dst).absolute()) in finals:
        moved.append(dst)
        if len(moved) == 2:
            os._exit(9)          # killed between the renames of the new files
os.replace = replace
from pipelines import fit_ensemble
fit_ensemble.main(sys.argv[4:])
"""


def test_fit_ensemble_killed_between_renames_is_never_half_old(variant_pair, tmp_path):
    from ensemble_fer.ensemble.ensemble_file import ensemble_outputs, read_ensemble
    from pipelines import fit_ensemble

    models = tmp_path / "models"
    shutil.copytree(variant_pair, models, ignore=shutil.ignore_patterns(".run"))
    out = models / "ensemble.json"
    assert fit_ensemble.main(["--models", str(models), "--out", str(out), "--seed", "0"]) == 0
    files = ensemble_outputs(out)
    killed = _run(["-c", KILL_MID_SWAP, str(files["json"]), str(files["markdown"]), str(out), "--models",
                   str(models), "--out", str(out), "--seed", "7", "--force"])
    assert killed.returncode == 9, killed.stderr[-2000:]
    saved = read_ensemble(out)          # a reader finishes the interrupted swap: all new
    report = json.loads(files["json"].read_text())
    assert saved.data["seed"] == report["seed"] == 7
    assert not [p.name for p in models.iterdir() if p.name.startswith(".ensemble")]


# ----------------------------------------------------------------- 6. --resume checks it continues the same run
def test_resume_matches_inputs_by_place_and_refuses_another_model(tiny_variant, variant_pair, tmp_path, monkeypatch,
                                                                   capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(FACES, photos / "a.jpg")
    shutil.copy(DOGS, photos / "b.jpg")
    out = tmp_path / "rows.csv"
    monkeypatch.chdir(tmp_path)
    assert cli.main(["photos", "--model", str(tiny_variant), "--csv", str(out), "--quiet"]) == 0
    rows = _read_csv(out)
    # the same inputs given by their absolute paths are the same inputs: nothing predicted again
    assert cli.main([str(photos), "--model", str(tiny_variant), "--csv", str(out), "--resume"]) == 0
    assert _read_csv(out) == rows
    assert "0 photo(s) read" in capsys.readouterr().err
    # another model, or another detector, would mix two runs' rows: refused, nothing changed
    for args, said in ((["--model", str(variant_pair / "bovw")], "model"),
                       (["--model", str(tiny_variant), "--detector", "mmod"], "--detector hog then, mmod now")):
        assert cli.main(["photos", "--csv", str(out), "--resume", "--quiet", *args]) == 2
        err = _one_error_line(capsys)
        assert f"{out}: written by another run" in err and said in err
    assert _read_csv(out) == rows
    # a CSV this predict did not write (no record; Latin-1) is refused in one line
    stray = tmp_path / "stray.csv"
    stray.write_bytes("path,caf\xe9\n".encode("latin-1"))
    assert cli.main(["photos", "--model", str(tiny_variant), "--csv", str(stray), "--resume", "--quiet"]) == 2
    assert "has no record of the run that wrote it" in _one_error_line(capsys)
    shutil.copy(out.with_name(f".{out.name}.run.json"), stray.with_name(f".{stray.name}.run.json"))
    assert cli.main(["photos", "--model", str(tiny_variant), "--csv", str(stray), "--resume", "--quiet"]) == 2
    assert f"{stray}: not UTF-8 text" in _one_error_line(capsys)


# ----------------------------------------------------------------- 7. file names that are not UTF-8
def test_names_that_are_not_utf8_get_rows_and_resume_skips_them(tiny_variant, variant_pair, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    latin1 = os.fsdecode(b"caf\xe9.jpg")          # a Latin-1 name: not valid UTF-8
    shutil.copy(FACES, photos / latin1)
    shutil.copy(DOGS, photos / "b.jpg")
    out = tmp_path / "rows.csv"
    assert cli.main([str(photos), "--model", str(tiny_variant), "--csv", str(out), "--quiet"]) == 0
    rows = _read_csv(out)
    escaped = f"{photos}/caf\\xe9.jpg"
    assert {r["path"] for r in rows} == {escaped, str(photos / "b.jpg")} and all(r["status"] != "error" for r in rows)
    assert cli.main([str(photos), "--model", str(tiny_variant), "--csv", str(out), "--resume", "--quiet"]) == 0
    assert _read_csv(out) == rows                   # done: not predicted again
    # extraction and evaluation of a dataset holding such a name
    data = tmp_path / "data"
    shutil.copytree(SAMPLE, data)
    first = sorted((data / "train" / "happy").glob("*.jpg"))[0]
    first.rename(first.with_name(latin1))
    assert extract_features.main(["--data", str(data), "--out", str(tmp_path / "store"), "--detector", "none",
                                  "--n-jobs", "1", "--quiet"]) == 0
    from pipelines import evaluate

    assert evaluate.main(["--model", str(variant_pair / "bovw"), "--data", str(data), "--split", "train",
                          "--no-cache", "--n-jobs", "1", "--quiet", "--out", str(tmp_path / "eval")]) == 0


# ----------------------------------------------------------------- 8. malformed model and JSON files
def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


ENSEMBLE_EDITS = {
    "weight abc": lambda d: d["members"][0].update(weight="abc"),
    "weight null": lambda d: d["members"][0].update(weight=None),
    "weight list": lambda d: d["members"][0].update(weight=[1]),
    "n_iter list": lambda d: d["ensemble"].update(n_iter=[1]),
    "score object": lambda d: d["ensemble"].update(score={}),
    "extractor string": lambda d: d.update(extractor="hog"),
    "extractor list": lambda d: d.update(extractor=[1, 2]),
    "blur_sigma string": lambda d: d["extractor"].update(blur_sigma="x"),
    "labels without groups": lambda d: d["labels"].pop("groups"),
}


@pytest.fixture
def release_copy(tiny_release, tmp_path) -> Path:
    copy = tmp_path / "release"
    shutil.copytree(tiny_release, copy, ignore=shutil.ignore_patterns(".run"))
    return copy


@pytest.mark.parametrize("case", sorted(ENSEMBLE_EDITS))
def test_malformed_ensemble_json_is_one_line(release_copy, case, capsys):
    from ensemble_fer.inference.loading import load_predictor

    _edit_json(release_copy / "ensemble.json", ENSEMBLE_EDITS[case])
    with pytest.raises(InputError, match=r"ensemble.json: "):
        load_predictor(release_copy)
    assert cli.main([str(DOGS), "--model", str(release_copy), "--quiet"]) == 2
    assert "ensemble.json" in _one_error_line(capsys)


def test_json_nested_too_deeply_is_one_line(release_copy, capsys):
    (release_copy / "ensemble.json").write_text("[" * 200_000 + "]" * 200_000)
    assert cli.main([str(DOGS), "--model", str(release_copy), "--quiet"]) == 2
    assert "nested too deeply" in _one_error_line(capsys)


@pytest.mark.parametrize("case", ["labels without groups", "extractor string"])
def test_malformed_member_config_is_one_line(variant_pair, tmp_path, case, capsys):
    from ensemble_fer.inference.loading import load_predictor
    from pipelines import fit_ensemble

    models = tmp_path / "models"
    shutil.copytree(variant_pair, models, ignore=shutil.ignore_patterns(".run"))
    change = {"labels without groups": lambda d: d["labels"].pop("groups"),
              "extractor string": lambda d: d["feature_store"].update(extractor="hog")}[case]
    _edit_json(models / "bovw" / "config.json", change)
    with pytest.raises(InputError, match=r"config.json: "):
        load_predictor(models / "bovw")
    assert cli.main([str(DOGS), "--model", str(models / "bovw"), "--quiet"]) == 2
    assert "config.json" in _one_error_line(capsys)
    capsys.readouterr()
    assert fit_ensemble.main(["--models", str(models), "--out", str(models / "ensemble.json")]) == 2   # as a member
    assert "bovw/config.json" in capsys.readouterr().err.strip().splitlines()[-1]


def test_export_marker_that_is_not_an_object_is_one_line(tiny_variant, tmp_path, capsys):
    from ensemble_fer.inference.export import load_export

    folder = tmp_path / "int8"
    shutil.copytree(tiny_variant, folder, ignore=shutil.ignore_patterns(".run"))
    (folder / "export.json").write_text("[]")
    with pytest.raises(InputError, match="export.json: not an exported model"):
        load_export(folder)
    assert cli.main([str(DOGS), "--model", str(folder), "--quiet"]) == 2
    assert "export.json" in _one_error_line(capsys)


def test_a_network_too_large_for_memory_is_one_line(tiny_variant, tmp_path, capsys):
    import zipfile

    model = tmp_path / "huge"
    shutil.copytree(tiny_variant, model, ignore=shutil.ignore_patterns(".run"))
    source = model / "model.keras"
    rebuilt = tmp_path / "rebuilt.keras"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(rebuilt, "w") as new:
        for item in old.infolist():
            data = old.read(item)
            if item.filename == "config.json":
                config = json.loads(data)

                def grow(node):     # every Dense layer gets a billion units
                    if isinstance(node, dict):
                        if node.get("class_name") == "Dense":
                            node["config"]["units"] = 10**9
                        for value in node.values():
                            grow(value)
                    elif isinstance(node, list):
                        for value in node:
                            grow(value)
                grow(config)
                data = json.dumps(config).encode()
            new.writestr(item, data)
    rebuilt.replace(source)
    from ensemble_fer.models.variant_dir import VariantDir

    with pytest.raises(InputError, match="model.keras: "):
        VariantDir(model).load_model()
    assert cli.main([str(DOGS), "--model", str(model), "--quiet"]) == 2
    assert "model.keras" in _one_error_line(capsys)


# ----------------------------------------------------------------- 9. a full disk
def _file_size_limit(limit: int):
    """A child's preexec: writes past ``limit`` bytes fail with EFBIG (as on a full disk), not SIGXFSZ."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_while_locking_or_writing_is_one_line_and_leaves_nothing(tmp_path):
    code = textwrap.dedent(f"""
        from ensemble_fer import artifacts
        from ensemble_fer.errors import InputError
        for write in (lambda: artifacts.output_lock({str(tmp_path / 'out')!r}).__enter__(),
                      lambda: artifacts.write_json({str(tmp_path / 'old.json')!r}, {{"new": "x" * 100}})):
            try:
                write()
            except InputError as exc:
                print(exc)
    """)
    (tmp_path / "old.json").write_text('{"old": 1}')
    child = _run(["-c", code], preexec_fn=_file_size_limit(0))
    lines = child.stdout.splitlines()
    assert child.returncode == 0 and len(lines) == 2, child.stderr
    assert lines[0].startswith(f"file too large for this file system or limit writing {tmp_path / 'out.lock'}")
    assert lines[1].startswith(f"file too large for this file system or limit writing {tmp_path / 'old.json'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]       # no empty lock, no temporary
    assert (tmp_path / "old.json").read_text() == '{"old": 1}'


def test_predict_on_a_full_disk_keeps_the_old_csv_and_says_so(tiny_variant, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(6):
        shutil.copy(FACES, photos / f"{k}.jpg")
    out = tmp_path / "rows.csv"
    out.write_text("the old result\n")
    child = _run(["-m", "pipelines.predict", str(photos), "--model", str(tiny_variant), "--csv", str(out), "--force",
                  "--quiet"], preexec_fn=_file_size_limit(4000))
    assert child.returncode == 2, child.stderr[-3000:]
    last = child.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: file too large for this file system or limit writing {out}.partial"), last
    assert "Traceback" not in child.stderr
    assert out.read_text() == "the old result\n"
    assert not list(tmp_path.glob("*.lock")) and not list(tmp_path.glob(".*tmp*"))


# ----------------------------------------------------------------- 10. numbers with documented ranges
@pytest.mark.parametrize("stage, args, message, shown", [
    ("extract_features", ["--seed", str(2**32)], "argument --seed: must be an int in [0, 4294967295]",
     "(0 to 4294967295)"),
    ("extract_features", ["--n-jobs", "0"], "argument --n-jobs: must be an int -1 or in [1, 256]", "-1 or in [1, 256]"),
    ("fit_ensemble", ["--seed", str(2**32)], "argument --seed: must be an int in [0, 4294967295]", "0 to 4294967295"),
    ("train_variant", ["--block", "cnn5", "--image-size", "100000"], "argument --image-size: must be an int in [1, 512]",
     "at most 512"),
    ("train_variant", ["--block", "cnn5", "--seed", str(2**32)],
     "argument --seed: --seed must be an int in [0, 4294967295]", "seed (in [0, 4294967295])"),
    ("predict", [str(DOGS), "--upsample", "40"], "argument --upsample: must be auto or fast or an int in [0, 4]",
     "0 to 4"),
    ("predict", [str(DOGS), "--fps", "inf"], "argument --fps: must be a finite number in (0, 1000]", "in (0, 1000]"),
    ("predict", [str(DOGS), "--fps", "nan"], "argument --fps: must be a finite number in (0, 1000]", "in (0, 1000]"),
    ("predict", [str(DOGS), "--workers", "0"], "argument --workers: must be an int in [1, 64]; got 0", "1 to 64"),
    ("predict", [str(DOGS), "--workers", "65"], "argument --workers: must be an int in [1, 64]; got 65", "1 to 64"),
    ("predict", [str(DOGS), "--workers", "two"], "argument --workers: must be an int in [1, 64]; got 'two'",
     "1 to 64"),
    ("evaluate", ["--data", "x", "--n-jobs", "0"], "argument --n-jobs: must be an int -1 or in [1, 256]",
     "-1 or in [1, 256]"),
])
def test_numbers_out_of_range_are_refused_as_parsed(stage, args, message, shown, capsys, request):
    import importlib

    module = importlib.import_module(f"pipelines.{stage}")
    if stage == "train_variant":
        # a real store: train_variant opens --features before the full parser (fail fast)
        args = args + ["--features", str(request.getfixturevalue("sample_store"))]
    with pytest.raises(SystemExit) as exit_:
        module.main(args)
    err = capsys.readouterr().err
    # one line, like every other bad input: not argparse's usage block before it
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert err.startswith(f"python -m pipelines.{stage}: error: ") and err.rstrip().endswith("(see --help)"), err
    assert shown in " ".join(module.build_parser().format_help().split())      # the range is in --help


def test_requests_larger_than_memory_are_refused_before_they_start(tiny_variant, sample_store, tmp_path, capsys):
    from PIL import Image

    from ensemble_fer import memory

    big = tmp_path / "big.png"
    Image.new("L", (4000, 4000), 128).save(big)     # 16 MP, doubled 4 times: far beyond any RAM here
    shutil.copy(DOGS, tmp_path / "dogs.jpg")
    out = tmp_path / "rows.csv"
    assert cli.main([str(big), str(tmp_path / "dogs.jpg"), "--model", str(tiny_variant), "--upsample", "4",
                     "--csv", str(out), "--quiet"]) == 0
    rows = {Path(r["path"]).name: r for r in _read_csv(out)}
    assert rows["big.png"]["status"] == "error" and "would need about" in rows["big.png"]["reason"]
    assert rows["dogs.jpg"]["status"] != "error"
    capsys.readouterr()
    from pipelines import train_variant

    needed = 4096 * 512 * 512 * 3 * 4 * 32
    assert needed > memory.available_bytes()
    assert train_variant.main(["--block", "vgg16", "--weights", "none", "--image-size", "512", "--batch-size", "4096",
                               "--features", str(sample_store), "--out", str(tmp_path / "v"), "--quiet"]) == 2
    assert "would need about" in _one_error_line(capsys) and not (tmp_path / "v").exists()


# ----------------------------------------------------------------- 11. folders that cannot be listed, broken links
def test_broken_links_and_unlistable_folders_get_a_message(tmp_path):
    import tempfile

    (tmp_path / "x.jpg").symlink_to(tmp_path / "gone.jpg")
    files, problems = list_inputs([tmp_path], recursive=True)
    assert files == [] and problems == [f"{tmp_path / 'x.jpg'}: broken symbolic link (to {tmp_path / 'gone.jpg'}); "
                                        f"nothing to read"]
    # permissions bind only a user other than root: list as nobody, in a folder nobody may enter
    top = Path(tempfile.mkdtemp())
    try:
        os.chmod(top, 0o755)
        (top / "photos" / "locked").mkdir(parents=True)
        shutil.copy(FACES, top / "photos" / "a.jpg")
        shutil.copy(FACES, top / "photos" / "locked" / "b.jpg")
        os.chmod(top / "photos" / "locked", 0)
        # everything imported first, then the child becomes nobody (who may not read root's Python)
        code = ("import os, sys; from ensemble_fer.inference.prediction_run import list_inputs; list_inputs([]); "
                "import ensemble_fer.features.datasets, ensemble_fer.inference.video; os.setgid(65534); "
                "os.setuid(65534); print(repr(list_inputs([sys.argv[1]], True)[1])); "
                "print(repr(list_inputs([sys.argv[2]], True)[1]))")
        child = _run(["-c", code, str(top / "photos"), str(top / "photos" / "locked")])
        assert child.returncode == 0, child.stderr
        message = f"{top / 'photos' / 'locked'}: cannot list this folder (Permission denied); its files are not read"
        assert child.stdout.splitlines() == [repr([message])] * 2
    finally:
        os.chmod(top / "photos" / "locked", 0o755)
        shutil.rmtree(top)


# ----------------------------------------------------------------- 12. annotated video timing
def test_an_annotated_video_keeps_the_clip_timing(tiny_variant, tmp_path):
    import cv2

    clip = tmp_path / "clip.avi"
    frame = cv2.resize(cv2.imread(str(FACES)), (320, 240))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 240))
    for _ in range(20):                           # 2 s at 10 fps
        writer.write(frame)
    writer.release()
    out = tmp_path / "annotated.avi"
    child = _run(["-m", "pipelines.predict", str(clip), "--model", str(tiny_variant), "--fps", "1000",
                  "--annotate", str(out), "--csv", str(tmp_path / "rows.csv")], timeout=900)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "--fps 1000 is above" in child.stderr
    capture = cv2.VideoCapture(str(out))
    fps, frames = capture.get(cv2.CAP_PROP_FPS), capture.get(cv2.CAP_PROP_FRAME_COUNT)
    capture.release()
    assert fps == pytest.approx(10.0) and frames / fps == pytest.approx(2.0, abs=0.15)


# ----------------------------------------------------------------- 13. CSV cells a spreadsheet would run
def test_cells_a_spreadsheet_would_evaluate_are_neutralised(tiny_variant, tmp_path, monkeypatch):
    names = ["=HYPERLINK(1).jpg", "+x.jpg", "@x.jpg"]
    for name in names:
        shutil.copy(DOGS, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "rows.csv"
    assert cli.main([*names, "--model", str(tiny_variant), "--csv", str(out), "--quiet"]) == 0
    cells = [r["path"] for r in _read_csv(out)]
    assert cells == ["'" + name for name in names]
    assert cli.main([*names, "--model", str(tiny_variant), "--csv", str(out), "--resume", "--quiet"]) == 0
    assert [r["path"] for r in _read_csv(out)] == cells      # and still matched on --resume


# ----------------------------------------------------------------- 14. FIFOs and other non-regular files
def test_a_fifo_is_refused_not_waited_on(tiny_variant, tmp_path):
    os.mkfifo(tmp_path / "x.jpg")
    shutil.copy(DOGS, tmp_path / "dogs.jpg")
    out = tmp_path / "rows.csv"
    child = _run(["-m", "pipelines.predict", str(tmp_path / "x.jpg"), str(tmp_path), "--model", str(tiny_variant),
                  "--csv", str(out), "--quiet"], timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    rows = [r for r in _read_csv(out) if r["path"].endswith("x.jpg")]
    assert len(rows) == 2 and all(r["status"] == "error" and "not a regular file" in r["reason"] for r in rows)


# ----------------------------------------------------------------- 15. blank crops
def test_blank_crops_are_flagged_as_in_extraction(tiny_variant, tmp_path):
    from PIL import Image

    for name, value in (("black.png", 0), ("white.png", 255)):
        Image.new("L", (48, 48), value).save(tmp_path / name)
    shutil.copy(sorted(SAMPLE.glob("train/happy/*.jpg"))[0], tmp_path / "face.jpg")
    out = tmp_path / "rows.csv"
    assert cli.main([str(tmp_path), "--model", str(tiny_variant), "--csv", str(out), "--quiet"]) == 0
    rows = {Path(r["path"]).name: r for r in _read_csv(out)}
    for name in ("black.png", "white.png"):
        assert rows[name]["status"] == "blank" and rows[name]["emotion"] == "" and "blank" in rows[name]["reason"]
    assert rows["face.jpg"]["status"] == "ok"
