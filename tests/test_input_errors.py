"""Bad input through the recognizer, annotation and release paths: InputError from the API,
one ``error:`` line and exit status 2 from the CLI; a plain ValueError is a bug and keeps its
traceback. No Keras model is loaded here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TEST_DATA
from ensemble_fer import release
from ensemble_fer.errors import InputError, MissingInputError
from ensemble_fer.inference import annotate
from ensemble_fer.inference.recognizer import EmotionRecognizer, FaceResult
from pipelines import cli_errors, predict

PHOTO = TEST_DATA / "photos" / "2008_002470.jpg"


class _Classes:
    """Stands in for a Predictor where only the class names are read."""

    classes = ("angry", "happy")


def test_recognizer_arguments_are_input_errors(tmp_path):
    with pytest.raises(InputError, match=r"detector must be one of \('hog', 'mmod'\); got 'haar'"):
        EmotionRecognizer(_Classes(), detector="haar")
    with pytest.raises(InputError, match=r"upsample must be 'auto', 'fast' or an int in \[0, 4\]; got -1"):
        EmotionRecognizer(_Classes(), upsample=-1)
    # checked before the model's files are read
    with pytest.raises(InputError, match=r"upsample must be 'auto', 'fast' or an int in \[0, 4\]; got 1.5"):
        EmotionRecognizer.load(tmp_path / "no-model", upsample=1.5)
    recognizer = EmotionRecognizer(_Classes())
    image = np.zeros((48, 48), np.uint8)
    with pytest.raises(InputError, match="color must be one of"):
        recognizer.face_crop(image, (0, 0, 47, 47), color="hsv")
    with pytest.raises(InputError, match="uint8 array or a path; got an array of dtype float64"):
        recognizer.locate_faces(np.zeros((48, 48)))
    with pytest.raises(InputError, match=r"face must be a FaceResult or a \(left, top, right, bottom\) box"):
        recognizer.face_crop(image, (0, 0, 47))
    with pytest.raises(InputError, match="batch_size must be an int >= 1; got 0"):
        recognizer.predict_many([image], batch_size=0)
    with pytest.raises(InputError, match="emotion: give the emotion to explain when face is a box"):
        recognizer.grad_cam(image, (0, 0, 47, 47))
    face = FaceResult((0, 0, 47, 47), "happy", {"angry": 0.2, "happy": 0.8})
    with pytest.raises(InputError, match=r"emotion 'sad' is not one of the model's classes \['angry', 'happy'\]"):
        recognizer.grad_cam(image, face, emotion="sad")
    with pytest.raises(TypeError, match="use predict for one image"):     # a call mistake, not input
        recognizer.predict_many(image)


def test_annotation_arguments_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="image must be uint8; got float32"):
        annotate.to_rgb(np.zeros((4, 4), np.float32))
    with pytest.raises(InputError, match=r"got shape \(4, 4, 2\)"):
        annotate.to_rgb(np.zeros((4, 4, 2), np.uint8))
    face = FaceResult((1, 1, 10, 10), "happy", {"happy": 1.0})
    with pytest.raises(InputError, match="labels: 2 texts for 1 faces"):
        annotate.draw_faces(np.zeros((20, 20), np.uint8), [face], labels=["a", "b"])
    with pytest.raises(InputError, match=r"heatmap shape \(24, 24\) differs from the crop's \(48, 48\)"):
        annotate.heatmap_overlay(np.zeros((48, 48), np.uint8), np.zeros((24, 24)))
    with pytest.raises(InputError, match=r"heatmap shape \(24, 24\) differs"):
        annotate.gradcam_figure(np.zeros((48, 48), np.uint8), np.zeros((24, 24)), "x")
    target = tmp_path / "figure.notanimage"
    with pytest.raises(InputError, match=f"{target}: cannot encode an image as .notanimage"):
        annotate.write_image(target, np.zeros((8, 8, 3), np.uint8))
    assert not target.exists()


def test_release_problems_are_input_errors(tmp_path):
    with pytest.raises(MissingInputError, match="no ensemble.json or config.json: not a model folder"):
        release.release_files(tmp_path)
    (tmp_path / "ensemble.json").write_text("{not json")
    with pytest.raises(InputError, match=r"ensemble.json: not valid JSON"):
        release.release_files(tmp_path)
    (tmp_path / "ensemble.json").write_text(json.dumps({"members": []}))
    with pytest.raises(MissingInputError, match="ensemble.json: lists no members"):
        release.release_files(tmp_path)
    (tmp_path / "ensemble.json").write_text(json.dumps({"members": [{"path": "../elsewhere"}]}))
    with pytest.raises(MissingInputError, match="member '../elsewhere' lies outside the release folder"):
        release.release_files(tmp_path)


def test_cli_bad_detection_argument_is_refused_as_parsed(tmp_path, capsys):
    for value in ("-1", "twice", "40", "Fast"):
        with pytest.raises(SystemExit) as exit_:
            predict.main([str(PHOTO), "--upsample", value, "--model", str(tmp_path / "none")])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1].endswith(
            f"error: argument --upsample: must be auto or fast or an int in [0, 4] (each doubles the photo before "
            f"detection); got {value!r} (see --help)")
    # both search modes are accepted as parsed (the model's own is the default)
    parsed = predict.build_parser().parse_args([str(PHOTO), "--upsample", "fast"])
    assert parsed.upsample == "fast" and predict.build_parser().parse_args([str(PHOTO)]).upsample is None


def test_cli_outputs_are_refused_before_any_model_loads(tmp_path, capsys, monkeypatch):
    """Outputs that nest, a --csv naming a folder, Grad-CAM for videos only and a user's own
    folder under --force: one line, exit 2, nothing written (the model path does not exist,
    so a check made after loading would fail otherwise)."""
    from test_video import write_video

    clip = write_video(tmp_path / "clip.mp4")
    mine = tmp_path / "Pictures"
    mine.mkdir()
    (mine / "holiday.txt").write_text("a user's file")
    no_model = ["--model", str(tmp_path / "none"), "--quiet"]
    for args, message in (
            (["--csv", str(tmp_path / "res" / "e.csv"), "--annotate", str(tmp_path / "res")],
             "--annotate .*res: contains --csv .*e.csv; each output is written whole"),
            (["--annotate", str(tmp_path / "same"), "--gradcam", str(tmp_path / "same")], "--gradcam .*same: is --annotate"),
            (["--annotate", str(mine), "--force"], "Pictures: is a folder ensemble_fer did not write"),
            # without --force too: the refusal must not suggest a --force that would then be refused
            (["--annotate", str(mine)], "Pictures: is a folder ensemble_fer did not write"),
            (["--gradcam", str(mine), "--resume", "--csv", str(tmp_path / "r.csv")], "Pictures: is a folder ensemble_fer"),
    ):
        assert predict.main([str(PHOTO)] + args + no_model) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
        assert __import__("re").search(message, err), err
    assert predict.main([str(clip), "--gradcam", str(tmp_path / "maps")] + no_model) == 2
    assert capsys.readouterr().err == (f"error: --gradcam {tmp_path / 'maps'}: Grad-CAM maps are drawn for photos "
                                       f"only, and every input is a video; predict the videos without --gradcam\n")
    with pytest.raises(SystemExit) as exit_:
        predict.main([str(PHOTO), "--csv", str(tmp_path / "rows") + "/"] + no_model)
    assert exit_.value.code == 2
    assert "argument --csv: " in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Pictures", "clip.mp4"]
    assert (mine / "holiday.txt").read_text() == "a user's file"
    # a suffix no picture is written in: a folder, as --help says, and the run says so first,
    # --quiet or not (likely a mistake)
    assert predict.main([str(PHOTO), "--annotate", str(tmp_path / "y.txt")] + no_model) == 2
    assert capsys.readouterr().err.startswith(f"warning: --annotate {tmp_path / 'y.txt'}: a folder of pictures is "
                                              f"written there (.txt is not a picture or video suffix)\n")
    # '.' as an output has no name of its own to build beside: it is made absolute
    monkeypatch.chdir(mine)
    assert predict.build_parser().parse_args([str(PHOTO), "--annotate", "."]).annotate == mine


def test_the_console_names_the_stage_as_the_user_typed_it(capsys):
    from pipelines import console

    with pytest.raises(SystemExit) as exit_:
        console.main(["predict", str(PHOTO), "--tta", "99"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ensemble-fer predict: error: argument --tta: must be an int in [0, 10]; got 99"), err
    with pytest.raises(SystemExit):     # run as its own module, it keeps that name
        predict.main([str(PHOTO), "--tta", "99"])
    assert capsys.readouterr().err.startswith("python -m pipelines.predict: error: argument --tta")


def test_a_closed_stdout_ends_the_run_quietly(tmp_path):
    """``ensemble-fer predict photos/ | head -1``: the reader goes away; no traceback, exit 141
    as for a program killed by SIGPIPE."""
    import subprocess
    import sys

    from conftest import REPO

    # the reader exits at once, so the first row written meets a closed pipe
    run = subprocess.run(f"{sys.executable} -m pipelines.predict {PHOTO} --model fast --quiet | true; "
                         f"echo \"exit ${{PIPESTATUS[0]}}\" >&2", shell=True, cwd=REPO, capture_output=True,
                         text=True, timeout=300, executable="/bin/bash")
    assert run.stderr == "exit 141\n", run.stderr


def test_cli_grad_cam_of_a_bovw_only_model_is_one_line(variant_pair, tmp_path, capsys):
    variant = variant_pair / "bovw"     # a real BOVW-only variant: no image branch
    out = tmp_path / "gradcam"
    assert predict.main([str(PHOTO), "--model", str(variant), "--gradcam", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {variant}: Grad-CAM needs an image branch, and no member of this model has one "
                   f"(BOVW-only: ['bovw'])\n")
    assert not out.exists()


def test_only_input_errors_are_reported_as_user_errors(capsys):
    """A plain ValueError raised in a module whose user errors are InputError is a bug: it
    keeps its traceback (it once printed as ``error: too many values to unpack``)."""
    @cli_errors.reports_errors
    def bug(argv=None):
        annotate.place_labels([(0, 0, 1, 1, 9)], [(5, 5)], (10, 10))     # a 5-value box: the caller's bug

    with pytest.raises(ValueError, match="too many values to unpack") as raised:
        bug()
    assert not isinstance(raised.value, InputError)

    @cli_errors.reports_errors
    def bad_input(argv=None):
        annotate.to_rgb(np.zeros((2, 2), np.float64))

    assert bad_input() == 2
    assert capsys.readouterr().err == "error: image must be uint8; got float64\n"


def test_cli_summary_names_its_outputs_and_the_fast_search_trade_off(tmp_path, capsys):
    """The summary names every output written, and with --model fast's own search (upsample
    "fast") says that small faces may be missed and how to find them."""
    csv, pictures = tmp_path / "e.csv", tmp_path / "pictures"
    assert predict.main([str(PHOTO), "--model", "fast", "--csv", str(csv), "--annotate", str(pictures)]) == 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "(--upsample fast: faces under ~46 px may be missed; --upsample auto finds them)" in err
    assert err.endswith(f"; wrote {csv}, pictures in {pictures}") and pictures.is_dir()
    assert predict.main([str(PHOTO), "--model", "fast", "--upsample", "auto"]) == 0
    assert "may be missed" not in capsys.readouterr().err


def test_cli_grad_cam_of_the_fast_model_says_why_not_and_what_to_use(capsys):
    """The shipped fast model is a TFLite export: no gradients, and its Keras source is not
    shipped. The one line says so and names the model to use instead."""
    from ensemble_fer import release

    assert predict.main([str(PHOTO), "--model", "fast", "--gradcam", "never-written"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    source = json.loads((release.shipped_model("fast") / "export.json").read_text())["source"]
    assert f"this is an exported model ({source.rsplit('/', 1)[-1]} as int8, export.json)" in err
    assert "keeps none" in err and "use the default model (the release ensemble" in err
    assert f"exported from (recorded as {source}, which is not here)" in err


@pytest.fixture
def without_model_files(monkeypatch):
    """An installation without the optional `landmarks` extra (face_recognition_models): the
    import fails as it would there; the cached dlib models are dropped before and after."""
    import sys

    from ensemble_fer.features import faces

    monkeypatch.setitem(sys.modules, faces.MODELS_PACKAGE, None)
    for loader in (faces._shape_predictor, faces._mmod_detector):
        loader.cache_clear()
    yield
    for loader in (faces._shape_predictor, faces._mmod_detector):
        loader.cache_clear()


def test_without_the_landmarks_extra_default_prediction_works_and_the_rest_says_what_to_install(
        without_model_files, tmp_path, capsys):
    from ensemble_fer.features import faces
    from pipelines import extract_features

    install = "pip install 'ensemble_fer[landmarks]'"
    with pytest.raises(InputError, match=r"detector='mmod' .* needs dlib's landmark and MMOD model files"):
        faces.check_detection("mmod", 1)
    with pytest.raises(InputError, match="an optional extra"):
        faces.face_landmarks(np.zeros((48, 48), np.uint8), faces.WHOLE_FRAME)
    assert predict.main([str(PHOTO), "--detector", "mmod"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and install in err
    assert extract_features.main(["--out", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and install in err and not (tmp_path / "store").exists()
    # the default: HOG detection and the shipped image-only release need none of it
    assert predict.main([str(PHOTO), "--quiet"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 6
