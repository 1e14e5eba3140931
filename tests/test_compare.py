"""`python -m pipelines.compare` (ensemble_fer.evaluation.comparison) on the real trained variants of conftest's
``variant_pair``: the table's figures against each variant's own files, the measured speed, the
figure, nested folders, the sample-crop fallback and the refusals."""

import csv
import json
import shutil

import keras
import numpy as np
import pytest

from ensemble_fer import artifacts, metrics
from ensemble_fer.evaluation import comparison
from ensemble_fer.models.variant_dir import load_variant
from pipelines import compare

from conftest import SAMPLE

MEMBERS = ("bovw", "cnn5+bovw")


def _cli(args, capsys):
    code = compare.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def compared(variant_pair, tmp_path_factory):
    """One comparison of the pair: (out folder, rows of comparison.csv)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("comparison")
    with contextlib.redirect_stdout(io.StringIO()):
        code = compare.main(["--models", str(variant_pair), "--out", str(out), "--quiet", "--repeats", "2"])
    assert code == 0
    return out, _rows(out / "comparison.csv")


def test_rows_hold_each_variants_own_figures_sorted_by_val_accuracy(compared, variant_pair):
    out, rows = compared
    assert sorted(r["name"] for r in rows) == sorted(MEMBERS)
    accuracies = [float(r["val_accuracy"]) for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    for row in rows:
        folder = variant_pair / row["name"]
        config = json.loads((folder / "config.json").read_text())
        saved = json.loads((folder / "metrics.json").read_text())["val"]
        predictions = artifacts.load_npz(folder / "predictions.npz")
        recomputed = metrics.classification_metrics(predictions["val_y"], predictions["val_proba"],
                                                    config["labels"]["classes"])
        assert float(row["val_accuracy"]) == pytest.approx(saved["accuracy"], abs=1e-6)
        assert float(row["val_accuracy"]) == pytest.approx(recomputed["accuracy"], abs=1e-6)
        assert float(row["val_macro_f1"]) == pytest.approx(saved["macro_f1"], abs=1e-6)
        assert float(row["val_loss"]) == pytest.approx(saved["log_loss"], rel=1e-5)
        assert int(row["val_n"]) == saved["n"] == 105
        model = keras.models.load_model(folder / "model.keras", compile=False)
        assert int(row["n_params"]) == config["model"]["n_params"] == model.count_params()
        assert float(row["train_seconds"]) == pytest.approx(config["training"]["training_seconds"], rel=1e-5)
        assert row["labels"] == "fer7" and row["n_classes"] == "7" and row["test_accuracy"] == ""
        speed = float(row["images_per_second"])
        assert np.isfinite(speed) and speed > 0
        assert row["speed_rows"] == "256" and row["speed_inputs"].startswith("the variant's val rows of ")
        assert "105 of its 105 rows, repeated to 256" in row["speed_inputs"]
    # the two-input network has the image branch on top of the same BOVW branch: more weights
    params = {r["name"]: int(r["n_params"]) for r in rows}
    assert params["cnn5+bovw"] > params["bovw"]


def test_markdown_and_figure(compared):
    out, rows = compared
    markdown = (out / "comparison.md").read_text()
    assert "| # | variant | labels | params | val loss | val acc | val macro-F1 | epochs | train s | images/s |" \
        in markdown
    assert markdown.index(f"`{rows[0]['name']}`") < markdown.index(f"`{rows[1]['name']}`")
    assert "best of 2 timed calls after one warm-up call" in markdown and "The network only" in markdown
    assert "![val accuracy against inference speed and size](comparison.png)" in markdown
    assert "not comparable" not in markdown                      # one label set, one store
    picture = (out / "comparison.png").read_bytes()
    assert picture.startswith(b"\x89PNG\r\n\x1a\n")
    import matplotlib.image

    pixels = matplotlib.image.imread(out / "comparison.png")
    assert pixels.shape[0] > 300 and pixels.shape[1] > 900 and pixels.std() > 0.01   # two panels, drawn


def test_measure_speed_times_predict_proba(variant_pair, sample_store):
    from ensemble_fer.features.feature_store import FeatureStore

    model, config = load_variant(variant_pair / "bovw")
    val = FeatureStore(sample_store).load("val")
    measured = comparison.measure_speed(model, config, val["images"][:64], val["bovw"][:64], repeats=2)
    assert measured["rows"] == 64 and len(measured["seconds"]) == 2
    assert measured["images_per_second"] == 64 / min(measured["seconds"])   # the rate of the reported seconds
    with pytest.raises(ValueError, match="repeats must be an int >= 1"):
        comparison.measure_speed(model, config, val["images"][:4], val["bovw"][:4], repeats=0)


def test_nested_variants_default_out_and_sample_crops_without_the_store(variant_pair, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(variant_pair / "bovw", models / "search" / "bovw" / "run-000")
    moved = models / "moved"
    shutil.copytree(variant_pair / "bovw", moved)
    config = json.loads((moved / "config.json").read_text())
    config["feature_store"]["path"] = str(tmp_path / "gone")          # its store is no longer there
    (moved / "config.json").write_text(json.dumps(config))
    (models / "notes").mkdir()                                         # not a variant: ignored

    code, stdout, stderr = _cli(["--models", models, "--quiet", "--repeats", "1", "--speed-images", "32"], capsys)
    assert code == 0, stderr
    out = models / "comparison"                                        # the default --out
    rows = {r["name"]: r for r in _rows(out / "comparison.csv")}
    assert set(rows) == {"search/bovw/run-000", "moved"}
    assert rows["moved"]["val_accuracy"] == rows["search/bovw/run-000"]["val_accuracy"]
    assert rows["search/bovw/run-000"]["speed_inputs"].startswith("the variant's val rows of")
    assert rows["moved"]["speed_inputs"].startswith(f"32 crops of the sample {SAMPLE}")
    assert rows["moved"]["speed_rows"] == "32" and float(rows["moved"]["images_per_second"]) > 0
    assert "search/bovw/run-000" in stdout and f"wrote {out / 'comparison.csv'}" in stdout

    # a second run finds the same variants: comparison/ holds no config.json
    assert [f.name for f in comparison.find_variants(models)] == ["moved", "run-000"]


def test_variants_of_different_stores_are_flagged_and_timing_can_be_skipped(variant_pair, tmp_path, capsys):
    models = tmp_path / "models"
    for name in MEMBERS:
        shutil.copytree(variant_pair / name, models / name, ignore=shutil.ignore_patterns(".run"))
    config = json.loads((models / "bovw" / "config.json").read_text())
    config["feature_store"]["manifest_hash"] = "0" * 16                # as if trained on another store
    (models / "bovw" / "config.json").write_text(json.dumps(config))
    code, stdout, stderr = _cli(["--models", models, "--quiet", "--no-speed"], capsys)
    assert code == 0, stderr
    assert "trained on different feature stores" in stdout
    rows = _rows(models / "comparison" / "comparison.csv")
    assert all(r["images_per_second"] == "" for r in rows) and all(int(r["n_params"]) > 0 for r in rows)
    markdown = (models / "comparison" / "comparison.md").read_text()
    assert "trained on different feature stores" in markdown and "Inference images/s" not in markdown


def test_refuses_a_folder_without_variants(tmp_path, capsys):
    empty = tmp_path / "models"
    (empty / "half-trained" / ".run").mkdir(parents=True)
    (empty / "half-trained" / "history.csv").write_text("epoch\n1\n")
    code, _, stderr = _cli(["--models", empty, "--out", tmp_path / "out"], capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert stderr.startswith(f"error: {empty}: holds no trained variant") and "recursively" in stderr
    assert not (tmp_path / "out").exists()

    code, _, stderr = _cli(["--models", tmp_path / "missing"], capsys)
    assert code == 2 and f"{tmp_path / 'missing'}: no such folder" in stderr


def test_bad_input_is_one_line_and_bugs_keep_their_traceback(variant_pair, tmp_path, capsys, monkeypatch):
    """compare's user-facing refusals are InputError (exit 2, one line); anything else, a
    KeyError or a contract check failing inside the library, is a bug and propagates."""
    from ensemble_fer.ensemble import members
    from ensemble_fer.errors import InputError, MissingInputError

    for flag in ("--repeats", "--speed-images", "--batch-size"):     # refused as parsed: argparse's exit 2
        with pytest.raises(SystemExit) as exit_:
            _cli(["--models", variant_pair, "--out", tmp_path / "out", flag, "0"], capsys)
        stderr = capsys.readouterr().err
        assert exit_.value.code == 2 and f"error: argument {flag}: must be an int in [1, " in stderr.splitlines()[-1]
    a_file = tmp_path / "comparison.txt"
    a_file.write_text("not a folder")
    code, _, stderr = _cli(["--models", variant_pair, "--out", a_file, "--no-speed", "--quiet"], capsys)
    assert (code, stderr) == (2, f"error: {a_file}: --out must be a folder, not a file\n")
    assert not (tmp_path / "out").exists()

    with pytest.raises(MissingInputError, match="no such folder of trained variants"):
        comparison.find_variants(tmp_path / "missing")
    with pytest.raises(InputError, match=r"speed images must be an int >= 1 \(--speed-images\); got 0"):
        comparison.SpeedInputs(0)
    with pytest.raises(InputError, match=r"batch size must be an int >= 1 \(--batch-size\); got 0"):
        comparison.compare_variants(variant_pair, batch_size=0, speed=False)

    def broken_rank(rows):
        raise KeyError("val_accuracy")

    monkeypatch.setattr(comparison, "rank", broken_rank)
    with pytest.raises(KeyError, match="val_accuracy"):
        compare.main(["--models", str(variant_pair), "--out", str(tmp_path / "out"), "--no-speed", "--quiet"])
    monkeypatch.undo()

    # A bug that hands the metrics unchecked probabilities: metrics' own check (a ValueError
    # raised in ensemble_fer.metrics) must show its traceback, not pass for bad input.
    read_member = members.read_member

    def corrupting_read_member(folder, *args, **kwargs):
        member = read_member(folder, *args, **kwargs)
        member.splits["val"]["proba"][0] = np.nan
        return member

    monkeypatch.setattr(members, "read_member", corrupting_read_member)
    with pytest.raises(ValueError, match="must be finite; row 0 holds NaN") as err:
        compare.main(["--models", str(variant_pair), "--out", str(tmp_path / "out"), "--no-speed", "--quiet"])
    assert not isinstance(err.value, InputError)
    assert not (tmp_path / "out").exists()


def test_existing_comparison_files_are_replaced_only_with_force(variant_pair, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "comparison.csv").write_text("an earlier comparison\n")
    assert compare.main(["--models", str(variant_pair), "--out", str(out), "--no-speed", "--quiet"]) == 2
    assert capsys.readouterr().err == f"error: {out / 'comparison.csv'}: exists; pass --force to replace it\n"
    assert (out / "comparison.csv").read_text() == "an earlier comparison\n"
    # --out inside a variant folder (an input) is refused, --force or not
    inside = next(p for p in variant_pair.iterdir() if (p / "config.json").is_file()) / "cmp"
    assert compare.main(["--models", str(variant_pair), "--out", str(inside), "--no-speed", "--quiet", "--force"]) == 2
    assert "an output must be apart from the inputs" in capsys.readouterr().err and not inside.exists()
    assert compare.main(["--models", str(variant_pair), "--out", str(out), "--no-speed", "--quiet", "--force"]) == 0
    assert "an earlier comparison" not in (out / "comparison.csv").read_text()
