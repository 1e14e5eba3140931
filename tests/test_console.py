"""The `ensemble-fer` console command and the packaging of the release model.

The wheel test builds a real wheel of this source tree with a tiny release model packaged
(``ENSEMBLE_FER_RELEASE``), installs it into a read-only folder (``pip install --target``, run
by this interpreter: no ``--system-site-packages`` venv), runs every stage with its default
paths from a folder outside the repository, and predicts a photo and a video there through the
installed console script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ensemble_fer import release
from pipelines import console

REPO = Path(__file__).resolve().parent.parent
PHOTO = REPO / "tests" / "data" / "photos" / "2008_002470.jpg"


def test_version_and_usage(capsys):
    from ensemble_fer import __version__

    assert console.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ensemble-fer {__version__}"
    assert console.main([]) == 2
    usage = capsys.readouterr().out
    for command in ("extract", "train", "fit-ensemble", "evaluate", "predict", "export", "demo"):
        assert f"  {command} " in usage
    assert console.main(["predcit", "x.jpg"]) == 2
    assert "unknown command 'predcit'" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(console.STAGES))
def test_every_stage_help_shows_defaults(command, capsys):
    """Through the console and as ``python -m pipelines.<stage>`` alike (the docs use both)."""
    import importlib

    assert console.main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: ensemble-fer {command}")
    assert "default" in text
    parser = console.stage_parser(command)
    module_parser = importlib.import_module(f"pipelines.{console.STAGES[command][0]}").build_parser()
    assert module_parser.formatter_class is parser.formatter_class
    assert module_parser.prog == f"python -m pipelines.{console.STAGES[command][0]}"
    for action in parser._actions:
        if (action.option_strings and action.help
                and not any(action.default is v for v in (None, False, argparse.SUPPRESS))):
            help_text = parser.formatter_class(prog="x")._get_help_string(action)
            assert "default" in help_text, (command, action.option_strings)


@pytest.mark.parametrize("command", sorted(console.STAGES))
def test_every_stage_help_starts_with_a_whole_sentence(command):
    description = " ".join(console.stage_parser(command).description.split())
    assert description.endswith("."), description


@pytest.mark.parametrize("command", ["extract", "predict", "evaluate", "demo"])
def test_stages_that_find_faces_take_detector(command):
    options = {s for a in console.stage_parser(command)._actions for s in a.option_strings}
    assert "--detector" in options


def test_console_reports_bad_input_in_one_line(capsys, tmp_path):
    assert console.main(["predict", str(tmp_path / "missing.jpg"), "--model", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(line.startswith(("error:", str(tmp_path))) for line in err)
    with pytest.raises(SystemExit) as exit_:
        console.main(["extract", "--data", str(tmp_path), "--scheduler"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == ("ensemble-fer extract: error: argument --scheduler: expected one "
                                               "argument (see --help)")


def test_release_files_are_what_prediction_needs(tiny_release, tmp_path):
    files = release.release_files(tiny_release)
    members = [m["path"] for m in json.loads((tiny_release / "ensemble.json").read_text())["members"]]
    assert files == sorted(["ensemble.json"] + [f"{m}/{name}" for m in members
                                                for name in ("config.json", "model.keras")])
    # predictions, figures and histories stay behind
    assert any((tiny_release / m / "predictions.npz").is_file() for m in members)
    copied = release.copy_release(tiny_release, tmp_path / "packaged")
    assert copied == files
    from ensemble_fer.inference.loading import load_predictor

    packaged = load_predictor(tmp_path / "packaged")
    assert packaged.members == load_predictor(tiny_release).members
    # a single variant is a release too
    variant = tiny_release / members[0]
    assert release.release_files(variant) == ["config.json", "model.keras"]
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        release.release_files(tmp_path)


def test_a_member_trunk_licence_travels_with_the_release(tiny_release, tmp_path):
    source = tmp_path / "release"
    shutil.copytree(tiny_release, source)
    member = json.loads((source / "ensemble.json").read_text())["members"][0]["path"]
    (source / member / release.TRUNK_LICENCE).write_text("MIT License\n")
    copied = release.copy_release(source, tmp_path / "packaged")
    assert f"{member}/{release.TRUNK_LICENCE}" in copied
    assert (tmp_path / "packaged" / member / release.TRUNK_LICENCE).read_text() == "MIT License\n"


def test_every_pretrained_member_of_the_shipped_release_packages_its_trunk_licence():
    """Each member fine-tuned from published weights (release 0.9: both faceres MobileNets) ships
    its TRUNK_LICENSE in the wheel; a from-scratch member needs none."""
    source = REPO / "models" / "release"
    files = release.release_files(source)
    members = [m["path"] for m in json.loads((source / "ensemble.json").read_text())["members"]]
    pretrained = [m for m in members
                  if json.loads((source / m / "config.json").read_text())["model"]["pretrained_block"]]
    assert pretrained and len(pretrained) < len(members)
    assert all(f"{m}/{release.TRUNK_LICENCE}" in files for m in pretrained)


def test_release_with_missing_member_is_refused(tiny_release, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_release, broken)
    member = json.loads((broken / "ensemble.json").read_text())["members"][0]["path"]
    (broken / member / "model.keras").unlink()
    with pytest.raises(FileNotFoundError, match="no model.keras or model.tflite"):
        release.release_files(broken)


def _source_tree(dest: Path) -> Path:
    """The files a build reads (tracked and untracked, not ignored), copied out of the clone so
    that the build leaves nothing in it."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True, text=True).stdout.splitlines()
    for name in listed:
        source = REPO / name
        if source.is_file() and (name.startswith("data/sample/")
                                 or not name.startswith(("models/", "data/", "tests/", "benchmarks/", "runs/"))):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.mark.slow
def test_wheel_ships_release_and_predicts_outside_the_repo(tiny_release, tiny_variant, tmp_path):
    source = _source_tree(tmp_path / "src")
    # the fast model: an int8 TFLite export of one variant, as models/fast is
    from pipelines import console

    assert console.main(["export", "--model", str(tiny_variant), "--out", str(tmp_path / "fast"), "--format", "int8",
                         "--quiet"]) == 0
    fast = tmp_path / "fast" / "int8"
    env = dict(os.environ, **{release.ENVIRONMENT_VARIABLES["release"]: str(tiny_release),
                              release.ENVIRONMENT_VARIABLES["fast"]: str(fast)})
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), "-q"], check=True, env=env, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("ensemble_fer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packaged = {f"ensemble_fer/release/{name}" for name in release.release_files(tiny_release)}
    assert packaged <= names
    assert {f"ensemble_fer/fast/{name}" for name in ("config.json", "model.tflite", "export.json")} <= names
    # the bundled sample, the default input of extract, evaluate and demo
    sample = {f"ensemble_fer/sample/{f.relative_to(REPO / 'data' / 'sample').as_posix()}"
              for f in (REPO / "data" / "sample").rglob("*.jpg")}
    assert sample and sample <= names
    assert not any(name.endswith((".npz", ".png", ".csv", ".log")) for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "ensemble-fer = pipelines.console:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    # Installed as pip installs it, into a folder nothing may write into: `pip install --target`
    # with this interpreter, whose own site-packages (a plain venv's, in CI) give the
    # dependencies, so the test runs offline and sees what a user's environment sees (no
    # `venv --system-site-packages`, which would see the base interpreter's packages instead).
    installed = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                    str(installed), str(wheel)], check=True)
    script = installed / "bin" / "ensemble-fer"
    for path in installed.rglob("*"):
        path.chmod(path.stat().st_mode & ~0o222)
    before = _tree_state(installed)
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(installed), PYTHONDONTWRITEBYTECODE="1", XDG_CACHE_HOME=str(cache))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(PHOTO, elsewhere / "photo.jpg")
    where = subprocess.run([sys.executable, "-c", "import ensemble_fer, pipelines; from ensemble_fer import paths, "
                            "release; print(ensemble_fer.__file__, pipelines.__file__, release.default_model(), "
                            "paths.sample_data())"],
                           cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout.split()
    assert all(Path(path).is_relative_to(installed) for path in where), where

    # Every stage with its default paths, from a folder outside the repository: outputs land
    # here, caches in the user's cache folder, inputs come from the package (the sample).
    (elsewhere / "grid.json").write_text(json.dumps({"epochs": [1], "augment": [False]}))
    stages = [["extract", "--detector", "none", "--n-jobs", "1", "--quiet"],
              ["train", "--block", "cnn5", "--epochs", "1", "--no-augment", "--quiet"],
              ["fit-ensemble"],
              ["evaluate", "--detector", "none", "--n-jobs", "1", "--quiet"],
              ["compare", "--speed-images", "8", "--repeats", "1", "--quiet"],
              ["search", "--block", "none", "--bovw", "--grid", "grid.json", "--quiet"],
              ["export", "--out", "exported", "--format", "float32", "--quiet"],
              ["demo", "--epochs", "1", "--detector", "none", "--n-jobs", "1", "--quiet"]]
    program = ("import sys\nfrom pipelines import console\n"
               f"for argv in {stages!r}:\n"
               "    code = console.main(argv)\n"
               "    assert code == 0, (argv, code)\n")
    run = subprocess.run([sys.executable, "-c", program], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    for output in ("features/sample/manifest.json", "models/cnn5/config.json", "models/ensemble.json",
                   "models/comparison/comparison.csv", "runs/search/bovw/results.csv", "exported/export.json",
                   "runs/demo/report.md"):
        assert (elsewhere / output).is_file(), output
    assert list((cache / "ensemble_fer" / "features").glob("eval-*"))
    assert _tree_state(installed) == before, "a stage wrote into the installed package"

    run = subprocess.run([str(script), "predict", "photo.jpg"], cwd=elsewhere, env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith("path,face,left,top,right,bottom,emotion,angry")
    assert len(lines) == 7 and all(line.startswith("photo.jpg,") for line in lines[1:])
    # a CPU-only run: no TensorFlow/CUDA start-up lines, no retracing warnings
    assert run.stderr.strip() == "1 photo(s) read, 6 face(s), 0 unreadable", run.stderr
    # the packaged fast model, by name: another network; with the release's face search
    # (its own default, upsample "fast", finds fewer of these small faces) the same faces
    run = subprocess.run([str(script), "predict", "photo.jpg", "--model", "fast", "--upsample", "auto"],
                         cwd=elsewhere, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    fast_lines = run.stdout.strip().splitlines()
    assert [line.split(",")[:6] for line in fast_lines] == [line.split(",")[:6] for line in lines]

    # and a video, written here by OpenCV
    from test_video import write_video

    write_video(elsewhere / "clip.mp4", photos=("2008_002470.jpg",))
    run = subprocess.run([str(script), "predict", "clip.mp4", "--fps", "2", "--quiet"], cwd=elsewhere, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[0].endswith(",frame,time_s,track")
    assert len(lines) == 1 + 2 * 6 and all(line.startswith("clip.mp4,") for line in lines[1:])
    assert run.stderr == ""
    assert _tree_state(installed) == before


def _tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time: what a write would change
    (the folder is read-only, but a test run as root writes through that)."""
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*"))}


# ------------------------------------------------------------------ quiet TensorFlow start-up
CHATTER_WORDS = re.compile(r"cuda|onednn|cpu_feature_guard", re.IGNORECASE)


def test_first_import_of_tensorflow_hides_only_its_start_up_lines(tmp_path, monkeypatch, capfd):
    """The import hook on a stand-in package that writes what TensorFlow writes at import and
    at the device probe, plus one line that is not chatter: only that line is left."""
    from ensemble_fer import tf_startup

    (tmp_path / "noisy_tf").mkdir()
    (tmp_path / "noisy_tf" / "__init__.py").write_text(
        "import os, types\n"
        "os.write(2, b'I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\\n')\n"
        "os.write(2, b'I0000 port.cc:153] oneDNN custom operations are on.\\n')\n"
        "os.write(2, b'a real warning\\n')\n"
        "config = types.SimpleNamespace(list_physical_devices=lambda: os.write(\n"
        "    2, b'E0000 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\\n'))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    finder = tf_startup._QuietFinder("noisy_tf")
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    monkeypatch.delitem(sys.modules, "noisy_tf", raising=False)
    import noisy_tf

    assert finder not in sys.meta_path                  # the first import only
    assert noisy_tf.__loader__ is noisy_tf.__spec__.loader and not isinstance(noisy_tf.__loader__,
                                                                              tf_startup._QuietLoader)
    assert capfd.readouterr().err == "a real warning\n"


@pytest.mark.slow
def test_python_m_stage_starts_tensorflow_quietly():
    """`python -m pipelines.<stage>`, not only the console, hides TensorFlow's start-up lines on
    a CPU-only machine. ``-X importtime`` shows that the run did import TensorFlow."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipelines.train_variant", "--help"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("usage:")
    lines = run.stderr.splitlines()
    imported = {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}
    assert "tensorflow" in imported, "this run no longer imports TensorFlow: pick a stage that does"
    ours = [line for line in lines if not line.startswith("import time:")]
    assert not [line for line in ours if CHATTER_WORDS.search(line)], ours


@pytest.mark.slow
def test_python_api_is_as_quiet_as_the_cli_and_does_not_retrace(tiny_release):
    """`from ensemble_fer import EmotionRecognizer` and predict() in a loop, on photos with 0 to
    7 faces and on 1 to 20 crops: nothing on stderr (no TensorFlow start-up or cuInit lines,
    no retracing warnings), and each member's network traced at most twice (Keras's
    reduce_retracing generalises the batch dimension after the second shape)."""
    program = f"""
import glob, json, sys
import numpy as np
from ensemble_fer import EmotionRecognizer
recognizer = EmotionRecognizer.load({str(tiny_release)!r})
for photo in sorted(glob.glob({str(PHOTO.parent / '*.jpg')!r})) * 2:
    recognizer.predict(photo)
crops = np.random.default_rng(0).integers(0, 256, (20, 48, 48), dtype=np.uint8)
for n in (1, 5, 2, 17, 3, 9, 20, 4, 11, 6):
    recognizer._predictor.predict_proba(crops[:n])
members = recognizer._predictor._members
print(json.dumps([m.model.predict_function.experimental_get_tracing_count() for m in members]))
"""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", program], cwd=REPO.parent, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr == "", run.stderr
    assert all(count <= 2 for count in json.loads(run.stdout.strip().splitlines()[-1])), run.stdout


def test_ci_runs_the_readmes_test_command_in_a_plain_virtualenv():
    """CI is what a user does: a fresh venv without the system's packages, the package
    installed into it, then the README's own test command (its second command line)."""
    readme = (REPO / "README.md").read_text()
    commands = readme.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    test_command = commands[1].split("#")[0].strip()
    script = (REPO / ".ci" / "run").read_text()
    code = [line.strip() for line in script.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert "python3 -m venv" in script and "--system-site-packages" not in "\n".join(code)
    assert code.index(test_command) > next(i for i, line in enumerate(code) if "python3 -m venv" in line)
    assert any("pip install" in line and "-e" in line and "[test]" in line for line in code)
    assert subprocess.run(["bash", "-n", str(REPO / ".ci" / "run")]).returncode == 0
